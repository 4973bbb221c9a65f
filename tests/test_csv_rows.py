# events.csv's rows rendered in C (analyzer/_fast/csv_rows.pyx) are pyarrow's
# CSV writer's, byte for byte: on any double (its shortest digits and Arrow's
# layout of them, the microsecond shortcut's edges), any int64, strings made
# to trip a CSV writer, nulls, and sliced batches; and events.csv written
# through either is the same file.
from __future__ import annotations

import struct

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings, strategies as st

from analyzer import _fast
from analyzer.outputs.events import CSV_LINE, EVENT_SCHEMA, EventsCsv, csv_lines

csv_rows = pytest.importorskip("analyzer._fast.csv_rows", reason="the compiled fast path is not built")
render_csv = csv_rows.render_csv
write_csv_rows = csv_rows.write_csv_rows


def _pyarrow(batch: pa.RecordBatch) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(batch, sink, write_options=pacsv.WriteOptions(eol="\r\n", include_header=False))
    return sink.getvalue().to_pybytes()


_SCRATCH = bytearray()


def _same(batch: pa.RecordBatch) -> None:
    data, ends = render_csv(batch)
    want = _pyarrow(batch)
    assert data == want
    for scratch in (None, _SCRATCH):  # a fresh one, and one kept from batch to batch (as EventsCsv keeps its own)
        sink = pa.BufferOutputStream()
        assert write_csv_rows(batch, sink, scratch) == len(want)
        assert sink.getvalue().to_pybytes() == want
    assert len(ends) == batch.num_rows + 1 and ends[0] == 0 and ends[-1] == len(data)
    # each row ends where its CRLF does
    assert all(data[end - 2:end] == b"\r\n" for end in ends[1:])


# Microsecond timestamps and millisecond latencies (the shortcut), their
# neighbours one bit away (which it must hand to the general path), and
# doubles from every exponent.
MICROS = st.integers(0, 2**32 * 10**6 - 1).map(lambda n: n / 1e6)
NEIGHBOURS = MICROS.flatmap(lambda v: st.sampled_from([np.nextafter(v, np.inf), np.nextafter(v, -np.inf)]))
ANY_BITS = st.integers(0, 2**64 - 1).map(lambda bits: struct.unpack("<d", struct.pack("<Q", bits))[0])
DOUBLES = st.one_of(MICROS, NEIGHBOURS, ANY_BITS, st.floats(), st.floats(-1e12, 1e12),
                    st.sampled_from([0.0, -0.0, 1e-6, 9.99e-7, 1e9, 1e10, 9999999999.999998, 4294967296.0,
                                     4294967295.999999, 5e-324, 1.7976931348623157e308]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.none(), DOUBLES, DOUBLES.map(lambda v: -v)), min_size=1, max_size=40))
def test_doubles_as_pyarrow_writes_them(values):
    _same(pa.record_batch([pa.array(values, pa.float64())], names=["x"]))


def test_a_million_doubles_as_pyarrow_writes_them():
    rng = np.random.default_rng(12)
    bits = rng.integers(0, 2**63, 300_000, dtype=np.int64).view(np.float64)  # every exponent, both signs below
    micros = rng.integers(0, 2**32 * 10**6, 300_000) / 1e6
    millis = np.round(rng.random(300_000) * 10_000, 3)
    for values in (bits, -bits, micros, -micros, millis, np.nextafter(micros, 0)):
        _same(pa.record_batch([pa.array(values)], names=["x"]))


# Cells made to trip a CSV writer: quotes (doubled), commas, CR and LF (kept
# raw inside quotes), NUL, non-ASCII.
TEXT = st.one_of(st.none(), st.text(alphabet=st.sampled_from('"\r\n,;\'=+-@\t a\u00e9\u202e\x00'), max_size=12),
                 st.text(max_size=8))
INTS = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.integers(-1000, 1000))
ROW = st.tuples(TEXT, INTS, st.one_of(st.none(), DOUBLES), st.one_of(st.none(), st.booleans()), TEXT)
SCHEMA = pa.schema([("s", pa.string()), ("i", pa.int64()), ("d", pa.float64()), ("b", pa.bool_()),
                    ("t", pa.string())])


@settings(max_examples=300, deadline=None)
@given(st.lists(ROW, min_size=1, max_size=30), st.data())
def test_rows_as_pyarrow_writes_them(rows, data):
    columns = [pa.array(list(values), field.type) for values, field in zip(zip(*rows), SCHEMA)]
    batch = pa.RecordBatch.from_arrays(columns, schema=SCHEMA)
    _same(batch)
    # a slice starts inside its buffers (and inside their bitmaps' bytes)
    start = data.draw(st.integers(0, len(rows) - 1))
    _same(batch.slice(start, data.draw(st.integers(0, len(rows) - start))))


def test_columns_without_nulls_or_rows():
    _same(pa.RecordBatch.from_arrays([pa.array(["a", "b"]), pa.array([1, 2]), pa.array([0.5, 2.0]),
                                      pa.array([True, False]), pa.array(["", ""])], schema=SCHEMA))
    assert render_csv(pa.RecordBatch.from_pylist([], schema=SCHEMA))[0] == b""


def test_other_column_types_are_refused():
    with pytest.raises(TypeError, match="int32"):
        render_csv(pa.record_batch([pa.array([1], pa.int32())], names=["x"]))


def _event_batch(rows: int, seed: int) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    hostile = ["=1+1", "+x", 'q"u""o', "a,b", "cr\rlf\nx", "\u202eevil", "\x1b[2J", "plain", "", None]
    columns = []
    for field in EVENT_SCHEMA:
        if pa.types.is_string(field.type):
            columns.append(pa.array([hostile[int(i)] for i in rng.integers(0, len(hostile), rows)], field.type))
        elif pa.types.is_floating(field.type):
            columns.append(pa.array(np.round(1.7e9 + rng.uniform(0, 1e5, rows), 6), field.type))
        elif pa.types.is_boolean(field.type):
            columns.append(pa.array(rng.integers(0, 2, rows).astype(bool), field.type))
        else:
            columns.append(pa.array(rng.integers(-10**6, 10**6, rows), field.type))
    return pa.RecordBatch.from_arrays(columns, schema=EVENT_SCHEMA)


def test_events_csv_and_its_lines_are_the_same_from_both_writers(tmp_path):
    batches = [_event_batch(700, seed) for seed in range(3)]
    written, lines = {}, {}
    for name in ("python", "compiled"):
        _fast.use(name)
        try:
            out = EventsCsv(tmp_path / f"{name}.csv")
            for batch in batches:
                out.write(batch)
            out.commit()
            written[name] = (tmp_path / f"{name}.csv").read_bytes()
            lines[name] = [csv_lines(batch).column(CSV_LINE).to_pylist() for batch in batches]
        finally:
            _fast.use(None)
    assert written["compiled"] == written["python"]
    assert lines["compiled"] == lines["python"]
    # neutralised before either renders: formulas carry their apostrophe, controls are shown
    assert b"\"'=1+1\"" in written["compiled"] and b"\x1b" not in written["compiled"]
