# Per-host statistics and the severity policy (analyzer/stats/hosts.py, analyzer/meaning/severity.py).
#
# Inputs are synthetic DataFrames in the pipeline's exact column contract,
# small enough to check by hand, plus random ones for the invariants:
# codes equal the events' counts, and any batching gives identical results.
from __future__ import annotations

import math
import random

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.errors import UsageError
from analyzer.meaning.severity import Policy, parse_selector
from analyzer.stats.hosts import (BUCKET_STEPS, CODE_COLUMNS, EVENT_COLUMNS, HOST_COLUMNS, StatsAccumulator,
                            choose_step, compute, connections_frame, events_frame)

S1, S2, FTP, WS = "10.0.0.1", "2001:db8::1", "10.0.0.9", "10.0.0.8"
C1, C2 = "10.0.0.2", "10.0.0.3"


def small_events():
    return events_frame([
        dict(epoch=100.0, protocol="http", client_ip=C1, server_ip=S1, code=200, request="GET / HTTP/1.1",
             host="a.example", latency_ms=5.0),
        dict(epoch=101.0, protocol="http", client_ip=C1, server_ip=S1, code=404, request="GET /x HTTP/1.1",
             host="a.example", latency_ms=7.0, **{"class": "4xx", "name": "Not Found", "meaning": "nothing there"}),
        dict(epoch=102.0, protocol="http", client_ip=C2, server_ip=S1, code=503, request="GET /y HTTP/1.1",
             host="b.example", latency_ms=9.0, flags="http_late_response"),
        dict(epoch=102.5, protocol="http", client_ip=C2, server_ip=S1, code=401, request="", latency_ms=np.nan),
        dict(epoch=103.0, protocol="ftp", client_ip=C1, server_ip=FTP, code=220, request=""),
        dict(epoch=103.5, protocol="ftp", client_ip=C1, server_ip=FTP, code=530, request="PASS ****"),
        dict(epoch=103.7, protocol="ftp", client_ip=C1, server_ip=FTP, code=631, request="MIC xx"),
        dict(epoch=104.0, protocol="websocket", client_ip=C1, server_ip=WS, code=1006, inferred=True,
             request="GET /ws"),
        dict(epoch=105.0, protocol="websocket", client_ip=C2, server_ip=WS, code=1000, request="GET /ws",
             direction="client->server"),
        dict(epoch=105.1, protocol="websocket", client_ip=C2, server_ip=WS, code=1000, request="GET /ws",
             direction="server->client"),
    ])


def small_connections():
    return connections_frame([
        dict(connection="f1", protocol="ftp", client_ip=C1, server_ip=FTP, first_epoch=99.0, last_epoch=110.0,
             bytes_c2s=100, bytes_s2c=300, outcome={"user": "alice", "login": "success",
                                                    "failed_logins": ["bob", "root", "bob"]}),
        dict(connection="w1", protocol="websocket", client_ip=C1, server_ip=WS, first_epoch=99.5,
             last_epoch=104.0, state="reset",
             outcome={"state": "aborted", "close_code": 1006, "closed_first_by": "client", "clean": False}),
        dict(connection="w2", protocol="websocket", client_ip=C2, server_ip=WS, first_epoch=104.5,
             last_epoch=105.2, outcome={"state": "closed", "close_code": 1000, "closed_first_by": "client",
                                        "clean": True}),
        dict(connection="w3", protocol="websocket", client_ip=C2, server_ip=WS, first_epoch=104.5,
             last_epoch=105.2, state="open", outcome={"state": "open", "close_code": None}),
        dict(connection="h1", protocol="http", client_ip=C1, server_ip=S1, first_epoch=99.0, last_epoch=101.5,
             gaps=1, missed_bytes=50, outcome={"requests": 3, "responses": 2, "unanswered": 1}),
    ])


def row(hosts, host, role, protocol):
    got = hosts[(hosts["host"] == host) & (hosts["role"] == role) & (hosts["protocol"] == protocol)]
    assert len(got) == 1, (host, role, protocol)
    return got.iloc[0]


