# Per-host statistics: the one module that turns events and connections into
# the numbers every report shows (hosts.csv, codes.csv, report.html,
# summary.json, the terminal table, the --fail-on gate).
#
# Strategy: events arrive in batches (the pipeline's Arrow tables of ~16K
# rows, or DataFrames) and are never kept.  Each batch is reduced once to
# "base groups" (rows equal in every key below) and from those, with numpy,
# to small partial aggregates keyed by (host, role, protocol, code, ...);
# partials are concatenated and re-grouped when they grow (amortised, like a
# log-structured merge), so memory follows the number of distinct keys, not
# the number of events.  The severity policy is applied to the per-code
# counts at the end, so error counts are exact whatever the batching.
#
# Each event counts twice: once for its server (role "server", host =
# server_ip) and once for its client (role "client", host = client_ip).
#
# Bounded state and its error bounds (documented in README):
# - Latency percentiles (HTTP) are exact (numpy "linear") for a host with at
#   most EXACT_LATENCIES samples.  Past that, or when all hosts together hold
#   more than LATENCY_BUDGET raw samples (largest hosts first), a host's
#   samples go to a log-spaced histogram of 100 bins per decade from 1 µs to
#   1e8 ms; its percentiles are then the nearest-rank bin's geometric centre,
#   within 1.16 % of the exact nearest-rank value (10**0.005 - 1).
# - Host names per host: the first MAX_HOST_NAMES distinct names are kept
#   (with counts); the others are counted as dropped.
# - Failing URIs: grouped by path (stats/paths.py: no query, ID-like
#   segments as {id}/{uuid}/{hex}) unless the grouping is "full".  Exact
#   while at most MAX_FAILING_URIS distinct (server, port, Host, path, code)
#   keys; past that the table is pruned to its most frequent half
#   (Misra-Gries style), so counts of paths seen again after a prune are
#   lower bounds.  Same bound for FTP (client, server, user) login rows.
# - Failing endpoints (the "What is failing" view): one row per server
#   ip:port and protocol with events, errors, error codes and the exact first
#   and last error (epoch, frame, capture file); exact, since servers are few
#   next to events.
# - Time series: counts per (server, protocol, code, bucket); the bucket is
#   the smallest step giving at most MAX_BUCKETS buckets over the time axis,
#   which leaves out timestamp outliers (stats/timeaxis.py: bounded whatever
#   the timestamps; outliers are counted, `timestamp_outlier`).  Steps divide
#   each other, so coarsening while streaming gives exactly the counts one
#   pass at the final step would.
from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.events import CONNECTION_COLUMNS, EVENT_COLUMNS, iso_time
from analyzer.meaning.severity import Policy
from analyzer.stats.paths import MAX_URI_CHARS, URI_GROUPINGS, failing_keys
from analyzer.stats.timeaxis import BUCKET_STEPS, MAX_BUCKETS, TimeHistogram, choose_step

from analyzer import protocols as _registry

PROTOCOLS = _registry.EVENT_PROTOCOLS
ROLES = ("server", "client")

EXACT_LATENCIES = 4096        # per host; numpy sorts 4K floats in microseconds
LATENCY_BUDGET = 1_000_000    # raw samples over all hosts: 8 MB of float64
MAX_HOST_NAMES = 50           # distinct Host values kept per host; Zeek's http.log keeps one per request
HOST_NAMES_SHOWN = 10         # in hosts.csv / the HTML table, most frequent first
MAX_FAILING_URIS = 100_000    # distinct failing (server, Host, URI, code); ~30 MB worst case
MAX_LOGIN_ROWS = 100_000      # distinct FTP (client, server, user) rows
TOP_FAILING_URIS = 100        # rows in StatsResult.top_failing_uris
COMPACT_MIN_ROWS = 200_000    # partial rows tolerated before a merge
URI_KEYS_KEPT = 4096          # request lines whose failing-URI key is remembered; ~8 MB at MAX_URI_CHARS

# Latency histogram: bin 0 holds values under 1 µs (captures have µs
# resolution, so these are 0); bin b >= 1 holds [1e-3 * 10**((b-1)/100), ...).
_LAT_MIN_MS = 1e-3
_LAT_PER_DECADE = 100
_LAT_BINS = 11 * _LAT_PER_DECADE + 1

# The input contract: the pipeline's events (events.csv columns plus the
# catalogue's annotation) and its per-connection rows.
_EVENT_DEFAULTS = {
    "time": "", "epoch": 0.0, "frame": 0, "protocol": "http", "client_ip": "", "client_port": 0,
    "server_ip": "", "server_port": 0, "code": 0, "text": "", "request": "", "host": "",
    "latency_ms": np.nan, "connection": "", "direction": "", "inferred": False, "lines": pd.NA,
    "substatus": "", "substatus_source": "", "data_bytes": pd.NA, "flags": "", "capture": "",
    "community_id": "", "last_frame": pd.NA, "class": "", "name": "", "meaning": "", "standard": False,
}
_CONNECTION_DEFAULTS = {
    "connection": "", "protocol": "http", "client_ip": "", "client_port": 0, "server_ip": "",
    "server_port": 0, "first_epoch": np.nan, "last_epoch": np.nan, "bytes_c2s": 0, "bytes_s2c": 0,
    "missed_bytes": 0, "gaps": 0, "state": "closed", "outcome": "", "capture": "", "community_id": "",
}

HOST_COLUMNS = (
    "host", "role", "protocol", "events", "connections", "error_count", "error_rate",
    "class_1xx", "class_2xx", "class_3xx", "class_4xx", "class_5xx", "class_6xx", "class_other",
    "ws_normal", "ws_abnormal", "ws_inferred",
    "latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_samples",
    "hosts_seen", "first_seen", "last_seen",
    "ftp_failed_logins", "ftp_logins", "ws_closes_by_cause",
    "http_unanswered", "connections_open", "connections_reset", "connections_timeout",
    "connections_with_gaps", "missed_bytes", "bytes_sent", "bytes_received",
    "events_without_request", "flagged_events", "top_codes",
)
CODE_COLUMNS = ("server_ip", "protocol", "code", "count", "class", "name", "meaning")
TIMESERIES_COLUMNS = ("host", "protocol", "class", "bucket_start", "bucket_epoch", "count", "errors")
URI_COLUMNS = ("server_ip", "server_port", "host", "uri", "code", "count")
# One row per failing server endpoint, most errors first (report.html's "What is failing").
# top_codes and top_paths are lists of (value, count), most frequent first.
FAILING_COLUMNS = (
    "server_ip", "server_port", "protocol", "host_names", "events", "errors", "error_rate", "unit",
    "top_codes", "top_paths",
    "first_error", "first_error_epoch", "first_error_frame", "first_error_capture",
    "last_error", "last_error_epoch", "last_error_frame", "last_error_capture",
)
TOP_CODES_SHOWN = 3           # error codes per endpoint / per host row
TOP_PATHS_SHOWN = 3           # failing paths per endpoint
# What one event of a protocol is, so rates say what they divide.
EVENT_UNITS = {"http": "responses", "ftp": "replies", "websocket": "close frames"}
LOGIN_COLUMNS = ("client_ip", "server_ip", "user", "failed", "succeeded")
WS_COLUMNS = ("server_ip", "code", "name", "closed_first_by", "inferred", "count")
SUBSTATUS_COLUMNS = ("server_ip", "protocol", "code", "substatus", "count")


def iso(epoch) -> str:
    """ISO-8601 UTC with microseconds and Z, the events.csv `time` format."""
    if epoch is None or (isinstance(epoch, float) and math.isnan(epoch)):
        return ""
    return iso_time(float(epoch))


def ip_sort_key(value) -> str:
    """A string that sorts addresses numerically (IPv4 before IPv6, then names)."""
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return "9" + str(value)
    return f"{addr.version}{int(addr):040d}"


def class_label(protocol: str, code: int) -> str:
    """Fallback class when the catalogue gave none: 4xx (HTTP), 4yz (FTP), RFC 6455 §7.4.2 ranges."""
    try:
        return _registry.get(protocol).class_label(code)
    except KeyError:
        return "other"


