# Robustness against hostile and broken inputs (issue 17, "Found" items 1-3
# and 7): each test builds its capture (tests/fuzz/attacks.py), runs the real
# CLI under the fuzz harness's time and memory limits where the finding was a
# hang or a blow-up, and checks what the reports say about the limit that was
# hit.  Each failed before its fix; the figures before/after are in
# benchmarks/README.md ("Resource attacks").
from __future__ import annotations

import json
import re
import struct

import pytest

from analyzer.capture import open_capture
from analyzer.capture.compression import ZstdFrames
from analyzer.capture.pcap import KEEP_RECORD_BYTES
from analyzer.decode import ipfrag
from analyzer.decode.packets import Decoder
from analyzer.errors import CaptureError
from analyzer.stats.timeaxis import MAX_BUCKETS
from analyzer.tcp import stream as reassembly
from analyzer.tcp.table import DETECT_MAX_REPLAY_BYTES, FlowTable, SYN, ACK
from tests import captures_builder as cb
from tests.fuzz import attacks, harness, limits


def analysed(tmp_path, data: bytes, seconds: float | None = None):
    """Run the CLI on `data` in a fresh process under the harness limits
    (tests/fuzz/limits.py); (result, summary.json, outdir)."""
    capture = tmp_path / "case.cap"
    capture.write_bytes(data)
    out = tmp_path / "out"
    result = limits.run_limited(limits.analyzer_command(capture, out),
                                seconds=seconds or harness.time_limit(len(data)), memory_mb=harness.MEMORY_MB)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    return result, summary, out


# -- items 1 and 2: the time axis -------------------------------------------------------

def test_a_capture_spanning_600000_years_has_a_bounded_axis(tmp_path):
    # Before: 3.1 GB and 17 s building a bucket per interval (killed at 300 MB here).
    result, summary, out = analysed(tmp_path, attacks.time_span_pcapng())
    assert result.verdict == "ok" and result.status == 0, result
    axis = summary["time_axis"]
    assert axis["buckets"] <= MAX_BUCKETS
    # Three of the four exchanges lie 2e13 s and more away (beyond any calendar): outliers.
    assert summary["timestamp_outliers"] == 3
    assert summary["coverage"]["anomalies"]["timestamp_outlier"] == 3
    assert summary["events"] == 4                       # still counted everywhere else
    html = (out / "report.html").read_text()
    assert html.count('class="hint outliers"') == 1


def test_corrupted_timestamps_are_counted_not_stretched_over(tmp_path):
    # Twenty exchanges a second apart, two responses stamped in 2106: before,
    # the axis spanned 136 years in weekly buckets and showed one bar.
    result, summary, out = analysed(tmp_path, attacks.corrupted_timestamps_pcap())
    assert result.verdict == "ok"
    assert summary["timestamp_outliers"] == 2
    assert summary["bucket_seconds"] == 1
    axis = summary["time_axis"]
    assert 1_700_000_000 <= axis["first_epoch"] and axis["last_epoch"] < 1_700_000_020
    assert summary["last"].startswith("2106-")         # the span itself is reported as read
    html = (out / "report.html").read_text()
    chart = html[html.index('id="timeline"'):]
    assert len(re.findall(r"<rect ", chart[:chart.index("</section>")])) >= 18   # one bar per second, not one


def test_a_timestamp_near_1e19_is_no_internal_error(tmp_path):
    # Before: MemoryError (exit 1) allocating 10^13 weekly buckets.
    result, summary, _out = analysed(tmp_path, attacks.timestamp_near_1e19())
    assert result.verdict == "ok" and result.status == 0, result.stderr
    assert summary["timestamp_outliers"] == 1 and summary["time_axis"]["buckets"] <= MAX_BUCKETS


@pytest.mark.slow
def test_a_syn_flood_past_the_connection_limit_finishes(tmp_path):
    # 502,000 SYNs, just past the old 500,000-connection limit: before the lazy
    # heap, eviction scanned the table per new connection (still running after
    # 600 s).  Now each is charged its memory and the memory budget is reached
    # before the 131,072-connection limit: the rest are evicted and counted.
    # A fresh process (not a fork of this one, which holds the 40 MB capture).
    syns = 502_000
    capture = tmp_path / "synflood.pcap"
    capture.write_bytes(attacks.syn_flood(syns))
    out = tmp_path / "out"
    result = limits.run_limited(limits.analyzer_command(capture, out), seconds=300, memory_mb=harness.MEMORY_MB)
    assert result.verdict == "ok", result
    summary = json.loads((out / "summary.json").read_text())
    from analyzer.tcp import table as flows

    live = flows.MAX_CONNECTION_MEMORY // flows.CONNECTION_COST   # a SYN-only connection costs its record
    assert live < flows.MAX_CONNECTIONS
    assert summary["coverage"]["limits_hit"] == {"connection_memory": syns - live}


