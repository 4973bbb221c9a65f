"""Pieces of captures for the cluster's decode tasks (capture/split.py).

Cuts land on real record starts only (property test over captures whose
payloads hold fake record headers); reading every piece and chaining them
as the cluster's layout task does gives exactly the records, wire lengths,
timestamps, count and damage message of the ordinary reader, for good,
damaged, hostile and tiny files; the compiled scan and share key equal
their Python equivalents.  No Dask needed.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer import _fast
from analyzer.capture import open_capture, split
from analyzer.engines.cluster import layout
from analyzer.errors import CaptureError, InputError

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "samples" / "captures").iterdir() if p.suffix in (".pcap", ".pcapng"))
CORPUS = ROOT.parent / "shared" / "corpus" / "captures"
CORPUS_FILES = sorted(CORPUS.iterdir()) if CORPUS.is_dir() else []


def pcap(records, *, linktype=1, nanos=False, big=False, snaplen=65535) -> bytes:
    """A classic pcap of (sec, frac, data, orig) records."""
    order = ">" if big else "<"
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(order + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def eth_tcp(sport: int, dport: int, payload: bytes, src=b"\x0a\x00\x00\x01", dst=b"\x0a\x00\x00\x02") -> bytes:
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, min(40 + len(payload), 65535), 0, 0x4000, 64, 6, 0, src, dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 0x50, 0x18, 65535, 0, 0)
    return b"\x00" * 12 + b"\x08\x00" + ip + tcp + payload


def reference(path: str):
    """What the ordinary reader yields: records, then the damage message (or "")."""
    records, error = [], ""
    try:
        with open_capture(path) as reader:
            for ts, linktype, data, wirelen in reader:
                records.append((ts, linktype, bytes(data), wirelen))
    except (CaptureError, InputError) as exc:
        error = str(exc)
    return records, error


def pieces_read(path: str, piece_bytes: int):
    """Plan, read every piece and chain them as the cluster does (re-planning a miscut file whole)."""
    unsplit: set = set()
    while True:
        pieces = split.plan([path], piece_bytes, frozenset(unsplit))
        read = [split.read_piece(p) for p in pieces]
        plan = layout([info for _, info in read], pieces, _fast.selected())
        if not plan.miscut:
            break
        unsplit |= plan.miscut
    records = []
    for piece, (table, info) in zip(pieces, read):
        if (piece.file, piece.piece) not in plan.offsets:
            continue
        assert plan.offsets[(piece.file, piece.piece)] == len(records)
        records.extend(zip(table.column("ts").to_pylist(), table.column("linktype").to_pylist(),
                           table.column("data").to_pylist(), table.column("wirelen").to_pylist()))
    return records, plan, pieces


def same_as_reader(path: str, piece_bytes: int):
    expected, error = reference(path)
    records, plan, pieces = pieces_read(path, piece_bytes)
    assert records == expected
    assert plan.files[0].packets == len(expected)
    assert plan.files[0].error == error
    return pieces


def starts_of(blob: bytes) -> list[int]:
    pos, out = 24, []
    while pos + 16 <= len(blob):
        out.append(pos)
        pos += 16 + struct.unpack_from("<I", blob, pos + 8)[0]
    return out


# -- boundaries ----------------------------------------------------------------------

fake_header = st.builds(lambda sec, n: struct.pack("<IIII", sec, 0, n, n), st.integers(1_700_000_000, 1_700_000_100),
                        st.integers(1, 400))
hostile_payload = st.one_of(st.binary(min_size=0, max_size=300),
                            st.lists(fake_header, min_size=1, max_size=10).map(b"".join))


def _capture(tmp_path, payloads) -> tuple[Path, bytes]:
    records = [(1_700_000_000 + i // 10, i, eth_tcp(1000 + i % 7, 80, p), 54 + len(p)) for i, p in enumerate(payloads)]
    blob = pcap(records)
    path = tmp_path / "fake.pcap"
    path.write_bytes(blob)
    return path, blob


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.binary(min_size=0, max_size=1500), min_size=30, max_size=200), st.integers(500, 4000))
def test_every_cut_lands_on_a_real_record_start(tmp_path, payloads, piece_bytes):
    path, blob = _capture(tmp_path, payloads)
    cuts = split.cuts_of(str(path), piece_bytes)
    assert cuts[0] == 24 and cuts[-1] == len(blob)
    assert set(cuts[1:-1]) <= set(starts_of(blob))
    same_as_reader(str(path), piece_bytes)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(hostile_payload, min_size=30, max_size=200), st.integers(500, 4000))
def test_payloads_of_fake_record_headers_change_nothing(tmp_path, payloads, piece_bytes):
    # Chained fake headers can pass the check; the chain of pieces then fails and
    # the file is read again whole: the records are the reader's either way.
    path, _ = _capture(tmp_path, payloads)
    same_as_reader(str(path), piece_bytes)


def test_a_large_file_is_cut_into_pieces_that_chain(tmp_path):
    records = [(1_700_000_000 + i // 100, i % 1_000_000, eth_tcp(2000 + i % 50, 80, os.urandom(i % 900)), 54 + i % 900)
               for i in range(3000)]
    path = tmp_path / "big.pcap"
    path.write_bytes(pcap(records))
    pieces = same_as_reader(str(path), 50_000)
    assert len(pieces) >= 20
    assert all(not p.whole for p in pieces)
    assert [p.start for p in pieces[1:]] == [p.stop for p in pieces[:-1]]


def test_bytes_that_only_look_like_records_are_read_again_whole(tmp_path):
    # Payloads made of chained fake headers: a cut may verify inside them; the
    # chain check must then re-read the file as one piece, losing nothing.
    fake = b"".join(struct.pack("<IIII", 1_700_000_000, 0, 8, 8) + b"\x00" * 8 for _ in range(40))
    records = [(1_700_000_000, i, eth_tcp(3000, 80, fake), 54 + len(fake)) for i in range(60)]
    path = tmp_path / "lookalike.pcap"
    path.write_bytes(pcap(records))
    same_as_reader(str(path), 3000)


@pytest.mark.parametrize("tail", [b"", b"\x01\x02\x03", struct.pack("<IIII", 1, 2, 100, 100) + b"x" * 10,
                                  struct.pack("<IIII", 1, 2, 300 * 1024 * 1024, 5)])
def test_damage_ends_the_file_where_the_reader_ends_it(tmp_path, tail):
    records = [(1_700_000_000 + i, 0, eth_tcp(4000, 80, b"y" * (i % 300)), 54 + i % 300) for i in range(400)]
    path = tmp_path / "damaged.pcap"
    path.write_bytes(pcap(records) + tail)
    same_as_reader(str(path), 8000)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=0, max_size=30_000))
def test_garbage_after_a_header_reads_as_the_reader_reads_it(tmp_path, garbage):
    path = tmp_path / "garbage.pcap"
    path.write_bytes(pcap([]) + garbage)
    same_as_reader(str(path), 2000)


@pytest.mark.parametrize("blob", [b"", b"\xd4\xc3\xb2\xa1\x02\x00", pcap([]), b"not a capture at all, just text\n"])
def test_tiny_and_empty_files(tmp_path, blob):
    path = tmp_path / "tiny.pcap"
    path.write_bytes(blob)
    assert split.cuts_of(str(path), 10**9) is None  # nothing to cut: one piece, the reader decides
    same_as_reader(str(path), 1)


def test_nanosecond_and_big_endian_timestamps_are_the_readers(tmp_path):
    records = [(1_700_000_000 + i, 999_999_999 - i, eth_tcp(5000, 80, b"z" * 40), 94) for i in range(500)]
    for big in (False, True):
        path = tmp_path / f"ns-{big}.pcap"
        path.write_bytes(pcap(records, nanos=True, big=big))
        assert len(same_as_reader(str(path), 4000)) > 3


def test_oversized_records_are_cut_as_the_reader_cuts_them(tmp_path):
    big = eth_tcp(6000, 80, b"q" * (1024 * 1024 + 5000))
    records = [(1_700_000_000, 0, eth_tcp(6000, 80, b"a"), 55), (1_700_000_001, 0, big, len(big)),
               (1_700_000_002, 0, eth_tcp(6000, 80, b"b"), 55)]
    path = tmp_path / "oversized.pcap"
    path.write_bytes(pcap(records, snaplen=0))
    pieces = [split.Piece(0, 0, str(path), 24, path.stat().st_size, whole=False)]
    table, info = split.read_piece(pieces[0])
    expected, _ = reference(str(path))
    assert info.records_cut == 1
    assert list(zip(table.column("data").to_pylist(), table.column("wirelen").to_pylist())) == \
        [(r[2], r[3]) for r in expected]


# -- the compiled scan and key against the Python ones ---------------------------------

def table_under(implementation: str, piece: split.Piece) -> pa.Table:
    _fast.use(implementation)
    try:
        return split.read_piece(piece)[0]
    finally:
        _fast.use(None)


@pytest.mark.skipif(not _fast.available(), reason="the compiled fast path is not built")
@pytest.mark.parametrize("path", SAMPLES + CORPUS_FILES, ids=lambda p: p.name)
def test_compiled_rows_and_keys_equal_the_python_ones(path):
    size = path.stat().st_size
    pieces = [split.Piece(0, 0, str(path))]
    if size > 24 and path.read_bytes()[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1",
                                              b"\xa1\xb2\x3c\x4d"):
        pieces.append(split.Piece(0, 0, str(path), 24, size, whole=False))
    for piece in pieces:
        assert table_under("compiled", piece).equals(table_under("python", piece))


@pytest.mark.skipif(not _fast.available(), reason="the compiled fast path is not built")
@settings(max_examples=200, deadline=None)
@given(st.sampled_from([1, 113, 276, 101, 0, 108, 228, 229]), st.binary(min_size=0, max_size=120),
       st.integers(0, 300))
def test_compiled_share_key_is_the_decoders(linktype, data, extra):
    from analyzer._fast import loop
    from analyzer.decode.packets import Decoder
    from analyzer.engines.native import _share_key

    keyed = loop.share_key(linktype, data, len(data) + extra)
    if keyed is not None:
        seg = Decoder().decode(linktype, data, 0.0, len(data) + extra)
        assert seg is not None
        assert keyed == (_share_key(seg), split._seg_ports(seg))


# -- loopback FTP routes ------------------------------------------------------------------

def test_loopback_ftp_data_ports_route_to_their_control_connection():
    import pandas as pd

    lo = b"\x7f\x00\x00\x01"
    reply = eth_tcp(2121, 40000, b"227 Entering Passive Mode (127,0,0,1,78,40).\r\n", lo, lo)
    epsv = eth_tcp(2121, 40001, b"229 Entering Extended Passive Mode (|||30000|)\r\n", lo, lo)
    data = eth_tcp(50000, 20008, b"file bytes", lo, lo)
    other = eth_tcp(51000, 8080, b"GET / HTTP/1.1\r\n", lo, lo)
    rows = pa.Table.from_pylist([
        dict(file=0, piece=0, index=i, ts=1.0 + i, linktype=1, data=d, wirelen=len(d), key=a + b,
             ports=(a << 16) | b)
        for i, (d, a, b) in enumerate([(reply, 2121, 40000), (epsv, 2121, 40001), (data, 50000, 20008),
                                      (other, 51000, 8080)])], schema=split.ROW_SCHEMA)
    announced = split.announced_ports(rows)
    assert sorted(port for _, _, port in announced) == [20008, 30000]  # 78 * 256 + 40
    routes = split.routes([announced])
    frame = split.rekey(rows.to_pandas(types_mapper=pd.ArrowDtype), routes)
    keys = frame["key"].astype("int64").tolist()
    assert keys[0] == keys[1] == keys[2]   # both control connections (one server port) and the data connection
    assert keys[3] == 51000 + 8080         # the rest keeps its own key


# -- Session.feed_records: records with their frame numbers given -----------------------

@pytest.mark.parametrize("path", SAMPLES[:6] + [p for p in CORPUS_FILES if p.name == "ppp_http_packets.pcap"],
                         ids=lambda p: p.name)
def test_feeding_records_with_their_frames_equals_reading_the_file(path, implementation, tmp_path):
    from analyzer.engines.native import Session

    def run(out: Path, feed: bool):
        session = Session(out)
        if feed:
            records, error = reference(str(path))
            session.feed_records(str(path), ((n, ts, lt, data, wl) for n, (ts, lt, data, wl) in
                                             enumerate(records, 1)))
        else:
            session.read_file(str(path))
        session.finish()
        return {name: sorted((out / name).read_text(encoding="utf-8").splitlines())
                for name in ("events.csv", "connections.csv")}

    assert run(tmp_path / "fed", True) == run(tmp_path / "read", False)


@pytest.mark.parametrize("path", SAMPLES + CORPUS_FILES, ids=lambda p: p.name)
def test_the_ftp_pre_pass_finds_what_the_rows_hold(path):
    """announce_piece (a walk that copies nothing, compiled or Python) finds the
    announcements announced_ports finds in the piece's decoded rows."""
    from analyzer.capture.split import Piece, announce_piece, announced_ports, cuts_of, read_piece

    cuts = cuts_of(str(path), 10**9)
    piece = Piece(0, 0, str(path), cuts[0], cuts[1], whole=False) if cuts else Piece(0, 0, str(path))
    expected = sorted(announced_ports(read_piece(piece)[0]))
    for implementation in ("python", "compiled") if _fast.available() else ("python",):
        _fast.use(implementation)
        try:
            assert sorted(announce_piece(piece)) == expected, implementation
        finally:
            _fast.use(None)


