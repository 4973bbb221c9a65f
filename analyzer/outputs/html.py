# report.html: one self-contained page a network engineer opens first.
#
# Strategy: Python computes a view model of plain strings and numbers (chart
# geometry included); the Jinja2 template (autoescape ON for everything)
# turns it into HTML and inline SVG.  No wire string is ever concatenated
# into markup here, and none goes into the <script>: the only script is the
# constant SCRIPT below (language switch + table sorting), which reads data
# from escaped attributes.  A Content-Security-Policy meta tag allows exactly
# that script (by hash), inline styles and nothing else: no network request is
# possible (default-src 'none'), and an injected <script> or onerror= handler
# would not run even if escaping failed somewhere.
#
# Languages: every UI string and every code explanation is in the page in
# both English and Chinese (`data-lang` spans); CSS shows the language named
# by <html lang>, which the script takes from `#lang=zh|en` in the URL or the
# buttons, defaulting to the run's --lang.  Explanations come from the
# catalogue (analyzer.meaning.catalog.lookup) when it is installed; otherwise from
# the events' own name/meaning columns (one language only, shown in both).
#
# Limits: tables show the first MAX_TABLE_ROWS rows (the CSV files hold
# all); charts show at most MAX_CODE_BARS codes per protocol.
from __future__ import annotations

import base64
import functools
import hashlib
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from jinja2 import Environment, FileSystemBytecodeCache, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from analyzer.outputs.visible import visible_html
from analyzer.protocols import get as _protocol
from analyzer.stats.hosts import PROTOCOLS, class_label, iso
from analyzer.stats.timeaxis import MAX_BUCKETS, choose_step

TEMPLATES = Path(__file__).resolve().parent / "templates"
MAX_TABLE_ROWS = 300
MAX_CODE_BARS = 30
MAX_HOST_SPARKS = 6
MAX_URI_SHOWN = 140  # characters; the full URI is in the cell's title

PROTO_LABEL = {"http": "HTTP", "ftp": "FTP", "websocket": "WebSocket"}

