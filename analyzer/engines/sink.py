# Where every engine's events go: a bounded re-ordering window, Arrow record
# batches, the catalogue join, and the consumers of those batches.
#
# An engine calls `EventSink.add(event, endpoints)` per event.  Events arrive
# nearly in time order (a response is reported when its head is complete), so
# holding the latest REORDER_WINDOW events puts them in (epoch, frame) order
# while bounding memory.  The held events are an EventRows (compiled twin:
# analyzer/_fast/rows.pyx, C column buffers); every BATCH_ROWS the earliest
# leave as one Arrow batch (raw wire strings, nothing neutralised), which
# gets its `time`, `community_id` and catalogue columns vectorised, and
# goes to each consumer: the events.csv writer (which alone neutralises for
# spreadsheets), the statistics, the optional jsonl/parquet writers, the
# Python API's in-memory copy, or a parallel worker's part file (with each
# row's events.csv bytes, rendered there so the parent only writes them).  Nothing
# reads an output file back.
from __future__ import annotations

import ctypes
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer import _fast, community_id
from analyzer.events import ANNOTATION_COLUMNS, RAW_COLUMNS, Anomaly, Event, event_values, iso_time
from analyzer.meaning.annotate import Annotator
from analyzer.outputs.csvfile import CsvWriter
from analyzer.outputs.events import (EVENT_SCHEMA, KEYS_LINES_SCHEMA, LINES_SCHEMA, EventsCsv, EventsJsonl, EventsKept,
                                    EventsParquet, csv_lines)

# Events held to put the output in time order; a window of this many events
# sorts every capture we have seen while bounding memory.
REORDER_WINDOW = 20_000
# Rows per record batch: large enough that per-batch work (Arrow calls, the
# catalogue join) is noise per event, small enough to stay a few MB.
BATCH_ROWS = 8192
# Rows the statistics take at a time: its groupbys cost per call, not per row.
STATS_ROWS = 16_384

ANOMALY_COLUMNS = ("time", "epoch", "frame", "name", "connection", "detail", "capture")

# Batches here are a few MB and short-lived; Arrow's default pool (mimalloc)
# keeps the freed pages, which cost ~30 MB of peak RSS on a 200k-event run
# (219 -> 190 MB measured).  The C library's allocator returns them.
pa.set_memory_pool(pa.system_memory_pool())
# glibc keeps the pages of freed blocks inside its heap until the top of the
# heap is free; malloc_trim(0) hands every free page back.  The statistics'
# per-batch temporaries (pandas frames, numpy arrays of 16k-32k rows) are the
# large short-lived allocations of a run, and the long-lived blocks made
# meanwhile leave them as holes: ~30 MB of a 2M-packet run's peak RSS was
# such holes (api 2M, with the Python window: 220 -> 205 MB).  Once per statistics batch (every
# STATS_ROWS events, ~50 times on api) it costs no measurable time; per
# Arrow batch and per packet batch it cost ~5 % (faulting the pages back).
# Other C libraries have no malloc_trim: nothing to do there.
try:
    _malloc_trim = ctypes.CDLL(None).malloc_trim
    _malloc_trim.argtypes, _malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
except (OSError, AttributeError):
    _malloc_trim = None


def return_free_memory() -> None:
    """The C allocator's free pages back to the system (glibc; elsewhere nothing)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


_RAW_SCHEMA = pa.schema([EVENT_SCHEMA.field(name) for name in RAW_COLUMNS])
# The calendar ISO-8601 can write: years 1 to 9999 (corrupt captures hold others).
_FIRST_SECOND, _END_SECOND = -62135596800.0, 253402300800.0


@dataclass
class EventOutputs:
    """Where a run's events go; decided before the run, since nothing is read back."""

    csv: bool = True          # events.csv in the output folder
    jsonl: bool = False       # events.jsonl
    parquet: bool = False     # events.parquet
    keep: bool = False        # every batch kept in memory (the Python API's events DataFrame)
    stats: bool = True        # per-host statistics (analyzer.stats)
    policy: object = None     # the severity policy the statistics apply (failing URIs need it)
    accumulator: object = None  # a StatsAccumulator to feed instead of a new one (live reports)
    uri_grouping: str = "path"  # failing URIs by grouped path or by "full" URI (stats/paths.py)
    selection: object = None  # an engines.selection.Selection: only matching events reach the consumers
    part: str | None = None   # a parallel worker's Arrow IPC part file (the parent writes the files above)
    part_lines_only: bool = False  # the part holds only the sort keys and events.csv lines (nothing else reads it)
    also: tuple = ()          # further consumers of the batches (outputs.metrics.EventMetrics)