def test_contract_columns():
    assert events_frame([]).columns.tolist() == list(EVENT_COLUMNS)
    assert EVENT_COLUMNS[:14] == ("time", "epoch", "frame", "protocol", "client_ip", "client_port", "server_ip",
                                  "server_port", "code", "text", "request", "host", "latency_ms", "connection")


def test_hosts_hand_checked():
    r = compute(small_events(), small_connections(), {"first_epoch": 90.0, "last_epoch": 200.0})
    assert r.hosts.columns.tolist() == list(HOST_COLUMNS)
    h = row(r.hosts, S1, "server", "http")
    assert (h.events, h.error_count, h.class_2xx, h.class_4xx, h.class_5xx) == (4, 3, 1, 2, 1)
    assert h.error_rate == pytest.approx(0.75)
    assert (h.latency_p50_ms, h.latency_samples) == (7.0, 3)           # median of 5, 7, 9
    assert h.latency_p95_ms == pytest.approx(8.8)                      # numpy linear: 7 + 0.9 * 2
    assert h.hosts_seen == "a.example; b.example"
    assert (h.events_without_request, h.flagged_events) == (1, 1)
    assert (h.connections, h.http_unanswered, h.connections_with_gaps, h.missed_bytes) == (1, 1, 1, 50)
    assert h.first_seen == "1970-01-01T00:01:39.000000Z"               # the connection began first
    assert h.last_seen == "1970-01-01T00:01:42.500000Z"
    c2 = row(r.hosts, C2, "client", "http")
    assert (c2.events, c2.error_count, c2.latency_samples, c2.hosts_seen) == (2, 2, 1, "b.example")
    f = row(r.hosts, FTP, "server", "ftp")
    # 631 is an RFC 2228 protected reply: a 6yz class but not an error by default.
    assert (f.events, f.error_count, f.class_2xx, f.class_5xx, f.class_6xx) == (3, 1, 1, 1, 1)
    assert (f.ftp_failed_logins, f.ftp_logins, f.bytes_sent, f.bytes_received) == (3, 1, 300, 100)
    assert math.isnan(f.latency_p50_ms)
    w = row(r.hosts, WS, "server", "websocket")
    assert (w.events, w.error_count, w.ws_normal, w.ws_inferred, w.ws_abnormal) == (3, 1, 2, 1, 0)
    assert (w.connections, w.connections_open, w.connections_reset) == (3, 1, 1)
    assert w.ws_closes_by_cause == "1000×1; 1006 inferred×1"
    # Each event counts once per role.
    for role in ("server", "client"):
        assert r.hosts.loc[r.hosts["role"] == role, "events"].sum() == 10


def test_tables_hand_checked():
    r = compute(small_events(), small_connections())
    assert r.codes.columns.tolist() == list(CODE_COLUMNS)
    http = r.codes[r.codes["protocol"] == "http"]
    assert http["code"].tolist() == [200, 401, 404, 503]
    nf = http[http["code"] == 404].iloc[0]
    assert (nf["class"], nf["name"], nf["meaning"]) == ("4xx", "Not Found", "nothing there")
    assert http[http["code"] == 200].iloc[0]["class"] == "2xx"          # fallback class when unannotated
    assert r.top_failing_uris.to_dict("records")[:2] == [
        {"server_ip": S1, "server_port": 0, "host": "a.example", "uri": "/x", "code": 404, "count": 1},
        {"server_ip": S1, "server_port": 0, "host": "b.example", "uri": "/y", "code": 503, "count": 1}]
    assert len(r.top_failing_uris) == 2                                 # the 401 had no request: no URI
    logins = {(x["user"], x["failed"], x["succeeded"]) for x in r.ftp_logins.to_dict("records")}
    assert logins == {("bob", 2, 0), ("root", 1, 0), ("alice", 0, 1)}
    assert r.ftp_logins.iloc[0]["user"] == "bob"
    ws = r.ws_closes.to_dict("records")
    assert {(x["code"], x["closed_first_by"], x["inferred"], x["count"]) for x in ws} == {
        (1006, "client", True, 1), (1000, "client", False, 1)}
    s = r.summary
    assert (s["events"], s["errors"]) == (10, 5)
    assert s["protocols"]["http"]["latency_ms"]["p50"] == 7.0
    assert s["protocols"]["ftp"]["failed_logins"] == 3
    assert s["protocols"]["websocket"]["open_connections"] == 1
    assert s["coverage"]["events_without_request"] == {"http": 1, "ftp": 1, "websocket": 0}