# UI strings: key -> (English, 中文).
TEXT = {
    "title": ("Network status report", "网络状态分析报告"),
    "partial": ("Partial: the run was interrupted; these figures cover what was read before the stop.",
                "部分结果：运行被中断，以下数字只包括中断前读取的数据。"),
    "events": ("Events", "事件"),
    "errors": ("Errors", "错误"),
    "errors_l": ("errors", "个错误"),
    "events_l": ("events", "个事件"),
    "first_error": ("first error", "首个错误"),
    "error_rate": ("Error rate", "错误率"),
    "hosts": ("Hosts", "主机"),
    "servers": ("servers", "服务器"),
    "clients": ("clients", "客户端"),
    "duration": ("Duration", "时长"),
    "packets": ("packets", "个数据包"),
    "connections": ("Connections", "连接"),
    "coverage": ("Coverage & anomalies", "覆盖率与异常"),
    "gaps": ("connections with gaps", "有缺口的连接"),
    "missed": ("bytes missed", "字节缺失"),
    "tls": ("TLS connections (encrypted: status unknown)", "TLS 连接（已加密：状态未知）"),
    "no_traffic": ("no traffic", "无流量"),
    "latency": ("HTTP latency p95", "HTTP 延迟 p95"),
    "failed_logins": ("failed logins", "登录失败"),
    "inferred_1006": ("closes without a close frame (1006)", "无关闭帧的断开 (1006)"),
    "codes_title": ("Code distribution", "状态码分布"),
    "codes_hint": ("Every code seen, per protocol; bar colour is the class, red outline marks codes counted as errors.",
                   "按协议列出所有出现的代码；颜色表示类别，红色描边表示计为错误的代码。"),
    "timeline": ("Over time", "时间分布"),
    "timeline_hint": ("Events per time bucket, stacked by class. Bucket:", "每个时间桶内的事件数，按类别堆叠。时间桶："),
    "outliers_hint": ("events have timestamps far from the rest of the capture (a corrupt clock or file) and are left off the time axis (timestamp_outlier); they are in every other count.",
                      "个事件的时间戳远离抓包中的其余部分（时钟或文件损坏），未放在时间轴上（timestamp_outlier）；其他统计中均包含它们。"),
    "spark_title": ("Errors over time — most affected servers", "错误随时间变化 — 受影响最严重的服务器"),
    "host_table": ("Per-host statistics", "按主机统计"),
    "host_hint": ("Click a column header to sort. One row per host, role and protocol; hosts.csv has every row.",
                  "点击表头排序。每行对应一个主机、角色与协议；完整数据见 hosts.csv。"),
    "host": ("Host", "主机"),
    "role": ("Role", "角色"),
    "protocol": ("Protocol", "协议"),
    "classes": ("Classes", "类别"),
    "conns": ("Conns", "连接"),
    "host_names": ("Host names · close causes", "Host 名称 · 关闭原因"),
    "failed_logins_h": ("Failed logins", "登录失败"),
    "first_seen": ("First seen", "首次出现"),
    "last_seen": ("Last seen", "最后出现"),
    "seen": ("First → last seen", "首次 → 最后出现"),
    "server": ("server", "服务器"),
    "client": ("client", "客户端"),
    "server_h": ("Server", "服务器"),
    "client_h": ("Client", "客户端"),
    "uris_title": ("Top failing URIs", "失败最多的 URI"),
    "uri": ("URI", "URI"),
    "code": ("Code", "代码"),
    "count": ("Count", "次数"),
    "ftp_title": ("FTP logins", "FTP 登录"),
    "user": ("User", "用户"),
    "failed": ("Failed", "失败"),
    "succeeded": ("Succeeded", "成功"),
    "ws_title": ("WebSocket close causes", "WebSocket 关闭原因"),
    "ws_hint": ("One row per ended connection: the first close code and who sent it. Inferred codes were not on the wire (no close frame seen).",
                "每个已结束的连接一行：第一个关闭码及其发送方。“推断”表示线路上没有该代码（未见关闭帧）。"),
    "closed_first_by": ("Closed first by", "先关闭方"),
    "inferred": ("inferred", "推断"),
    "name": ("Name", "名称"),
    "meaning": ("Meaning", "含义"),
    "class": ("Class", "类别"),
    "standard": ("Status · source", "状态 · 来源"),
    "yes": ("yes", "是"),
    "no": ("no", "否"),
    "glossary": ("Every code in this capture, explained", "本次抓包中每个代码的解释"),
    "files": ("Files", "文件"),
    "file": ("File", "文件"),
    "format": ("Format", "格式"),
    "problem": ("Problem", "问题"),
    "packets_read": ("Packets read", "已读数据包"),
    "packets_skipped": ("Packets skipped", "跳过的数据包"),
    "tcp_segments": ("TCP segments", "TCP 段"),
    "without_request": ("Events whose request was not seen", "未见到请求的事件"),
    "anomalies": ("Anomalies", "异常"),
    "limits": ("Limits hit", "触及的限制"),
    "none": ("none", "无"),
    "showing": ("Showing the first", "仅显示前"),
    "rows": ("rows", "行"),
    "nothing": ("Nothing to show.", "无数据。"),
    "policy": ("Counted as errors", "计为错误"),
    "expected": ("expected", "预期"),
    "generated": ("Generated by analyzer", "由 analyzer 生成"),
    "offline": ("self-contained: works offline, makes no network requests",
                "独立文件：可离线打开，不发起任何网络请求"),
    "catalog_missing": ("The code catalogue was not installed: explanations are in one language only.",
                        "未安装代码目录：解释仅有一种语言。"),
    "ok": ("ok", "正常"),
    "failing_title": ("What is failing", "哪里在出错"),
    "failing_hint": ("Each failing server endpoint (ip:port), most errors first: its error codes, the exact first and last "
                     "error (UTC, to the millisecond, with the frame number in its capture file: Wireshark Go to "
                     "packet) and the paths that fail most (query strings dropped, IDs as {id}).",
                     "每个出错的服务器端点（ip:端口），按错误数排序：错误码、第一个和最后一个错误的精确时间（UTC，精确到毫秒，"
                     "并给出所在抓包文件中的帧号，可在 Wireshark 中“转到分组”）以及失败最多的路径（去掉查询串，ID 记为 {id}）。"),
    "no_failures": ("No errors under the active policy.", "按当前策略没有错误。"),
    "endpoint": ("Server endpoint", "服务器端点"),
    "error_codes": ("Error codes", "错误码"),
    "top_codes": ("Top codes", "主要代码"),
    "failing_paths": ("Top failing paths", "失败最多的路径"),
    "paths_hint": ("Grouped by path: query strings dropped, ID-like segments as {id}, {uuid}, {hex} "
                   "(--uris full keeps whole URIs; events.csv has every raw request).",
                   "按路径归并：去掉查询串，类似 ID 的路径段记为 {id}、{uuid}、{hex}（--uris full 保留完整 URI；"
                   "events.csv 保留每个原始请求）。"),
    "last_error": ("last error", "最后一个错误"),
    "first_last": ("First → last error", "第一个 → 最后一个错误"),
    "frame": ("frame", "帧"),
    "of": ("of", "/"),
    "unit_responses": ("responses", "个响应"),
    "unit_replies": ("replies", "个应答"),
    "unit_close frames": ("close frames (both directions)", "个关闭帧（双向）"),
    "unit_events": ("events", "个事件"),
    "ws_connections": ("connections ended abnormally", "个连接异常结束"),
    "filter": ("Filter tables", "筛选表格"),
    "filter_hint": ("host, code or path; several words must all match", "主机、代码或路径；多个词须全部匹配"),
    "rows_match": ("rows match", "行匹配"),
    "scroll_hint": ("scroll sideways for more columns", "左右滑动查看更多列"),
    "unknown": ("unknown", "未知"),
}

# Class colours (HTTP/FTP by first digit): grey, green, blue, amber, red, violet.
CLASS_COLOURS = {1: "#94a3b8", 2: "#16a34a", 3: "#2563eb", 4: "#f59e0b", 5: "#dc2626", 6: "#7c3aed"}
OTHER_COLOUR = "#64748b"
ERROR_COLOUR = "#dc2626"
OK_COLOUR = "#16a34a"
INFERRED_COLOUR = "#7c3aed"
_WEBSOCKET = _protocol("websocket")


