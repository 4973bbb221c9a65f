# Prometheus / OpenMetrics metrics over the event batches.
#
# `EventMetrics` is one more consumer of the EventSink's Arrow batches (beside
# events.csv and the statistics), so `live --metrics HOST:PORT` serves and
# `analyze --metrics-file PATH` writes the same series, counted from the same
# rows.  The exposition is prometheus_client's: the class is a custom
# collector (the library's documented way for an exporter whose numbers come
# from elsewhere), registered in its own CollectorRegistry; the HTTP endpoint
# is `start_http_server` and the file `write_to_textfile` (node_exporter's
# textfile-collector format, written to a temporary file and renamed).
#
# Why a collector and not Counter.inc()/Histogram.observe() per event: each
# batch is grouped once in Arrow by (protocol, server, code, class, ...) and
# only the groups -- a handful per batch -- touch Python.  Per-event
# labels().inc() + observe() cost 4 us an event (measured, prometheus_client
# 0.26), 4 s over a million events; this costs 0.25 us (benchmarks/monitoring.py).  The
# capture loop's thread adds under a lock; the HTTP server's thread copies the
# numbers under the same lock in collect().
#
# Cardinality is bounded, because servers and codes are chosen by whoever
# sends the traffic:
#   * `server` is "ip:port" ("[v6]:port") for the first `max_servers` servers
#     that answer (MAX_SERVERS, --metrics-servers); every later server is
#     counted under server="other".  A label, once given, is kept for the
#     whole run: Prometheus counters must never go down, so a server cannot
#     move into or out of "other" later.  The labelled set is therefore the
#     first N to answer, not the busiest N (the reports rank by volume).
#   * `code`: at most MAX_CODES distinct codes per protocol (WebSocket close
#     codes span 0-65535); later ones are counted under code="other", their
#     class kept.
#   Totals summed over all series stay exact; dropped label values are
#   counted in analyzer_metrics_labels_folded_total{label}.
from __future__ import annotations

import ipaddress
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.events import BatchConsumer, endpoint_label

# Servers with a label of their own: a dashboard legend stays readable, and
# the series stay in the low thousands (per server: its codes, 2 error and
# 17 latency series).
MAX_SERVERS = 50
# Distinct code labels per protocol: HTTP registers ~60 status codes, FTP ~40
# replies, WebSocket ~15 close codes; 100 leaves room for private ones.
MAX_CODES = 100
OTHER = "other"
# The Grafana dashboard for these metrics (package data; README "Live monitoring").
DASHBOARD = Path(__file__).with_name("grafana") / "analyzer-dashboard.json"
# HTTP latency buckets, seconds: 1 ms (loopback) to 30 s (a proxy's timeout),
# roughly 1-2.5-5 per decade like prometheus_client's defaults.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# FTP commands whose 530 reply is a refused login (as the FTP dissector counts them).
LOGIN_VERBS = ("USER", "PASS", "ACCT")


server_label = endpoint_label  # the `server` label: "ip:port", "[v6]:port"


@dataclass
class CaptureFigures:
    """Numbers of the capture, not of its events (set by the engine's caller)."""

    packets: int = 0
    kernel_drops: int = 0
    connections_active: int = 0
    missed_bytes: int = 0


@dataclass
class _Counts:
    events: dict = field(default_factory=dict)        # (protocol, server, code, class) -> n
    errors: dict = field(default_factory=dict)        # (protocol, server) -> n
    latency: dict = field(default_factory=dict)       # server -> [bucket counts (non-cumulative) + inf, sum]
    ws_closes: dict = field(default_factory=dict)     # (server, code, inferred) -> n
    ftp_failed_logins: dict = field(default_factory=dict)  # server -> n
    folded: dict = field(default_factory=dict)        # label name -> events counted under "other"


def _add(table: dict, key, n: int) -> None:
    table[key] = table.get(key, 0) + n


