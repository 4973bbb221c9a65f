# What a person watching a live capture needs second by second: rates over
# the last tick and totals, the failing servers with their top codes and
# requests, HTTP latency percentiles, and a feed of the latest errors.
#
# `RecentActivity` is a consumer of the EventSink's Arrow batches (like the
# statistics and the metrics); the live loop calls `snapshot()` once a tick
# and the terminal view (cli/live_view.py) draws it.  Work is per batch, in
# Arrow/numpy: the error mask is the severity policy's vectorised one, and the
# per-server tables are grouped, not walked event by event.  No pandas: it is
# refreshed every second.
#
# Bounds (a scan must not grow this without limit): MAX_SERVERS servers are
# tracked (later ones are counted under "other"), MAX_KEYS codes and requests
# per server (later ones under "(other)"), FEED_ROWS errors in the feed, and
# TICK_LATENCIES latencies per tick.  The run's latency percentiles come from
# a log-bucketed histogram (buckets 2 % wide), so they are within 2 %.
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.events import BatchConsumer, endpoint_label

MAX_SERVERS = 10_000
MAX_KEYS = 50
FEED_ROWS = 12
TICK_LATENCIES = 100_000
OTHER_SERVER = "other"
OTHER_KEY = "(other)"
# Log buckets for the run's latency: 1 µs up, each 2 % wider than the last.
_LAT_BASE_MS = 0.001
_LAT_STEP = math.log(1.02)
_LAT_BUCKETS = 1100  # 1 µs * 1.02**1100 ~ 2.8e6 s: every latency a capture can hold


@dataclass
class ServerActivity:
    server: str
    protocol: str
    events: int = 0
    errors: int = 0
    codes: dict = field(default_factory=dict)      # error code -> count
    requests: dict = field(default_factory=dict)   # failing request ("GET /x") -> count


@dataclass(frozen=True)
class ActivitySnapshot:
    events: int                    # since the start
    errors: int
    tick_events: int               # since the previous snapshot
    tick_errors: int
    protocols: dict                # protocol -> (events, errors), since the start
    failing: list                  # ServerActivity with errors, most errors first
    latency_tick: tuple            # (p50, p95) ms over the last tick, None when no latency
    latency_run: tuple             # (p50, p95) ms over the run
    feed: list                     # latest errors: dicts with epoch, protocol, server, code, name, request


def _add(table: dict, key, n: int, limit: int) -> None:
    if key in table or len(table) < limit:
        table[key] = table.get(key, 0) + n
    else:
        table[OTHER_KEY] = table.get(OTHER_KEY, 0) + n


