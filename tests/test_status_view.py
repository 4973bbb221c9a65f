# The status view (issue 14): which server fails, with what, since when, for
# which paths -- in the statistics (stats/hosts.py, stats/paths.py) and at the
# top of report.html, checked in headless Chromium at 1400 and 390 px in both
# languages on a capture made by samples/make_http.py.
#
# Screenshots go to tests/artifacts/status-<lang>-<width>.png (gitignored);
# they are there to be looked at.
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.meaning.severity import make_policy
from analyzer.stats.hosts import FAILING_COLUMNS, StatsAccumulator, compute, connections_frame, events_frame
from analyzer.stats.paths import failing_keys, group_paths, split_requests
from tests.test_html_report import ARTIFACTS, chromium, console_lines, needs_chromium

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "captures"
NGINX = SAMPLES / "http_nginx_codes.pcap"


# -- path grouping -------------------------------------------------------------

@pytest.mark.parametrize("uri, path", [
    ("/nope/a?6555", "/nope/a"),
    ("/users/123/orders", "/users/{id}/orders"),
    ("/o/3f2b1c4d-1111-2222-3333-444455556666/x", "/o/{uuid}/x"),
    ("/blob/9fceb02d0ae598e9", "/blob/{hex}"),
    ("/deadbeefcafe", "/deadbeefcafe"),          # hex letters only: a word, not an ID
    ("/v2/api", "/v2/api"),
    ("/img/logo2x.png", "/img/logo2x.png"),
    ("http://example.test:8080/a/7?x=1", "/a/{id}"),  # absolute-form target (proxies)
    ("/page#top", "/page"),
    ("?q=1", "/"),
    ("", "/"),
    ("/a/1/b/22/c", "/a/{id}/b/{id}/c"),
])
def test_group_paths(uri, path):
    assert group_paths([uri]).tolist() == [path]


def test_split_requests_keeps_the_raw_uri():
    method, uri = split_requests(["GET /a b?c HTTP/1.1", "POST http://x/y HTTP/1.0", "garbage", "GET /x\n HTTP/1.1"])
    assert method.tolist() == ["GET", "POST", "", "GET"]
    assert uri.tolist() == ["/a b?c", "http://x/y", "garbage", "/x\n"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(max_size=60), min_size=1, max_size=20))
def test_grouping_never_raises_and_is_stable(uris):
    once = group_paths(uris).tolist()
    assert len(once) == len(uris)
    assert all(isinstance(p, str) and p and "?" not in p and "#" not in p for p in once)
    assert group_paths(once).tolist() == once      # a grouped path is its own group


def test_full_grouping_keeps_whole_uris_cut_at_the_limit():
    long = "/x?" + "a" * 5000
    assert failing_keys(["GET /a?1 HTTP/1.1", f"GET {long} HTTP/1.1"], "full").tolist() == ["/a?1", long[:2048]]


# -- what is failing: statistics ---------------------------------------------------

def api_capture(n: int = 6555):
    """An API capture: a flood of 404s on query variants, a few 500s, the rest fine."""
    rows = []
    t0 = 1_700_000_000.0
    for i in range(n):
        rows.append(dict(epoch=t0 + 60 + i * 2.0, frame=100 + i, protocol="http", client_ip="10.0.0.2",
                         server_ip="192.0.2.1", server_port=8080, code=404, request=f"GET /nope/a?{i} HTTP/1.1",
                         host="api.example", capture="api.pcap"))
    for i in range(30):
        rows.append(dict(epoch=t0 + 7 + i * 400.0, frame=50_000 + i, protocol="http", client_ip="10.0.0.3",
                         server_ip="192.0.2.1", server_port=8080, code=500, request=f"POST /users/{i}/orders HTTP/1.1",
                         host="api.example", capture="api.pcap"))
    for i in range(200):
        rows.append(dict(epoch=t0 + i * 70.0, frame=60_000 + i, protocol="http", client_ip="10.0.0.3",
                         server_ip="192.0.2.1", server_port=8080, code=200, request="GET /ok HTTP/1.1",
                         host="api.example", capture="api.pcap"))
    rows.append(dict(epoch=t0 + 1.5, frame=7, protocol="http", client_ip="10.0.0.4", server_ip="192.0.2.9",
                     server_port=80, code=200, request="GET / HTTP/1.1", capture="api.pcap"))
    return rows