class _Table:
    """Partial aggregates merged by concat + groupby when they grow.

    A part is a DataFrame or, from add_grouped, a dict of columns (arrays):
    the DataFrame of those is made once when they are merged, not once per
    batch (constructing a DataFrame cost more than grouping a batch).
    """

    def __init__(self, keys, ops: dict[str, str], limit: int | None = None, rank: str | None = None) -> None:
        self.keys = list(keys)
        self.ops = dict(ops)
        self.limit = limit          # prune to the top `limit // 2` by `rank` past this
        self.rank = rank
        self.pruned = 0             # rows dropped by pruning (0 means exact)
        self._parts: list[pd.DataFrame | dict] = []
        self._rows = 0
        self._base = 0

    def add(self, frame: pd.DataFrame | dict) -> None:
        rows = len(next(iter(frame.values()))) if isinstance(frame, dict) else len(frame)
        if rows:
            self._parts.append(frame)
            self._rows += rows
            if self._rows > max(COMPACT_MIN_ROWS, 2 * self._base) or (
                    self.limit is not None and self._rows > 2 * self.limit):
                self.compact()

    def add_grouped(self, columns: dict, **strings: np.ndarray) -> None:
        """add() the rows of `columns` grouped by this table's keys (see _grouped)."""
        self.add(_grouped(columns, self.keys, self.ops, **strings))

    def compact(self) -> None:
        if not self._parts:
            return
        if len(self._parts) > 1 or self._base == 0:
            merged = pd.concat(_frames(self._parts), ignore_index=True)
            merged = merged.groupby(self.keys, sort=False, dropna=False, as_index=False).agg(self.ops)
        else:
            merged = self._parts[0]
        if self.limit is not None and len(merged) > self.limit:
            keep = merged.sort_values(self.rank, ascending=False, kind="stable").head(self.limit // 2)
            self.pruned += len(merged) - len(keep)
            merged = keep.sort_index()
        self._parts = [merged.reset_index(drop=True)]
        self._rows = self._base = len(merged)

    def replace(self, frame: pd.DataFrame) -> None:
        """Swap in re-keyed rows (e.g. coarser time buckets) and regroup them."""
        self._parts = [frame]
        self._rows = len(frame)
        self._base = 0  # forces the regroup in compact()
        self.compact()

    def frame(self) -> pd.DataFrame:
        self.compact()
        if not self._parts:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in self.keys + list(self.ops)})
        return self._parts[0]


def _frames(parts: list) -> list[pd.DataFrame]:
    """Parts as DataFrames, each run of dict parts concatenated into one."""
    out: list[pd.DataFrame] = []
    run: list[dict] = []
    for part in parts + [None]:
        if isinstance(part, dict):
            run.append(part)
            continue
        if run:
            out.append(_frame({name: np.concatenate([r[name] for r in run]) for name in run[0]}))
            run = []
        if part is not None:
            out.append(part)
    return out


class _Extremes:
    """Per key, the (epoch, frame, capture) with the smallest (or, `last`,
    largest) (epoch, frame); ties keep the one seen first: exact first/last errors."""

    def __init__(self, keys, last: bool = False) -> None:
        self.keys = list(keys)
        self.last = last
        self._rows: dict[tuple, tuple[float, int, str]] = {}

    def add(self, key: tuple, epoch: float, frame: int, capture: str) -> None:
        old = self._rows.get(key)
        if old is None or ((epoch, frame) > old[:2] if self.last else (epoch, frame) < old[:2]):
            self._rows[key] = (epoch, frame, capture)

    def merge(self, other: "_Extremes") -> None:
        for key, row in other._rows.items():
            self.add(key, *row)

    def frame(self) -> pd.DataFrame:
        if not self._rows:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in self.keys + ["epoch", "frame", "capture"]})
        keys = list(self._rows)
        rows = list(self._rows.values())
        columns = {name: np.array([k[i] for k in keys], dtype=object) for i, name in enumerate(self.keys)}
        columns["server_port"] = columns["server_port"].astype(np.int64)
        columns.update(epoch=np.array([r[0] for r in rows], dtype=float),
                       frame=np.array([r[1] for r in rows], dtype=np.int64),
                       capture=np.array([r[2] for r in rows], dtype=object))
        return _frame(columns)


