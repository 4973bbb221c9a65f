# The events a sink holds until their turn (engines/sink.py EventRows) and
# its compiled twin (analyzer/_fast/rows.pyx, column buffers): on random
# events, ties in time and frame, empty and non-ASCII strings, absent
# numbers, and random release sizes, both must release the same batches,
# row for row, value for value, null for null.
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import _fast
from analyzer.engines.sink import _RAW_SCHEMA, EventRows, EventSink
from analyzer.events import Event

_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_OPT_INT = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1))


@st.composite
def events(draw):
    ev = Event(
        protocol=draw(st.sampled_from(["http", "ftp", "websocket"])),
        code=draw(st.integers(0, 2**31)),
        text=draw(_TEXT), request=draw(_TEXT),
        epoch=draw(st.one_of(st.sampled_from([0.0, -0.0, 1.5, 1_700_000_000.25]),
                             st.floats(-1e12, 1e12, allow_nan=False))),
        frame=draw(st.integers(1, 6)),
        sender=draw(st.integers(0, 1)),
        host=draw(_TEXT),
        latency_ms=draw(st.one_of(st.none(), st.floats(allow_nan=False), st.just(float("inf")))),
        direction=draw(st.sampled_from(["", "client->server", "server->client"])),
        inferred=draw(st.booleans()),
        lines=draw(_OPT_INT), substatus=draw(st.sampled_from(["", "403.14"])),
        substatus_source=draw(st.sampled_from(["", "body"])),
        data_bytes=draw(_OPT_INT),
        flags=tuple(draw(st.lists(st.sampled_from(["http_after_gap", "http_pairing_uncertain"]), max_size=2))),
        last_frame=draw(st.one_of(st.none(), st.integers(0, 2**40))),
    )
    ends = (draw(st.sampled_from(["10.0.0.1", "::1", ""])), draw(st.integers(0, 65535)),
            draw(st.sampled_from(["10.0.0.2", "fe80::1"])), draw(st.integers(0, 65535)),
            draw(st.sampled_from(["Cabc", "Cdéf", ""])), draw(st.sampled_from(["a.pcap", "b é.pcapng"])))
    return ev, ends


def _twin():
    twin = None
    if _fast.available():
        _fast.use("compiled")
        try:
            twin = _fast.compiled("EventRows")
        finally:
            _fast.use(None)
    if twin is None:
        pytest.skip("the compiled fast path is not built (python setup.py build_ext --inplace)")
    return twin


def _run(impl, script):
    rows, out = impl(_RAW_SCHEMA), []
    for step in script:
        if isinstance(step, int):
            out.append(rows.release(step))
        else:
            rows.add(*step)
        out.append(len(rows))
    out.append(rows.release(len(rows)))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(events(), st.integers(0, 8)), max_size=60))
def test_compiled_rows_release_what_the_reference_releases(script):
    twin = _twin()
    ours, theirs = _run(EventRows, script), _run(twin, script)
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        if a is None or isinstance(a, int):
            assert a == b
        else:
            assert b is not None and b.schema == a.schema and b.equals(a), (a.to_pylist(), b.to_pylist())


@settings(max_examples=200, deadline=None)
@given(st.lists(events(), max_size=60), st.lists(st.integers(0, 59), max_size=3), st.data())
def test_rows_nearly_in_time_order_release_what_the_reference_releases(evs, moved, data):
    # As a capture gives them: in (epoch, frame) order with ties, but for a
    # few that arrive late, so both the in-order path (new rows join the
    # held batches as they are) and the sort are taken.
    evs.sort(key=lambda step: (step[0].epoch, step[0].frame))
    for i in moved:
        if i < len(evs):
            evs.append(evs.pop(i))
    script = []
    for step in evs:
        script.append(step)
        if data.draw(st.integers(0, 5)) == 0:
            script.append(data.draw(st.integers(0, 20)))
    twin = _twin()
    ours, theirs = _run(EventRows, script), _run(twin, script)
    for a, b in zip(ours, theirs):
        if a is None or isinstance(a, int):
            assert a == b
        else:
            assert b is not None and b.equals(a), (a.to_pylist(), b.to_pylist())


def test_sink_batches_are_the_same_in_both_implementations(implementation):
    # Through the sink, with a small window so that rows are held back and
    # carried over several releases: ties on (epoch, frame) keep arrival order.
    class Keep:
        def __init__(self):
            self.rows = []

        def write(self, batch):
            self.rows.extend(batch.to_pylist())

        def flush(self):
            pass

        def commit(self):
            pass

    keep = Keep()
    sink = EventSink("en", [keep], window=5, batch_rows=3)
    arrivals = [(1.0, 3), (0.5, 9), (1.0, 3), (1.0, 2), (0.5, 9), (2.0, 1), (0.1, 7), (1.0, 3)] * 4
    for k, (epoch, frame) in enumerate(arrivals):
        sink.add(Event(protocol="http", code=200 + k, text="OK", request=f"GET /{k}", epoch=epoch, frame=frame,
                       sender=1), ("10.0.0.1", 1000 + k, "10.0.0.2", 80, f"C{k}", "x.pcap"))
    sink.commit()
    # The window's contract: once 5 + 3 are held, all but the latest 5 leave
    # in (epoch, frame, arrival) order; the rest at the end.
    held, expected = [], []
    for k, (epoch, frame) in enumerate(arrivals):
        held.append((epoch, frame, k))
        if len(held) >= 8:
            held.sort()
            expected += [item[2] for item in held[:-5]]
            held = held[-5:]
    expected += [item[2] for item in sorted(held)]
    assert [row["code"] - 200 for row in keep.rows] == expected
    assert expected != sorted(expected)  # the window did reorder
