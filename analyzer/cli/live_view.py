# The terminal while `analyzer live` runs.
#
# On a terminal: a rich `Live` display redrawn every tick (1 s) from the
# RecentActivity snapshot (stats/recent.py): a status line (packets/s,
# kernel drops), events and errors as rates over the last tick and totals,
# HTTP latency p50/p95 (last tick and whole run), the failing servers with
# their top error codes and failing requests, and the latest errors as a
# feed.  When stdout is not a terminal (a pipe, a CI log): one plain status
# line on stderr per report interval, nothing redrawn.
#
# Every wire string (requests, reason names) goes through terminal.clean,
# which strips control characters, so a request cannot move the cursor.
from __future__ import annotations

import time

# Rows in the failing-servers table and codes / requests shown per server.
FAILING_ROWS = 8
TOP_CODES = 4
TOP_REQUESTS = 2
FEED_SHOWN = 8


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _ms(value) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"
    return f"{value / 1000:.2f} s"


def _top(table: dict, n: int) -> list:
    return sorted(table.items(), key=lambda kv: (-kv[1], str(kv[0])))[:n]


def render(snap, iface: str, packets: int, packet_rate: float, dropped: int, elapsed: float, tick: float):
    """The live display for one ActivitySnapshot; `tick` = seconds the tick counters cover."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    from analyzer.cli.terminal import clean

    tick = max(tick, 1e-9)
    status = Text()
    status.append(f"live on {clean(iface, 20)}", style="bold")
    status.append(f" · {_clock(elapsed)} · {packets:,} packets ({packet_rate:,.0f}/s) · ")
    status.append(f"{dropped:,} dropped by kernel", style="red bold" if dropped else "")
    rate = snap.errors / snap.events if snap.events else 0.0
    totals = Text()
    totals.append(f"events {snap.events:,} ({snap.tick_events / tick:,.1f}/s)")
    totals.append(" · ")
    totals.append(f"errors {snap.errors:,} ({snap.tick_errors / tick:,.1f}/s, {rate:.1%} of all)",
                  style="red" if snap.errors else "green")
    protos = Text(" · ".join(f"{p} {e:,} events, {x:,} errors" for p, (e, x) in snap.protocols.items()) or
                  "no events yet", style="dim")
    tick_lat = snap.latency_tick or (None, None)
    run_lat = snap.latency_run or (None, None)
    latency = Text(f"HTTP latency p50 {_ms(tick_lat[0])} · p95 {_ms(tick_lat[1])} (last {tick:.0f} s)   "
                   f"run p50 {_ms(run_lat[0])} · p95 {_ms(run_lat[1])}")

    failing = Table(title="failing servers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                    expand=False)
    for name, justify in (("server", "left"), ("protocol", "left"), ("events", "right"), ("errors", "right"),
                          ("error rate", "right"), ("top codes", "left"), ("top failing requests", "left")):
        # On a narrow terminal the two "top" columns give way first; the numbers keep their width.
        fixed = name in ("protocol", "events", "errors", "error rate")
        widest = max((len(s.server) for s in snap.failing[:FAILING_ROWS]), default=6)
        failing.add_column(name, justify=justify, no_wrap=True,
                           min_width=len(name) if fixed else (min(widest, 45) if name == "server" else None),
                           max_width=60 if name.startswith("top f") else None)
    for s in snap.failing[:FAILING_ROWS]:
        codes = "  ".join(f"{c}×{n:,}" for c, n in _top(s.codes, TOP_CODES))
        requests = "  ".join(f"{clean(str(r), 40)} ×{n:,}" for r, n in _top(s.requests, TOP_REQUESTS))
        share = s.errors / s.events if s.events else 0.0
        failing.add_row(clean(s.server, 45), s.protocol, f"{s.events:,}", Text(f"{s.errors:,}", style="red"),
                        Text(f"{share:.1%}", style="red" if share >= 0.05 else "yellow"), codes, requests)
    if not snap.failing:
        failing.add_row("no errors so far", "", "", "", "", "", "")

    feed = Table(title="recent errors", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in ("time (UTC)", "protocol", "server", "code", "name", "request"):
        feed.add_column(name, no_wrap=True, max_width=50 if name == "request" else None,
                        min_width=12 if name == "time (UTC)" else (len(name) if name in ("protocol", "code") else None))
    for row in reversed(snap.feed[-FEED_SHOWN:]):
        stamp = time.strftime("%H:%M:%S", time.gmtime(row["epoch"])) + f".{int(row['epoch'] % 1 * 1000):03d}"
        feed.add_row(stamp, row["protocol"], clean(row["server"], 45), Text(str(row["code"]), style="red"),
                     clean(row["name"], 30), clean(row["request"], 50))
    return Group(status, totals, protos, latency, failing, feed)


class LiveView:
    """A rich Live display on a terminal; plain status lines on stderr otherwise."""

    def __init__(self, console, err, iface: str) -> None:
        from rich.console import Console

        self.console = console or Console()
        self.err = err
        self.iface = iface
        self.live = None
        self._last_tick = 0.0
        self._last_report = (0, 0.0)
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(console=self.console, auto_refresh=False, transient=False)
            self.live.start()

    def tick(self, activity, packets: int, packet_rate: float, received: int, dropped: int,
             elapsed: float) -> None:
        if activity is None:
            return
        snap = activity.snapshot()
        covered, self._last_tick = elapsed - self._last_tick, elapsed
        if self.live is not None:
            self.live.update(render(snap, self.iface, packets, packet_rate, dropped, elapsed, covered),
                             refresh=True)

    def report(self, stats, packets: int, packet_rate: float, dropped: int, elapsed: float) -> None:
        """Every --interval: one status line when there is no terminal to redraw."""
        if self.live is not None:
            return
        last_packets, last_elapsed = self._last_report
        self._last_report = (packets, elapsed)
        rate = (packets - last_packets) / max(elapsed - last_elapsed, 1e-9)
        summary = stats.summary
        events, errors = summary.get("events", 0), summary.get("errors", 0)
        protos = ", ".join(f"{p} {e['events']:,}" for p, e in summary.get("protocols", {}).items() if e.get("events"))
        rate_text = f" ({errors / events:.1%})" if events else ""
        print(f"analyzer: {_clock(elapsed)} {packets:,} packets ({rate:,.0f}/s, {dropped:,} dropped by kernel), "
              f"{events:,} events{': ' + protos if protos else ''}, {errors:,} errors{rate_text}",
              file=self.err, flush=True)

    def stop(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None