# -- the clock check over pieces ---------------------------------------------------------

@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from([0.3, 0.0, -0.5, -0.9, -1.5, -3.0, 2.0, 40.0, -100.0]), min_size=50, max_size=400),
       st.integers(600, 5000))
def test_the_clock_check_over_pieces_names_what_a_single_run_names(tmp_path, steps, piece_bytes):
    """capture_time_went_backwards, chained over pieces by the layout task (and a piece
    re-walked when its first packet falls in the second before the state it inherits),
    at the frames and with the details a single run gives."""
    from analyzer.engines.native import Session

    t, records = 1_700_000_000.0, []
    for i, step in enumerate(steps):
        t += step
        sec = int(t)
        records.append((sec, int(round((t - sec) * 1e6)) % 1_000_000, eth_tcp(7000 + i % 3, 80, b"p" * (i % 90)),
                        54 + i % 90))
    path = tmp_path / "clock.pcap"
    path.write_bytes(pcap(records))
    session = Session(tmp_path / "single")
    session.read_file(str(path))
    session.finish()
    import csv

    with open(tmp_path / "single" / "anomalies.csv", newline="", encoding="utf-8") as handle:
        expected = sorted((int(row["frame"]), row["detail"]) for row in csv.DictReader(handle)
                          if row["name"] == "capture_time_went_backwards")
    _, plan, pieces = pieces_read(str(path), piece_bytes)
    got = sorted((frame, f"{newest - ts:.6f} s before frame time seen") for _, frame, ts, newest in plan.notes)
    assert got == expected
