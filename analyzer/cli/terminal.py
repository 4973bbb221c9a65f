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
# Standard input has no size: it gets a counter (bytes, rate, elapsed).
# When reading ends the bar says what runs next (statistics, reports), so
# the seconds after 100 % are not blank.
from __future__ import annotations

import contextlib
import sys
import time

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


# Labels: key -> (English, 中文); --lang picks one.  Wire strings are never translated.
LABELS = {
    "summary": ("Summary", "概要"), "protocol": ("protocol", "协议"), "events": ("events", "事件"),
    "errors": ("errors", "错误"), "error rate": ("error rate", "错误率"), "connections": ("connections", "连接"),
    "servers": ("servers", "服务器"), "clients": ("clients", "客户端"),
    "failing": ("What is failing", "哪里在出错"), "no failing": ("No errors under the active policy.", "按当前策略没有错误。"),
    "codes": ("codes", "错误码"), "first": ("first", "首个"), "last": ("last", "最后"), "paths": ("paths", "路径"),
    "frame": ("frame", "帧"), "more endpoints": ("{n} more failing endpoints in summary.json",
                                                 "另有 {n} 个出错端点，见 summary.json"),
    "server rows": ("Servers", "服务器"), "client rows": ("Clients", "客户端"),
    "host": ("host", "主机"), "role": ("role", "角色"), "rate": ("rate", "错误率"),
    "top codes": ("top codes", "主要代码"), "last seen": ("last seen", "最后出现"),
    "server": ("server", "服务器"), "client": ("client", "客户端"),
    "code table": ("Codes", "代码"), "code": ("code", "代码"), "name": ("name", "名称"), "count": ("count", "次数"),
    "more codes": ("{n} more in codes.csv", "另有 {n} 个，见 codes.csv"),
    "more hosts": ("{n} more rows in hosts.csv", "另有 {n} 行，见 hosts.csv"),
    "coverage": ("Coverage", "覆盖率"), "packets read": ("packets read", "已读数据包"), "skipped": ("skipped", "跳过"),
    "with gaps": ("with gaps", "有缺口"), "bytes missed": ("bytes missed", "字节缺失"),
    "tls": ("TLS connections {n} (encrypted: status unknown; --engine tshark --tls-keylog FILE decodes them)",
            "TLS 连接 {n}（已加密：状态未知；--engine tshark --tls-keylog FILE 可解密）"),
    "without request": ("events without their request", "未见请求的事件"),
    "anomalies": ("anomalies", "异常"), "limits hit": ("limits hit", "触及的限制"),
    "unit responses": ("responses", "个响应"), "unit replies": ("replies", "个应答"),
    "unit close frames": ("close frames", "个关闭帧"), "unit events": ("events", "个事件"),
    "counted": ("events are ", "事件："),
    "counted as": ("{protocol} {unit}", "{protocol} 为{unit}"),
    "list separator": (", ", "，"),
    "noun responses": ("responses", "响应"), "noun replies": ("replies", "应答"),
    "noun close frames": ("close frames (both directions)", "关闭帧（双向）"), "noun events": ("events", "事件"),
    "outputs written": ("outputs written to {path}/", "输出已写入 {path}/"),
    "ws connections": ("WebSocket connections ended abnormally: {failed} of {ended} (the rate above counts close "
                       "frames of both directions)",
                       "WebSocket 异常结束的连接：{failed} / {ended}（上面的错误率按双向关闭帧计）"),
}


def label(lang: str, key: str, **values) -> str:
    """One label in the run's language (the CLI's other lines use it too)."""
    return _label(lang)(key, **values)


def _label(lang: str):
    index = 1 if lang == "zh" else 0
    return lambda key, **kw: LABELS[key][index].format(**kw) if kw else LABELS[key][index]


def _exact(iso_text: str) -> str:
    return iso_text[:23].replace("T", " ") if iso_text else "-"


def _endpoint(ip: str, port) -> str:
    return f"[{ip}]:{int(port)}" if ":" in str(ip) else f"{ip}:{int(port)}"