def random_events(seed: int, n: int = 400, span: float = 900.0) -> pd.DataFrame:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        proto = rnd.choice(["http", "http", "ftp", "websocket"])
        code = {"http": lambda: rnd.choice([200, 204, 301, 401, 404, 500, 503]),
                "ftp": lambda: rnd.choice([220, 230, 331, 530, 550, 632]),
                "websocket": lambda: rnd.choice([1000, 1001, 1005, 1006, 1011, 4001])}[proto]()
        rows.append(dict(epoch=1_700_000_000.0 + span * i / n, protocol=proto,
                         client_ip=f"10.0.{rnd.randint(0, 2)}.{rnd.randint(1, 5)}",
                         server_ip=rnd.choice([S1, S2, FTP]), code=code,
                         request=rnd.choice(["", "GET /a HTTP/1.1", "GET /b?q=1 HTTP/1.1", "RETR f"]),
                         host=rnd.choice(["", "a.example", "b.example"]), inferred=code in (1005, 1006),
                         latency_ms=rnd.choice([np.nan, rnd.lognormvariate(2, 1)]) if proto == "http" else np.nan,
                         substatus=rnd.choice(["", "", "403.14"]) if code == 401 else ""))
    return events_frame(rows)


def test_codes_equal_event_counts():
    events = random_events(7)
    r = compute(events)
    expected = events.groupby(["server_ip", "protocol", "code"]).size()
    got = r.codes.set_index(["server_ip", "protocol", "code"])["count"]
    assert got.sort_index().to_dict() == expected.sort_index().to_dict()
    assert r.codes["count"].sum() == len(events) == r.summary["events"]


def results_equal(a, b):
    for name in ("hosts", "codes", "timeseries", "top_failing_uris", "ftp_logins", "ws_closes", "substatus"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name), check_dtype=False, obj=name)
    assert a.summary == b.summary


@settings(max_examples=15, deadline=None)
@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6), seed=st.integers(0, 3))
def test_batches_give_identical_results(cuts, seed):
    events = random_events(seed)
    conns = small_connections()
    coverage = {"first_epoch": 1_699_999_990.0, "last_epoch": 1_700_000_950.0}
    whole = StatsAccumulator()
    whole.add_events(events)
    whole.add_connections(conns)
    split = StatsAccumulator()
    bounds = [0, *sorted(cuts), len(events)]
    for lo, hi in zip(bounds, bounds[1:]):
        split.add_events(events.iloc[lo:hi])
    split.add_connections(conns.iloc[:2])
    split.add_connections(conns.iloc[2:])
    results_equal(whole.finish(coverage), split.finish(coverage))


def _shares(events: pd.DataFrame, seed: int, shares: int) -> list[pd.DataFrame]:
    """Events dealt to `shares` accumulators as parallel workers get them:
    by client (a connection's events stay together), each share in time order."""
    rnd = random.Random(seed)
    owner = {ip: rnd.randrange(shares) for ip in sorted(set(events["client_ip"]))}
    which = events["client_ip"].map(owner)
    return [events[which == k] for k in range(shares)]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 50), shares=st.integers(1, 4), span=st.sampled_from([90.0, 900.0, 86400.0 * 9]),
       exact_latencies=st.sampled_from([4096, 40]))
def test_merged_shares_give_what_one_pass_gives(seed, shares, span, exact_latencies):
    # Parallel runs: each worker accumulates its share; the parent merges them.
    events = random_events(seed % 4, n=500, span=span)
    conns = small_connections()
    coverage = {"first_epoch": 1_699_999_990.0, "last_epoch": 1_700_000_000.0 + span + 10}
    whole = StatsAccumulator(exact_latencies=exact_latencies)
    for lo in range(0, len(events), 128):
        whole.add_events(events.iloc[lo:lo + 128])
    whole.add_connections(conns)
    parts = []
    for k, share in enumerate(_shares(events, seed, shares)):
        acc = StatsAccumulator(exact_latencies=exact_latencies)
        for lo in range(0, len(share), 97):
            acc.add_events(share.iloc[lo:lo + 97])
        acc.add_connections(conns.iloc[k::shares])
        parts.append(acc)
    merged = StatsAccumulator(exact_latencies=exact_latencies)
    for acc in parts:
        merged.merge(acc)
    a, b = whole.finish(coverage), merged.finish(coverage)
    results_equal(a, b)
    pd.testing.assert_frame_equal(a.failing, b.failing, check_dtype=False, obj="failing")
    assert a.meanings == b.meanings