def code_colour(protocol: str, code: int, error: bool) -> str:
    if protocol == "websocket":
        if _WEBSOCKET.is_normal(code):
            return OK_COLOUR
        if code == 1006:  # inferred: no close frame came
            return INFERRED_COLOUR
        if 3000 <= code <= 4999:
            return "#f59e0b"
        return ERROR_COLOUR if error else OTHER_COLOUR
    return CLASS_COLOURS.get(code // 100 if code < 1000 else 0, OTHER_COLOUR)


def class_colour(protocol: str, label: str) -> str:
    if protocol == "websocket":
        return {"ok": OK_COLOUR, "errors": ERROR_COLOUR}.get(label, OTHER_COLOUR)
    if label[:1].isdigit():
        return CLASS_COLOURS.get(int(label[0]), OTHER_COLOUR)
    return OTHER_COLOUR


# -- formatting --------------------------------------------------------------

def fmt_count(n) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "–"
    return f"{int(n):,}"


def fmt_pct(rate) -> str:
    if rate is None or (isinstance(rate, float) and math.isnan(rate)):
        return "–"
    pct = rate * 100
    if pct == 0:
        return "0%"
    if pct < 0.1:
        return f"{pct:.3f}%"
    if pct < 10:
        return f"{pct:.2f}%"
    return f"{pct:.1f}%"


def fmt_ms(ms) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "–"
    if ms >= 10_000:
        return f"{ms / 1000:.1f} s"
    if ms >= 100:
        return f"{ms:.0f} ms"
    if ms >= 1:
        return f"{ms:.1f} ms"
    return f"{ms:.3f} ms"


def fmt_duration(seconds) -> str:
    if seconds is None:
        return "–"
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60)} s"
    if s < 86400:
        return f"{int(s // 3600)} h {int(s % 3600 // 60)} min"
    return f"{int(s // 86400)} d {int(s % 86400 // 3600)} h"


def fmt_bytes(n) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def fmt_time(text: str) -> str:
    """ISO time -> 'YYYY-MM-DD HH:MM:SS' (UTC, seconds)."""
    return text[:19].replace("T", " ") if text else "–"


def fmt_short(text: str) -> str:
    """ISO time -> 'MM-DD HH:MM:SS' for narrow table cells (the year is in the header)."""
    return text[5:19].replace("T", " ") if text else "–"


def _nice_ceiling(value: float) -> tuple[float, float]:
    """(axis max, tick step) with 1-2-5 steps and about 4 ticks."""
    if value <= 0:
        return 1.0, 1.0
    raw = value / 4
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        step = m * mag
        if step >= raw:
            break
    step = max(step, 1.0)
    return math.ceil(value / step) * step, step


def _time_label(epoch: float, step: int, span: float) -> str:
    try:
        t = datetime.fromtimestamp(epoch, timezone.utc)
    except (ValueError, OverflowError, OSError):
        return ""  # a timestamp no calendar holds (corrupt capture)
    if step >= 86400:
        return t.strftime("%Y-%m-%d")
    if span > 86400:
        return t.strftime("%m-%d %H:%M")
    if step >= 60:
        return t.strftime("%H:%M")
    return t.strftime("%H:%M:%S")


# Tick spacings a reader finds round: 1 s .. 1 week.
_TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
               86400, 172800, 604800, 1209600, 2592000)


def _tick_epochs(start: float, end: float, step: int, most: int) -> list[float]:
    """Round times (multiples of a nice spacing that is a multiple of the bucket) in [start, end]."""
    spacing = next((d for d in _TICK_STEPS if d % step == 0 and (end - start) / d <= most), None)
    if spacing is None:
        spacing = step * math.ceil((end - start) / step / most)
    first = math.ceil(start / spacing) * spacing
    return [float(t) for t in range(int(first), int(end), int(spacing))]


