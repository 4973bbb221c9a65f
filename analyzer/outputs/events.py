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
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

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
    """
    if column.type != pa.string():
        column = column.cast(pa.string())
    validity, offsets, data = column.buffers()
    n = len(column)
    if data is None or n == 0:
        return np.zeros(n, dtype=bool)
    ends = np.frombuffer(offsets, dtype=np.int32)[column.offset:column.offset + n + 1]
    starts, nonempty = ends[:-1], ends[1:] > ends[:-1]
    first = np.zeros(n, dtype=np.uint8)
    first[nonempty] = np.frombuffer(data, dtype=np.uint8)[starts[nonempty]]
    risky = _FORMULA_BYTE[first] & nonempty
    if column.null_count:
        risky &= column.is_valid().to_numpy(zero_copy_only=False)
    return risky


def neutralise_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch as events.csv shows it: control and bidi characters as \\xNN / \\uNNNN
    (outputs/visible.py), then every cell that could start a formula prefixed by an apostrophe."""
    columns = []
    for name, column in zip(batch.schema.names, batch.columns):
        if name in STRING_COLUMNS:
            if may_hold_unsafe(column) and pc.any(pc.match_substring_regex(column, UNSAFE_RE2)).as_py():
                # rare: only then do the cells go through Python
                column = pa.array([visible(v) if v is not None else None for v in column.to_pylist()],
                                  type=column.type)
            risky = _formula_cells(column)
            if risky.any():
                column = pc.if_else(pa.array(risky), pc.binary_join_element_wise("'", column, ""), column)
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)


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

    def __init__(self, path: str | Path, atomic: bool = True) -> None:
        self._file = AtomicWriter(path, binary=True) if atomic else DirectFile(path, binary=True)
        options = pacsv.WriteOptions(eol="\r\n", quoting_header="none")
        self._writer = pacsv.CSVWriter(self._file.handle, EVENT_SCHEMA, write_options=options)
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self._writer.write_batch(neutralise_batch(batch))
        self.rows += batch.num_rows

    def _close_writer(self) -> None:
        self._writer.close()


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