# -- item 3: nesting ------------------------------------------------------------------------

def _segment(data: bytes):
    for ts, linktype, frame, wirelen in open_capture_bytes(data):
        yield Decoder().decode(linktype, frame, ts, wirelen)


def open_capture_bytes(data: bytes):
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".cap") as f:
        f.write(data)
        f.flush()
        with open_capture(f.name) as cap:
            yield from list(cap)


def test_deep_llc_snap_nesting_decodes_without_recursion():
    # 3,000 stacked LLC/SNAP headers: RecursionError (exit 1) before.
    seg = next(_segment(attacks.llc_snap_nesting(3000)))
    assert seg is not None and seg[2:4] == (40000, 80)


def test_long_ipsec_ah_chains_decode_without_recursion():
    # 4,000 AH headers in one IPv4 datagram: RecursionError before.
    seg = next(_segment(attacks.ah_chain(4000)))
    assert seg is not None and seg[2:4] == (40000, 80)


def test_nesting_attacks_through_the_cli(tmp_path):
    for data in (attacks.llc_snap_nesting(3000), attacks.ah_chain(4000)):
        result, summary, _out = analysed(tmp_path, data)
        assert result.verdict == "ok" and result.status == 0, result.stderr
        assert summary["events"] == 1


# -- item 7: what the limits count ------------------------------------------------------------

def test_held_segments_are_counted_by_their_memory():
    # A million one-byte segments cost ~210 MB, not 1 MB: before, 20,000 of
    # them fitted the 1 MiB per-stream limit and were all held.
    budget = reassembly.HeldBudget()
    s = reassembly.Stream(lambda *a: None, budget)
    s.syn(0)
    for i in range(20_000):
        s.segment(3 + 2 * i, b"x", 1, False, 1.0, i)      # byte 1 never comes: all ahead of a hole
        assert s.held_bytes <= reassembly.MAX_HELD_BYTES_PER_STREAM
    assert s.limit_hits > 0
    assert len(s.held) <= reassembly.MAX_HELD_BYTES_PER_STREAM // (1 + reassembly.HELD_SEGMENT_OVERHEAD)
    assert budget.held == s.held_bytes == len(s.held) * (1 + reassembly.HELD_SEGMENT_OVERHEAD)
    s.finish(2.0, 0)
    assert budget.held == 0


def test_an_ignored_connection_gives_back_what_it_held():
    # Held segments of a connection that detection then ignores were never
    # delivered nor released: the global budget leaked them for good.
    t = FlowTable(lambda ev, ends: None, lambda a: None, lambda row: None)
    c, s = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    t.packet((c, s, 40000, 7000, 100, 0, SYN, b"", 0), 1.0, 1)
    t.packet((s, c, 7000, 40000, 900, 101, SYN | ACK, b"", 0), 1.0, 2)
    t.packet((c, s, 40000, 7000, 201, 901, ACK, b"\x00" * 50, 50), 1.1, 3)    # held: a hole at 101..200
    assert t.budget.held > 0
    t.packet((c, s, 40000, 7000, 101, 901, ACK, b"\x16\xfe" + b"\x00" * 8, 10), 1.2, 4)   # no protocol's
    t.packet((s, c, 7000, 40000, 901, 111, ACK, b"\x01\x02\x03", 3), 1.3, 5)
    t.finish()
    assert t.budget.held == 0