def _step_label(step: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if step >= size and step % size == 0:
            return f"{step // size} {unit}"
    return f"{step} s"


# -- catalogue ---------------------------------------------------------------

def _catalog():
    try:
        from analyzer.meaning import catalog  # noqa: PLC0415 - optional until the catalogue lands
    except ImportError:
        return None
    return catalog


def explain(protocol: str, code: int, substatus: str | None, fallback: tuple[str, str], lang: str) -> dict:
    """{"en": (name, meaning), "zh": (name, meaning), "bilingual": bool}."""
    catalog = _catalog()
    if catalog is not None:
        meaning = catalog.lookup(protocol, int(code), substatus or None)
        source = meaning.reference or meaning.vendor
        return {"en": (meaning.name("en"), meaning.description("en")),
                "zh": (meaning.name("zh"), meaning.description("zh")), "bilingual": True,
                "status": meaning.status, "source": source}
    return {"en": fallback, "zh": fallback, "bilingual": False, "status": "", "source": ""}


# -- view model ----------------------------------------------------------------

def _code_charts(stats, names) -> list[dict]:
    charts = []
    codes = stats.codes
    if not len(codes):
        return charts
    totals = codes.groupby(["protocol", "code"], as_index=False)["count"].sum()
    for proto in PROTOCOLS:
        rows = totals[totals["protocol"] == proto].sort_values("code")
        if not len(rows):
            continue
        if len(rows) > MAX_CODE_BARS:
            rows = rows.sort_values("count", ascending=False, kind="stable").head(MAX_CODE_BARS).sort_values("code")
        peak = max(int(rows["count"].max()), 1)
        total = int(totals.loc[totals["protocol"] == proto, "count"].sum())
        bars = []
        label_w, bar_x, width, row_h = 300, 310, 1160, 22
        for i, (code, count) in enumerate(zip(rows["code"], rows["count"])):
            code, count = int(code), int(count)
            error = stats.policy.is_error(proto, code)
            text = names[(proto, code)]
            w = max(2.0, (width - bar_x - 110) * count / peak)
            bars.append({
                "y": 6 + i * row_h, "code": code, "name_en": _clip(text["en"][0], 34), "name_zh": _clip(text["zh"][0], 22),
                "full_en": text["en"][0], "full_zh": text["zh"][0],
                "w": round(w, 1), "count": fmt_count(count), "share": fmt_pct(count / total if total else 0),
                "colour": code_colour(proto, code, error), "error": error,
            })
        charts.append({"protocol": proto, "label": PROTO_LABEL[proto], "bars": bars, "label_w": label_w,
                       "bar_x": bar_x, "width": width, "height": 12 + len(bars) * row_h, "total": fmt_count(total)})
    return charts


def _series(stats, first, last) -> tuple[list, list]:
    ts = stats.timeseries
    if not len(ts):
        return [], []
    axis = _axis(stats.summary, first, last)
    if axis is None:
        return [], []
    start, n, step, span = axis
    charts = []
    for proto in PROTOCOLS:
        rows = ts[ts["protocol"] == proto]
        if not len(rows):
            continue
        if proto == "websocket":
            g = rows.groupby("bucket_epoch")[["count", "errors"]].sum()
            stacks = {"ok": (g["count"] - g["errors"]), "errors": g["errors"]}
        else:
            g = rows.groupby(["class", "bucket_epoch"])["count"].sum()
            stacks = {cls: g.loc[cls] for cls in sorted(set(rows["class"]))}
        charts.append(_stacked_chart(proto, PROTO_LABEL[proto], stacks, start, n, step, span, height=220))
    sparks = []
    errors = ts.groupby("host")["errors"].sum().sort_values(ascending=False, kind="stable")
    for host in [h for h, e in errors.items() if e > 0][:MAX_HOST_SPARKS]:
        rows = ts[ts["host"] == host]
        g = rows.groupby("bucket_epoch")[["count", "errors"]].sum()
        stacks = {"ok": g["count"] - g["errors"], "errors": g["errors"]}
        chart = _stacked_chart("websocket", host, stacks, start, n, step, span, height=110, compact=True)
        chart["errors"] = fmt_count(int(g["errors"].sum()))
        chart["events"] = fmt_count(int(g["count"].sum()))
        first_error = g.index[g["errors"].to_numpy() > 0]
        chart["first_error"] = fmt_time(iso(float(first_error.min()))) if len(first_error) else "–"
        sparks.append(chart)
    return charts, sparks


def _axis(summary: dict, first, last) -> tuple[float, int, int, float] | None:
    """(start, buckets, step, span) of the time axis: the statistics' axis, which
    leaves timestamp outliers out (stats/timeaxis.py); never more than
    MAX_BUCKETS buckets, whatever the summary says."""
    axis = summary.get("time_axis")
    step = int(summary.get("bucket_seconds") or 1)
    if axis:
        first, last, step = axis["first_epoch"], axis["last_epoch"], int(axis["bucket_seconds"])
    if first is None or last is None or not (math.isfinite(first) and math.isfinite(last)):
        return None
    step = max(step, choose_step(first, last, MAX_BUCKETS))
    start = math.floor(first / step) * step
    return start, int(math.floor(last / step) - math.floor(first / step)) + 1, step, last - first


def _stacked_chart(proto, label, stacks, start, n, step, span, *, height, compact=False) -> dict:
    width = 1160 if not compact else 560
    left, right, top, bottom = (56, 12, 10, 26)
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [0.0] * n
    cols = []
    for cls, series in stacks.items():
        values = [0.0] * n
        for epoch, value in series.items():
            idx = int(round((float(epoch) - start) / step))
            if 0 <= idx < n:
                values[idx] += float(value)
        cols.append((cls, values))
        totals = [a + b for a, b in zip(totals, values)]
    axis_max, tick = _nice_ceiling(max(totals) if totals else 0)
    slot = plot_w / n
    bar_w = max(1.0, slot * (0.8 if n > 1 else 0.4))
    rects = []
    base = [0.0] * n
    for cls, values in cols:
        colour = class_colour(proto, cls)
        for i, v in enumerate(values):
            if v <= 0:
                continue
            h = plot_h * v / axis_max
            y = top + plot_h - plot_h * (base[i] + v) / axis_max
            base[i] += v
            rects.append({"x": round(left + i * slot + (slot - bar_w) / 2, 2), "y": round(y, 2),
                          "w": round(bar_w, 2), "h": round(max(h, 0.5), 2), "colour": colour,
                          "title": f"{fmt_time(iso(start + i * step))} UTC · {cls}: {fmt_count(v)}"})
    yticks = []
    value = 0.0
    while value <= axis_max + 1e-9:
        yticks.append({"y": round(top + plot_h - plot_h * value / axis_max, 2), "label": fmt_count(value)})
        value += tick
    if compact and len(yticks) > 2:
        yticks = [yticks[0], yticks[-1]]
    xticks = []
    for epoch in _tick_epochs(start, start + n * step, step, 7 if not compact else 4):
        i = (epoch - start) / step
        xticks.append({"x": round(left + i * slot, 2), "label": _time_label(epoch, step, span)})
    legend = [{"label": cls, "colour": class_colour(proto, cls)} for cls, _ in cols]
    return {"protocol": proto, "label": label, "width": width, "height": height, "left": left,
            "right": width - right, "top": top, "bottom": top + plot_h, "rects": rects, "yticks": yticks,
            "xticks": xticks, "legend": legend, "step": _step_label(step)}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _class_bar(row) -> dict:
    """A tiny stacked bar of a host row's classes (HTTP/FTP) or close kinds (WebSocket)."""
    if row["protocol"] == "websocket":
        parts = [("normal", row["ws_normal"], OK_COLOUR), ("other", row["ws_abnormal"], ERROR_COLOUR),
                 ("inferred", row["ws_inferred"], INFERRED_COLOUR)]
    else:
        suffix = "yz" if row["protocol"] == "ftp" else "xx"
        parts = [(f"{d}{suffix}", row[f"class_{d}xx"], CLASS_COLOURS[d]) for d in range(1, 7)]
        parts.append(("other", row["class_other"], OTHER_COLOUR))
    total = sum(int(p[1]) for p in parts)
    segs, x = [], 0.0
    for label, n, colour in parts:
        n = int(n)
        if n and total:
            w = 120 * n / total
            segs.append({"x": round(x, 2), "w": round(w, 2), "colour": colour})
            x += w
    title = ", ".join(f"{label}: {int(n):,}" for label, n, _ in parts if int(n))
    return {"segs": segs, "title": title}


def _host_rows(stats) -> tuple[list, int]:
    hosts = stats.hosts
    if not len(hosts):
        return [], 0
    ranked = hosts.sort_values(["error_count", "events", "connections"], ascending=False, kind="stable")
    rows = []
    for row in ranked.head(MAX_TABLE_ROWS).to_dict("records"):
        rate = row["error_rate"]
        rate_ok = rate is not None and not (isinstance(rate, float) and math.isnan(rate))
        rows.append({
            "host": row["host"], "role": row["role"], "protocol": PROTO_LABEL.get(row["protocol"], row["protocol"]),
            "events": int(row["events"]), "errors": int(row["error_count"]),
            "rate": fmt_pct(rate), "rate_v": rate if rate_ok else -1, "rate_w": round(100 * rate, 1) if rate_ok else 0,
            "rate_tone": _tone(rate if rate_ok else 0),
            "p50": fmt_ms(row["latency_p50_ms"]), "p95": fmt_ms(row["latency_p95_ms"]), "p99": fmt_ms(row["latency_p99_ms"]),
            "p50_v": _num(row["latency_p50_ms"]), "p95_v": _num(row["latency_p95_ms"]), "p99_v": _num(row["latency_p99_ms"]),
            "conns": int(row["connections"]), "failed_logins": int(row["ftp_failed_logins"]),
            "names": row["hosts_seen"] or row["ws_closes_by_cause"] or "",
            "first": fmt_short(row["first_seen"]), "last": fmt_short(row["last_seen"]),
            "first_full": fmt_time(row["first_seen"]), "last_full": fmt_time(row["last_seen"]),
            "bar": _class_bar(row),
            "top_codes": [{"code": code, "count": fmt_count(n), "error": stats.policy.is_error(row["protocol"], int(code))}
                          for code, n in _code_counts(row.get("top_codes", ""))],
        })
    return rows, len(hosts)


MAX_FAILING_SHOWN = 12  # endpoints in "What is failing" (summary.json and the API have them all)


def fmt_exact(text: str) -> str:
    """ISO time -> 'YYYY-MM-DD HH:MM:SS.mmm' (UTC, milliseconds) for the time of one packet."""
    return text[:23].replace("T", " ") if text else "–"


def endpoint_label(ip: str, port) -> str:
    """ip:port, with IPv6 addresses in brackets (RFC 3986 style)."""
    return f"[{ip}]:{int(port)}" if ":" in str(ip) else f"{ip}:{int(port)}"


def _failing_rows(stats, names) -> tuple[list, int]:
    failing = getattr(stats, "failing", None)
    if failing is None or not len(failing):
        return [], 0
    rows = []
    for row in failing.head(MAX_FAILING_SHOWN).to_dict("records"):
        proto = row["protocol"]
        codes = []
        for code, count in row["top_codes"]:
            text = names.get((proto, int(code)), {"en": ("", ""), "zh": ("", "")})
            codes.append({"code": code, "count": fmt_count(count), "name_en": text["en"][0], "name_zh": text["zh"][0],
                          "colour": code_colour(proto, int(code), True)})
        when = {}
        for which in ("first", "last"):
            when[which] = {"time": fmt_exact(row[f"{which}_error"]), "iso": row[f"{which}_error"],
                           "frame": int(row[f"{which}_error_frame"]),
                           "capture": os.path.basename(row[f"{which}_error_capture"] or "")}
        rate = float(row["error_rate"])
        rows.append({
            "endpoint": endpoint_label(row["server_ip"], row["server_port"]), "server_ip": row["server_ip"],
            "names": row["host_names"], "protocol": PROTO_LABEL.get(proto, proto), "proto": proto,
            "errors": int(row["errors"]), "events": int(row["events"]), "unit": "unit_" + row["unit"],
            "rate": fmt_pct(rate), "rate_v": rate, "rate_tone": _tone(rate), "codes": codes,
            "first": when["first"], "last": when["last"],
            "paths": [{"path": p, "short": _clip(p, MAX_URI_SHOWN), "count": fmt_count(n)}
                      for p, n in row["top_paths"]],
        })
    return rows, len(failing)


def _code_counts(text: str) -> list[tuple[str, int]]:
    """hosts.csv's "404×12; 500×3" -> [("404", 12), ("500", 3)] (codes are integers: no ambiguity)."""
    out = []
    for part in (text or "").split("; "):
        code, _, n = part.partition("×")
        if code.isdigit() and n.isdigit():
            out.append((code, int(n)))
    return out


def _exact_first_errors(sparks: list, stats) -> None:
    """Each server chart's "first error": the exact time of its first error, not its bucket's start."""
    failing = getattr(stats, "failing", None)
    if failing is None or not len(failing):
        return
    first = failing.groupby("server_ip")["first_error_epoch"].min()
    for chart in sparks:
        if chart["label"] in first.index:
            chart["first_error"] = fmt_exact(iso(float(first[chart["label"]])))


def _num(value) -> float:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return -1.0
    return float(value)


def _tone(rate: float) -> str:
    if rate >= 0.05:
        return "bad"
    if rate > 0:
        return "warn"
    return "good"


def _cards(stats, coverage) -> list[dict]:
    s = stats.summary
    p = s["protocols"]
    cards = [{
        "key": "events", "value": fmt_count(s["events"]), "tone": "",
        "sub": " · ".join(f"{PROTO_LABEL[k]} {fmt_count(v['events'])}" for k, v in p.items() if v["events"]) or "–",
    }]
    http, ftp, ws = p["http"], p["ftp"], p["websocket"]
    cards.append(_proto_card("http", http, extra=None))
    lat = http.get("latency_ms")
    cards.append({"key": "latency", "value": fmt_ms(lat["p95"]) if lat else "–", "tone": "",
                  "sub": f"p50 {fmt_ms(lat['p50'])} · p99 {fmt_ms(lat['p99'])}" if lat else "–"})
    cards.append(_proto_card("ftp", ftp, extra=("failed_logins", ftp.get("failed_logins", 0))))
    cards.append(_proto_card("websocket", ws, extra=("inferred_1006", ws.get("codes", {}).get("1006", 0))))
    if ws["events"] and ws.get("connections_ended"):
        # The rate counts close frames of both directions; the close-causes
        # table counts connections: the card names both units.
        cards[-1]["sub_keys"].insert(0, (f"{fmt_count(ws['connections_failed'])} / "
                                         f"{fmt_count(ws['connections_ended'])}", "ws_connections"))
    servers = len({h for h, r in zip(stats.hosts["host"], stats.hosts["role"]) if r == "server"}) if len(stats.hosts) else 0
    clients = len({h for h, r in zip(stats.hosts["host"], stats.hosts["role"]) if r == "client"}) if len(stats.hosts) else 0
    cards.append({"key": "hosts", "value": fmt_count(servers + clients), "tone": "",
                  "sub_keys": [(fmt_count(servers), "servers"), (fmt_count(clients), "clients")]})
    cards.append({"key": "duration", "value": fmt_duration(s.get("duration_s")), "tone": "",
                  "sub_keys": [(fmt_count(coverage.get("packets_read", 0)), "packets")]})
    gaps = int(coverage.get("connections_with_gaps", 0) or 0)
    cards.append({"key": "connections", "value": fmt_count(coverage.get("connections", 0)),
                  "tone": "warn" if gaps else "",
                  "sub_keys": [(fmt_count(gaps), "gaps"), (fmt_bytes(coverage.get("missed_bytes", 0)), "missed")]})
    return cards


def _proto_card(proto, entry, extra) -> dict:
    card = {"key": None, "label": PROTO_LABEL[proto] + " · ", "label_key": "error_rate"}
    if not entry["events"]:
        card.update(value="–", tone="muted", sub_keys=[("", "no_traffic")])
        return card
    rate = entry["error_rate"] or 0
    card.update(value=fmt_pct(rate), tone=_tone(rate), sub_keys=[
        (f"{fmt_count(entry['errors'])} / {fmt_count(entry['events'])}", "unit_" + entry.get("unit", "events"))])
    if extra:
        card["sub_keys"].append((fmt_count(extra[1]), extra[0]))
    return card


def _glossary(stats, names) -> list[dict]:
    rows = []
    codes = stats.codes
    if len(codes):
        totals = codes.groupby(["protocol", "code"], as_index=False).agg(count=("count", "sum"), cls=("class", "first"))
        order = {p: i for i, p in enumerate(PROTOCOLS)}
        totals = totals.sort_values(["protocol", "code"], key=lambda s: s.map(order) if s.name == "protocol" else s)
        for proto, code, count, cls in zip(totals["protocol"], totals["code"], totals["count"], totals["cls"]):
            text = names[(proto, int(code))]
            rows.append(_gloss_row(stats, proto, str(int(code)), int(code), cls, text, int(count)))
            subs = stats.substatus
            if len(subs):
                mine = subs[(subs["protocol"] == proto) & (subs["code"] == code)]
                for sub, n in mine.groupby("substatus")["count"].sum().items():
                    rows.append(_gloss_row(stats, proto, sub, int(code), cls, names[(proto, int(code), sub)], int(n)))
    return rows


def _gloss_row(stats, proto, shown, code, cls, text, count) -> dict:
    return {"protocol": PROTO_LABEL.get(proto, proto), "code": shown, "cls": cls, "count": fmt_count(count),
            "name_en": text["en"][0], "name_zh": text["zh"][0], "meaning_en": text["en"][1],
            "meaning_zh": text["zh"][1], "error": stats.policy.is_error(proto, code),
            "standard": stats.meanings.get((proto, code), (None, None, None, None))[3],
            "status": text.get("status", ""), "source": text.get("source", "")}


def _names(stats, lang) -> dict:
    """(protocol, code[, substatus]) -> explanation, for every code the page shows."""
    out = {}
    fallback = {}
    if len(stats.codes):
        for proto, code, name, meaning in zip(stats.codes["protocol"], stats.codes["code"], stats.codes["name"],
                                              stats.codes["meaning"]):
            fallback.setdefault((proto, int(code)), (name or "", meaning or ""))
    keys = set(fallback)
    if len(stats.ws_closes):
        keys |= {("websocket", int(c)) for c in stats.ws_closes["code"]}
    if len(stats.top_failing_uris):
        keys |= {("http", int(c)) for c in stats.top_failing_uris["code"]}
    for key in keys:
        out[key] = explain(key[0], key[1], None, fallback.get(key, ("", "")), lang)
    if len(stats.substatus):
        for proto, code, sub in zip(stats.substatus["protocol"], stats.substatus["code"], stats.substatus["substatus"]):
            out[(proto, int(code), sub)] = explain(proto, int(code), sub, fallback.get((proto, int(code)), ("", "")), lang)
    return out


def _coverage(stats, coverage) -> dict:
    cov = {**coverage, **stats.summary.get("coverage", {})}
    files = [{"name": f.get("name", ""), "format": f.get("format", ""), "compression": f.get("compression", "") or "",
              "packets": fmt_count(f.get("packets", 0)), "error": f.get("error", "") or ""}
             for f in cov.get("files", []) or []]
    skipped = sorted((cov.get("packets_skipped") or {}).items(), key=lambda kv: -kv[1])
    anomalies = sorted((cov.get("anomalies") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    limits = sorted((cov.get("limits_hit") or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    limits += [(k, v) for k, v in stats.summary.get("limits", {}).items() if v]
    without = cov.get("events_without_request") or {}
    return {
        "files": files,
        "figures": [("packets_read", fmt_count(cov.get("packets_read", 0))),
                    ("packets_skipped", fmt_count(sum(v for _, v in skipped))),
                    ("tcp_segments", fmt_count(cov.get("tcp_segments", 0))),
                    ("connections", fmt_count(cov.get("connections", 0))),
                    ("gaps", fmt_count(cov.get("connections_with_gaps", 0))),
                    ("missed", fmt_bytes(cov.get("missed_bytes", 0))),
                    ("tls", fmt_count(cov.get("tls_connections", 0)))],
        "skipped": [(k, fmt_count(v)) for k, v in skipped],
        "anomalies": [(k, fmt_count(v)) for k, v in anomalies],
        "limits": [(k, fmt_count(v)) for k, v in limits],
        "without": [(PROTO_LABEL.get(k, k), fmt_count(v)) for k, v in without.items()],
    }


SCRIPT = r"""(function () {
  'use strict';
  var root = document.documentElement;
  function setLang(lang) {
    if (lang !== 'en' && lang !== 'zh') { return; }
    root.setAttribute('lang', lang);
    var box = document.getElementById('filter');
    if (box) { box.setAttribute('placeholder', box.getAttribute('data-placeholder-' + lang)); }
    var buttons = document.querySelectorAll('[data-set-lang]');
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].setAttribute('aria-pressed', String(buttons[i].getAttribute('data-set-lang') === lang));
    }
  }
  function fromHash() {
    var m = /(?:^#|&)lang=(en|zh)(?:&|$)/.exec(window.location.hash);
    return m ? m[1] : null;
  }
  setLang(fromHash() || root.getAttribute('data-default-lang'));
  window.addEventListener('hashchange', function () { var l = fromHash(); if (l) { setLang(l); } });
  var buttons = document.querySelectorAll('[data-set-lang]');
  for (var b = 0; b < buttons.length; b++) {
    buttons[b].addEventListener('click', function (ev) {
      var lang = ev.currentTarget.getAttribute('data-set-lang');
      setLang(lang);
      try { window.history.replaceState(null, '', '#lang=' + lang); } catch (e) { /* file: URLs may refuse */ }
    });
  }
  function cellValue(row, index, numeric) {
    var cell = row.cells[index];
    var raw = cell.hasAttribute('data-v') ? cell.getAttribute('data-v') : cell.textContent;
    if (numeric) { var n = parseFloat(raw); return isNaN(n) ? -Infinity : n; }
    return raw.toLowerCase();
  }
  var tables = document.querySelectorAll('table.sortable');
  for (var t = 0; t < tables.length; t++) {
    (function (table) {
      var heads = table.tHead.rows[0].cells;
      for (var h = 0; h < heads.length; h++) {
        (function (th, index) {
          th.setAttribute('tabindex', '0');
          function sort() {
            var numeric = th.getAttribute('data-type') === 'num';
            var dir = th.getAttribute('aria-sort') === 'descending' ? 1 : -1;
            if (!numeric && !th.hasAttribute('aria-sort')) { dir = 1; }
            for (var k = 0; k < heads.length; k++) { heads[k].removeAttribute('aria-sort'); }
            th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
            var body = table.tBodies[0];
            var rows = Array.prototype.slice.call(body.rows);
            rows.sort(function (a, b) {
              var x = cellValue(a, index, numeric), y = cellValue(b, index, numeric);
              return x < y ? -dir : x > y ? dir : 0;
            });
            for (var r = 0; r < rows.length; r++) { body.appendChild(rows[r]); }
          }
          th.addEventListener('click', sort);
          th.addEventListener('keydown', function (ev) { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); sort(); } });
        })(heads[h], h);
      }
    })(tables[t]);
  }
  // The filter box: a row stays when its text holds every word typed.
  var filter = document.getElementById('filter');
  var filterRows = Array.prototype.slice.call(document.querySelectorAll('table.filterable tbody tr'));
  var filterText = filterRows.map(function (row) { return row.textContent.toLowerCase(); });
  function applyFilter() {
    var words = filter.value.toLowerCase().split(/\s+/).filter(function (w) { return w.length > 0; });
    var shown = 0;
    for (var i = 0; i < filterRows.length; i++) {
      var keep = words.every(function (w) { return filterText[i].indexOf(w) !== -1; });
      filterRows[i].classList.toggle('filtered', !keep);
      if (keep) { shown++; }
    }
    var count = document.getElementById('filter-count');
    count.hidden = words.length === 0;
    document.getElementById('filter-n').textContent = shown + ' / ' + filterRows.length;
    markScrolling();
  }
  // A table wider than its box says so (a hint under it), instead of hiding columns silently.
  function markScrolling() {
    var wraps = document.querySelectorAll('.tablewrap');
    for (var w = 0; w < wraps.length; w++) {
      wraps[w].classList.toggle('scrolls', wraps[w].scrollWidth > wraps[w].clientWidth + 1);
    }
  }
  if (filter) {
    filter.addEventListener('input', applyFilter);
    var q = /(?:^#|&)q=([^&]*)/.exec(window.location.hash);
    if (q) { try { filter.value = decodeURIComponent(q[1]); } catch (e) { filter.value = q[1]; } applyFilter(); }
  }
  markScrolling();
  window.addEventListener('resize', markScrolling);
  document.body.setAttribute('data-ready', 'true');
})();"""


def script_hash(script: str = SCRIPT) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")


def _bytecode_cache():
    """Compiled templates cached on disk (~0.15 s saved per run); none if unwritable."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    folder = os.path.join(base, "analyzer", "templates")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return None
    return FileSystemBytecodeCache(folder) if os.access(folder, os.W_OK) else None


def _visible_value(value):
    if isinstance(value, str) and not isinstance(value, Markup):
        return visible_html(value)
    return value


@functools.lru_cache(maxsize=1)
def _environment() -> Environment:
    # finalize: every value printed by the template shows control and bidi
    # characters as \xNN / \uNNNN (outputs/visible.py) before it is escaped,
    # so a U+202E in a URI cannot reorder the page; our own Markup is left as is.
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                      bytecode_cache=_bytecode_cache(), finalize=_visible_value)
    env.globals["TEXT"] = TEXT
    return env


def live_banner(live: dict | None) -> dict | None:
    """A running capture's banner and refresh: {"as_of": "HH:MM:SS", "refresh": seconds} or None."""
    if not live or not live.get("running"):
        return None
    as_of = time.strftime("%H:%M:%S", time.gmtime(live["as_of"]))
    # Reload a little after the next rewrite; never faster than once a second.
    return {"as_of": as_of, "refresh": max(1, math.ceil(live.get("refresh") or 5))}


def render_html(stats, coverage: dict | None = None, lang: str = "en", live: dict | None = None) -> str:
    """The report page; `live` = {"running", "as_of" (epoch), "refresh" (seconds)} while a capture runs."""
    coverage = dict(coverage or {})
    lang = lang if lang in ("en", "zh") else "en"
    s = stats.summary
    names = _names(stats, lang)
    code_charts = _code_charts(stats, names)
    series, sparks = _series(stats, s.get("first_epoch"), s.get("last_epoch"))
    host_rows, host_total = _host_rows(stats)
    failing, failing_total = _failing_rows(stats, names)
    _exact_first_errors(sparks, stats)
    uris = []
    for row in stats.top_failing_uris.head(MAX_TABLE_ROWS).to_dict("records") if len(stats.top_failing_uris) else []:
        text = names.get(("http", int(row["code"])), {"en": ("", ""), "zh": ("", "")})
        uris.append({**row, "uri_short": _clip(row["uri"], MAX_URI_SHOWN), "count": int(row["count"]),
                     "endpoint": endpoint_label(row["server_ip"], row.get("server_port", 0) or 0)
                     if row.get("server_port") else row["server_ip"],
                     "name_en": text["en"][0], "name_zh": text["zh"][0]})
    logins = stats.ftp_logins.head(MAX_TABLE_ROWS).to_dict("records") if len(stats.ftp_logins) else []
    ws_rows = []
    for row in stats.ws_closes.head(MAX_TABLE_ROWS).to_dict("records") if len(stats.ws_closes) else []:
        text = names.get(("websocket", int(row["code"])), {"en": ("", ""), "zh": ("", "")})
        ws_rows.append({**row, "count": int(row["count"]), "name_en": text["en"][0], "name_zh": text["zh"][0],
                        "colour": code_colour("websocket", int(row["code"]), True)})
    files = [os.path.basename(f.get("name", "")) or f.get("name", "") for f in coverage.get("files", []) or []]
    policy = [(PROTO_LABEL[p], ", ".join(r["errors"]), ", ".join(r["expected"])) for p, r in s.get("policy", {}).items()]
    bilingual = all(v["bilingual"] for v in names.values()) if names else _catalog() is not None
    template = _environment().get_template("report.html.j2")
    return template.render(
        lang=lang, csp_script=script_hash(), script=Markup(SCRIPT), summary=s, files=files,
        first=fmt_time(s.get("first", "")), last=fmt_time(s.get("last", "")),
        duration=fmt_duration(s.get("duration_s")), version=coverage.get("version", ""),
        engine=coverage.get("engine", ""), cards=_cards(stats, coverage), code_charts=code_charts,
        series=series, sparks=sparks, failing=failing, failing_total=failing_total, hosts=host_rows, host_total=host_total, uris=uris,
        uri_total=len(stats.top_failing_uris), uri_grouping=s.get("uri_grouping", "path"), logins=logins, ws_rows=ws_rows,
        coverage=_coverage(stats, coverage), glossary=_glossary(stats, names), policy=policy,
        bilingual=bilingual, max_rows=MAX_TABLE_ROWS, fmt_count=fmt_count,
        step=_step_label(int(s.get("bucket_seconds") or 1)), class_label=class_label,
        partial=bool(coverage.get("partial")),
        live=live_banner(live),
    )
