# The event files, written straight from the engine's Arrow record batches.
#
#   events.csv      pyarrow's CSV writer; the only place wire strings are
#                   neutralised for spreadsheets (vectorised, per batch)
#   events.jsonl    one JSON object per line, values exactly as on the wire
#                   (control and bidi characters as JSON \u escapes)
#   events.parquet  pyarrow's Parquet writer, one row group per batch
#
# Each writer is a consumer of batches: write(batch) any number of times,
# then commit() (or abort()).  Files are written to a temporary sibling and
# renamed into place at commit, so a reader never sees half a file; the one
# exception is live capture's events.csv, appended and flushed while it runs.
# Nothing here reads an output back: statistics and the Python API take the
# same batches (events_frame) before they are neutralised.
#
# events.csv is rendered a batch at a time (csv_bytes: neutralised, then
# pyarrow's CSV writer, rows only, or its compiled twin, _fast/csv_rows.pyx,
# byte for byte the same and ~2.5x faster); the header is written once at open.  A
# parallel worker renders its own batches and ships each row's bytes beside
# the row (csv_lines: one binary cell per row, split exactly at the row ends,
# a cell's quoted CR/LF and doubled quotes left whole), so the parent, after
# its merge by time, writes bytes it never renders (issue 12: the parent's
# serial part).  EventsCsv writes a batch's lines when it has them and renders
# it otherwise: one writer for every engine, byte for byte the same file.
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from analyzer import _fast
from analyzer.events import BatchConsumer, EVENT_COLUMNS, EVENT_TYPES
from analyzer.outputs.csvfile import DANGEROUS_PREFIXES, AtomicWriter, DirectFile
from analyzer.outputs.visible import UNSAFE_RE2, json_text, may_hold_unsafe, visible

EVENT_SCHEMA = pa.schema([(name, pa.type_for_alias(EVENT_TYPES[name])) for name in EVENT_COLUMNS])
STRING_COLUMNS = tuple(name for name in EVENT_COLUMNS if EVENT_TYPES[name] == "string")
# A cell starting with one of these is run as a formula by spreadsheets; each
# is one ASCII byte, so a cell's first byte tells (UTF-8 never puts an ASCII
# byte inside another character).
_FORMULA_BYTE = np.zeros(256, dtype=bool)
_FORMULA_BYTE[[ord(c) for c in DANGEROUS_PREFIXES]] = True
assert all(len(c) == 1 and ord(c) < 0x80 for c in DANGEROUS_PREFIXES)


def _formula_cells(column: pa.Array) -> np.ndarray:
    """Which cells of a string array start with a formula character (null cells: none).

    From the offsets and the first byte of each cell, in numpy: a regex
    anchored at each cell cost ~0.5 us an event over the batch's string columns.
    Each cell's offset is looked up as it stands (an empty cell's points at
    the next cell, or past the end: clipped), and only when some cell may
    start a formula are empty and null cells told apart; a batch has none
    almost always, and that test was half the cost.
    """
    if column.type != pa.string():
        column = column.cast(pa.string())
    _, offsets, data = column.buffers()
    n = len(column)
    if data is None or n == 0 or data.size == 0:
        return np.zeros(n, dtype=bool)
    ends = np.frombuffer(offsets, dtype=np.int32, count=n + 1, offset=4 * column.offset)
    risky = _FORMULA_BYTE[np.frombuffer(data, dtype=np.uint8).take(ends[:-1], mode="clip")]
    if risky.any():
        risky &= ends[1:] > ends[:-1]
        if column.null_count:
            risky &= column.is_valid().to_numpy(zero_copy_only=False)
    return risky


# The column a parallel worker adds to its part file: each row's events.csv
# bytes (CRLF included).  Only EventsCsv reads it; the merge strips it for
# every other consumer (engines/parallel.merge_shares).
CSV_LINE = "csv_line"
LINES_SCHEMA = EVENT_SCHEMA.append(pa.field(CSV_LINE, pa.binary()))
# A part when events.csv is the parent's only event file: what its merge needs.
KEYS_LINES_SCHEMA = pa.schema([EVENT_SCHEMA.field("epoch"), EVENT_SCHEMA.field("frame"),
                               LINES_SCHEMA.field(CSV_LINE)])
_CSV_OPTIONS = pacsv.WriteOptions(eol="\r\n", quoting_header="none")
_CSV_ROWS = pacsv.WriteOptions(eol="\r\n", include_header=False)