def test_merge_of_a_spilled_latency_host():
    # One share spilled a host to the histogram, the other kept it raw: the
    # merged host is a histogram of both, as one pass past the limit gives.
    events = events_frame([dict(epoch=float(i), protocol="http", client_ip=C1 if i % 3 else C2, server_ip=S1,
                                code=200, latency_ms=float(1 + i % 40)) for i in range(300)])
    whole = StatsAccumulator(exact_latencies=120)
    whole.add_events(events)
    one, two = StatsAccumulator(exact_latencies=120), StatsAccumulator(exact_latencies=120)
    one.add_events(events[events["client_ip"] == C1])   # 200 samples for S1: spilled
    two.add_events(events[events["client_ip"] == C2])   # 100: still raw
    merged = StatsAccumulator(exact_latencies=120)
    merged.merge(one)
    merged.merge(two)
    a, b = whole.finish({}), merged.finish({})
    assert row(b.hosts, S1, "server", "http").latency_samples == 300
    results_equal(a, b)


def test_time_buckets_from_duration_and_coarsening():
    assert choose_step(0, 119) == 1
    assert choose_step(0, 120) == 5
    assert choose_step(0, 600) == 10                   # 61 buckets of 10 s; 121 of 5 s is too many
    assert choose_step(0, 86400 * 3) == 3600
    for a, b in zip(BUCKET_STEPS, BUCKET_STEPS[1:]):
        assert b % a == 0                              # coarsening while streaming stays exact
    events = random_events(3, n=600, span=6000.0)
    acc = StatsAccumulator()
    for lo in range(0, 600, 37):                       # early batches span seconds, later hours
        acc.add_events(events.iloc[lo:lo + 37])
    r = acc.finish({})
    assert r.summary["bucket_seconds"] == 60
    assert r.timeseries["bucket_epoch"].nunique() <= 120
    assert (r.timeseries["bucket_epoch"] % 60 == 0).all()
    assert r.timeseries["count"].sum() == 600
    assert r.timeseries["errors"].sum() == r.summary["errors"]
    # The capture's own span (coverage) decides, not only the events'.
    r2 = compute(events, coverage={"first_epoch": 1_700_000_000.0, "last_epoch": 1_700_000_000.0 + 86400})
    assert r2.summary["bucket_seconds"] == 1800


def test_latency_exact_then_histogram_within_bound():
    rnd = np.random.default_rng(5)
    values = rnd.lognormal(3, 1.2, 4000)           # under EXACT_LATENCIES: exact
    events = events_frame([dict(epoch=float(i), protocol="http", client_ip=C1, server_ip=S1, code=200,
                                latency_ms=float(v)) for i, v in enumerate(values)])
    exact = compute(events)
    h = row(exact.hosts, S1, "server", "http")
    assert h.latency_p95_ms == pytest.approx(np.percentile(values, 95))
    assert exact.summary["protocols"]["http"]["latency_ms"]["exact"] is True
    acc = StatsAccumulator(exact_latencies=100)
    for lo in range(0, 4000, 700):
        acc.add_events(events.iloc[lo:lo + 700])
    approx = acc.finish({})
    h = row(approx.hosts, S1, "server", "http")
    assert h.latency_samples == 4000
    assert approx.summary["protocols"]["http"]["latency_ms"]["exact"] is False
    for q, col in ((50, "latency_p50_ms"), (95, "latency_p95_ms"), (99, "latency_p99_ms")):
        truth = np.percentile(values, q, method="inverted_cdf")
        assert abs(h[col] - truth) / truth <= 0.0116, (q, h[col], truth)