class _Latency:
    """Latency samples per key: raw (exact) while small, log histogram after."""

    def __init__(self, exact_limit: int = EXACT_LATENCIES, budget: int = LATENCY_BUDGET) -> None:
        self.exact_limit = exact_limit
        self.budget = budget
        self.ids: dict[tuple, int] = {}
        self.keys: list[tuple] = []
        self.raw_counts = np.zeros(0, dtype=np.int64)
        self.spilled_row = np.zeros(0, dtype=np.int64)    # -1: still raw
        self.hist = np.zeros((0, _LAT_BINS), dtype=np.int64)
        self._raw_ids: list[np.ndarray] = []
        self._raw_vals: list[np.ndarray] = []
        self.raw_total = 0

    @staticmethod
    def bins(values: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.floor(np.log10(np.maximum(values, _LAT_MIN_MS) / _LAT_MIN_MS) * _LAT_PER_DECADE).astype(np.int64) + 1
        b[values < _LAT_MIN_MS] = 0
        return np.clip(b, 0, _LAT_BINS - 1)

    @staticmethod
    def bin_value(b: int) -> float:
        if b == 0:
            return 0.0
        return _LAT_MIN_MS * 10 ** ((b - 1 + 0.5) / _LAT_PER_DECADE)

    def _intern(self, keys: list[tuple]) -> np.ndarray:
        out = np.empty(len(keys), dtype=np.int64)
        for i, key in enumerate(keys):
            idx = self.ids.get(key)
            if idx is None:
                idx = self.ids[key] = len(self.keys)
                self.keys.append(key)
            out[i] = idx
        grow = len(self.keys) - len(self.raw_counts)
        if grow > 0:
            self.raw_counts = np.concatenate([self.raw_counts, np.zeros(grow, dtype=np.int64)])
            self.spilled_row = np.concatenate([self.spilled_row, np.full(grow, -1, dtype=np.int64)])
        return out

    def add(self, codes: np.ndarray, uniques: list[tuple], values: np.ndarray) -> None:
        """`codes` index `uniques` (pd.factorize output) per value."""
        if not len(values):
            return
        ids = self._intern(uniques)[codes]
        rows = self.spilled_row[ids]
        to_hist = rows >= 0
        if to_hist.any():
            np.add.at(self.hist, (rows[to_hist], self.bins(values[to_hist])), 1)
        keep = ~to_hist
        if keep.any():
            self._raw_ids.append(ids[keep])
            self._raw_vals.append(values[keep])
            self.raw_total += int(keep.sum())
            self.raw_counts += np.bincount(ids[keep], minlength=len(self.raw_counts))
        over = np.flatnonzero(self.raw_counts > self.exact_limit)
        if self.raw_total > self.budget:
            order = np.argsort(-self.raw_counts, kind="stable")
            cum = np.cumsum(self.raw_counts[order])
            need = int(np.searchsorted(cum, self.raw_total - self.budget // 2)) + 1
            over = np.union1d(over, order[:need])
        if len(over):
            self._spill(over)

    def _spill(self, ids: np.ndarray) -> None:
        all_ids = np.concatenate(self._raw_ids) if self._raw_ids else np.zeros(0, dtype=np.int64)
        all_vals = np.concatenate(self._raw_vals) if self._raw_vals else np.zeros(0, dtype=float)
        move = np.isin(all_ids, ids)
        start = len(self.hist)
        self.hist = np.vstack([self.hist, np.zeros((len(ids), _LAT_BINS), dtype=np.int64)])
        self.spilled_row[ids] = np.arange(start, start + len(ids))
        np.add.at(self.hist, (self.spilled_row[all_ids[move]], self.bins(all_vals[move])), 1)
        self._raw_ids = [all_ids[~move]]
        self._raw_vals = [all_vals[~move]]
        self.raw_total = int((~move).sum())
        self.raw_counts[ids] = 0

    def merge(self, other: "_Latency") -> None:
        """Add another accumulator's samples: raw ones as raw (spilled here
        past the same limits), histogram rows into this key's histogram."""
        if other._raw_ids:
            ids = np.concatenate(other._raw_ids)
            self.add(ids, other.keys, np.concatenate(other._raw_vals))
        spilled = np.flatnonzero(other.spilled_row >= 0)
        if len(spilled):
            mine = self._intern([other.keys[int(i)] for i in spilled])
            fresh = np.unique(mine[self.spilled_row[mine] < 0])
            if len(fresh):
                self._spill(fresh)
            self.hist[self.spilled_row[mine]] += other.hist[other.spilled_row[spilled]]

    def percentiles(self, qs=(50, 95, 99)) -> dict[tuple, tuple]:
        """key -> (p50, p95, p99, samples, exact)."""
        out: dict[tuple, tuple] = {}
        if self._raw_ids:
            ids = np.concatenate(self._raw_ids)
            vals = np.concatenate(self._raw_vals)
            order = np.argsort(ids, kind="stable")
            ids, vals = ids[order], vals[order]
            cuts = np.flatnonzero(np.diff(ids)) + 1
            for chunk_ids, chunk in zip(np.split(ids, cuts), np.split(vals, cuts)):
                if len(chunk):
                    p = np.percentile(chunk, qs)
                    out[self.keys[int(chunk_ids[0])]] = (*map(float, p), len(chunk), True)
        for idx in np.flatnonzero(self.spilled_row >= 0):
            counts = self.hist[self.spilled_row[idx]]
            total = int(counts.sum())
            cum = np.cumsum(counts)
            ps = []
            for q in qs:
                rank = max(1, math.ceil(q / 100 * total))
                ps.append(self.bin_value(int(np.searchsorted(cum, rank))))
            out[self.keys[int(idx)]] = (*ps, total, False)
        return out


@dataclass
class StatsResult:
    hosts: pd.DataFrame
    codes: pd.DataFrame
    timeseries: pd.DataFrame
    top_failing_uris: pd.DataFrame
    ftp_logins: pd.DataFrame
    ws_closes: pd.DataFrame
    substatus: pd.DataFrame
    summary: dict
    failing: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(FAILING_COLUMNS)))
    policy: Policy = field(default_factory=Policy.default)
    # (protocol, code) -> (class, name, meaning, standard) as the events were annotated
    meanings: dict = field(default_factory=dict)

    def protocol_events(self, protocol: str) -> int:
        return int(self.summary["protocols"].get(protocol, {}).get("events", 0))


def _col(df: pd.DataFrame, name: str, default):
    if name in df.columns:
        return df[name]
    return pd.Series([default] * len(df), index=df.index)


def _frame(columns: dict) -> pd.DataFrame:
    """A DataFrame that keeps object arrays as object columns.

    pandas 3 would convert every string array to Arrow strings; for frames
    that live only for one groupby that conversion costs more than the groupby.
    """
    return pd.DataFrame({k: pd.Series(v, dtype=object, copy=False) if getattr(v, "dtype", None) == object else v
                         for k, v in columns.items()})


def _group_ids(*keys) -> tuple[np.ndarray, int]:
    """One id per row for the tuple of its key values, numbered in order of
    first appearance (NaN is a value), and the number of groups."""
    gid = np.zeros(len(keys[0]), dtype=np.int64)
    size = 1
    for key in keys:
        codes, width = _small_codes(np.asarray(key))
        if size * width >= 2 ** 62:  # the mixed-radix id would overflow: renumber first
            gid, found = pd.factorize(gid, sort=False)
            size = len(found)
        gid = gid * width + codes
        size *= width
    gid, found = pd.factorize(gid, sort=False)
    return gid.astype(np.int64, copy=False), len(found)


def _small_codes(key: np.ndarray) -> tuple[np.ndarray, int]:
    """`key` as integers in [0, width): as they are when they already are
    small non-negative integers (the string codes, flags), else factorized."""
    if key.dtype == bool:
        return key.astype(np.int64), 2
    if key.dtype.kind in "iu" and len(key) and 0 <= key.min() and key.max() < 2 ** 20:
        return key.astype(np.int64, copy=False), int(key.max()) + 1
    codes, uniques = pd.factorize(key, sort=False, use_na_sentinel=False)
    return codes, max(len(uniques), 1)


def _first_rows(gid: np.ndarray) -> np.ndarray:
    """Each group's first row, in group order (the ids of _group_ids are
    numbered by first appearance, so a row opens a group when its id passes
    every id before it)."""
    if not len(gid):
        return np.zeros(0, dtype=np.int64)
    top = np.maximum.accumulate(gid)
    return np.flatnonzero(np.concatenate([[True], top[1:] > top[:-1]]))


def _coded(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """A string column as (codes, names), names[codes] being _strings(series).

    One hash of the column and no Python string made per row."""
    codes, uniques = pd.factorize(series, sort=False)
    return _with_empty(codes, [str(v) for v in np.asarray(uniques, dtype=object)])


def _with_empty(codes: np.ndarray, names: list) -> tuple[np.ndarray, np.ndarray]:
    """(codes, names) with missing values (code -1) coded as "" (reusing a "" name)."""
    names = np.array(list(names) + [""], dtype=object)
    empty = np.flatnonzero(names[:-1] == "")
    codes = np.where(codes < 0, empty[0] if len(empty) else len(names) - 1, codes).astype(np.int64)
    return codes, names


# ufunc.at per op; fmin/fmax skip NaN, as pandas does (a group of NaN only stays NaN).
_REDUCE = {"sum": np.add, "min": np.fmin, "max": np.fmax}


def _grouped(columns: dict, keys: list[str], ops: dict[str, str], **strings: np.ndarray) -> dict:
    """`columns` (arrays) grouped by `keys` and reduced by `ops`, as columns.

    The string key columns named in `strings` hold integer codes into the
    array given for them, decoded on the (small) result.  Groups come in
    order of first appearance and NaN keys form a group, as pandas'
    groupby(sort=False, dropna=False) gives; numpy's ufunc.at does the work
    (pandas' groupby machinery cost ~15 ms per call on a batch).
    """
    gid, size = _group_ids(*(columns[key] for key in keys))
    first = _first_rows(gid)
    out = {key: np.asarray(columns[key])[first] for key in keys}
    for name, op in ops.items():
        values = np.asarray(columns[name])
        if values.dtype == bool:
            values = values.astype(np.int64)
        if op == "sum":
            reduced = np.zeros(size, dtype=values.dtype)
        else:
            reduced = np.full(size, np.nan, dtype=np.result_type(values.dtype, float))
        _REDUCE[op].at(reduced, gid, values)
        out[name] = reduced
    for name, uniques in strings.items():
        out[name] = np.asarray(uniques, dtype=object).take(out[name])
    return out


class _ArrowEvents:
    """The columns add_events reads, from an Arrow batch: numbers and
    string codes as numpy arrays, strings as Python objects only for the
    rows asked for.  Missing values read as the events.csv defaults
    (0, -1 for a code, NaN, "", False); a missing column as all missing."""

    def __init__(self, data) -> None:
        self.data = data
        self.n = data.num_rows

    def _column(self, name: str):
        return self.data.column(name) if name in self.data.schema.names else None

    def coded(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        column = self._column(name)
        if column is None:
            return _with_empty(np.full(self.n, -1), [])
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        encoded = column.dictionary_encode()
        return _with_empty(encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False),
                           encoded.dictionary.to_pylist())

    def ints(self, name: str, default: int) -> np.ndarray:
        column = self._column(name)
        if column is None:
            return np.full(self.n, default, dtype=np.int64)
        return column.fill_null(default).to_numpy().astype(np.int64, copy=False)

    def floats(self, name: str) -> np.ndarray:
        column = self._column(name)
        if column is None:
            return np.full(self.n, np.nan)
        return column.cast(pa.float64()).fill_null(np.nan).to_numpy().astype(float, copy=False)

    def bools(self, name: str) -> np.ndarray:
        column = self._column(name)
        if column is None:
            return np.zeros(self.n, dtype=bool)
        return column.fill_null(False).to_numpy(zero_copy_only=False).astype(bool, copy=False)

    def empty(self, name: str) -> np.ndarray:
        """Where a string column is "" or missing."""
        column = self._column(name)
        if column is None:
            return np.ones(self.n, dtype=bool)
        return pc.equal(column, "").fill_null(True).to_numpy(zero_copy_only=False).astype(bool, copy=False)

    def strings_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        column = self._column(name)
        if column is None:
            return np.full(len(rows), "", dtype=object)
        return np.array(column.take(pa.array(rows, type=pa.int64())).fill_null("").to_pylist(), dtype=object)

    def bools_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        return self.bools(name)[rows]


class _FrameEvents:
    """The same reader over a DataFrame (tests, compute(), callers' own events)."""

    def __init__(self, df: pd.DataFrame) -> None:
        self.df = df
        self.n = len(df)

    def coded(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return _coded(_col(self.df, name, ""))

    def ints(self, name: str, default: int) -> np.ndarray:
        return pd.to_numeric(_col(self.df, name, default), errors="coerce").fillna(default).astype(np.int64).to_numpy()

    def floats(self, name: str) -> np.ndarray:
        return pd.to_numeric(_col(self.df, name, np.nan), errors="coerce").to_numpy(dtype=float)

    def bools(self, name: str) -> np.ndarray:
        return _bools(_col(self.df, name, False))

    def empty(self, name: str) -> np.ndarray:
        return _strings(_col(self.df, name, "")) == ""

    def strings_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        return _strings(_col(self.df, name, "").iloc[rows])

    def bools_at(self, name: str, rows: np.ndarray) -> np.ndarray:
        return _bools(_col(self.df, name, False).iloc[rows])


def _strings(series: pd.Series) -> np.ndarray:
    return series.fillna("").astype(str).to_numpy(dtype=object)


def _bools(series: pd.Series) -> np.ndarray:
    if series.dtype == bool:
        return series.to_numpy()
    return series.map(lambda v: v is True or (isinstance(v, (int, np.integer)) and v == 1)
                      or str(v).strip().lower() in ("true", "1")).to_numpy(dtype=bool)


def _outcome(text) -> dict:
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


class StatsAccumulator:
    """Feed event and connection batches, then `finish(coverage)` once."""

    def __init__(self, policy: Policy | None = None, *, exact_latencies: int = EXACT_LATENCIES,
                 latency_budget: int = LATENCY_BUDGET, max_host_names: int = MAX_HOST_NAMES,
                 max_failing_uris: int = MAX_FAILING_URIS, max_login_rows: int = MAX_LOGIN_ROWS,
                 max_buckets: int = MAX_BUCKETS, uri_grouping: str = "path") -> None:
        if uri_grouping not in URI_GROUPINGS:
            raise ValueError(f"uri_grouping must be one of {', '.join(URI_GROUPINGS)}")
        self.policy = policy or Policy.default()
        self.uri_grouping = uri_grouping
        self.max_host_names = max_host_names
        self.max_buckets = max_buckets
        self._codes = _Table(["ip", "role", "protocol", "code", "inferred"],
                             {"count": "sum", "first": "min", "last": "max", "flagged": "sum", "norequest": "sum"})
        self._ts = _Table(["server_ip", "protocol", "code", "bucket"], {"count": "sum"})
        self._substatus = _Table(list(SUBSTATUS_COLUMNS[:-1]), {"count": "sum"})
        self._uris = _Table(list(URI_COLUMNS[:-1]), {"count": "sum"}, limit=max_failing_uris, rank="count")
        endpoint = ["server_ip", "server_port", "protocol"]
        self._endpoints = _Table(endpoint, {"events": "sum", "errors": "sum"})
        self._endpoint_codes = _Table(endpoint + ["code"], {"count": "sum"})
        self._endpoint_names = _Table(["server_ip", "server_port", "host"], {"count": "sum"},
                                      limit=max_failing_uris, rank="count")
        self._first_errors = _Extremes(endpoint)
        self._last_errors = _Extremes(endpoint, last=True)
        self._conns = _Table(["ip", "role", "protocol"], {
            "connections": "sum", "first": "min", "last": "max", "connections_open": "sum",
            "connections_reset": "sum", "connections_timeout": "sum", "connections_with_gaps": "sum",
            "missed_bytes": "sum", "bytes_sent": "sum", "bytes_received": "sum",
            "http_unanswered": "sum", "ftp_failed_logins": "sum", "ftp_logins": "sum"})
        self._logins = _Table(["client_ip", "server_ip", "user"], {"failed": "sum", "succeeded": "sum"},
                              limit=max_login_rows, rank="failed")
        self._ws = _Table(["ip", "role", "code", "closed_first_by", "inferred"], {"count": "sum"})
        self._latency = _Latency(exact_latencies, latency_budget)
        self._meanings: dict[tuple[str, int], tuple[str, str, str, bool, bool]] = {}
        self._uri_keys: dict[str, str] = {}  # request line -> failing_keys(), a cache
        self._names: dict[tuple[str, str], dict[str, int]] = {}
        self.host_names_dropped = 0
        self._step = BUCKET_STEPS[0]
        self._hist = TimeHistogram(max_buckets)
        self._axis = None
        self._first: float | None = None
        self._last: float | None = None
        self.events = 0
        self.connections = 0

    # -- events ---------------------------------------------------------------

    # The event columns add_events reads (any others are ignored): the
    # pipeline hands over only these of its Arrow batches (engines/sink.py
    # StatsFeed).
    EVENT_INPUTS = ("epoch", "frame", "protocol", "client_ip", "server_ip", "server_port", "code", "request",
                    "host", "latency_ms", "inferred", "substatus", "flags", "capture", "class", "name", "meaning",
                    "standard")

    def add_events(self, events) -> None:
        """A batch of events: an Arrow table or record batch (the pipeline's) or a DataFrame."""
        if events is None or not len(events):
            return
        ev = _ArrowEvents(events) if isinstance(events, (pa.Table, pa.RecordBatch)) else _FrameEvents(events)
        n = len(events)
        self.events += n
        # Each string column is hashed once per batch (coded) and the
        # groupings below run on its integer codes, decoded on their small
        # results.  Strings the counts do not need (request, flags,
        # substatus) are only compared with "", in Arrow; the few rows whose
        # text is kept are taken from the batch by index.
        p_code, p_names = ev.coded("protocol")
        s_code, s_names = ev.coded("server_ip")
        c_code, c_names = ev.coded("client_ip")
        h_code, h_names = ev.coded("host")
        code = ev.ints("code", -1)
        epoch = ev.floats("epoch")
        port = ev.ints("server_port", 0)
        inferred = ev.bools("inferred")
        flagged = ~ev.empty("flags")
        norequest = ev.empty("request")
        plain = ev.empty("substatus")

        ok = ~np.isnan(epoch)
        if ok.any():
            lo, hi = float(epoch[ok].min()), float(epoch[ok].max())
            self._first = lo if self._first is None else min(self._first, lo)
            self._last = hi if self._last is None else max(self._last, hi)
            self._hist.add(epoch[ok])
            self._rebucket(self._hist.step)
        bucket = np.floor(epoch / self._step) * self._step  # NaN where the time is

        # The rows are first reduced to "base groups": rows equal in every
        # key a table below groups by.  The tables are then grouped from
        # those (a few dozen rows per batch, not 16K), weighted by their
        # counts.  Base groups are numbered by first appearance, so every
        # table sees its groups in the order a per-row groupby would.
        gid, size = _group_ids(p_code, s_code, c_code, h_code, code, port, inferred, flagged, norequest, plain,
                               bucket)
        first = _first_rows(gid)
        count = np.bincount(gid, minlength=size)
        g_lo = np.full(size, np.nan)
        g_hi = np.full(size, np.nan)
        np.fmin.at(g_lo, gid, epoch)
        np.fmax.at(g_hi, gid, epoch)
        gp, gs, gc, gh, gcode = p_code[first], s_code[first], c_code[first], h_code[first], code[first]
        gport, gbucket = port[first], bucket[first]
        g_http = p_names[gp] == "http"
        g_error = np.asarray(self.policy.error_mask(p_names[gp], gcode), dtype=bool)

        self._note_meanings(ev, first, p_names, gp, gcode, plain[first])
        ips = np.concatenate([s_names, c_names])  # the long view's ip codes: server ones, then client ones
        both = lambda a: np.concatenate([a, a])  # noqa: E731 - server view then client view
        long = {
            "ip": np.concatenate([gs, gc + len(s_names)]),
            "role": np.repeat(np.arange(2), size),
            "protocol": both(gp), "code": both(gcode), "inferred": both(inferred[first]),
            "count": both(count), "first": both(g_lo), "last": both(g_hi),
            "flagged": both(count * flagged[first]), "norequest": both(count * norequest[first]),
        }
        self._codes.add_grouped(long, ip=ips, role=np.array(ROLES, dtype=object), protocol=p_names)

        if ok.any():
            timed = ~np.isnan(gbucket)
            ts = {"server_ip": gs[timed], "protocol": gp[timed], "code": gcode[timed], "bucket": gbucket[timed],
                  "count": count[timed]}
            self._ts.add_grouped(ts, server_ip=s_names, protocol=p_names)

        if not plain.all():
            rows = np.flatnonzero(~plain)
            sub = pd.DataFrame({"server_ip": s_names[s_code[rows]], "protocol": p_names[p_code[rows]],
                                "code": code[rows], "substatus": ev.strings_at("substatus", rows), "count": 1})
            self._substatus.add(sub.groupby(self._substatus.keys, sort=False, as_index=False).agg(self._substatus.ops))

        http = g_http[gid]
        latency = ev.floats("latency_ms")
        lat_ok = http & ~np.isnan(latency)
        if lat_ok.any():
            m = int(lat_ok.sum())
            # Keys per (host, role): server codes, then client codes, then one for "all".
            keys = np.concatenate([s_code[lat_ok], c_code[lat_ok] + len(s_names),
                                   np.full(m, len(s_names) + len(c_names))])
            codes_, uniques = pd.factorize(keys, sort=False)
            named = [(ip, "server") for ip in s_names] + [(ip, "client") for ip in c_names] + [("", "all")]
            vals = np.concatenate([latency[lat_ok]] * 3)
            self._latency.add(codes_, [named[k] for k in uniques], vals)

        g_named = g_http & (h_names[gh] != "")
        if g_named.any():
            self._note_host_names((gs[g_named], s_names), (gc[g_named], c_names), (gh[g_named], h_names),
                                  count[g_named])

        ends = {"server_ip": gs, "server_port": gport, "protocol": gp, "events": count, "errors": count * g_error}
        self._endpoints.add_grouped(ends, server_ip=s_names, protocol=p_names)
        if g_named.any():
            names = {"server_ip": gs[g_named], "server_port": gport[g_named], "host": gh[g_named],
                     "count": count[g_named]}
            self._endpoint_names.add_grouped(names, server_ip=s_names, host=h_names)
        if not g_error.any():
            return
        errs = {"server_ip": gs[g_error], "server_port": gport[g_error], "protocol": gp[g_error],
                "code": gcode[g_error], "count": count[g_error]}
        self._endpoint_codes.add_grouped(errs, server_ip=s_names, protocol=p_names)
        error = g_error[gid]
        self._note_error_times(ev, error & ok, gid, first, (s_code, s_names), port, (p_code, p_names), epoch)

        # A response whose request was not seen has no URI to rank.
        failing = http & ~norequest & error
        if failing.any():
            rows = np.flatnonzero(failing)
            # Grouped once per distinct request line (they repeat: a failing
            # URI fails again and again), not once per event.
            r_code, r_lines = pd.factorize(ev.strings_at("request", rows), sort=False)
            u_code, u_names = pd.factorize(self._failing_keys(r_lines), sort=False)
            uris = {"server_ip": s_code[rows], "server_port": port[rows], "host": h_code[rows],
                    "uri": u_code[r_code], "code": code[rows], "count": np.ones(len(rows), dtype=np.int64)}
            self._uris.add_grouped(uris, server_ip=s_names, host=h_names, uri=np.asarray(u_names, dtype=object))

    def _failing_keys(self, lines: np.ndarray) -> np.ndarray:
        """failing_keys() of distinct request lines, remembered across batches
        (at most URI_KEYS_KEPT lines of at most MAX_URI_CHARS characters)."""
        known = self._uri_keys
        missing = [line for line in lines if line not in known]
        found = dict(zip(missing, failing_keys(np.array(missing, dtype=object), self.uri_grouping))) if missing else {}
        if len(known) + len(found) > URI_KEYS_KEPT:
            known.clear()
        known.update((line, key) for line, key in found.items() if len(line) <= MAX_URI_CHARS)
        return np.array([found[line] if line in found else known[line] for line in lines], dtype=object)

    def _note_error_times(self, ev, timed, gid, first, server, port, proto, epoch) -> None:
        """The exact first and last error per server ip:port and protocol
        (smallest / largest (epoch, frame), the earliest row on ties)."""
        if not timed.any():
            return
        (s_code, s_names), (p_code, p_names) = server, proto
        rows = np.flatnonzero(timed)
        frame = ev.ints("frame", 0)[rows]
        when = epoch[rows]
        # One id per endpoint, through the base groups (few) rather than the rows.
        end_of_group, _ = _group_ids(s_code[first], port[first], p_code[first])
        end = end_of_group[gid[rows]]
        picked = []
        for table, sign in ((self._first_errors, 1), (self._last_errors, -1)):
            order = np.lexsort((rows, sign * frame, sign * when, end))
            ordered = end[order]
            picked.append((table, order[np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))]))
        wanted = np.unique(np.concatenate([p for _, p in picked]))
        captures = dict(zip(wanted.tolist(), ev.strings_at("capture", rows[wanted])))
        for table, chosen in picked:
            for i in chosen.tolist():
                r = rows[i]
                table.add((s_names[s_code[r]], int(port[r]), p_names[p_code[r]]), float(when[i]), int(frame[i]),
                          captures[i])

    def _note_meanings(self, ev, first: np.ndarray, p_names: np.ndarray, gp: np.ndarray, gcode: np.ndarray,
                       g_plain: np.ndarray) -> None:
        """The catalogue's words per (protocol, code), from the first event
        of each without a sub-status (else the first one).  `first` are the
        base groups' first rows; `gp`, `gcode`, `g_plain` their keys."""
        kid, _ = _group_ids(gp, gcode)
        # Per (protocol, code): plain base groups first, then in batch order.
        order = np.lexsort((np.arange(len(kid)), ~g_plain, kid))
        ordered = kid[order]
        chosen = order[np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))]
        chosen = chosen[np.argsort(first[chosen], kind="stable")]  # in the order of their rows, as kept before
        picked = []
        for group in chosen.tolist():
            key = (p_names[gp[group]], int(gcode[group]))
            kept = self._meanings.get(key)
            if kept is None or not kept[4]:  # once explained by a plain event, a key keeps its words
                picked.append((key, int(first[group]), bool(g_plain[group])))
        if not picked:
            return
        rows = np.array([row for _, row, _ in picked], dtype=np.int64)
        words = [ev.strings_at(name, rows) for name in ("class", "name", "meaning")]
        standard = ev.bools_at("standard", rows)
        for i, (key, _, plain) in enumerate(picked):
            self._keep_meaning(key, (words[0][i], words[1][i], words[2][i], bool(standard[i]), plain))

    def _keep_meaning(self, key: tuple[str, int], meaning: tuple) -> None:
        """The first meaning seen for `key`, unless a later one is of an event
        without a sub-status (meaning[4]) and the kept one is not."""
        old = self._meanings.get(key)
        if old is None or (not old[4] and meaning[4]):
            self._meanings[key] = meaning

    def _note_host_names(self, server, client, names, counts: np.ndarray) -> None:
        """Host names per (host, role); `server`, `client` and `names` are
        (codes, names) of coded(), `counts` the events of each row."""
        (s_code, s_names), (c_code, c_names), (h_code, h_names) = server, client, names
        n = len(h_code)
        counts = _grouped({"ip": np.concatenate([s_code, c_code + len(s_names)]), "role": np.repeat(np.arange(2), n),
                           "name": np.concatenate([h_code, h_code]), "count": np.concatenate([counts, counts])},
                          ["ip", "role", "name"], {"count": "sum"}, ip=np.concatenate([s_names, c_names]),
                          role=np.array(ROLES, dtype=object), name=h_names)
        for ip, role, name, k in zip(counts["ip"], counts["role"], counts["name"], counts["count"]):
            self._count_name((ip, role), name, int(k))

    def _count_name(self, key: tuple[str, str], name: str, n: int) -> None:
        """`n` more requests naming `name` for (host, role); past MAX_HOST_NAMES new names are dropped, counted."""
        seen = self._names.setdefault(key, {})
        if name in seen:
            seen[name] += n
        elif len(seen) < self.max_host_names:
            seen[name] = n
        else:
            self.host_names_dropped += 1

    # -- shares ---------------------------------------------------------------

    def merge(self, other: "StatsAccumulator") -> None:
        """Add what `other` counted from another share of the same run (a
        parallel worker's connections).

        Exact wherever one pass is: sums, minima and maxima regroup; the time
        histogram and buckets coarsen to the coarser step (steps divide each
        other); raw latencies stay raw and spill past the same per-host limit;
        the first/last errors keep the extreme (epoch, frame).  What is
        bounded by order in one pass stays bounded, not exact: host names past
        MAX_HOST_NAMES, failing URIs and login rows past their pruning limits,
        and which hosts the latency budget spills first.
        """
        self.events += other.events
        self.connections += other.connections
        self.host_names_dropped += other.host_names_dropped
        for bound, pick in (("_first", min), ("_last", max)):
            theirs = getattr(other, bound)
            if theirs is not None:
                mine = getattr(self, bound)
                setattr(self, bound, theirs if mine is None else pick(mine, theirs))
        self._hist.merge(other._hist)
        step = max(self._step, other._step, self._hist.step)
        self._rebucket(step)
        ts = other._ts.frame()
        if len(ts) and other._step < step:
            ts = ts.assign(bucket=np.floor(ts["bucket"].to_numpy(dtype=float) / step) * step)
        self._ts.add(ts)
        for name in ("_codes", "_substatus", "_uris", "_endpoints", "_endpoint_codes", "_endpoint_names",
                     "_conns", "_logins", "_ws"):
            mine, theirs = getattr(self, name), getattr(other, name)
            mine.add(theirs.frame())
            mine.pruned += theirs.pruned
        self._first_errors.merge(other._first_errors)
        self._last_errors.merge(other._last_errors)
        self._latency.merge(other._latency)
        for key, meaning in other._meanings.items():
            self._keep_meaning(key, meaning)
        for key, names in other._names.items():
            for name, n in names.items():
                self._count_name(key, name, n)

    def _rebucket(self, step: int) -> None:
        if step <= self._step:
            return
        frame = self._ts.frame()
        if len(frame):
            frame = frame.assign(bucket=np.floor(frame["bucket"].to_numpy(dtype=float) / step) * step)
            self._ts.replace(frame)
        self._step = step

    # -- connections ----------------------------------------------------------

    def add_connections(self, df: pd.DataFrame) -> None:
        """Connection rows; only http/ftp/websocket ones count (ftp-data has no events).

        A WebSocket reached by an HTTP upgrade is one TCP connection whose
        row says "http" with the WebSocket outcome nested under "websocket":
        it counts as a connection of both protocols.
        """
        if df is None or not len(df):
            return
        proto = _strings(df["protocol"])
        outcomes = [_outcome(o) for o in _col(df, "outcome", "")]
        keep = np.isin(proto, PROTOCOLS)
        nested = [i for i, (p, o) in enumerate(zip(proto, outcomes))
                  if p == "http" and isinstance(o.get("websocket"), dict)]
        parts = [df[keep]]
        outs = [o for o, k in zip(outcomes, keep) if k]
        if nested:
            parts.append(df.iloc[nested].assign(protocol="websocket"))
            outs += [outcomes[i]["websocket"] for i in nested]
        df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
        if not len(df):
            return
        self._add_connections(df, outs)

    def _add_connections(self, df: pd.DataFrame, outcomes: list[dict]) -> None:
        n = len(df)
        self.connections += n
        proto = _strings(df["protocol"])
        server = _strings(df["server_ip"])
        client = _strings(df["client_ip"])
        state = _strings(_col(df, "state", ""))
        num = lambda name: pd.to_numeric(_col(df, name, 0), errors="coerce").fillna(0).to_numpy(dtype=np.int64)  # noqa: E731
        c2s, s2c = num("bytes_c2s"), num("bytes_s2c")
        first = pd.to_numeric(_col(df, "first_epoch", np.nan), errors="coerce").to_numpy(dtype=float)
        last = pd.to_numeric(_col(df, "last_epoch", np.nan), errors="coerce").to_numpy(dtype=float)

        unanswered = np.zeros(n, dtype=np.int64)
        failed = np.zeros(n, dtype=np.int64)
        logins = np.zeros(n, dtype=np.int64)
        login_rows = []
        ws_rows = []
        for i, (p, out) in enumerate(zip(proto, outcomes)):
            if not out:
                continue
            if p == "http":
                unanswered[i] = _int(out.get("unanswered"))
            elif p == "ftp":
                # The dissector keeps a bounded list of user names but an exact count.
                users = [str(u) for u in (out.get("failed_logins") or []) if u is not None]
                failed[i] = max(len(users), _int(out.get("failed_login_count")))
                ok = out.get("login") == "success"
                logins[i] = _int(out["logins"]) if "logins" in out else int(ok)
                for user in users:
                    login_rows.append((client[i], server[i], user, 1, 0))
                if ok:
                    login_rows.append((client[i], server[i], str(out.get("user") or ""), 0, 1))
            elif p == "websocket":
                ws_state = out.get("state")
                code = out.get("close_code")
                if ws_state == "open" or state[i] == "open" or code is None:
                    continue
                code = _int(code)
                inferred = out.get("inferred")
                if inferred is None:
                    inferred = code in (1005, 1006)
                closer = str(out.get("closed_first_by") or "")
                ws_rows.append((server[i], "server", code, closer, bool(inferred)))
                ws_rows.append((client[i], "client", code, closer, bool(inferred)))

        both = lambda a: np.concatenate([a, a])  # noqa: E731
        long = _frame({
            "ip": np.concatenate([server, client]),
            "role": np.repeat(np.array(ROLES, dtype=object), n),
            "protocol": both(proto), "connections": np.ones(2 * n, dtype=np.int64),
            "first": both(first), "last": both(last),
            "connections_open": both(state == "open"), "connections_reset": both(state == "reset"),
            "connections_timeout": both(state == "timeout"),
            "connections_with_gaps": both(num("gaps") > 0), "missed_bytes": both(num("missed_bytes")),
            "bytes_sent": np.concatenate([s2c, c2s]), "bytes_received": np.concatenate([c2s, s2c]),
            "http_unanswered": both(unanswered), "ftp_failed_logins": both(failed), "ftp_logins": both(logins),
        })
        self._conns.add(long.groupby(self._conns.keys, sort=False, as_index=False).agg(self._conns.ops))
        if login_rows:
            frame = pd.DataFrame(login_rows, columns=list(LOGIN_COLUMNS))
            self._logins.add(frame.groupby(self._logins.keys, sort=False, as_index=False).agg(self._logins.ops))
        if ws_rows:
            frame = pd.DataFrame(ws_rows, columns=self._ws.keys).assign(count=1)
            self._ws.add(frame.groupby(self._ws.keys, sort=False, as_index=False).agg(self._ws.ops))

    # -- results --------------------------------------------------------------

    def finish(self, coverage: dict | None = None) -> StatsResult:
        coverage = dict(coverage or {})
        first, last = self._first, self._last
        for key, pick in (("first_epoch", min), ("last_epoch", max)):
            value = coverage.get(key)
            if isinstance(value, (int, float)) and not math.isnan(value):
                current = first if key == "first_epoch" else last
                chosen = value if current is None else pick(current, value)
                if key == "first_epoch":
                    first = chosen
                else:
                    last = chosen
        # The axis leaves outliers out; the capture's first and last packet
        # widen it where they are near the events (timeaxis.py).
        self._axis = self._hist.axis((coverage.get("first_epoch"), coverage.get("last_epoch")))
        if self._axis is not None:
            self._rebucket(self._axis.step)
        elif first is not None and last is not None:
            self._rebucket(choose_step(first, last, self.max_buckets))

        codes_long = self._codes.frame().copy()
        codes_long["code"] = codes_long["code"].astype(np.int64)
        codes_long["error"] = self.policy.error_mask(codes_long["protocol"], codes_long["code"])
        codes = self._codes_table(codes_long)
        hosts = self._hosts_table(codes_long)
        timeseries = self._timeseries_table()
        result = StatsResult(
            hosts=hosts, codes=codes, timeseries=timeseries,
            top_failing_uris=self._uris_table(), ftp_logins=self._logins_table(),
            ws_closes=self._ws_table(), substatus=self._substatus_table(),
            summary={}, failing=self._failing_table(), policy=self.policy,
            meanings={key: self.meaning(*key) for key in self._meanings})
        result.summary = self._summary(result, codes_long, coverage, first, last)
        return result

    def meaning(self, protocol: str, code: int) -> tuple[str, str, str, bool]:
        got = self._meanings.get((protocol, int(code)))
        if got is None or not got[0]:
            base = got or ("", "", "", False, True)
            return class_label(protocol, code), base[1], base[2], base[3]
        return got[:4]

    def _codes_table(self, codes_long: pd.DataFrame) -> pd.DataFrame:
        srv = codes_long[codes_long["role"] == "server"]
        out = srv.groupby(["ip", "protocol", "code"], sort=False, as_index=False)["count"].sum()
        out = out.rename(columns={"ip": "server_ip"})
        meta = [self.meaning(p, c) for p, c in zip(out["protocol"], out["code"])]
        out["class"] = [m[0] for m in meta]
        out["name"] = [m[1] for m in meta]
        out["meaning"] = [m[2] for m in meta]
        out["count"] = out["count"].astype(np.int64)
        out["code"] = out["code"].astype(np.int64)
        return _sorted(out, ["server_ip", "protocol", "code"])[list(CODE_COLUMNS)]

    def _hosts_table(self, codes_long: pd.DataFrame) -> pd.DataFrame:
        keys = ["ip", "role", "protocol"]
        cl = codes_long
        code = cl["code"].to_numpy()
        count = cl["count"].to_numpy(dtype=np.int64)
        digit = code // 100
        is_ws = (cl["protocol"] == "websocket").to_numpy()
        inferred = cl["inferred"].to_numpy(dtype=bool)
        cols = {"events": count, "error_count": np.where(cl["error"].to_numpy(), count, 0)}
        for d in range(1, 7):
            cols[f"class_{d}xx"] = np.where(~is_ws & (digit == d) & (code < 1000), count, 0)
        cols["class_other"] = np.where(~is_ws & ((code < 100) | (code > 699)), count, 0)
        # Normal closes as the websocket spec says (1005, a close frame
        # without a code, is normal though its code is inferred).
        normal = is_ws & np.isin(code, tuple(_registry.get("websocket").normal_codes))
        cols["ws_normal"] = np.where(normal, count, 0)
        cols["ws_abnormal"] = np.where(is_ws & ~inferred & ~normal, count, 0)
        cols["ws_inferred"] = np.where(is_ws & inferred & ~normal, count, 0)
        cols["events_without_request"] = cl["norequest"].to_numpy(dtype=np.int64)
        cols["flagged_events"] = cl["flagged"].to_numpy(dtype=np.int64)
        frame = pd.DataFrame({**{k: cl[k].to_numpy() for k in keys}, **cols,
                              "first_ev": cl["first"].to_numpy(dtype=float), "last_ev": cl["last"].to_numpy(dtype=float)})
        agg = {k: "sum" for k in cols}
        agg.update(first_ev="min", last_ev="max")
        ev = frame.groupby(keys, sort=False, as_index=False).agg(agg) if len(frame) else frame
        conns = self._conns.frame()
        hosts = ev.merge(conns, on=keys, how="outer") if len(conns) else ev.assign(
            **{k: 0 for k in self._conns.ops if k not in ("first", "last")}, first=np.nan, last=np.nan)
        if not len(hosts):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in HOST_COLUMNS})
        counts = [c for c in list(cols) + list(self._conns.ops) if c not in ("first", "last")]
        for c in counts:
            hosts[c] = pd.to_numeric(hosts[c], errors="coerce").fillna(0).astype(np.int64)
        events = hosts["events"].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            hosts["error_rate"] = np.where(events > 0, hosts["error_count"] / np.where(events > 0, events, 1), np.nan)
        firsts = np.fmin(hosts["first_ev"].to_numpy(dtype=float), hosts["first"].to_numpy(dtype=float))
        lasts = np.fmax(hosts["last_ev"].to_numpy(dtype=float), hosts["last"].to_numpy(dtype=float))
        hosts["first_seen"] = [iso(v) for v in firsts]
        hosts["last_seen"] = [iso(v) for v in lasts]
        lat = self._latency.percentiles()
        p = {q: [] for q in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "latency_samples")}
        names, causes = [], []
        ws = self._ws.frame()
        ws_causes: dict[tuple, list] = {}
        for row in ws.itertuples(index=False):
            ws_causes.setdefault((row.ip, row.role), []).append((int(row.code), bool(row.inferred), int(row.count)))
        for ip, role, proto in zip(hosts["ip"], hosts["role"], hosts["protocol"]):
            got = lat.get((ip, role)) if proto == "http" else None
            p["latency_p50_ms"].append(got[0] if got else np.nan)
            p["latency_p95_ms"].append(got[1] if got else np.nan)
            p["latency_p99_ms"].append(got[2] if got else np.nan)
            p["latency_samples"].append(got[3] if got else 0)
            names.append(self._host_names(ip, role) if proto == "http" else "")
            causes.append(_format_causes(ws_causes.get((ip, role), [])) if proto == "websocket" else "")
        hosts = hosts.assign(**p, hosts_seen=names, ws_closes_by_cause=causes)
        per_code = cl.groupby(["ip", "role", "protocol", "code"], as_index=False)["count"].sum()
        hosts["top_codes"] = [format_top(p) for p in _top_per_key(hosts, per_code, keys, "code", TOP_CODES_SHOWN)]
        # Published rounded, so that the DataFrames equal hosts.csv exactly.
        hosts["error_rate"] = hosts["error_rate"].round(6)
        for col in ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms"):
            hosts[col] = hosts[col].astype(float).round(3)
        hosts["latency_samples"] = hosts["latency_samples"].astype(np.int64)
        hosts = hosts.rename(columns={"ip": "host"})
        hosts["_role"] = hosts["role"].map({"server": 0, "client": 1})
        hosts = _sorted(hosts, ["_role", "host", "protocol"], ip_column="host")
        return hosts[list(HOST_COLUMNS)].reset_index(drop=True)

    def _host_names(self, ip: str, role: str) -> str:
        seen = self._names.get((ip, role))
        if not seen:
            return ""
        # Ties by name, not by which was seen first: shares merged from
        # parallel workers see them in another order (merge()).
        ranked = sorted(seen.items(), key=lambda kv: (-kv[1], kv[0]))
        text = "; ".join(name for name, _ in ranked[:HOST_NAMES_SHOWN])
        if len(ranked) > HOST_NAMES_SHOWN:
            text += f"; (+{len(ranked) - HOST_NAMES_SHOWN} more)"
        return text

    def _timeseries_table(self) -> pd.DataFrame:
        ts = self._ts.frame()
        if not len(ts):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in TIMESERIES_COLUMNS})
        ts = ts.copy()
        ts["code"] = ts["code"].astype(np.int64)
        ts["class"] = [self.meaning(p, c)[0] for p, c in zip(ts["protocol"], ts["code"])]
        ts["errors"] = np.where(self.policy.error_mask(ts["protocol"], ts["code"]), ts["count"], 0)
        out = ts.groupby(["server_ip", "protocol", "class", "bucket"], sort=False, as_index=False)[["count", "errors"]].sum()
        out = out.rename(columns={"server_ip": "host", "bucket": "bucket_epoch"})
        out["bucket_start"] = [iso(v) for v in out["bucket_epoch"]]
        out["count"] = out["count"].astype(np.int64)
        out["errors"] = out["errors"].astype(np.int64)
        return _sorted(out, ["host", "protocol", "class", "bucket_epoch"], ip_column="host")[list(TIMESERIES_COLUMNS)]

    def _uris_table(self) -> pd.DataFrame:
        uris = self._uris.frame()
        if not len(uris):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in URI_COLUMNS})
        uris = uris.assign(count=uris["count"].astype(np.int64), code=uris["code"].astype(np.int64),
                           server_port=uris["server_port"].astype(np.int64))
        uris = uris.sort_values(["count", "server_ip", "host", "uri", "code"], ascending=[False, True, True, True, True],
                                kind="stable").head(TOP_FAILING_URIS)
        return uris[list(URI_COLUMNS)].reset_index(drop=True)

    def _failing_table(self) -> pd.DataFrame:
        """Failing server endpoints, most errors first, each with what and when."""
        ends = self._endpoints.frame()
        if not len(ends):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in FAILING_COLUMNS})
        ends = ends[ends["errors"].astype(np.int64) > 0]
        if not len(ends):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in FAILING_COLUMNS})
        key = ["server_ip", "server_port", "protocol"]
        out = ends.assign(events=ends["events"].astype(np.int64), errors=ends["errors"].astype(np.int64),
                          server_port=ends["server_port"].astype(np.int64))
        out["error_rate"] = (out["errors"] / out["events"]).round(6)
        out["unit"] = [EVENT_UNITS.get(p, "events") for p in out["protocol"]]
        codes = self._endpoint_codes.frame()
        out["top_codes"] = _top_per_key(out, codes, key, "code", TOP_CODES_SHOWN)
        uris = self._uris.frame()
        paths = uris.groupby(["server_ip", "server_port", "uri"], as_index=False)["count"].sum() if len(uris) else uris
        out["top_paths"] = _top_per_key(out, paths.assign(protocol="http") if len(paths) else paths, key, "uri",
                                        TOP_PATHS_SHOWN)
        names = self._endpoint_names.frame()
        by_end: dict[tuple, list] = {}
        if len(names):
            ranked = names.sort_values(["count", "host"], ascending=[False, True], kind="stable")
            for row in ranked.itertuples(index=False):
                by_end.setdefault((row.server_ip, int(row.server_port)), []).append(row.host)
        out["host_names"] = ["; ".join(by_end.get((ip, int(port)), [])[:HOST_NAMES_SHOWN]) if proto == "http" else ""
                             for ip, port, proto in zip(out["server_ip"], out["server_port"], out["protocol"])]
        for which, table in (("first", self._first_errors), ("last", self._last_errors)):
            when = table.frame().rename(columns={"epoch": f"{which}_error_epoch", "frame": f"{which}_error_frame",
                                                 "capture": f"{which}_error_capture"})
            when["server_port"] = when["server_port"].astype(np.int64)
            out = out.merge(when, on=key, how="left")
            out[f"{which}_error"] = [iso(v) for v in out[f"{which}_error_epoch"]]
            out[f"{which}_error_frame"] = pd.to_numeric(out[f"{which}_error_frame"]).fillna(0).astype(np.int64)
            out[f"{which}_error_capture"] = out[f"{which}_error_capture"].fillna("")
        out["_ip"] = out["server_ip"].map(ip_sort_key)
        out = out.sort_values(["errors", "error_rate", "_ip", "server_port", "protocol"],
                              ascending=[False, False, True, True, True], kind="stable")
        return out[list(FAILING_COLUMNS)].reset_index(drop=True)

    def _logins_table(self) -> pd.DataFrame:
        logins = self._logins.frame()
        if not len(logins):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in LOGIN_COLUMNS})
        logins = logins.assign(failed=logins["failed"].astype(np.int64), succeeded=logins["succeeded"].astype(np.int64))
        logins = logins.sort_values(["failed", "client_ip", "server_ip", "user"], ascending=[False, True, True, True],
                                    kind="stable")
        return logins[list(LOGIN_COLUMNS)].reset_index(drop=True)

    def _ws_table(self) -> pd.DataFrame:
        ws = self._ws.frame()
        ws = ws[ws["role"] == "server"] if len(ws) else ws
        if not len(ws):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in WS_COLUMNS})
        ws = ws.rename(columns={"ip": "server_ip"}).copy()
        ws["code"] = ws["code"].astype(np.int64)
        ws["count"] = ws["count"].astype(np.int64)
        ws["inferred"] = ws["inferred"].astype(bool)
        ws["name"] = [self.meaning("websocket", c)[1] for c in ws["code"]]
        ws = ws.sort_values(["count", "server_ip", "code", "closed_first_by"], ascending=[False, True, True, True],
                            kind="stable")
        return ws[list(WS_COLUMNS)].reset_index(drop=True)

    def _substatus_table(self) -> pd.DataFrame:
        sub = self._substatus.frame()
        if not len(sub):
            return pd.DataFrame({c: pd.Series(dtype=object) for c in SUBSTATUS_COLUMNS})
        sub = sub.assign(count=sub["count"].astype(np.int64), code=sub["code"].astype(np.int64))
        return _sorted(sub, ["server_ip", "protocol", "substatus"])[list(SUBSTATUS_COLUMNS)]

    def _summary(self, result: StatsResult, codes_long: pd.DataFrame, coverage: dict, first, last) -> dict:
        srv = codes_long[codes_long["role"] == "server"]
        cli = codes_long[codes_long["role"] == "client"]
        conns = self._conns.frame()
        conns_srv = conns[conns["role"] == "server"] if len(conns) else conns
        lat = self._latency.percentiles()
        protocols = {}
        without = {}
        for proto in PROTOCOLS:
            rows = srv[srv["protocol"] == proto]
            events = int(rows["count"].sum())
            errors = int(rows.loc[rows["error"], "count"].sum())
            by_code = rows.groupby("code")["count"].sum().sort_index()
            pc = conns_srv[conns_srv["protocol"] == proto] if len(conns_srv) else conns_srv
            without[proto] = int(rows["norequest"].sum())
            entry = {
                "events": events, "errors": errors,
                "error_rate": (errors / events) if events else None,
                "connections": int(pc["connections"].sum()) if len(pc) else 0,
                "servers": int(rows["ip"].nunique()),
                "clients": int(cli.loc[cli["protocol"] == proto, "ip"].nunique()),
                "codes": {str(int(c)): int(n) for c, n in by_code.items()},
                "events_without_request": without[proto],
                "unit": EVENT_UNITS.get(proto, "events"),
            }
            if proto == "http":
                got = lat.get(("", "all"))
                entry["latency_ms"] = ({"p50": got[0], "p95": got[1], "p99": got[2], "samples": got[3],
                                        "exact": got[4]} if got else None)
                entry["unanswered_requests"] = int(pc["http_unanswered"].sum()) if len(pc) else 0
            if proto == "ftp":
                entry["failed_logins"] = int(pc["ftp_failed_logins"].sum()) if len(pc) else 0
                entry["successful_logins"] = int(pc["ftp_logins"].sum()) if len(pc) else 0
            if proto == "websocket":
                ws = result.ws_closes
                entry["closes"] = {str(int(c)): int(n) for c, n in
                                   (ws.groupby("code")["count"].sum().items() if len(ws) else [])}
                entry["open_connections"] = int(pc["connections_open"].sum()) if len(pc) else 0
                # The close-causes table counts connections (first close code of each);
                # the rate above counts close frames of both directions.  Both, named.
                ended = int(ws["count"].sum()) if len(ws) else 0
                failed = int(ws.loc[self.policy.error_mask(["websocket"] * len(ws), ws["code"]), "count"].sum()) \
                    if len(ws) else 0
                entry["connections_ended"] = ended
                entry["connections_failed"] = failed
                entry["connection_error_rate"] = (failed / ended) if ended else None
            protocols[proto] = entry
        total = int(srv["count"].sum())
        errors = int(srv.loc[srv["error"], "count"].sum())
        cov = dict(coverage)
        cov["events_without_request"] = without
        if self._axis is not None and self._axis.outliers:
            cov["anomalies"] = {**(cov.get("anomalies") or {}), "timestamp_outlier": self._axis.outliers}
        duration = (last - first) if first is not None and last is not None else None
        return {
            "events": total, "errors": errors, "error_rate": (errors / total) if total else None,
            "first_epoch": first, "last_epoch": last, "first": iso(first), "last": iso(last),
            "duration_s": duration, "bucket_seconds": self._step, "uri_grouping": self.uri_grouping,
            "time_axis": ({"first_epoch": self._axis.first, "last_epoch": self._axis.last,
                           "bucket_seconds": self._axis.step, "buckets": self._axis.buckets}
                          if self._axis is not None else None),
            "timestamp_outliers": self._axis.outliers if self._axis is not None else 0,
            "protocols": protocols, "coverage": cov, "policy": self.policy.describe(),
            "limits": {
                "host_names_dropped": self.host_names_dropped,
                "failing_uri_rows_pruned": self._uris.pruned,
                "login_rows_pruned": self._logins.pruned,
                "latency_hosts_approximate": int((self._latency.spilled_row >= 0).sum()),
            },
        }


