# What `analyze` prints when it ends, and the progress bar while it reads.
#
# rich renders the tables; wire strings go through rich.markup.escape and
# control and bidi characters are shown as \xNN / \uNNNN (outputs/visible.py),
# so a Host header cannot restyle or move the terminal (no ANSI from the
# capture ever reaches the tty).  Tables are
# kept short (TOP_ROWS): the files hold everything.
#
# The progress bar goes to stderr, only when stderr is a terminal and the
# input is at least PROGRESS_MIN_BYTES (a small file is read before a bar
# would draw); otherwise `progress()` yields a no-op with the same methods.
from __future__ import annotations

import contextlib
import sys

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from analyzer.outputs.visible import visible

TOP_ROWS = 10
PROGRESS_MIN_BYTES = 32 * 1024 * 1024  # ~0.3 s of reading: below that a bar only flickers


def clean(value, limit: int = 60) -> str:
    text = visible(str(value))
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return escape(text)


def _pct(rate) -> str:
    if rate is None or rate != rate:
        return "-"
    return f"{rate * 100:.2f}%" if rate < 0.01 and rate > 0 else f"{rate * 100:.1f}%"


def _count(n) -> str:
    return f"{int(n):,}"


def print_summary(stats, coverage: dict | None = None, console: Console | None = None) -> None:
    console = console or Console()
    coverage = coverage or {}
    summary = stats.summary
    protos = summary.get("protocols", {})

    head = Table(box=box.SIMPLE_HEAD, title="Summary", title_justify="left", pad_edge=False)
    for col in ("protocol", "events", "errors", "error rate", "connections", "servers", "clients"):
        head.add_column(col, justify="left" if col == "protocol" else "right")
    for name, entry in protos.items():
        if not entry.get("events") and not entry.get("connections"):
            continue
        rate = entry.get("error_rate")
        style = "red" if rate and rate >= 0.05 else ("yellow" if rate else "green")
        head.add_row(name, _count(entry["events"]), _count(entry["errors"]),
                     Text(_pct(rate), style=style), _count(entry["connections"]),
                     _count(entry["servers"]), _count(entry["clients"]))
    console.print(head)

    hosts = stats.hosts
    if len(hosts):
        worst = hosts[hosts["error_count"] > 0].sort_values(
            ["error_count", "events"], ascending=[False, False], kind="stable").head(TOP_ROWS)
        if len(worst):
            table = Table(box=box.SIMPLE_HEAD, title="Hosts with most errors", title_justify="left", pad_edge=False)
            wide = console.width >= 100  # "last seen" only where it fits unsquashed
            cols = ("host", "role", "protocol", "events", "errors", "rate", "top error codes") + (
                ("last seen",) if wide else ())
            for col in cols:
                table.add_column(col, justify="right" if col in ("events", "errors", "rate") else "left",
                                 no_wrap=col != "top error codes", overflow="ellipsis",
                                 min_width=16 if col == "top error codes" else None,
                                 max_width=39 if col == "host" else None)
            codes = stats.codes
            for row in worst.itertuples(index=False):
                top = ""
                if row.role == "server" and len(codes):
                    mine = codes[(codes["server_ip"] == row.host) & (codes["protocol"] == row.protocol)]
                    mask = stats.policy.error_mask(mine["protocol"], mine["code"])
                    mine = mine[mask].sort_values("count", ascending=False, kind="stable").head(3)
                    top = " ".join(f"{c}×{n}" for c, n in zip(mine["code"], mine["count"]))
                cells = [clean(row.host), row.role, row.protocol, _count(row.events),
                         Text(_count(row.error_count), style="red"), _pct(row.error_rate), top]
                if wide:
                    cells.append(clean(row.last_seen[5:19].replace("T", " ")))
                table.add_row(*cells)
            console.print(table)

    codes = stats.codes
    if len(codes):
        total = codes.groupby(["protocol", "code"], as_index=False).agg(
            count=("count", "sum"), name=("name", "first"))
        total = total.sort_values(["count", "protocol", "code"], ascending=[False, True, True], kind="stable")
        table = Table(box=box.SIMPLE_HEAD, title="Codes", title_justify="left", pad_edge=False)
        for col in ("protocol", "code", "name", "count"):
            table.add_column(col, justify="right" if col in ("code", "count") else "left")
        for row in total.head(TOP_ROWS * 2).itertuples(index=False):
            error = stats.policy.is_error(row.protocol, row.code)
            table.add_row(row.protocol, Text(str(row.code), style="red" if error else ""), clean(row.name, 40),
                          _count(row.count))
        if len(total) > TOP_ROWS * 2:
            table.caption = f"{len(total) - TOP_ROWS * 2} more in codes.csv"
        console.print(table)

    cov = {**coverage, **summary.get("coverage", {})}
    skipped = cov.get("packets_skipped") or {}
    parts = [f"packets read {_count(cov.get('packets_read', 0))}"]
    if skipped:
        parts.append("skipped " + ", ".join(f"{clean(k, 30)} {_count(v)}" for k, v in sorted(skipped.items())))
    parts.append(f"connections {_count(cov.get('connections', 0))}")
    gaps = cov.get("connections_with_gaps", 0)
    parts.append(f"with gaps {_count(gaps)}" + (f" ({_count(cov.get('missed_bytes', 0))} bytes missed)" if gaps else ""))
    if cov.get("tls_connections"):
        parts.append(f"TLS connections {_count(cov['tls_connections'])} (encrypted: status unknown; "
                     "--engine tshark --tls-keylog FILE decodes them)")
    without = cov.get("events_without_request") or {}
    if any(without.values()):
        parts.append("events without their request " + ", ".join(
            f"{p} {_count(n)}" for p, n in without.items() if n))
    anomalies = cov.get("anomalies") or {}
    if anomalies:
        top = sorted(anomalies.items(), key=lambda kv: -kv[1])[:5]
        parts.append("anomalies " + ", ".join(f"{clean(k, 40)} {_count(v)}" for k, v in top))
    limits = cov.get("limits_hit") or {}
    if limits:
        parts.append("limits hit " + ", ".join(f"{clean(k, 40)} {_count(v)}" for k, v in limits.items()))
    console.print("[bold]Coverage[/bold]: " + "; ".join(parts), highlight=False)


class _NoProgress:
    def update(self, bytes_read: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass


class _Progress:
    def __init__(self, bar, task) -> None:
        self._bar = bar
        self._task = task

    def update(self, bytes_read: int) -> None:
        """`bytes_read`: bytes read so far (absolute, not an increment)."""
        self._bar.update(self._task, completed=bytes_read)

    def advance(self, nbytes: int) -> None:
        self._bar.advance(self._task, nbytes)


@contextlib.contextmanager
def progress(total_bytes: int | None, *, stream=None, min_bytes: int = PROGRESS_MIN_BYTES):
    """A byte progress bar on stderr when it is a TTY and the input is large."""
    stream = stream if stream is not None else sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    if not tty or not total_bytes or total_bytes < min_bytes:
        yield _NoProgress()
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    bar = Progress(TextColumn("reading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn(), console=Console(file=stream), transient=True)
    with bar:
        yield _Progress(bar, bar.add_task("read", total=total_bytes))
