# The report files (analyzer/outputs/reports.py, summary.py) and the terminal
# summary (terminal.py): contents equal the statistics, CSV cells are
# spreadsheet-safe, writes are atomic, the event files hold the same batches.
from __future__ import annotations

import csv
import io
import json

import pandas as pd
import pytest
from rich.console import Console

import pyarrow as pa

from analyzer.cli.terminal import print_summary, progress
from analyzer.engines.sink import StatsFeed
from analyzer.outputs.csvfile import DANGEROUS_PREFIXES
from analyzer.outputs.events import EVENT_SCHEMA, EventsCsv, EventsJsonl, EventsParquet
from analyzer.meaning.severity import make_policy
from analyzer.outputs.reports import finish_stats, write_reports
from analyzer.stats.hosts import (CODE_COLUMNS, EVENT_COLUMNS, HOST_COLUMNS, StatsAccumulator, compute,
                                  connections_frame, events_frame)

EVIL = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR"]
SAFE_EVIL = EVIL[:-1]   # the fixture's wire strings; a bare CR gets its own test below


def sample_events():
    rows = []
    for i in range(60):
        code = [200, 404, 500, 302][i % 4]
        rows.append(dict(epoch=1_700_000_000.0 + i, frame=i + 1, protocol="http", client_ip=f"10.0.0.{i % 3 + 2}",
                         client_port=40000 + i, server_ip="192.0.2.1", server_port=80, code=code,
                         text="Not Found" if code == 404 else "OK", request=f"GET /p{i % 5} HTTP/1.1",
                         host=SAFE_EVIL[i % len(SAFE_EVIL)], latency_ms=1.5 + i, connection=f"C{i}",
                         **{"class": f"{code // 100}xx", "name": SAFE_EVIL[i % len(SAFE_EVIL)] if code == 404 else "OK",
                            "meaning": "-starts with a minus" if code == 500 else "fine"}, standard=True))
    for i in range(10):
        rows.append(dict(epoch=1_700_000_100.0 + i, frame=100 + i, protocol="ftp", client_ip="10.0.0.9",
                         server_ip="192.0.2.21", server_port=21, code=[530, 230][i % 2], text="=evil ftp text",
                         request="PASS ****", lines=1, data_bytes=None if i % 2 else 1234))
    rows.append(dict(epoch=1_700_000_200.0, frame=200, protocol="websocket", client_ip="10.0.0.9",
                     server_ip="192.0.2.30", code=1006, inferred=True, direction="", request="GET /ws"))
    return events_frame(rows)


def connections():
    return connections_frame([
        dict(connection="F1", protocol="ftp", client_ip="10.0.0.9", server_ip="192.0.2.21", first_epoch=1.7e9,
             last_epoch=1.7e9 + 120, outcome={"user": "=HYPERLINK(1)", "login": "failed",
                                              "failed_logins": ["=HYPERLINK(1)", "-x"]}),
    ])


def as_batch(events: pd.DataFrame) -> pa.RecordBatch:
    """The test DataFrame as the engine's record batch (NaN/NA -> null)."""
    records = [{k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in rec.items()}
               for rec in events.to_dict("records")]
    records = [{**r, "time": r["time"] or ""} for r in records]
    return pa.RecordBatch.from_pylist(records, schema=EVENT_SCHEMA)


def write_event_files(outdir, events: pd.DataFrame):
    batch = as_batch(events)
    writers = [EventsCsv(outdir / "events.csv"), EventsJsonl(outdir / "events.jsonl"),
               EventsParquet(outdir / "events.parquet")]
    for writer in writers:
        writer.write(batch)
        writer.commit()
    return [w._file.path for w in writers]