class RecentActivity(BatchConsumer):
    """A batch consumer (write/flush/commit/abort); `snapshot()` once a tick."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self._lock = threading.Lock()
        self.events = self.errors = 0
        self._tick_events = self._tick_errors = 0
        self.protocols: dict[str, list[int]] = {}
        self.servers: dict[tuple[str, str], ServerActivity] = {}
        self.feed: deque = deque(maxlen=FEED_ROWS)
        self._tick_lat: list[np.ndarray] = []
        self._tick_lat_n = 0
        self._run_lat = np.zeros(_LAT_BUCKETS, dtype=np.int64)

    def _server(self, ip: str, port: int, protocol: str) -> ServerActivity:
        label = endpoint_label(ip, port)
        entry = self.servers.get((label, protocol))
        if entry is None:
            if len(self.servers) >= MAX_SERVERS:
                label = OTHER_SERVER
                entry = self.servers.get((label, protocol))
            if entry is None:
                entry = self.servers[(label, protocol)] = ServerActivity(label, protocol)
        return entry

    def write(self, batch: pa.RecordBatch) -> None:
        if not batch.num_rows:
            return
        t = pa.Table.from_batches([batch])
        protocol = t.column("protocol")
        error = self.policy.error_mask(protocol.to_numpy(zero_copy_only=False), t.column("code").to_numpy())
        errors = t.filter(pa.array(error))
        with self._lock:
            self.events += t.num_rows
            self._tick_events += t.num_rows
            self.errors += errors.num_rows
            self._tick_errors += errors.num_rows
            keys = ["protocol", "server_ip", "server_port"]
            for g in t.group_by(keys, use_threads=False).aggregate([([], "count_all")]).to_pylist():
                self._server(g["server_ip"], g["server_port"], g["protocol"]).events += g["count_all"]
                self.protocols.setdefault(g["protocol"], [0, 0])[0] += g["count_all"]
            if errors.num_rows:
                self._errors(errors)
            self._latency(t)

    def _errors(self, errors: pa.Table) -> None:
        keys = ["protocol", "server_ip", "server_port"]
        for g in errors.group_by(keys + ["code"], use_threads=False).aggregate([([], "count_all")]).to_pylist():
            entry = self._server(g["server_ip"], g["server_port"], g["protocol"])
            entry.errors += g["count_all"]
            _add(entry.codes, g["code"], g["count_all"], MAX_KEYS)
            self.protocols[g["protocol"]][1] += g["count_all"]
        requests = errors.set_column(errors.schema.get_field_index("request"), "request",
                                     pc.fill_null(errors.column("request"), ""))
        for g in requests.group_by(keys + ["request"], use_threads=False).aggregate([([], "count_all")]).to_pylist():
            entry = self._server(g["server_ip"], g["server_port"], g["protocol"])
            _add(entry.requests, g["request"], g["count_all"], MAX_KEYS)
        last = errors.slice(max(0, errors.num_rows - FEED_ROWS)).select(
            ["epoch", "protocol", "server_ip", "server_port", "code", "name", "request"]).to_pylist()
        for row in last:
            self.feed.append({"epoch": row["epoch"], "protocol": row["protocol"],
                              "server": endpoint_label(row["server_ip"], row["server_port"]), "code": row["code"],
                              "name": row["name"] or "", "request": row["request"] or ""})

    def _latency(self, t: pa.Table) -> None:
        ms = t.column("latency_ms").drop_null().to_numpy()
        ms = ms[np.isfinite(ms) & (ms >= 0)]
        if not len(ms):
            return
        if self._tick_lat_n < TICK_LATENCIES:
            keep = ms[:TICK_LATENCIES - self._tick_lat_n]
            self._tick_lat.append(keep)
            self._tick_lat_n += len(keep)
        slots = np.floor(np.log(np.maximum(ms, _LAT_BASE_MS) / _LAT_BASE_MS) / _LAT_STEP).astype(np.int64)
        self._run_lat += np.bincount(np.clip(slots, 0, _LAT_BUCKETS - 1), minlength=_LAT_BUCKETS)

    def snapshot(self, failing: int = 8) -> ActivitySnapshot:
        """The numbers now; the tick counters start again."""
        with self._lock:
            tick = np.concatenate(self._tick_lat) if self._tick_lat else np.empty(0)
            snap = ActivitySnapshot(
                events=self.events, errors=self.errors, tick_events=self._tick_events,
                tick_errors=self._tick_errors,
                protocols={p: tuple(v) for p, v in sorted(self.protocols.items())},
                failing=[ServerActivity(s.server, s.protocol, s.events, s.errors, dict(s.codes), dict(s.requests))
                         for s in sorted((s for s in self.servers.values() if s.errors),
                                         key=lambda s: (-s.errors, -s.events, s.server))[:failing]],
                latency_tick=tuple(float(v) for v in np.percentile(tick, [50, 95])) if len(tick) else None,
                latency_run=_histogram_percentiles(self._run_lat, (50, 95)),
                feed=list(self.feed))
            self._tick_events = self._tick_errors = 0
            self._tick_lat, self._tick_lat_n = [], 0
        return snap


def _histogram_percentiles(counts: np.ndarray, points) -> tuple | None:
    total = int(counts.sum())
    if not total:
        return None
    cumulative = np.cumsum(counts)
    out = []
    for p in points:
        slot = int(np.searchsorted(cumulative, math.ceil(total * p / 100), side="left"))
        # the bucket's geometric middle: within 1 % of any value in it
        out.append(_LAT_BASE_MS * math.exp((slot + 0.5) * _LAT_STEP))
    return tuple(out)