def _top_per_key(rows: pd.DataFrame, counts: pd.DataFrame, key: list[str], what: str, n: int) -> list[list]:
    """For each row of `rows`, its `n` most frequent `what` values in `counts`: [(value, count), ...]."""
    if not len(counts):
        return [[] for _ in range(len(rows))]
    counts = counts.assign(count=counts["count"].astype(np.int64))
    ranked = counts.sort_values(["count", what], ascending=[False, True], kind="stable")
    top = ranked.groupby(key, sort=False).head(n)
    found: dict[tuple, list] = {}
    for row in zip(*(top[k] for k in key), top[what], top["count"]):
        value = int(row[-2]) if what == "code" else row[-2]
        found.setdefault(tuple(row[:len(key)]), []).append((value, int(row[-1])))
    return [found.get(tuple(k), []) for k in zip(*(rows[c] for c in key))]


def format_top(pairs) -> str:
    """[(404, 12), (500, 3)] -> "404×12; 500×3" (hosts.csv, the terminal)."""
    return "; ".join(f"{value}×{count}" for value, count in pairs)


def _int(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _format_causes(rows: list[tuple[int, bool, int]]) -> str:
    merged: dict[tuple[int, bool], int] = {}
    for code, inferred, n in rows:
        merged[(code, inferred)] = merged.get((code, inferred), 0) + n
    ranked = sorted(merged.items(), key=lambda kv: (-kv[1], kv[0][0], kv[0][1]))
    return "; ".join(f"{code}{' inferred' if inf else ''}×{n}" for (code, inf), n in ranked)


def _sorted(frame: pd.DataFrame, by: list[str], ip_column: str | None = None) -> pd.DataFrame:
    ip_column = ip_column or by[0]
    if not len(frame):
        return frame.reset_index(drop=True)
    key = {ip_column: lambda s: s.map(ip_sort_key)}
    return frame.sort_values(by, key=lambda s: key[s.name](s) if s.name in key else s, kind="stable").reset_index(drop=True)


def events_frame(rows) -> pd.DataFrame:
    """Events as the pipeline hands them over, from dicts (missing keys get defaults).

    `time` is derived from `epoch` when not given; `outcome`-style dicts are
    not involved here.  Used by tests and by callers that build events by hand.
    """
    records = []
    for row in rows:
        rec = {**_EVENT_DEFAULTS, **row}
        if not rec["time"]:
            rec["time"] = iso(rec["epoch"])
        records.append(rec)
    frame = pd.DataFrame.from_records(records, columns=list(EVENT_COLUMNS))
    for name in ("lines", "data_bytes"):
        frame[name] = frame[name].astype("Int64")
    frame["latency_ms"] = frame["latency_ms"].astype(float)
    frame["inferred"] = frame["inferred"].astype(bool)
    frame["standard"] = frame["standard"].astype(bool)
    return frame


def connections_frame(rows) -> pd.DataFrame:
    """Connection rows from dicts; a dict `outcome` is serialised to JSON."""
    records = []
    for row in rows:
        rec = {**_CONNECTION_DEFAULTS, **row}
        if isinstance(rec["outcome"], dict):
            rec["outcome"] = json.dumps(rec["outcome"])
        records.append(rec)
    return pd.DataFrame.from_records(records, columns=list(CONNECTION_COLUMNS))


def compute(events: pd.DataFrame, connections: pd.DataFrame | None = None, coverage: dict | None = None,
            policy: Policy | None = None) -> StatsResult:
    """One-shot helper for small inputs and tests: one batch of each."""
    acc = StatsAccumulator(policy)
    acc.add_events(events)
    if connections is not None:
        acc.add_connections(connections)
    return acc.finish(coverage)