def test_latency_budget_spills_largest_hosts():
    events = events_frame([dict(epoch=float(i), protocol="http", client_ip=f"10.9.0.{i % 7}", server_ip=S1,
                                code=200, latency_ms=float(1 + i % 50)) for i in range(3000)])
    acc = StatsAccumulator(latency_budget=2000)
    for lo in range(0, 3000, 500):
        acc.add_events(events.iloc[lo:lo + 500])
    r = acc.finish({})
    assert acc._latency.raw_total <= 2000
    assert r.summary["limits"]["latency_hosts_approximate"] >= 1
    h = row(r.hosts, S1, "server", "http")
    assert h.latency_samples == 3000
    assert abs(h.latency_p50_ms - 25.0) / 25.0 <= 0.0116


def test_host_names_and_failing_uris_are_bounded():
    rows = [dict(epoch=float(i), protocol="http", client_ip=C1, server_ip=S1, code=404, host=f"h{i % 9}.example",
                 request=f"GET /scan/{i} HTTP/1.1") for i in range(300)]
    rows += [dict(epoch=300.0 + i, protocol="http", client_ip=C1, server_ip=S1, code=500, host="h0.example",
                  request="GET /hot HTTP/1.1") for i in range(50)]
    events = events_frame(rows)
    acc = StatsAccumulator(max_host_names=3, max_failing_uris=40, uri_grouping="full")  # /scan/{id} otherwise
    for lo in range(0, len(events), 25):
        acc.add_events(events.iloc[lo:lo + 25])
    r = acc.finish({})
    h = row(r.hosts, S1, "server", "http")
    assert h.hosts_seen.count(";") == 2                               # three names kept
    assert r.summary["limits"]["host_names_dropped"] > 0
    assert r.summary["limits"]["failing_uri_rows_pruned"] > 0
    top = r.top_failing_uris.iloc[0]
    assert (top["uri"], top["code"], top["count"]) == ("/hot", 500, 50)  # the heavy hitter survives, exact
    assert len(r.top_failing_uris) <= 100


def test_empty_and_connections_only():
    r = StatsAccumulator().finish({})
    assert r.hosts.columns.tolist() == list(HOST_COLUMNS) and not len(r.hosts)
    assert r.codes.columns.tolist() == list(CODE_COLUMNS) and not len(r.codes)
    assert r.summary["events"] == 0 and r.summary["error_rate"] is None
    r = compute(events_frame([]), small_connections())
    assert r.hosts["events"].sum() == 0
    assert row(r.hosts, FTP, "server", "ftp").ftp_failed_logins == 3
    assert r.hosts["error_rate"].isna().all()


# -- severity policy ------------------------------------------------------------

def test_default_policy():
    p = Policy.default()
    assert [p.is_error("http", c) for c in (200, 304, 399, 400, 404, 499, 500, 599)] == [
        False, False, False, True, True, True, True, True]
    assert [p.is_error("ftp", c) for c in (150, 226, 331, 421, 530, 550, 631)] == [
        False, False, False, True, True, True, False]
    # 1005 (a close frame without a status code) is a normal close (issue 11);
    # the inferred 1006 (no close frame at all) stays an error.
    assert [p.is_error("websocket", c) for c in (1000, 1001, 1002, 1005, 1006, 1011, 3000, 4999)] == [
        False, False, True, False, True, True, True, True]
    mask = p.error_mask(pd.Series(["http", "ftp", "websocket"]), pd.Series([404, 226, 1001]))
    assert mask.tolist() == [True, False, False]


def test_policy_from_options_changes_counts():
    events = small_events()
    base = compute(events)
    policy = Policy.from_options(expect=["http:401", "ws:1006", "http:404"], errors=["http:3xx"])
    assert policy.is_error("http", 301) and not policy.is_error("http", 401)
    r = compute(events, policy=policy)
    assert row(base.hosts, S1, "server", "http").error_count == 3
    assert row(r.hosts, S1, "server", "http").error_count == 1
    assert row(r.hosts, WS, "server", "websocket").error_count == 0
    assert r.summary["policy"]["http"]["expected"] == ["401", "404"]
    assert r.top_failing_uris["uri"].tolist() == ["/y"]                # /x answered 404: expected now