def test_query_variants_are_one_failing_path():
    r = compute(events_frame(api_capture()))
    top = r.top_failing_uris.iloc[0]
    assert (top["uri"], top["code"], top["count"]) == ("/nope/a", 404, 6555)
    assert r.top_failing_uris.iloc[1][["uri", "code", "count"]].tolist() == ["/users/{id}/orders", 500, 30]
    full = StatsAccumulator(uri_grouping="full")
    full.add_events(events_frame(api_capture(50)))
    assert full.finish({}).top_failing_uris["count"].max() == 30 // 30  # every variant its own row


def test_failing_endpoints_first_error_is_exact_not_a_bucket():
    rows = api_capture()
    acc = StatsAccumulator()
    frame = events_frame(rows)
    for lo in range(0, len(frame), 1000):                                # batching must not matter
        acc.add_events(frame.iloc[lo:lo + 1000])
    r = acc.finish({})
    assert r.failing.columns.tolist() == list(FAILING_COLUMNS)
    assert len(r.failing) == 1                                           # 192.0.2.9:80 never failed
    f = r.failing.iloc[0]
    assert (f["server_ip"], f["server_port"], f["protocol"]) == ("192.0.2.1", 8080, "http")
    assert (f["events"], f["errors"]) == (6555 + 30 + 200, 6555 + 30)
    assert f["top_codes"] == [(404, 6555), (500, 30)]
    assert f["top_paths"][:2] == [("/nope/a", 6555), ("/users/{id}/orders", 30)]
    assert f["host_names"] == "api.example"
    # The first error is the 500 at t0+7 s, frame 50000 -- not the start of its
    # chart bucket (the capture spans hours: buckets are minutes wide).
    assert r.summary["bucket_seconds"] >= 60
    assert (f["first_error_epoch"], f["first_error_frame"], f["first_error_capture"]) == (1_700_000_007.0, 50_000, "api.pcap")
    assert f["first_error"] == "2023-11-14T22:13:27.000000Z"
    last = max(r_["epoch"] for r_ in rows if r_["code"] >= 400)
    assert f["last_error_epoch"] == last and f["last_error_frame"] == 100 + 6554


def test_failing_endpoints_sorted_by_errors_and_split_by_port():
    rows = [dict(epoch=1.0 + i, frame=i + 1, protocol="http", server_ip="10.9.0.1", server_port=port, code=code,
                 request="GET /x HTTP/1.1")
            for i, (port, code) in enumerate([(80, 500), (8080, 503), (8080, 503), (80, 200), (8080, 404)])]
    r = compute(events_frame(rows))
    assert r.failing[["server_port", "errors", "events"]].values.tolist() == [[8080, 3, 3], [80, 1, 2]]
    assert r.failing.iloc[0]["top_codes"] == [(503, 2), (404, 1)]


def test_policy_decides_what_fails():
    rows = [dict(epoch=1.0, frame=1, protocol="http", server_ip="10.9.0.1", server_port=80, code=401,
                 request="GET /login HTTP/1.1")]
    assert len(compute(events_frame(rows)).failing) == 1
    assert len(compute(events_frame(rows), policy=make_policy(None, ["http:401"])).failing) == 0


def test_host_rows_carry_top_codes():
    r = compute(events_frame(api_capture(20)))
    row = r.hosts[(r.hosts["host"] == "192.0.2.1") & (r.hosts["role"] == "server")].iloc[0]
    assert row["top_codes"] == "200×200; 500×30; 404×20"


# -- item 6: WebSocket units -------------------------------------------------------