def _in_order_fragments(n: int):
    payload = bytes(range(256)) * (n * 8 // 256 + 1)
    return [(i * 8, i < n - 1, payload[i * 8:(i + 1) * 8]) for i in range(n)], payload[:n * 8]


@pytest.mark.parametrize("order", ["forward", "reverse"])
def test_fragment_reassembly_is_not_quadratic(order):
    # 8,190 fragments (the most a 65,535-byte datagram holds): every insert
    # used to walk every piece (~33 M visits); it now bisects to its place.
    frags, payload = _in_order_fragments(8190)
    if order == "reverse":
        frags.reverse()
    table = ipfrag.FragmentTable(__import__("collections").Counter(), "ipv4", 30.0, max_bytes=1 << 30)
    got = None
    for offset, more, data in frags:
        got = table.add("k", offset, more, data, 1.0)
    assert got[0] == payload
    assert table.scanned <= 3 * len(frags)


def test_fragment_memory_counts_pieces():
    table = ipfrag.FragmentTable(__import__("collections").Counter(), "ipv4", 30.0)
    frags, _ = _in_order_fragments(100)
    for offset, more, data in frags[:-1]:
        table.add("k", offset, more, data, 1.0)
    assert table.pending_bytes == 99 * (8 + ipfrag.PIECE_OVERHEAD)


def _pcap_with_big_record(size: int) -> bytes:
    big = attacks.exchange()[3]                                   # a real request frame ...
    big = big + bytes(size - len(big))                            # ... padded to `size`
    frames = [(1_700_000_000 + i, 0, f) for i, f in enumerate(attacks.exchange())]
    recs = [((sec, usec), f) for sec, usec, f in frames[:3]] + [((1_700_000_003, 0), big)] + \
           [((sec, usec), f) for sec, usec, f in frames[3:]]
    return cb.pcap(recs)


def test_records_longer_than_kept_are_cut_like_a_snaplen():
    data = _pcap_with_big_record(3 * 1024 * 1024)
    got = list(open_capture_bytes(data))
    sizes = [(len(frame), wirelen) for _ts, _lt, frame, wirelen in got]
    assert sizes[3] == (KEEP_RECORD_BYTES, 3 * 1024 * 1024)
    assert len(got) == 1 + len(attacks.exchange()) and all(n == w for n, w in sizes[:3] + sizes[4:])


def test_pcapng_blocks_longer_than_kept_are_cut_and_checked():
    frame = attacks.exchange()[3] + bytes(2 * 1024 * 1024)
    body = [cb.shb(), cb.idb(), cb.epb("<", 0, 10, frame)] + [cb.epb("<", 0, 11 + i, f) for i, f in
                                                            enumerate(attacks.exchange())]
    got = list(open_capture_bytes(b"".join(body)))
    assert (len(got[0][2]), got[0][3]) == (KEEP_RECORD_BYTES, len(frame))
    assert len(got) == 1 + len(attacks.exchange())
    broken = bytearray(b"".join(body[:3]))
    struct.pack_into("<I", broken, len(broken) - 4, 12345)          # trailing length differs
    with pytest.raises(CaptureError, match="trailing copy"):
        list(open_capture_bytes(bytes(broken)))


def test_jumbo_records_in_a_tiny_zstd_capture_stay_in_bounded_memory(tmp_path):
    # 25 KB of zstd holding four 200 MiB records: 875 MB peak before.
    result, summary, _out = analysed(tmp_path, attacks.jumbo_records_zstd(records=2), seconds=120)
    assert result.verdict == "ok", result
    assert summary["coverage"]["limits_hit"]["record_bytes"] == 2


def test_detection_replay_is_bounded(tmp_path):
    # A request head trickling in one byte per segment that never ends: every
    # segment was kept for the replay and detection re-ran over the growing
    # head (2.4 GB and minutes on 8 MB before).
    t = FlowTable(lambda ev, ends: None, lambda a: None, lambda row: None)
    c, s = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    t.packet((c, s, 40000, 80, 100, 0, SYN, b"", 0), 1.0, 1)
    t.packet((s, c, 80, 40000, 900, 101, SYN | ACK, b"", 0), 1.0, 2)
    head = b"GET /" + b"a" * 20_000
    conn = None
    for i in range(len(head)):
        t.packet((c, s, 40000, 80, 101 + i, 901, ACK, head[i:i + 1], 1), 1.0 + i * 1e-6, 3 + i)
        conn = conn or next(iter(t.table.values()))[0]
        assert conn.replay_cost <= DETECT_MAX_REPLAY_BYTES + 200
    assert t.limits["detect_replay_bytes"] == 1


def test_zstd_cut_inside_a_frame_is_damage_like_gzip():
    # zstandard's reader ended cleanly mid-frame: exit 0 with 12 of 21 exchanges.
    for data in (attacks.zstd_cut_inside_frame(), attacks.gzip_cut()):
        with pytest.raises(CaptureError, match="cut short"):
            list(open_capture_bytes(data))


def test_zstd_cut_between_frames_is_a_valid_shorter_capture():
    # README "limits": a cut on a frame boundary that is also a record
    # boundary cannot be told from a complete file.
    got = list(open_capture_bytes(attacks.zstd_cut_between_frames()))
    assert len(got) == 12 * 7


def test_zstd_frame_walker_agrees_with_real_frames():
    import zstandard

    for kwargs in ({}, {"write_checksum": True}, {"write_content_size": False}, {"level": 19}):
        c = zstandard.ZstdCompressor(**kwargs)
        data = b"".join(c.compress(bytes([i]) * (i * 5000) + bytes(range(256)) * i) for i in range(1, 6))
        ends = []
        pos = 0
        while pos < len(data):
            reader = ZstdFrames()
            frame_end = _frame_end(data, pos)
            reader.feed(data[pos:frame_end])
            assert reader.at_boundary
            ends.append(frame_end)
            pos = frame_end
        walker = ZstdFrames()
        for i in range(0, len(data), 7):
            walker.feed(data[i:i + 7])
            assert walker.at_boundary == any(e == min(i + 7, len(data)) for e in ends)


def _frame_end(data: bytes, pos: int) -> int:
    """Where the zstd frame at `pos` ends: decompress frames one at a time."""
    import zstandard

    obj = zstandard.ZstdDecompressor().decompressobj()
    obj.decompress(data[pos:])
    return len(data) - len(obj.unused_data)


def test_connection_state_is_bounded_by_memory(monkeypatch):
    # 200,000 connections stopped half-way through a response header cost
    # ~4.5 KB each at the count limit (865 MB); the table now charges each
    # connection its state and evicts the least recently active past the budget.
    from analyzer.tcp import table as flows

    monkeypatch.setattr(flows, "MAX_CONNECTION_MEMORY", 200 * (flows.CONNECTION_COST + flows.STREAMS_COST
                                                             + flows.DISSECTOR_COST))
    events = []
    t = FlowTable(lambda ev, ends: events.append(ev), lambda a: None, lambda row: None)
    srv = bytes([10, 0, 0, 2])
    req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    for i in range(1000):
        cli = bytes([10, 1, i >> 8, i & 0xFF])
        ts = 1.0 + i * 1e-3
        t.packet((cli, srv, 40000, 80, 100, 0, SYN, b"", 0), ts, 1)
        t.packet((srv, cli, 80, 40000, 900, 101, SYN | ACK, b"", 0), ts, 2)
        t.packet((cli, srv, 40000, 80, 101, 901, ACK, req, len(req)), ts, 3)
        t.packet((srv, cli, 80, 40000, 901, 101 + len(req), ACK, b"HTTP/1.1 200 OK\r\nContent-Le", 27), ts, 4)
        assert t.memory <= flows.MAX_CONNECTION_MEMORY
    assert t.limits["connection_memory"] >= 790 and t.live <= 210
    t.finish()
    assert t.memory == 0


def test_parallel_processes_share_the_run_limits():
    # With -j 2 each worker had the whole 256 MiB held-bytes total (and the
    # whole connection table): a parallel run held twice what -j 1 promises.
    from analyzer.tcp import table as flows

    t = FlowTable(lambda ev, ends: None, lambda a: None)
    t.share(4)
    assert t.budget.limit == reassembly.MAX_HELD_BYTES_TOTAL // 4
    assert t.max_memory == flows.MAX_CONNECTION_MEMORY // 4
    assert t.max_connections == flows.MAX_CONNECTIONS // 4
    s = reassembly.Stream(lambda *a: None, t.budget)
    s.syn(0)
    t.budget.held = t.budget.limit - 10            # as if other streams held the rest of the share
    s.segment(100, b"y" * 1000, 1000, False, 1.0, 1)   # ahead of a hole: would be held
    assert s.limit_hits == 1 and t.budget.held <= t.budget.limit


def test_a_content_length_of_non_ascii_digits_is_no_length():
    # Found by the long fuzz run (seed 2026, case 7525): one flipped bit made
    # "Content-Length: 3" into "\xb3", which str.isdigit() accepts and int()
    # refuses: ValueError, exit 1.  Kept as tests/data/fuzz/internal-error-e201751951cf.cap.
    from analyzer.protocols.http.dissector import BODY_CLOSE, HEAD, framing

    assert framing(False, "POST", 0, {"content-length": "\xb3"}) == (HEAD, 0)
    assert framing(True, "GET", 200, {"content-length": "\u0663"}) == (BODY_CLOSE, 0)   # Arabic-Indic 3