def test_policy_from_file(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('[http]\nexpected = [401, 304]\n\n[websocket]\nerrors = ["1002-2999", "4xxx", 4001]\n'
                    'expected = ["1005"]\n\n[ftp]\nerrors = ["5yz", "6yz"]\n', encoding="utf-8")
    with pytest.raises(UsageError):                                    # "4xxx" is not a selector
        Policy.from_file(path)
    path.write_text('[http]\nexpected = [401, 304]\n\n[websocket]\nerrors = ["1002-2999", 4001]\n'
                    'expected = ["1005"]\n\n[ftp]\nerrors = ["5yz", "6yz"]\n', encoding="utf-8")
    p = Policy.from_file(path)
    assert not p.is_error("http", 401) and p.is_error("http", 403) and p.is_error("http", 500)
    assert p.is_error("websocket", 1006) and not p.is_error("websocket", 1005)
    assert p.is_error("websocket", 4001) and not p.is_error("websocket", 4002)
    assert p.is_error("ftp", 631) and not p.is_error("ftp", 421)
    stacked = Policy.from_options(expect=["ftp:631"], base=p)
    assert not stacked.is_error("ftp", 631) and stacked.is_error("ftp", 530)


@pytest.mark.parametrize("text", [
    "[http\nexpected = [401]",                  # not TOML
    "[gopher]\nexpected = [1]",                 # unknown protocol
    "[http]\nignored = [401]",                  # unknown key
    "[http]\nexpected = 401",                   # not a list
    '[http]\nerrors = ["4xy"]',                 # bad selector
    '[http]\nerrors = ["500-400"]',             # empty range
    "[http]\nerrors = [true]",
])
def test_bad_policy_files(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError) as info:
        Policy.from_file(path)
    assert "\n" not in str(info.value)


def test_bad_policy_options_and_missing_file(tmp_path):
    for bad in (["http"], ["http:"], ["smtp:250"], ["http:abc"]):
        with pytest.raises(UsageError):
            Policy.from_options(expect=bad)
    with pytest.raises(UsageError):
        Policy.from_file(tmp_path / "missing.toml")
    assert parse_selector("5YZ").text == "5yz" and parse_selector(" 404 ").low == 404


def test_upgraded_websocket_and_ftp_data_connections():
    # As the flow table reports them: the WebSocket outcome nested in the HTTP
    # connection that carried the 101, FTP data channels as "ftp-data".
    conns = connections_frame([
        dict(connection="u1", protocol="http", client_ip=C1, server_ip=WS, first_epoch=10.0, last_epoch=12.0,
             state="reset", outcome={"requests": 1, "responses": 1, "unanswered": 0, "websocket": {
                 "state": "aborted", "close_code": 1006, "closed_first_by": "server", "clean": False}}),
        dict(connection="d1", protocol="ftp-data", client_ip=C1, server_ip=FTP, first_epoch=10.0, last_epoch=11.0,
             bytes_s2c=5000),
        dict(connection="f1", protocol="ftp", client_ip=C1, server_ip=FTP, first_epoch=9.0, last_epoch=20.0,
             outcome={"user": "x", "login": "success", "logins": 2, "failed_logins": ["a"] * 100,
                      "failed_login_count": 250}),
    ])
    r = compute(events_frame([]), conns)
    assert set(r.hosts["protocol"]) == {"http", "websocket", "ftp"}
    assert row(r.hosts, WS, "server", "http").connections == 1
    w = row(r.hosts, WS, "server", "websocket")
    assert (w.connections, w.connections_reset, w.ws_closes_by_cause) == (1, 1, "1006 inferred×1")
    assert r.ws_closes.to_dict("records") == [
        {"server_ip": WS, "code": 1006, "name": "", "closed_first_by": "server", "inferred": True, "count": 1}]
    f = row(r.hosts, FTP, "server", "ftp")
    assert (f.connections, f.ftp_failed_logins, f.ftp_logins) == (1, 250, 2)
    assert r.ftp_logins[r.ftp_logins["user"] == "a"]["failed"].tolist() == [100]   # names: a bounded list