def print_summary(stats, coverage: dict | None = None, console: Console | None = None, *, lang: str = "en",
                  clients: bool = False) -> None:
    """The end-of-run summary: totals, what is failing, server rows (client rows with `clients`), codes."""
    console = console or Console()
    coverage = coverage or {}
    t = _label(lang)
    summary = stats.summary
    protos = summary.get("protocols", {})

    head = Table(box=box.SIMPLE_HEAD, title=t("summary"), title_justify="left", pad_edge=False)
    for col in ("protocol", "events", "errors", "error rate", "connections", "servers", "clients"):
        head.add_column(t(col), justify="left" if col == "protocol" else "right")
    ws_note = None
    units = []
    for name, entry in protos.items():
        if not entry.get("events") and not entry.get("connections"):
            continue
        rate = entry.get("error_rate")
        style = "red" if rate and rate >= 0.05 else ("yellow" if rate else "green")
        units.append(t("counted as", protocol=name, unit=t("noun " + entry.get("unit", "events"))))
        head.add_row(name, _count(entry["events"]), _count(entry["errors"]), Text(_pct(rate), style=style), _count(entry["connections"]),
                     _count(entry["servers"]), _count(entry["clients"]))
        if name == "websocket" and entry.get("connections_ended"):
            ws_note = t("ws connections", failed=_count(entry["connections_failed"]),
                        ended=_count(entry["connections_ended"]))
    if units:
        head.caption = t("counted") + t("list separator").join(units)
        head.caption_justify = "left"
    console.print(head)
    if ws_note:
        console.print(ws_note, highlight=False)

    _print_failing(stats, console, t)
    _print_hosts(stats, console, t, "server")
    if clients:
        _print_hosts(stats, console, t, "client")

    codes = stats.codes
    if len(codes):
        total = codes.groupby(["protocol", "code"], as_index=False).agg(
            count=("count", "sum"), name=("name", "first"))
        total = total.sort_values(["count", "protocol", "code"], ascending=[False, True, True], kind="stable")
        table = Table(box=box.SIMPLE_HEAD, title=t("code table"), title_justify="left", pad_edge=False)
        for col in ("protocol", "code", "name", "count"):
            table.add_column(t(col), justify="right" if col in ("code", "count") else "left")
        for row in total.head(TOP_ROWS * 2).itertuples(index=False):
            error = stats.policy.is_error(row.protocol, row.code)
            table.add_row(row.protocol, Text(str(row.code), style="red" if error else ""), clean(row.name, 40),
                          _count(row.count))
        if len(total) > TOP_ROWS * 2:
            table.caption = t("more codes", n=len(total) - TOP_ROWS * 2)
        console.print(table)

    cov = {**coverage, **summary.get("coverage", {})}
    skipped = cov.get("packets_skipped") or {}
    parts = [f"{t('packets read')} {_count(cov.get('packets_read', 0))}"]
    if skipped:
        parts.append(t("skipped") + " " + ", ".join(f"{clean(k, 30)} {_count(v)}" for k, v in sorted(skipped.items())))
    parts.append(f"{t('connections')} {_count(cov.get('connections', 0))}")
    gaps = cov.get("connections_with_gaps", 0)
    parts.append(f"{t('with gaps')} {_count(gaps)}"
                 + (f" ({_count(cov.get('missed_bytes', 0))} {t('bytes missed')})" if gaps else ""))
    if cov.get("tls_connections"):
        parts.append(t("tls", n=_count(cov["tls_connections"])))
    without = cov.get("events_without_request") or {}
    if any(without.values()):
        parts.append(t("without request") + " " + ", ".join(f"{p} {_count(n)}" for p, n in without.items() if n))
    anomalies = cov.get("anomalies") or {}
    if anomalies:
        top = sorted(anomalies.items(), key=lambda kv: -kv[1])[:5]
        parts.append(t("anomalies") + " " + ", ".join(f"{clean(k, 40)} {_count(v)}" for k, v in top))
    limits = cov.get("limits_hit") or {}
    if limits:
        parts.append(t("limits hit") + " " + ", ".join(f"{clean(k, 40)} {_count(v)}" for k, v in limits.items()))
    console.print(f"[bold]{t('coverage')}[/bold]: " + "; ".join(parts), highlight=False)


def _print_failing(stats, console: Console, t) -> None:
    """Each failing server endpoint: errors, codes, exact first/last error with its frame, top paths."""
    failing = getattr(stats, "failing", None)
    console.print(f"[bold]{t('failing')}[/bold]", highlight=False)
    if failing is None or not len(failing):
        console.print("  " + t("no failing"), highlight=False)
        console.print()
        return
    for row in failing.head(TOP_ROWS).to_dict("records"):
        line = Text("  ")
        line.append(clean(_endpoint(row["server_ip"], row["server_port"]), 60), style="bold")
        line.append(f"  {row['protocol']}  ")
        line.append(_count(row["errors"]), style="red")
        line.append(f" / {_count(row['events'])} {t('unit ' + row['unit'])} ({_pct(row['error_rate'])})")
        if row["host_names"]:
            line.append("  " + clean(row["host_names"], 60), style="dim")
        console.print(line)
        codes = " ".join(f"{c}×{_count(n)}" for c, n in row["top_codes"])
        console.print(f"    {t('codes')}  {codes}", highlight=False)
        for which in ("first", "last"):
            where = f"{t('frame')} {row[which + '_error_frame']}"
            if row[which + "_error_capture"]:
                where += f", {clean(row[which + '_error_capture'], 60)}"
            console.print(f"    {t(which)}  {_exact(row[which + '_error'])} UTC ({where})", highlight=False)
        if row["top_paths"]:
            paths = " · ".join(f"{clean(p, 60)} ×{_count(n)}" for p, n in row["top_paths"])
            console.print(f"    {t('paths')}  {paths}", highlight=False)
    if len(failing) > TOP_ROWS:
        console.print("  " + t("more endpoints", n=len(failing) - TOP_ROWS), highlight=False)
    console.print()