def neutralise_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch as events.csv shows it: control and bidi characters as \\xNN / \\uNNNN
    (outputs/visible.py), then every cell that could start a formula prefixed by an apostrophe."""
    given = batch.columns
    columns = []
    for name, column in zip(batch.schema.names, given):
        if name in STRING_COLUMNS:
            if may_hold_unsafe(column) and pc.any(pc.match_substring_regex(column, UNSAFE_RE2)).as_py():
                # rare: only then do the cells go through Python
                column = pa.array([visible(v) if v is not None else None for v in column.to_pylist()],
                                  type=column.type)
            risky = _formula_cells(column)
            if risky.any():
                column = pc.if_else(pa.array(risky), pc.binary_join_element_wise("'", column, ""), column)
        columns.append(column)
    if all(mine is theirs for mine, theirs in zip(columns, given)):
        return batch  # nothing to show or neutralise: no new batch
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


def csv_header() -> bytes:
    """events.csv's first line, as pyarrow's CSV writer writes it."""
    sink = pa.BufferOutputStream()
    pacsv.CSVWriter(sink, EVENT_SCHEMA, write_options=_CSV_OPTIONS).close()
    return sink.getvalue().to_pybytes()


def write_rows(batch: pa.RecordBatch, sink, scratch: bytearray | None = None) -> None:
    """The events.csv rows of `batch` (EVENT_SCHEMA), neutralised, without the header, into `sink`
    (`scratch`: a bytearray the compiled writer may reuse from batch to batch)."""
    write = _fast.compiled("write_csv_rows")
    if write is not None:
        write(neutralise_batch(batch), sink, scratch)
    else:
        pacsv.write_csv(neutralise_batch(batch), sink, write_options=_CSV_ROWS)


def csv_bytes(batch: pa.RecordBatch) -> pa.Buffer:
    """write_rows() as bytes."""
    sink = pa.BufferOutputStream()
    write_rows(batch, sink)
    return sink.getvalue()


def split_rows(data, rows: int) -> pa.Array:
    """CSV text of `rows` rows ending in CRLF, as a binary array of one row each.

    A row ends at a line feed outside quotes: a quoted cell may hold CR, LF and
    doubled quotes, and a quote only ever appears in a quoted cell, doubled, or
    as a cell's opening or closing one, so an even count of quotes before a
    line feed means it is outside every cell.  When there are exactly `rows`
    line feeds (always, for a neutralised batch: controls are shown as \\xNN)
    each one ends a row and no quote is counted.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw == 0x0A)
    if len(ends) != rows:
        quotes = np.cumsum(raw == 0x22, dtype=np.int64)
        ends = ends[(quotes[ends] & 1) == 0]
        if len(ends) != rows:
            raise ValueError(f"CSV text of {rows} rows has {len(ends)} row ends")
    offsets = np.empty(rows + 1, dtype=np.int32)
    offsets[0] = 0
    offsets[1:] = ends + 1
    buffer = data if isinstance(data, pa.Buffer) else pa.py_buffer(data)
    return pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), buffer])


def csv_lines(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` with each row's events.csv bytes as a last column (CSV_LINE)."""
    render = _fast.compiled("render_csv")
    if render is not None:  # it knows where each row ends: no scan for them
        data, ends = render(neutralise_batch(batch))
        lines = pa.Array.from_buffers(pa.binary(), batch.num_rows, [None, pa.py_buffer(ends), pa.py_buffer(data)])
    else:
        lines = split_rows(csv_bytes(batch), batch.num_rows)
    return pa.RecordBatch.from_arrays(batch.columns + [lines], schema=LINES_SCHEMA)


def without_lines(batch: pa.RecordBatch) -> pa.RecordBatch:
    """`batch` as every consumer but events.csv sees it."""
    if batch.schema.names[-1] != CSV_LINE:
        return batch
    return pa.RecordBatch.from_arrays(batch.columns[:-1], schema=EVENT_SCHEMA)


def _joined(lines: pa.Array):
    """The bytes of a binary array's cells, end to end (they are stored so: no copy)."""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=4 * lines.offset)
    return lines.buffers()[2][int(offsets[0]):int(offsets[-1])] if len(lines) else b""


class _EventFile:
    """A consumer writing one file through `self._file` (AtomicWriter or DirectFile)."""

    _file = None

    def _close_writer(self) -> None:
        """Let the format's writer finish its file (footer, buffers) before the rename."""

    def flush(self) -> None:
        self._file.handle.flush()

    def commit(self) -> None:
        self._close_writer()
        self._file.commit()

    def abort(self) -> None:
        self._file.abort()


class EventsCsv(_EventFile):
    """events.csv: RFC 4180 rows ending in CRLF, so a CR inside a cell stays quoted."""

    # It takes batches with their CSV_LINE column (the merge strips it for the
    # others) and then reads nothing else: the merge may hand it only the lines.
    takes_lines = True

    def __init__(self, path: str | Path, atomic: bool = True) -> None:
        self._file = AtomicWriter(path, binary=True) if atomic else DirectFile(path, binary=True)
        self._file.handle.write(csv_header())
        self.rows = 0
        self._scratch = bytearray()  # the compiled writer's, kept between batches

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.schema.names[-1] == CSV_LINE:
            self._file.handle.write(_joined(batch.column(CSV_LINE)))
        else:
            # Straight into the file: through csv_bytes' buffer it cost the
            # batch's CSV text again in peak RSS (~4 MB on api).
            write_rows(batch, self._file.handle, self._scratch)
        self.rows += batch.num_rows


def _json_value(value):
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    return value


class EventsJsonl(_EventFile):
    def __init__(self, path: str | Path) -> None:
        self._file = AtomicWriter(path)
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        write, names = self._file.handle.write, batch.schema.names
        for row in zip(*(column.to_pylist() for column in batch.columns)):
            write(json_text(dict(zip(names, map(_json_value, row)))))
            write("\n")
        self.rows += batch.num_rows


class EventsParquet(_EventFile):
    def __init__(self, path: str | Path) -> None:
        import pyarrow.parquet as pq

        self._file = AtomicWriter(path, binary=True)
        self._writer = pq.ParquetWriter(self._file.handle, EVENT_SCHEMA, compression="zstd")
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(batch)
        self.rows += batch.num_rows

    def flush(self) -> None:
        pass  # a Parquet file is readable only once closed

    def _close_writer(self) -> None:
        self._writer.close()


class EventsKept(BatchConsumer):
    """Keeps every batch in memory (the Python API returns them as one DataFrame)."""

    def __init__(self) -> None:
        self.batches: list[pa.RecordBatch] = []

    def write(self, batch: pa.RecordBatch) -> None:
        self.batches.append(batch)

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=EVENT_SCHEMA)


def events_frame(data):
    """A batch or table as the DataFrame the statistics and the API use.

    Integer columns with empty cells (lines, data_bytes) become pandas'
    nullable Int64, so a missing value is NA rather than a float NaN.
    """
    import pandas as pd

    return data.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
