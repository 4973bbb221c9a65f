"""TCP reassembly of one direction: order, duplicates, overlaps, gaps, limits, wrap-around."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.tcp import stream as reassembly
from analyzer.tcp.stream import DATA, END, GAP, HeldBudget, Stream, seq_diff


class Sink:
    def __init__(self):
        self.items = []

    def __call__(self, kind, value, ts, frame):
        self.items.append((kind, value, frame))

    def data(self):
        return b"".join(v for k, v, _ in self.items if k == DATA)

    def gaps(self):
        return [v for k, v, _ in self.items if k == GAP]


def stream(isn=1000):
    sink = Sink()
    s = Stream(sink, HeldBudget())
    s.syn(isn)
    return s, sink


def test_seq_diff_wraps():
    assert seq_diff(5, 0xFFFFFFF0) == 21
    assert seq_diff(0xFFFFFFF0, 5) == -21


def test_in_order_delivery_keeps_frames():
    s, sink = stream()
    s.segment(1001, b"abc", 3, False, 1.0, 1)
    s.segment(1004, b"def", 3, False, 2.0, 2)
    assert sink.items == [(DATA, b"abc", 1), (DATA, b"def", 2)]


def test_out_of_order_is_held_and_released_in_order():
    s, sink = stream()
    s.segment(1004, b"def", 3, False, 1.0, 1)
    assert sink.items == []
    s.segment(1001, b"abc", 3, False, 2.0, 2)
    assert sink.data() == b"abcdef"
    assert [f for _, _, f in sink.items] == [2, 1]


def test_retransmissions_and_exact_duplicates_are_dropped():
    s, sink = stream()
    for _ in range(2):  # loopback captures often hold each frame twice
        s.segment(1001, b"abc", 3, False, 1.0, 1)
    s.segment(1001, b"abcdef", 6, False, 2.0, 2)  # overlapping retransmission carrying new bytes
    assert sink.data() == b"abcdef"
    assert s.dup_bytes == 6


def test_overlap_first_copy_wins():
    s, sink = stream()
    s.segment(1001, b"abcd", 4, False, 1.0, 1)
    s.segment(1003, b"XXef", 4, False, 2.0, 2)
    assert sink.data() == b"abcdef"


def test_sequence_wrap_around():
    s, sink = stream(isn=0xFFFFFFFD)
    s.segment(0xFFFFFFFE, b"ab", 2, False, 1.0, 1)
    s.segment(0, b"cd", 2, False, 2.0, 2)
    assert sink.data() == b"abcd"


def test_gap_reported_when_peer_acknowledges_missing_bytes():
    s, sink = stream()
    s.segment(1001, b"abc", 3, False, 1.0, 1)
    s.segment(1010, b"xyz", 3, False, 2.0, 2)  # 1004..1009 never captured
    s.ack_beyond(1013, 3.0, 3)
    assert sink.gaps() == [6]
    assert sink.data() == b"abcxyz"
    assert s.missed == 6


def test_snaplen_truncated_segment_reports_its_missing_tail():
    s, sink = stream()
    s.segment(1001, b"ab", 10, False, 1.0, 1)
    s.segment(1011, b"next", 4, False, 2.0, 2)
    assert sink.gaps() == [8]
    assert sink.data() == b"abnext"


def test_fin_ends_after_all_data_even_out_of_order():
    s, sink = stream()
    s.segment(1004, b"def", 3, True, 1.0, 1)  # FIN with the last bytes, early
    assert END not in [k for k, _, _ in sink.items]
    s.segment(1001, b"abc", 3, False, 2.0, 2)
    assert sink.items[-1][0] == END
    assert sink.data() == b"abcdef"


def test_finish_flushes_holes_as_gaps():
    s, sink = stream()
    s.segment(1001, b"a", 1, False, 1.0, 1)
    s.segment(1005, b"e", 1, False, 2.0, 2)
    s.finish(3.0, 3, rst=True)
    assert sink.gaps() == [3]
    assert sink.items[-1] == (END, True, 3)


def test_midstream_start_and_start_implied_by_peer_ack():
    s = Stream(Sink(), HeldBudget())
    s.segment(5000, b"x", 1, False, 1.0, 1)
    assert s.next_seq == 5001
    sink = Sink()
    s2 = Stream(sink, HeldBudget())
    s2.expect_start(4000)
    s2.segment(4100, b"late", 4, False, 1.0, 1)
    s2.finish(2.0, 2)
    assert sink.gaps() == [100]


def test_per_stream_limit_bounds_memory_and_counts(monkeypatch):
    monkeypatch.setattr(reassembly, "MAX_HELD_BYTES_PER_STREAM", 1000)
    s, sink = stream()
    seq = 2001  # a hole at 1001..2000 that never fills
    for i in range(50):
        s.segment(seq, b"x" * 100, 100, False, float(i), i)
        seq += 100
        assert s.held_bytes <= 1000
    assert s.limit_hits > 0
    assert sink.gaps()[0] == 1000


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_any_order_with_duplicates_gives_the_original_stream(data):
    payload = data.draw(st.binary(min_size=1, max_size=400))
    isn = data.draw(st.integers(0, 0xFFFFFFFF))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(payload) - 1)), max_size=10)))
    bounds = [0] + [c for c in cuts if c < len(payload)] + [len(payload)]
    segs = [(bounds[i], payload[bounds[i]:bounds[i + 1]]) for i in range(len(bounds) - 1) if bounds[i] < bounds[i + 1]]
    segs += data.draw(st.lists(st.sampled_from(segs), max_size=5))  # retransmissions
    order = data.draw(st.permutations(segs))
    sink = Sink()
    s = Stream(sink, HeldBudget())
    s.syn(isn)
    for i, (off, chunk) in enumerate(order):
        s.segment((isn + 1 + off) & 0xFFFFFFFF, chunk, len(chunk), False, float(i), i)
    s.finish(99.0, 99)
    assert sink.data() == payload
    assert sink.gaps() == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0xFFFFFFFF), st.binary(max_size=50), st.integers(0, 3000),
                          st.booleans()), max_size=30))
def test_random_segments_never_raise_and_account_bytes(segments):
    sink = Sink()
    s = Stream(sink, HeldBudget())
    for i, (seq, data, extra, fin) in enumerate(segments):
        s.segment(seq, data, len(data) + (extra if random.random() < 0.1 else 0), fin, float(i), i)
        if i % 5 == 4:
            s.ack_beyond(seq + 10, float(i), i)
    s.finish(1.0, 1)
    assert s.held_bytes == 0