class EventMetrics(BatchConsumer):
    """A batch consumer (write/flush/commit/abort) and a prometheus_client collector."""

    def __init__(self, policy, *, max_servers: int = MAX_SERVERS, max_codes: int = MAX_CODES,
                 info: dict | None = None) -> None:
        from prometheus_client import CollectorRegistry

        self.policy = policy
        self.max_servers = max_servers
        self.max_codes = max_codes
        self.info = {k: str(v) for k, v in (info or {}).items()}
        self.capture = CaptureFigures()
        self._servers: dict[tuple[str, int], str] = {}
        self._codes: dict[str, set] = {}
        self._counts = _Counts()
        self._lock = threading.Lock()
        self._edges = np.asarray(LATENCY_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self.server = None
        self._thread = None

    # -- labels ---------------------------------------------------------------------

    def _server(self, ip: str, port: int) -> str:
        label = self._servers.get((ip, port))
        if label is None:
            if len(self._servers) >= self.max_servers:
                return OTHER
            label = self._servers[(ip, port)] = server_label(ip, port)
        return label

    def _code(self, protocol: str, code: int) -> str:
        seen = self._codes.setdefault(protocol, set())
        if code in seen:
            return str(code)
        if len(seen) >= self.max_codes:
            return OTHER
        seen.add(code)
        return str(code)

    # -- the batch consumer ----------------------------------------------------------

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        table = pa.Table.from_batches([batch]).select(
            ["protocol", "server_ip", "server_port", "code", "class", "inferred", "latency_ms", "request"])
        groups = table.group_by(["protocol", "server_ip", "server_port", "code", "class"], use_threads=False) \
            .aggregate([([], "count_all")]).to_pylist()
        with self._lock:
            c = self._counts
            for g in groups:
                proto, n = g["protocol"], g["count_all"]
                server = self._server(g["server_ip"], g["server_port"])
                code = self._code(proto, g["code"])
                if server == OTHER:
                    _add(c.folded, "server", n)
                if code == OTHER:
                    _add(c.folded, "code", n)
                _add(c.events, (proto, server, code, g["class"] or ""), n)
                if self.policy is not None and self.policy.is_error(proto, g["code"]):
                    _add(c.errors, (proto, server), n)
            self._websocket(table)
            self._ftp(table)
            self._latency(table)

    def _rows(self, table: pa.Table, protocol: str) -> pa.Table:
        return table.filter(pc.equal(table.column("protocol"), protocol))

    def _websocket(self, table: pa.Table) -> None:
        ws = self._rows(table, "websocket")
        if not ws.num_rows:
            return
        ws = ws.set_column(ws.schema.get_field_index("inferred"), "inferred",
                           pc.fill_null(ws.column("inferred"), False))
        for g in ws.group_by(["server_ip", "server_port", "code", "inferred"], use_threads=False) \
                .aggregate([([], "count_all")]).to_pylist():
            key = (self._server(g["server_ip"], g["server_port"]), self._code("websocket", g["code"]),
                   "true" if g["inferred"] else "false")
            _add(self._counts.ws_closes, key, g["count_all"])

    def _ftp(self, table: pa.Table) -> None:
        ftp = self._rows(table, "ftp")
        if not ftp.num_rows:
            return
        verb = pc.utf8_upper(pc.utf8_slice_codeunits(
            pc.fill_null(ftp.column("request"), ""), 0, 4))
        refused = pc.and_(pc.equal(ftp.column("code"), 530), pc.is_in(verb, pa.array(LOGIN_VERBS)))
        failed = ftp.filter(refused)
        if not failed.num_rows:
            return
        for g in failed.group_by(["server_ip", "server_port"], use_threads=False) \
                .aggregate([([], "count_all")]).to_pylist():
            _add(self._counts.ftp_failed_logins, self._server(g["server_ip"], g["server_port"]), g["count_all"])

    def _latency(self, table: pa.Table) -> None:
        http = self._rows(table, "http")
        if not http.num_rows:
            return
        http = http.filter(pc.is_valid(http.column("latency_ms")))
        if not http.num_rows:
            return
        width = len(self._edges) + 1
        for g in http.group_by(["server_ip", "server_port"], use_threads=False) \
                .aggregate([("latency_ms", "list")]).to_pylist():
            seconds = np.asarray(g["latency_ms_list"], dtype=np.float64) / 1000.0
            # side="left": a value equal to an edge falls in that bucket (le means <=).
            slots = np.searchsorted(self._edges, seconds, side="left")
            server = self._server(g["server_ip"], g["server_port"])
            entry = self._counts.latency.setdefault(server, [np.zeros(width, dtype=np.int64), 0.0])
            entry[0] += np.bincount(slots, minlength=width)
            entry[1] += float(seconds.sum())

    # -- what the capture says ---------------------------------------------------------

    def set_capture(self, figures: CaptureFigures) -> None:
        self.capture = figures  # one reference swap: collect() sees the old or the new one

    @staticmethod
    def figures(coverage: dict, connections_active: int = 0) -> CaptureFigures:
        """CaptureFigures from an engine's coverage dict (and the live loop's open connections)."""
        live = coverage.get("live") or {}
        return CaptureFigures(packets=int(coverage.get("packets_read") or 0),
                              kernel_drops=int(live.get("kernel_packets_dropped") or 0),
                              connections_active=int(connections_active),
                              missed_bytes=int(coverage.get("missed_bytes") or 0))

    # -- the collector ---------------------------------------------------------------

    def collect(self):
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily)

        with self._lock:
            c = self._counts
            events, errors = dict(c.events), dict(c.errors)
            latency = {k: (v[0].copy(), v[1]) for k, v in c.latency.items()}
            ws, ftp, folded = dict(c.ws_closes), dict(c.ftp_failed_logins), dict(c.folded)
        figures = self.capture

        family = CounterMetricFamily("analyzer_events", "Responses, replies and closes seen, by server and code",
                                     labels=["protocol", "server", "code", "class"])
        for key in sorted(events):
            family.add_metric(list(key), events[key])
        yield family
        family = CounterMetricFamily("analyzer_errors", "Events the active severity policy counts as errors",
                                     labels=["protocol", "server"])
        for key in sorted(errors):
            family.add_metric(list(key), errors[key])
        yield family
        family = HistogramMetricFamily("analyzer_http_latency_seconds",
                                       "HTTP first request byte to first response byte", labels=["server"])
        for server in sorted(latency):
            counts, total = latency[server]
            cumulative = np.cumsum(counts)
            buckets = [(_bound(edge), int(n)) for edge, n in zip(LATENCY_BUCKETS, cumulative[:-1])]
            buckets.append(("+Inf", int(cumulative[-1])))
            family.add_metric([server], buckets, total)
        yield family
        family = CounterMetricFamily("analyzer_websocket_closes", "WebSocket closes by code; inferred=true when "
                                     "no close frame carried the code (1005, 1006)",
                                     labels=["server", "code", "inferred"])
        for key in sorted(ws):
            family.add_metric(list(key), ws[key])
        yield family
        family = CounterMetricFamily("analyzer_ftp_failed_logins", "FTP USER/PASS/ACCT answered 530",
                                     labels=["server"])
        for key in sorted(ftp):
            family.add_metric([key], ftp[key])
        yield family
        yield CounterMetricFamily("analyzer_packets", "Packets analysed", value=figures.packets)
        yield CounterMetricFamily("analyzer_kernel_drops", "Packets the kernel dropped before the capture read them",
                                  value=figures.kernel_drops)
        yield GaugeMetricFamily("analyzer_connections_active", "TCP connections open in the connection table",
                                value=figures.connections_active)
        yield CounterMetricFamily("analyzer_missed_bytes", "TCP payload bytes lost to capture gaps",
                                  value=figures.missed_bytes)
        family = CounterMetricFamily("analyzer_metrics_labels_folded",
                                     "Events counted under \"other\" because a label limit was reached",
                                     labels=["label"])
        for key in ("server", "code"):
            family.add_metric([key], folded.get(key, 0))
        yield family
        family = InfoMetricFamily("analyzer", "The analyzer: version, engine, what it reads")
        family.add_metric([], self.info)
        yield family

    # -- where the numbers go ------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on host:port from a daemon thread; OSError if the address is taken."""
        from prometheus_client import start_http_server

        self.server, self._thread = start_http_server(port, addr=host, registry=self.registry)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self._thread.join(5)
            self.server = self._thread = None

    def write_textfile(self, path: str | Path) -> None:
        """The textfile-collector format, written to a temporary file and renamed."""
        from prometheus_client import write_to_textfile

        write_to_textfile(str(path), self.registry)

    def exposition(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode("utf-8")


def _bound(edge: float) -> str:
    return repr(float(edge))


def parse_address(text: str) -> tuple[str, int]:
    """"HOST:PORT", "[v6]:PORT" or ":PORT" (all interfaces) -> (host, port); ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad --metrics address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9464")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not host.replace("-", "").replace(".", "").isalnum():
                raise ValueError(f"bad --metrics address {text!r}: {host!r} is not a host name") from None
    return host or "0.0.0.0", int(port)


def check_textfile(path: str | Path) -> Path:
    """The --metrics-file path, checked before the run (its folder must exist); UsageError otherwise."""
    from analyzer.errors import UsageError

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise UsageError(f"--metrics-file {path}: is a directory; give a file name, e.g. {path / 'analyzer.prom'}")
    if not folder.is_dir():
        raise UsageError(f"--metrics-file {path}: the directory {folder} does not exist")
    return path


def check_servers(n: int | None) -> int:
    from analyzer.errors import UsageError

    if n is None:
        return MAX_SERVERS
    if n < 1:
        raise UsageError("--metrics-servers takes a number of servers, at least 1")
    return n
