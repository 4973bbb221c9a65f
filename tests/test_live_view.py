"""What the live terminal view shows (stats/recent.py, cli/live_view.py), from events the test builds.

The view in a real terminal, over real traffic, is checked in tmux by
tests/test_live_monitoring.py; here the numbers are checked exactly.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from analyzer.engines.sink import EventSink
from analyzer.events import Event
from analyzer.meaning.severity import Policy


def feed(activity, rows):
    """rows: (server_port, protocol, code, request, latency_ms)."""
    sink = EventSink("en", [activity])
    for frame, (port, protocol, code, request, latency) in enumerate(rows, start=1):
        ev = Event(protocol=protocol, code=code, text="", request=request, epoch=1_700_000_000.0 + frame,
                   frame=frame, sender=1, latency_ms=latency)
        sink.add(ev, ("10.9.9.9", 40000 + frame, "10.0.0.1", port, f"c{frame}", "t"))
    sink.commit()


def test_snapshot_counts_totals_ticks_failing_servers_and_the_feed():
    from analyzer.stats.recent import FEED_ROWS, RecentActivity

    activity = RecentActivity(Policy.default())
    feed(activity, [(80, "http", 200, "GET /", 1.0)] * 5 + [(80, "http", 500, "GET /boom", 2.0)] * 3
         + [(81, "http", 404, "GET /gone", 3.0)] + [(21, "ftp", 530, "PASS ****", None)])
    snap = activity.snapshot()
    assert (snap.events, snap.errors, snap.tick_events, snap.tick_errors) == (10, 5, 10, 5)
    assert snap.protocols == {"ftp": (1, 1), "http": (9, 4)}
    first = snap.failing[0]
    assert (first.server, first.protocol, first.events, first.errors) == ("10.0.0.1:80", "http", 8, 3)
    assert first.codes == {500: 3} and first.requests == {"GET /boom": 3}
    assert [(s.server, s.errors) for s in snap.failing[1:]] == [("10.0.0.1:21", 1), ("10.0.0.1:81", 1)]
    assert [r["code"] for r in snap.feed] == [500, 500, 500, 404, 530]
    from analyzer.meaning import catalog

    assert snap.feed[-1]["name"] == catalog.annotate("ftp", 530, "", "en")["name"] != ""
    assert snap.feed[-1]["server"] == "10.0.0.1:21" and snap.feed[-1]["request"] == "PASS ****"
    # The tick counters start again; the totals do not.
    feed(activity, [(80, "http", 503, "GET /x", 1.0)])
    snap = activity.snapshot()
    assert (snap.events, snap.errors, snap.tick_events, snap.tick_errors) == (11, 6, 1, 1)
    feed(activity, [(80, "http", 500, f"GET /{i}", 1.0) for i in range(50)])
    assert len(activity.snapshot().feed) == FEED_ROWS


def test_latency_percentiles_of_the_tick_are_exact_and_of_the_run_within_two_percent():
    from analyzer.stats.recent import RecentActivity

    activity = RecentActivity(Policy.default())
    values = [float(v) for v in np.linspace(0.5, 500.0, 400)]
    feed(activity, [(80, "http", 200, "GET /", v) for v in values])
    snap = activity.snapshot()
    assert snap.latency_tick == pytest.approx(tuple(np.percentile(values, [50, 95])))
    for got, want in zip(snap.latency_run, np.percentile(values, [50, 95])):
        assert got == pytest.approx(want, rel=0.02)
    assert activity.snapshot().latency_tick is None  # nothing in the new tick


def test_servers_tracked_are_bounded(monkeypatch):
    from analyzer.stats import recent

    monkeypatch.setattr(recent, "MAX_SERVERS", 10)
    activity = recent.RecentActivity(Policy.default())
    feed(activity, [(1000 + i, "http", 500, "GET /", 1.0) for i in range(300)])
    assert len(activity.servers) == 11
    snap = activity.snapshot(failing=20)
    other = next(s for s in snap.failing if s.server == "other")
    assert other.errors == 290 and sum(s.errors for s in snap.failing) == 300


def _render(width: int, snap):
    from rich.console import Console

    from analyzer.cli.live_view import render

    console = Console(width=width, record=True, color_system=None)
    console.print(render(snap, "eth0", 1234, 56.0, 3, 65.0, 1.0))
    return console.export_text()


def test_view_shows_rates_latency_failing_servers_and_recent_errors():
    from analyzer.stats.recent import RecentActivity

    activity = RecentActivity(Policy.default())
    feed(activity, [(80, "http", 200, "GET /", 1.0)] * 6 + [(80, "http", 503, "GET /api\x1b[2J", 40.0)] * 2)
    text = _render(160, activity.snapshot())
    assert "live on eth0 · 00:01:05 · 1,234 packets (56/s) · 3 dropped by kernel" in text
    assert "events 8 (8.0/s) · errors 2 (2.0/s, 25.0% of all)" in text
    assert "HTTP latency p50 1.0 ms · p95 40.0 ms (last 1 s)" in text
    row = next(line for line in text.splitlines() if line.strip().startswith("10.0.0.1:80"))
    assert row.split()[:5] == ["10.0.0.1:80", "http", "8", "2", "25.0%"]
    assert "503×2" in row
    assert "\x1b" not in text  # a request cannot move the cursor: control characters are replaced
    feed_lines = text[text.index("recent errors"):].splitlines()
    assert sum("10.0.0.1:80" in line and "503" in line for line in feed_lines) == 2
    # A narrow terminal keeps the numbers; the long columns give way.
    narrow = _render(80, activity.snapshot())
    row = next(line for line in narrow.splitlines() if line.strip().startswith("10.0.0.1:80"))
    assert row.split()[1:5] == ["http", "8", "2", "25.0%"]


def test_view_without_errors_says_so():
    from analyzer.stats.recent import RecentActivity

    text = _render(120, RecentActivity(Policy.default()).snapshot())
    assert "no events yet" in text and "no errors so far" in text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_metrics_address_parser_takes_any_text_and_raises_only_value_error(text):
    from analyzer.outputs.metrics import parse_address

    try:
        host, port = parse_address(text)
    except ValueError:
        return
    assert 0 < port < 65536 and host
