# events.csv rendered by the parallel workers (issue 12): each worker ships
# every row's events.csv bytes with its part, the parent merges them by time
# and writes them.  The row splitter agrees with Python's csv module on any
# row, the lines written equal the rows rendered in one process, no other
# consumer sees the lines, and -j 2 writes events.csv byte for byte as -j 1.
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given, settings, strategies as st

from analyzer.engines.native import run
from analyzer.engines.parallel import merge_in_time_order, run_parallel
from analyzer.engines.selection import Selection
from analyzer.engines.sink import EventOutputs
from analyzer.events import EVENT_COLUMNS
from analyzer.outputs.events import (CSV_LINE, EVENT_SCHEMA, EventsCsv, csv_bytes, csv_lines, split_rows,
                                     without_lines)
from conversations import conversation, write_pcap

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "captures"

# Cells made to trip a CSV writer or reader: quotes (doubled in CSV), commas,
# CR and LF (a quoted cell holds them raw), formula starters.
CELL = st.one_of(st.none(), st.text(alphabet=st.sampled_from('"\r\n,;\'=+-@\t a\u00e9\u202e\x00'), max_size=12),
                 st.text(max_size=6))


def _render(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(eol="\r\n", include_header=False))
    return sink.getvalue().to_pybytes()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(CELL, st.one_of(st.none(), st.integers(-10**12, 10**12)), CELL), min_size=1,
                max_size=30))
def test_split_rows_agrees_with_the_csv_module(rows):
    table = pa.table({"a": [r[0] for r in rows], "n": pa.array([r[1] for r in rows], pa.int64()),
                      "b": [r[2] for r in rows]})
    data = _render(table)
    lines = split_rows(pa.py_buffer(data), len(rows)).to_pylist()
    assert b"".join(lines) == data
    for line, row in zip(lines, rows):
        assert line.endswith(b"\r\n")
        parsed = list(csv.reader(io.StringIO(line.decode("utf-8"), newline="")))
        assert parsed == [["" if v is None else str(v) for v in row]]


def test_split_rows_refuses_text_that_is_not_that_many_rows():
    with pytest.raises(ValueError):
        split_rows(pa.py_buffer(b'"a\r\nb",1\r\n'), 3)