class StatsFeed:
    """Feeds batches to a StatsAccumulator, a few thousand rows at a time.

    The accumulator (and pandas with it) is made on first use, so a run that
    finds no event -- a SYN flood -- does not hold pandas beside its
    connection table.
    """

    def __init__(self, accumulator=None, policy=None, uri_grouping: str = "path") -> None:
        self._accumulator = accumulator
        self.policy = policy
        self.uri_grouping = uri_grouping
        self.pending: list[pa.RecordBatch] = []
        self.rows = 0

    @property
    def accumulator(self):
        if self._accumulator is None:
            from analyzer.stats.hosts import StatsAccumulator

            self._accumulator = StatsAccumulator(self.policy, uri_grouping=self.uri_grouping)
        return self._accumulator

    def absorb(self, other: "StatsFeed") -> None:
        """Another share's statistics (a parallel worker's), merged exactly."""
        other.flush()
        if other._accumulator is not None:  # a share with no event made none
            self.accumulator.merge(other._accumulator)

    def write(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.rows += batch.num_rows
        if self.rows >= STATS_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            accumulator = self.accumulator
            table = pa.Table.from_batches(self.pending, schema=EVENT_SCHEMA).select(list(accumulator.EVENT_INPUTS))
            self.pending, self.rows = [], 0
            accumulator.add_events(table)  # read as Arrow: no DataFrame of the batch is made
            del table
            return_free_memory()

    def commit(self) -> None:
        self.flush()

    def abort(self) -> None:
        self.pending = []


class PartFile:
    """A parallel worker's events: an Arrow IPC stream the parent merges, each
    row with its events.csv bytes (outputs/events.csv_lines), so rendering
    them runs on every core and the parent only writes them."""

    def __init__(self, path: str | Path, lines_only: bool = False) -> None:
        self.sink = pa.OSFile(str(path), "wb")
        self.lines_only = lines_only
        self.writer = pa.ipc.new_stream(self.sink, KEYS_LINES_SCHEMA if lines_only else LINES_SCHEMA)

    def write(self, batch: pa.RecordBatch) -> None:
        lined = csv_lines(batch)
        self.writer.write_batch(lined.select(KEYS_LINES_SCHEMA.names) if self.lines_only else lined)

    def flush(self) -> None:
        pass

    def commit(self) -> None:
        self.writer.close()
        self.sink.close()

    def abort(self) -> None:
        self.sink.close()


def open_consumers(outdir: Path, outputs: EventOutputs, *, stream: bool = False):
    """(consumers, StatsFeed or None, in-memory copy or None) for a run."""
    consumers: list = []
    if outputs.part is not None:
        consumers.append(PartFile(outputs.part, lines_only=outputs.part_lines_only))
    if outputs.csv:
        consumers.append(EventsCsv(outdir / "events.csv", atomic=not stream))
    if outputs.jsonl:
        consumers.append(EventsJsonl(outdir / "events.jsonl"))
    if outputs.parquet:
        consumers.append(EventsParquet(outdir / "events.parquet"))
    feed = None
    if outputs.accumulator is not None or outputs.stats:
        feed = StatsFeed(outputs.accumulator, outputs.policy, outputs.uri_grouping)
        consumers.append(feed)
    kept = EventsKept() if outputs.keep else None
    if kept is not None:
        consumers.append(kept)
    consumers.extend(outputs.also)
    if outputs.selection:
        from analyzer.engines.selection import Selected

        consumers = [Selected(consumer, outputs.selection) for consumer in consumers]
    return consumers, feed, kept


def time_column(epoch: np.ndarray) -> pa.Array:
    """ISO-8601 UTC with microseconds and Z (events.csv `time`), empty where no calendar holds it."""
    ok = np.isfinite(epoch) & (epoch >= _FIRST_SECOND) & (epoch < _END_SECOND)
    safe = np.where(ok, epoch, 0.0)
    whole = np.floor(safe)
    micros = np.round((safe - whole) * 1e6)  # as iso_time rounds: the fraction, not the sum
    stamps = whole.astype(np.int64) * 1_000_000 + micros.astype(np.int64)
    # One fixed-width buffer, "YYYY-MM-DDTHH:MM:SS.ffffffZ" (27 ASCII bytes for
    # years 1-9999; doubles this large have no fraction that rounds up to the
    # next second): numpy writes each distinct second once (a batch holds few)
    # and the microsecond digits are arithmetic.  Arrow's strftime went through
    # the time-zone database per row (1.8 us an event, this ~0.1).
    seconds, which = np.unique(stamps // 1_000_000, return_inverse=True)
    n = len(stamps)
    prefix = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s").astype("S19")
    cells = np.empty((n, 27), np.uint8)
    cells[:, :19] = prefix.view(np.uint8).reshape(len(seconds), 19)[which.reshape(-1)]
    cells[:, 19] = ord(".")
    fraction = stamps % 1_000_000
    for k in range(6):
        cells[:, 25 - k] = fraction % 10 + ord("0")
        fraction = fraction // 10
    cells[:, 26] = ord("Z")
    offsets = np.arange(0, 27 * n + 1, 27, dtype=np.int32)
    column = pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(cells))
    if ok.all():
        return column
    return pc.if_else(pa.array(ok), column, "")


class EventRows:
    """Events held until their turn; release(n) gives the n earliest, by
    (epoch, frame, arrival), as a batch of RAW_COLUMNS (None when none).

    The reference; analyzer/_fast/rows.pyx is its compiled twin (column
    buffers instead of a tuple per event), selected with the compiled loop.
    """

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.held: list = []
        self.order = 0

    def __len__(self) -> int:
        return len(self.held)

    def add(self, ev: Event, ends: tuple) -> None:
        self.order += 1
        self.held.append((ev.epoch, ev.frame, self.order, ev, ends))

    def release(self, n: int) -> pa.RecordBatch | None:
        # Held unsorted; sorted only here (nearly in order already, so the
        # sort is a merge of runs).  A heap cost a push and a pop per event.
        held = self.held
        held.sort()  # (epoch, frame, arrival, ...): arrival is unique, so events are never compared
        self.held = held[n:]
        rows = [event_values(item[3], item[4]) for item in held[:n]]
        if not rows:
            return None
        return pa.RecordBatch.from_arrays(
            [pa.array(values, type=field.type) for values, field in zip(zip(*rows), self.schema)], schema=self.schema)


class EventSink:
    """Puts events in time order, into batches, annotated, to every consumer."""

    def __init__(self, lang: str, consumers=(), window: int = REORDER_WINDOW, batch_rows: int = BATCH_ROWS) -> None:
        self.annotator = Annotator(lang)
        self.consumers = list(consumers)
        self.window = window
        self.batch_rows = batch_rows
        self.held = (_fast.compiled("EventRows") or EventRows)(_RAW_SCHEMA)
        self.count = 0
        self.by_protocol: Counter = Counter()

    def add(self, ev: Event, ends: tuple) -> None:
        # Once a batch more than the window is held, all but the latest
        # `window` leave as a batch.
        self.count += 1
        self.by_protocol[ev.protocol] += 1
        held = self.held
        held.add(ev, ends)
        if len(held) >= self.window + self.batch_rows:
            self._release(len(held) - self.window)

    def _release(self, n: int) -> None:
        """The `n` earliest held events, in batches of at most batch_rows (all of them: n = len(held))."""
        # At most a batch at a time, each made after the previous one went
        # out: the last release (the whole window, ~3.5 batches) made at once
        # cost ~20 MB of peak RSS on the api benchmark (rows, Arrow arrays and
        # the statistics' frame of 28k events).
        while n > 0:
            raw = self.held.release(min(n, self.batch_rows))
            if raw is None:
                return
            n -= raw.num_rows
            self.emit(raw)

    def emit(self, raw: pa.RecordBatch) -> None:
        """A batch of RAW_COLUMNS, completed with `time` and the catalogue, to every consumer."""
        columns = dict(zip(raw.schema.names, raw.columns))
        columns["time"] = time_column(raw.column("epoch").to_numpy(zero_copy_only=False))
        columns["community_id"] = community_id.column(columns["client_ip"], columns["client_port"],
                                                      columns["server_ip"], columns["server_port"])
        *annotation, substatus = self.annotator.columns(columns["protocol"], columns["code"], columns["substatus"])
        columns.update(zip(ANNOTATION_COLUMNS, annotation))
        if substatus is not columns["substatus"]:
            # The catalogue did not know a claimed sub-status: it is dropped, with its source.
            columns["substatus_source"] = pc.if_else(pc.equal(substatus, ""), "", columns["substatus_source"])
            columns["substatus"] = substatus
        batch = pa.RecordBatch.from_arrays([columns[name] for name in EVENT_SCHEMA.names], schema=EVENT_SCHEMA)
        for consumer in self.consumers:
            consumer.write(batch)

    def flush(self) -> None:
        """Every event so far to the consumers, visible in what they write (live capture)."""
        self._release(len(self.held))
        for consumer in self.consumers:
            consumer.flush()

    def commit(self) -> None:
        self.flush()
        for consumer in self.consumers:
            consumer.commit()

    def abort(self) -> None:
        for consumer in self.consumers:
            consumer.abort()


class AnomalySink:
    """anomalies.csv: the rows the anomaly policy samples (counts stay exact elsewhere)."""

    def __init__(self, outdir: Path) -> None:
        self.writer = CsvWriter(outdir / "anomalies.csv", ANOMALY_COLUMNS)
        self.capture = ""

    def add(self, a: Anomaly) -> None:
        """A row the engine's anomaly sampling kept (meaning/anomalies.py decides which)."""
        self.writer.write_rows(((iso_time(a.epoch) if a.epoch else "", f"{a.epoch:.6f}", a.frame, a.name,
                                 a.connection, a.detail, self.capture),))

    def commit(self) -> None:
        self.writer.commit()