def test_websocket_rate_units_are_named():
    ws = [dict(epoch=1.0, protocol="websocket", server_ip="10.0.0.8", code=1011, direction="server->client"),
          dict(epoch=1.1, protocol="websocket", server_ip="10.0.0.8", code=1011, direction="client->server"),
          dict(epoch=2.0, protocol="websocket", server_ip="10.0.0.8", code=1000, direction="client->server"),
          dict(epoch=2.1, protocol="websocket", server_ip="10.0.0.8", code=1000, direction="server->client")]
    conns = [dict(connection="a", protocol="websocket", server_ip="10.0.0.8", outcome={
                 "state": "closed", "close_code": 1011, "closed_first_by": "server"}),
             dict(connection="b", protocol="websocket", server_ip="10.0.0.8", outcome={
                 "state": "closed", "close_code": 1000, "closed_first_by": "client"})]
    r = compute(events_frame(ws), connections_frame(conns))
    entry = r.summary["protocols"]["websocket"]
    assert (entry["events"], entry["errors"], entry["unit"]) == (4, 2, "close frames")
    assert (entry["connections_ended"], entry["connections_failed"], entry["connection_error_rate"]) == (2, 1, 0.5)
    assert r.failing.iloc[0]["unit"] == "close frames"


# -- report.html in Chromium ----------------------------------------------------

def truth_of_nginx_sample():
    """What the clients of http_nginx_codes saw (expected.json) plus when (the golden events)."""
    truth = json.loads(NGINX.with_suffix(".expected.json").read_text())
    failing = [(c["server_ip"], c["server_port"], ex["uri"], r["code"]) for c in truth["connections"]
               for ex in c["exchanges"] for r in ex["responses"] if r["code"] >= 400]
    with open(NGINX.with_suffix(".events.csv"), newline="", encoding="utf-8") as handle:
        golden = [row for row in csv.DictReader(handle) if int(row["code"]) >= 400]
    return failing, golden


@pytest.fixture(scope="module")
def nginx_report(tmp_path_factory):
    from analyzer.engines.native import run
    from analyzer.outputs.reports import build_and_write

    pages = {}
    for lang in ("en", "zh"):
        out = tmp_path_factory.mktemp(f"status-{lang}")
        result = run([str(NGINX)], out, lang=lang)
        build_and_write(result, lang=lang)
        pages[lang] = out / "report.html"
    return pages


def failing_rows(dom: str) -> list[dict]:
    table = dom.split('id="failing-table"')[1].split("</table>")[0]
    rows = []
    for tr in re.findall(r'<tr class="failing-row"(.*?)</tr>', table, re.S):
        text = re.sub(r"<[^>]+>", " ", tr)
        rows.append({"server": re.search(r'data-server="([^"]+)"', tr).group(1),
                     "codes": re.findall(r'data-code="(\d+)"', tr),
                     "first": re.search(r'class="first-error">([^<]+)<small>(.*?)</small>', tr, re.S),
                     "paths": re.findall(r'class="failing-path" title="([^"]+)">[^<]*<span class="n">×(\d+)', tr),
                     "text": " ".join(text.split())})
    return rows


