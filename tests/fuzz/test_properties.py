# Property tests (hypothesis) of the sans-IO entry points issue 17 touched:
# the zstd frame walker, the time axis, IP fragment reassembly, the packet
# decoder on deep nesting, and the capture readers on records of any length.
# Each states its invariant the way h11's fuzz tests do: the answer is right,
# or the one documented error is raised, never anything else.
from __future__ import annotations

import io
import struct
from collections import Counter

import numpy as np
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.capture.compression import CountingReader, StreamError, chunk_reader, open_stream
from analyzer.decode import ipfrag
from analyzer.decode.packets import Decoder
from analyzer.stats.timeaxis import CALENDAR, MAX_BUCKETS, OUTLIER_MAX_SHARE, TimeHistogram
from tests.fuzz import attacks

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- zstd: a cut is found wherever it falls -----------------------------------------------

@SETTINGS
@given(chunks=st.lists(st.binary(min_size=0, max_size=3000), min_size=1, max_size=5),
       checksum=st.booleans(), data=st.data())
def test_a_zstd_stream_cut_anywhere_is_cut_short_unless_on_a_frame_end(chunks, checksum, data):
    c = zstandard.ZstdCompressor(write_checksum=checksum)
    frames = [c.compress(ch * data.draw(st.integers(1, 40))) for ch in chunks]
    whole = b"".join(frames)
    ends = {0}
    for f in frames:
        ends.add(max(ends) + len(f))
    cut = data.draw(st.integers(0, len(whole)))
    fill = chunk_reader(open_stream("zstd", CountingReader(io.BytesIO(whole[:cut]))), "zstd")
    try:
        while fill(1 << 16):
            pass
    except StreamError as exc:
        assert exc.cut_short or cut not in ends
        assert cut not in ends
    else:
        assert cut in ends


# -- the time axis is bounded and batch-independent ---------------------------------------------

finite = st.floats(min_value=-3e19, max_value=3e19, allow_nan=False, allow_infinity=False)
near = st.floats(min_value=1.7e9, max_value=1.7e9 + 86400, allow_nan=False)


@SETTINGS
@given(times=st.lists(st.one_of(near, near, near, finite), min_size=1, max_size=300), data=st.data())
def test_the_axis_has_at_most_max_buckets_and_few_outliers(times, data):
    cuts = sorted(data.draw(st.lists(st.integers(0, len(times)), max_size=5)))
    whole, split = TimeHistogram(), TimeHistogram()
    whole.add(np.array(times))
    for lo, hi in zip([0, *cuts], [*cuts, len(times)]):
        split.add(np.array(times[lo:hi]))
    a, b = whole.axis(), split.axis()
    assert a == b                                       # batching changes nothing
    assert a.buckets <= MAX_BUCKETS
    assert a.first <= a.last
    strange = sum(1 for t in times if not CALENDAR[0] <= t < CALENDAR[1])
    usual = len(times) - strange
    if usual:
        assert a.outliers <= strange + max(int(usual * OUTLIER_MAX_SHARE), 1 if usual >= 3 else 0)
        assert CALENDAR[0] <= a.first and a.last < CALENDAR[1]
    else:
        assert a.outliers <= max(int(len(times) * OUTLIER_MAX_SHARE), 1 if len(times) >= 3 else 0)


@SETTINGS
@given(n=st.integers(3, 200), far=st.sampled_from([-1e12, 1e11, 4.3e9, 2e13, 1e19]))
def test_one_far_timestamp_is_an_outlier(n, far):
    h = TimeHistogram()
    h.add(np.array([1.7e9 + i for i in range(n)] + [far]))
    axis = h.axis()
    assert axis.outliers == 1 and axis.last <= 1.7e9 + n and axis.first >= 1.7e9


# -- IP fragments: any order, overlaps and duplicates ------------------------------------------------

@SETTINGS
@given(data=st.data(), size=st.integers(8, 4000))
def test_fragments_in_any_order_give_the_datagram(data, size):
    size -= size % 8
    payload = bytes((i * 7) & 0xFF for i in range(size))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, size // 8 - 1), max_size=30)) if size > 8 else []))
    bounds = [0, *(c * 8 for c in cuts), size]
    pieces = [(a, b) for a, b in zip(bounds, bounds[1:])]
    extra = data.draw(st.lists(st.sampled_from(pieces), max_size=10))   # duplicates
    order = data.draw(st.permutations(pieces + extra))
    table = ipfrag.FragmentTable(Counter(), "ipv4", 30.0)
    got = None
    for a, b in order:
        r = table.add("k", a, b < size, payload[a:b], 1.0)
        if not isinstance(r, str):
            got = r
            break
    assert got is not None and got[0] == payload
    assert table.pending_bytes == 0 and len(table) == 0


# -- the decoder: nesting of any depth never raises ---------------------------------------------------

LAYERS = st.sampled_from(["vlan", "snap", "mpls"])


@SETTINGS
@given(layers=st.lists(LAYERS, max_size=3000), ah=st.integers(0, 3000))
def test_deep_nesting_decodes_or_skips_never_raises(layers, ah):
    body = struct.pack("!HHIIBBHHH", 40000, 80, 1, 0, 0x50, 2, 65535, 0, 0)
    for _ in range(ah):
        body = struct.pack("!BBHII", 6 if _ == 0 else 51, 1, 0, 256, 1) + body
    ip = attacks.ipv4(attacks.CLIENT, attacks.SERVER, 51 if ah else 6, body[:65000])
    inner, et = ip, 0x0800
    for layer in reversed(layers):
        if layer == "vlan":
            inner, et = struct.pack("!HH", 0, et) + inner, 0x8100
        elif layer == "snap":
            inner, et = b"\xaa\xaa\x03\x00\x00\x00" + struct.pack("!H", et) + inner, 0x0040
        elif et == 0x0800:
            inner, et = struct.pack("!I", 0x100 | 1) + inner, 0x8847
    frame = attacks.MAC + struct.pack("!H", et) + inner
    dec = Decoder()
    dec.decode(1, frame, 1.0, len(frame))
    assert dec.decoded + sum(dec.skipped.values()) == 1
    assert not dec.skipped["decode-error"]


# -- readers: records of any length ----------------------------------------------------------------------

@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(0, 3 * 1024 * 1024), min_size=1, max_size=4))
def test_records_of_any_length_are_yielded_in_order_and_bounded(tmp_path_factory, sizes):
    from analyzer.capture import open_capture
    from analyzer.capture.pcap import KEEP_RECORD_BYTES
    from tests import captures_builder as cb

    path = tmp_path_factory.mktemp("rec") / "x.pcap"
    path.write_bytes(cb.pcap([((i, 0), bytes([i]) * n) for i, n in enumerate(sizes)]))
    with open_capture(str(path)) as cap:
        got = list(cap)
        cut = cap.records_cut
    assert [(len(d), w) for _t, _l, d, w in got] == [(min(n, KEEP_RECORD_BYTES), n) for n in sizes]
    assert all(d == bytes([i]) * len(d) for i, (_t, _l, d, _w) in enumerate(got))
    assert cut == sum(n > KEEP_RECORD_BYTES for n in sizes)