def _batch(rows: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    hostile = ["=1+1", "+x", "-2", "@SUM(A1)", "\tt", "\rr", 'q"u""o', "a,b", "cr\rlf\nx", "\u202eevil", "\x1b[2J",
               "plain", "", None]
    columns = {}
    for name in EVENT_COLUMNS:
        kind = EVENT_SCHEMA.field(name).type
        if pa.types.is_string(kind):
            columns[name] = pa.array([hostile[int(i)] for i in rng.integers(0, len(hostile), rows)], kind)
        elif pa.types.is_floating(kind):
            columns[name] = pa.array(np.sort(rng.uniform(0, 100, rows)), kind)
        else:
            columns[name] = pa.array(rng.integers(0, 10**6, rows), kind)
    return pa.RecordBatch.from_pydict(columns, schema=EVENT_SCHEMA)


def test_lines_are_the_rows_events_csv_renders(tmp_path):
    batch = _batch(500)
    lined = csv_lines(batch)
    assert lined.schema.names == EVENT_SCHEMA.names + [CSV_LINE]
    assert b"".join(lined.column(CSV_LINE).to_pylist()) == csv_bytes(batch).to_pybytes()
    assert without_lines(lined).equals(batch)
    # Sliced, filtered and taken as the merge and the selection do, each row keeps its own line.
    picked = [lined.slice(7, 100), lined.filter(pa.array([i % 3 == 0 for i in range(500)])),
              lined.take(pa.array([499, 0, 250, 3]))]
    plain, with_lines = EventsCsv(tmp_path / "plain.csv"), EventsCsv(tmp_path / "lines.csv")
    for part in picked:
        plain.write(without_lines(part))
        with_lines.write(part)
    plain.commit()
    with_lines.commit()
    assert (tmp_path / "lines.csv").read_bytes() == (tmp_path / "plain.csv").read_bytes()
    rows = list(csv.reader(io.StringIO((tmp_path / "lines.csv").read_text(encoding="utf-8"), newline="")))
    assert len(rows) == 1 + 100 + 167 + 4


def test_the_merge_keeps_each_row_with_its_line():
    rng = np.random.default_rng(5)
    streams = []
    for k in range(3):
        batch = _batch(300, seed=k)
        # Coarse epochs, so the frame (unique: one packet is in one share) decides between streams.
        epochs = pa.array(np.sort(rng.integers(0, 40, 300)).astype(float))
        batch = batch.set_column(EVENT_COLUMNS.index("epoch"), "epoch", epochs)
        frames = pa.array(rng.permutation(np.arange(300) * 3 + k))
        batch = batch.set_column(EVENT_COLUMNS.index("frame"), "frame", frames)
        batch = csv_lines(batch.take(pa.array(np.lexsort((frames.to_numpy(), epochs.to_numpy())))))
        streams.append([batch.slice(0, 120), batch.slice(120, 1), batch.slice(121)])
    merged = pa.Table.from_batches(list(merge_in_time_order(streams)))
    want = pa.Table.from_batches([b for s in streams for b in s])
    order = np.lexsort((want.column("frame").to_numpy(), want.column("epoch").to_numpy()))
    assert merged.equals(want.take(order))
    for batch in merged.to_batches():
        assert csv_bytes(without_lines(batch)).to_pybytes() == b"".join(batch.column(CSV_LINE).to_pylist())


def _hostile_capture(path: Path, connections: int = 120) -> None:
    """HTTP connections from many hosts (so both shares get some), interleaved in
    time, each answering with reasons, URIs and hosts made to trip a CSV file."""
    reasons = [b"=cmd|' /C calc'!A0", b"+1", b"-1", b"@SUM(1)", b"\tTab", b"\rCR first", b'say "hi", "bye"',
               b'""', b"a\rb", b"x,y", b"\xe2\x80\xaebidi", b"\x1b[2J\x07", b"caf\xe9", b"OK"]
    uris = [b"/=1", b'/q"uote', b"/a,b", b"/%0d%0a", b"/+x", b"/\x7f"]
    hosts = [b"=evil.example", b"@host", b'h"ost', b"plain.example", b"-x"]
    frames = []
    for i in range(connections):
        messages = []
        for j in range(3):
            n = i * 3 + j
            messages.append(("c", b"GET " + uris[n % len(uris)] + b"/%d HTTP/1.1\r\nHost: " % n
                             + hosts[n % len(hosts)] + b"\r\n\r\n"))
            messages.append(("s", b"HTTP/1.1 %d " % (200, 404, 500, 302)[n % 4] + reasons[n % len(reasons)]
                             + b"\r\nContent-Length: 0\r\n\r\n"))
        frames += conversation(messages, client=(f"10.1.{i // 200}.{1 + i % 200}", 40000 + i),
                               t0=1_700_000_000.0 + (i % 7) * 0.0003 + i * 0.002, step=0.0011)
    write_pcap(path, frames)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("csvlines")
    capture = tmp / "hostile.pcap"
    _hostile_capture(capture)
    return tmp, capture


def test_two_processes_write_the_same_bytes_on_hostile_cells(hostile):
    tmp, capture = hostile
    one = run([str(capture)], tmp / "one", lang="en", outputs=EventOutputs(jsonl=True))
    two = run_parallel([str(capture)], tmp / "two", lang="en", jobs=2, outputs=EventOutputs(jsonl=True))
    assert two.events == one.events == 360
    data = (tmp / "two" / "events.csv").read_bytes()
    assert data == (tmp / "one" / "events.csv").read_bytes()
    # The hostile cells are there, quoted and neutralised (so the test can fail).
    assert b'"\'=cmd|\' /C calc\'!A0"' in data and b'"say ""hi"", ""bye"""' in data and b"\\x1b[2J" in data
    # No other consumer saw the lines.
    assert (tmp / "two" / "events.jsonl").read_bytes() == (tmp / "one" / "events.jsonl").read_bytes()
    assert CSV_LINE not in json.loads((tmp / "two" / "events.jsonl").read_text().splitlines()[0])
    # connections.csv is the workers' files end to end: the same rows, share by share.
    one_rows, two_rows = (_lines(tmp / d / "connections.csv") for d in ("one", "two"))
    assert two_rows[0] == one_rows[0] and sorted(two_rows) == sorted(one_rows) and len(one_rows) == 121
    assert two.connections.count == one.connections.count == 120


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\r\n")[:-1]  # no cell of connections.csv holds a CR


def test_two_processes_keep_the_same_bytes_and_frame_with_a_selection(hostile):
    tmp, capture = hostile
    selection = Selection(protocols=frozenset({"http"}), since=1_700_000_000.1)
    outputs = EventOutputs(keep=True, selection=selection)
    one = run([str(capture)], tmp / "sel1", lang="en", outputs=outputs)
    two = run_parallel([str(capture)], tmp / "sel2", lang="en", jobs=2, outputs=outputs)
    assert 0 < two.events
    assert (tmp / "sel2" / "events.csv").read_bytes() == (tmp / "sel1" / "events.csv").read_bytes()
    kept = two.kept.table()
    assert kept.schema == EVENT_SCHEMA and kept.equals(one.kept.table())
    assert 0 < kept.num_rows < 360


def test_two_processes_write_the_same_bytes_on_the_samples(tmp_path):
    # FTP samples are left out as in test_event_batches (loopback: data_bytes may be lost across shares).
    captures = [str(p) for p in sorted(SAMPLES.glob("*.pcap*")) if not p.name.startswith("ftp_")]
    one = run(captures, tmp_path / "one", lang="en")
    two = run_parallel(captures, tmp_path / "two", lang="en", jobs=2)
    assert two.events == one.events > 100
    assert (tmp_path / "two" / "events.csv").read_bytes() == (tmp_path / "one" / "events.csv").read_bytes()


def test_a_part_holds_only_keys_and_lines_when_events_csv_is_the_only_event_file(tmp_path):
    from analyzer.engines.parallel import worker_outputs

    assert worker_outputs(EventOutputs(), tmp_path).part_lines_only
    for other in (dict(jsonl=True), dict(parquet=True), dict(keep=True), dict(also=(object(),))):
        assert not worker_outputs(EventOutputs(**other), tmp_path).part_lines_only, other