def read_csv_cells(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


@pytest.fixture()
def written(tmp_path):
    events = sample_events()
    event_paths = write_event_files(tmp_path, events)
    stats = compute(events, connections(), {"packets_read": 500})
    paths = write_reports(tmp_path, stats, {"packets_read": 500, "version": "9.9"}, lang="en")
    return tmp_path, events, stats, paths + event_paths


def test_files_written_atomically(written):
    outdir, _, _, paths = written
    names = sorted(p.name for p in paths)
    assert names == ["codes.csv", "events.csv", "events.jsonl", "events.parquet", "hosts.csv", "report.html",
                     "summary.json"]
    leftovers = [p.name for p in outdir.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert leftovers == []


def test_codes_csv_equals_event_counts(written):
    outdir, events, _, _ = written
    cells = read_csv_cells(outdir / "codes.csv")
    assert cells[0] == list(CODE_COLUMNS)
    codes = pd.read_csv(outdir / "codes.csv", keep_default_na=False)
    got = codes.groupby(["server_ip", "protocol", "code"])["count"].sum().to_dict()
    expected = events.groupby(["server_ip", "protocol", "code"]).size().to_dict()
    assert got == expected


def test_hosts_csv_equals_stats(written):
    outdir, _, stats, _ = written
    cells = read_csv_cells(outdir / "hosts.csv")
    assert cells[0] == list(HOST_COLUMNS)
    hosts = pd.read_csv(outdir / "hosts.csv", keep_default_na=False)
    assert len(hosts) == len(stats.hosts)
    for col in ("events", "error_count", "connections", "class_4xx", "ftp_failed_logins"):
        assert hosts[col].tolist() == stats.hosts[col].tolist()
    http = hosts[(hosts["protocol"] == "http") & (hosts["role"] == "server")].iloc[0]
    assert http["error_rate"] == pytest.approx(0.5)
    ftp = hosts[hosts["protocol"] == "ftp"].iloc[0]
    assert ftp["latency_p50_ms"] == ""                       # no latency for FTP: an empty cell, not "nan"


def test_csv_injection_neutralised(written):
    outdir, _, _, _ = written
    for name in ("hosts.csv", "codes.csv"):
        cells = [c for row in read_csv_cells(outdir / name)[1:] for c in row]
        assert cells
        assert not [c for c in cells if c.startswith(DANGEROUS_PREFIXES)], name
    hosts = read_csv_cells(outdir / "hosts.csv")
    names = {r[HOST_COLUMNS.index("hosts_seen")] for r in hosts[1:]}
    # The names tie (12 each) and rank by name; the tab is shown escaped, so
    # the cell starts with no formula character and needs no quote.
    assert "\\x09TAB; +1+1; -2+3; =cmd|' /C calc'!A0; @SUM(A1)" in names, names
    codes = read_csv_cells(outdir / "codes.csv")
    assert ["192.0.2.1", "http", "500", "15", "5xx", "OK", "'-starts with a minus"] in codes


def test_bare_carriage_return_stays_in_its_cell(tmp_path):
    # A wire string holding a bare CR must neither split the CSV row (readers
    # and spreadsheets treat CR as a line break) nor start a formula: it is
    # shown as \x0d (outputs/visible.py), and what follows cannot start one.
    events = events_frame([dict(epoch=1.0, protocol="http", client_ip="10.0.0.2", server_ip="192.0.2.1", code=404,
                                request="GET / HTTP/1.1", host="\rCR=1+1", name="\r=2+2", meaning="a\rb")])
    stats = compute(events)
    write_reports(tmp_path, stats, {}, html=False)
    hosts = read_csv_cells(tmp_path / "hosts.csv")
    assert len(hosts) == 1 + len(stats.hosts)
    assert hosts[1][HOST_COLUMNS.index("hosts_seen")] == "\\x0dCR=1+1"
    codes = read_csv_cells(tmp_path / "codes.csv")
    assert codes[1] == ["192.0.2.1", "http", "404", "1", "4xx", "\\x0d=2+2", "a\\x0db"]


def test_summary_json(written):
    outdir, events, stats, _ = written
    doc = json.loads((outdir / "summary.json").read_text(encoding="utf-8"))
    assert doc["events"] == len(events) == stats.summary["events"]
    assert doc["protocols"]["http"]["codes"] == {"200": 15, "302": 15, "404": 15, "500": 15}
    assert doc["protocols"]["ftp"]["failed_logins"] == 2
    assert doc["version"] == "9.9" and doc["coverage"]["packets_read"] == 500
    assert doc["hosts_with_most_errors"][0]["error_count"] == 30


def test_jsonl_and_parquet_round_trip(written):
    outdir, events, _, _ = written
    lines = (outdir / "events.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(events)
    records = [json.loads(line) for line in lines]
    assert list(records[0]) == list(EVENT_COLUMNS)
    first = records[0]
    assert (first["code"], first["frame"], first["latency_ms"], first["inferred"]) == (200, 1, 1.5, False)
    assert first["host"] == EVIL[0]                          # exactly as on the wire: JSON needs no apostrophe
    assert {r["host"] for r in records[:5]} == set(SAFE_EVIL)
    ws = records[-1]
    assert (ws["code"], ws["inferred"], ws["latency_ms"], ws["lines"]) == (1006, True, None, None)
    ftp = [r for r in records if r["protocol"] == "ftp"]
    assert [r["data_bytes"] for r in ftp[:2]] == [1234, None] and ftp[0]["lines"] == 1
    table = pd.read_parquet(outdir / "events.parquet")
    assert table.columns.tolist() == list(EVENT_COLUMNS)
    assert table["code"].tolist() == [r["code"] for r in records]
    assert table["host"].tolist() == [r["host"] for r in records]
    assert table["inferred"].tolist() == [r["inferred"] for r in records]


def test_statistics_from_batches_equal_one_shot(written):
    outdir, events, stats, _ = written
    acc = StatsAccumulator(make_policy())
    feed = StatsFeed(acc)
    batch = as_batch(events)
    for start in range(0, batch.num_rows, 7):  # many small batches, as a long run would feed them
        feed.write(batch.slice(start, 7))
    feed.commit()
    again = finish_stats(acc, connections().to_dict("records"), {"packets_read": 500})
    pd.testing.assert_frame_equal(again.codes, stats.codes, check_dtype=False)
    pd.testing.assert_frame_equal(again.hosts, stats.hosts, check_dtype=False)


def test_events_csv_neutralised(written):
    outdir, events, _, _ = written
    rows = read_csv_cells(outdir / "events.csv")
    assert rows[0] == list(EVENT_COLUMNS)
    cells = [c for row in rows[1:] for c in row]
    assert not [c for c in cells if c.startswith(DANGEROUS_PREFIXES)]
    assert rows[1][EVENT_COLUMNS.index("host")] == "'" + EVIL[0]


def test_empty_run(tmp_path):
    write_event_files(tmp_path, events_frame([]))
    stats = compute(events_frame([]))
    write_reports(tmp_path, stats, {})
    assert read_csv_cells(tmp_path / "codes.csv") == [list(CODE_COLUMNS)]
    assert read_csv_cells(tmp_path / "events.csv") == [list(EVENT_COLUMNS)]
    assert (tmp_path / "events.jsonl").read_text() == ""
    assert pd.read_parquet(tmp_path / "events.parquet").columns.tolist() == list(EVENT_COLUMNS)
    assert "<html" in (tmp_path / "report.html").read_text(encoding="utf-8")


def test_make_policy(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[http]\nexpected = [404]\n", encoding="utf-8")
    policy = make_policy(str(path), ["http:500"])
    assert not policy.is_error("http", 404) and not policy.is_error("http", 500) and policy.is_error("http", 503)


def test_terminal_summary_escapes_wire_strings():
    events = sample_events()
    events.loc[events["code"] == 404, "server_ip"] = "[bold red]x\x1b[2J"
    stats = compute(events, connections(), {"packets_read": 500, "anomalies": {"odd_thing": 3}})
    console = Console(record=True, width=140, force_terminal=False)
    print_summary(stats, {"packets_read": 500, "anomalies": {"odd_thing": 3}}, console=console)
    text = console.export_text()
    assert "What is failing" in text and "Servers" in text and "Codes" in text and "Coverage" in text
    assert "[bold red]x" in text                              # shown literally, not as markup
    assert "\x1b" not in text
    assert "packets read 500" in text and "odd_thing 3" in text
    assert "500×15" in text                                   # top error codes of the server


class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_only_on_a_tty_for_large_inputs():
    quiet = io.StringIO()
    with progress(10**9, stream=quiet) as bar:
        bar.update(5 * 10**8)
    assert quiet.getvalue() == ""
    small = FakeTTY()
    with progress(1000, stream=small) as bar:
        bar.update(500)
    assert small.getvalue() == ""
    tty = FakeTTY()
    with progress(10**9, stream=tty) as bar:
        bar.update(5 * 10**8)
        bar.advance(10**8)
    assert "reading" in tty.getvalue()


def test_live_reports_say_they_are_running_until_the_final_write(tmp_path):
    """A live capture's interim reports: summary.json running/as_of; report.html's banner and reload."""
    stats = compute(sample_events())
    as_of = 1_700_000_000.5  # 22:13:20 UTC
    write_reports(tmp_path, stats, {}, live={"running": True, "as_of": as_of, "refresh": 2.5})
    doc = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert doc["running"] is True and doc["as_of"] == "2023-11-14T22:13:20Z"
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert '<meta http-equiv="refresh" content="3">' in html  # whole seconds, rounded up
    assert "live — as of 22:13:20 UTC, still running" in html and "实时 — 截至 UTC 22:13:20" in html
    write_reports(tmp_path, stats, {}, live={"running": False, "as_of": as_of + 60})
    doc = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    assert doc["running"] is False and doc["as_of"] == "2023-11-14T22:14:20Z"
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "still running" not in html and "http-equiv=\"refresh\"" not in html
    # A file analysis says nothing about running.
    write_reports(tmp_path, stats, {})
    assert "running" not in json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