def _print_hosts(stats, console: Console, t, role: str) -> None:
    hosts = stats.hosts
    if not len(hosts):
        return
    mine = hosts[hosts["role"] == role].sort_values(["error_count", "events"], ascending=[False, False],
                                                     kind="stable")
    if not len(mine):
        return
    table = Table(box=box.SIMPLE_HEAD, title=t(role + " rows"), title_justify="left", pad_edge=False)
    wide = console.width >= 100  # "last seen" only where it fits unsquashed
    cols = ("host", "protocol", "events", "errors", "rate", "top codes") + (("last seen",) if wide else ())
    for col in cols:
        table.add_column(t(col), justify="right" if col in ("events", "errors", "rate") else "left",
                         no_wrap=col != "top codes", overflow="ellipsis",
                         min_width=16 if col == "top codes" else None, max_width=39 if col == "host" else None)
    for row in mine.head(TOP_ROWS).itertuples(index=False):
        cells = [clean(row.host), row.protocol, _count(row.events),
                 Text(_count(row.error_count), style="red" if row.error_count else ""), _pct(row.error_rate),
                 clean(getattr(row, "top_codes", "") or "", 60)]
        if wide:
            cells.append(clean(row.last_seen[5:19].replace("T", " ")))
        table.add_row(*cells)
    if len(mine) > TOP_ROWS:
        table.caption = t("more hosts", n=len(mine) - TOP_ROWS)
    console.print(table)


class Counters:
    """What a single-process run reports besides bytes (engines/native.py fills it now and then)."""

    def __init__(self) -> None:
        self.packets = 0
        self.events = 0


class _NoProgress:
    counters = None

    def update(self, bytes_read: int) -> None:
        pass

    def advance(self, nbytes: int) -> None:
        pass

    def phase(self, name: str) -> None:
        pass


class _Progress:
    def __init__(self, bar, task) -> None:
        self._bar = bar
        self._task = task
        self.counters = Counters()
        self._started = time.monotonic()

    def update(self, bytes_read: int) -> None:
        """`bytes_read`: bytes read so far (absolute, not an increment)."""
        c = self.counters
        rate = c.packets / max(time.monotonic() - self._started, 1e-3)
        self._bar.update(self._task, completed=bytes_read,
                         counts=f"{c.packets:,} packets · {c.events:,} events · {rate:,.0f} pkt/s" if c.packets else "")

    def advance(self, nbytes: int) -> None:
        self._bar.advance(self._task, nbytes)

    def phase(self, name: str) -> None:
        """Reading is over; say what runs now ("statistics", "reports")."""
        task = self._bar.tasks[0]
        self._bar.update(self._task, description=PHASES.get(name, name),
                         completed=task.total if task.total is not None else task.completed)


PHASES = {"statistics": "statistics and reports…", "reports": "writing reports…"}


@contextlib.contextmanager
def progress(total_bytes: int | None, *, stream=None, min_bytes: int = PROGRESS_MIN_BYTES, stdin: bool = False):
    """A byte progress bar on stderr when it is a TTY and the input is large (a counter for stdin)."""
    stream = stream if stream is not None else sys.stderr
    tty = hasattr(stream, "isatty") and stream.isatty()
    if not tty or (not stdin and (not total_bytes or total_bytes < min_bytes)):
        yield _NoProgress()
        return
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    if stdin:  # no size to measure against: bytes so far, rate and time
        columns = (TextColumn("{task.description}"), DownloadColumn(), TransferSpeedColumn(), TimeElapsedColumn())
        total = None
    else:
        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   TimeRemainingColumn())
        total = total_bytes
    counts = TextColumn("{task.fields[counts]}")  # packets, events, packets/s (one process only)
    bar = Progress(*columns, counts, console=Console(file=stream), transient=True)
    with bar:
        yield _Progress(bar, bar.add_task("reading", total=total, counts=""))