@needs_chromium
@pytest.mark.parametrize("width", [1400, 390])
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_what_is_failing_in_chromium(nginx_report, tmp_path, lang, width):
    page = nginx_report[lang]
    failing, golden = truth_of_nginx_sample()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"status-{lang}-{width}.png"
    shot.unlink(missing_ok=True)
    proc = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", f"--window-size={width},1800")
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    proc = chromium(tmp_path, page.as_uri(), "--dump-dom", f"--window-size={width},1800")
    assert console_lines(proc) == []
    dom = proc.stdout
    assert 'data-ready="true"' in dom
    # The block comes before the code distribution, and names the worst endpoint first.
    assert dom.index('id="failing"') < dom.index('id="codes"')
    rows = failing_rows(dom)
    v4 = [f for f in failing if f[0] == "127.0.0.1"]
    assert rows[0]["server"] == f"127.0.0.1:{v4[0][1]}"
    assert rows[1]["server"] == f"[::1]:{v4[0][1]}"
    assert f"{len(v4)} / " in rows[0]["text"]                          # 13 errors of the responses
    # Every code is seen once: the three shown are the lowest, as ranked.
    assert rows[0]["codes"] == [str(c) for c in sorted(c for *_, c in v4)[:3]]
    # Exact first error: the golden events' first >= 400 on that endpoint, to the ms, with its frame.
    first = min((r for r in golden if r["server_ip"] == "127.0.0.1"), key=lambda r: float(r["epoch"]))
    assert rows[0]["first"].group(1).strip() == first["time"][:23].replace("T", " ")
    assert re.sub(r"\s+", " ", rows[0]["first"].group(2)).strip().endswith(f"{first['frame']} · {NGINX.name}")
    # Grouped path: /app/status/401, /403, ..., /599?reason=... are one row.
    status = [u for *_, u, c in [(f[0], f[1], f[2], f[3]) for f in v4] if u.startswith("/app/status/")]
    assert rows[0]["paths"][0] == ("/app/status/{id}", str(len(status)))
    # No horizontal scroll for the tables that matter at desktop width.
    wraps = re.findall(r'<div class="tablewrap([^"]*)">\s*<table[^>]*id="(failing-table|host-table)"', dom)
    assert len(wraps) == 2
    if width == 1400:
        assert all("scrolls" not in cls for cls, _ in wraps), wraps


@needs_chromium
def test_filter_box_under_the_csp(nginx_report, tmp_path):
    page = nginx_report["en"]
    proc = chromium(tmp_path, page.as_uri() + "#lang=en&q=%5B%3A%3A1%5D", "--dump-dom")
    assert console_lines(proc) == []                                     # no CSP violation
    dom = proc.stdout
    host_rows = re.findall(r'<tr( class="[^"]*")?>\s*<td data-label-en="Host"[^>]*>([^<]+)</td>', dom)
    shown = [h for cls, h in host_rows if "filtered" not in (cls or "")]
    hidden = [h for cls, h in host_rows if "filtered" in (cls or "")]
    assert shown == ["::1"] * len(shown) and shown and hidden
    assert re.search(r'id="filter-n">\d+ / \d+<', dom)
    assert 'class="failing-row filtered"' in dom                          # 127.0.0.1 rows hidden there too


def test_server_charts_show_the_exact_first_error():
    from analyzer.outputs.html import render_html

    r = compute(events_frame(api_capture()))
    page = render_html(r, {}, "en")
    chart = page.split('<h4 class="mono">192.0.2.1<small>')[1].split("</small>")[0]
    assert chart.endswith(" 2023-11-14 22:13:27.000")                  # t0+7 s, not the bucket's start


@needs_chromium
def test_host_table_fits_1400_px_with_long_names(tmp_path):
    from analyzer.outputs.html import render_html
    from tests.test_html_report import dataset

    stats, coverage = dataset(n=1500)
    page = tmp_path / "report.html"
    page.write_text(render_html(stats, coverage, "zh"), encoding="utf-8")   # the wider labels
    proc = chromium(tmp_path, page.as_uri(), "--dump-dom", "--window-size=1400,1800")
    wraps = re.findall(r'<div class="tablewrap([^"]*)">\s*<table[^>]*id="(failing-table|host-table)"', proc.stdout)
    assert [name for _, name in wraps] == ["failing-table", "host-table"]
    assert all("scrolls" not in cls for cls, _ in wraps), wraps
    # The detector itself works: at 700 px (no phone layout yet) the host table must scroll.
    proc = chromium(tmp_path, page.as_uri(), "--dump-dom", "--window-size=700,1800")
    narrow = dict((name, cls) for cls, name in re.findall(
        r'<div class="tablewrap([^"]*)">\s*<table[^>]*id="(failing-table|host-table)"', proc.stdout))
    assert "scrolls" in narrow["host-table"]
