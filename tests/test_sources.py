# Capture readers: every format variant, every compression (detected by
# magic, never by name), stdin, the errors a user can meet, and fuzzing.
from __future__ import annotations

import bz2
import gzip
import lzma
import random
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import captures_builder as cb
from analyzer.errors import CaptureError, InputError
from analyzer.capture import open_capture
from analyzer.capture import compression

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus"

PKTS = [b"\x01" * 60, b"", b"\x02\x03" * 700, b"\x04"]


def read_all(path):
    with open_capture(str(path)) as cap:
        return list(cap), cap


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def sample_pcap(n=4, **kw):
    return cb.pcap([((1700000000 + i, 250000 * i), PKTS[i % 4], 1000 + i) for i in range(n)], **kw)


def noisy_pcap(n):
    rnd = random.Random(n)
    return cb.pcap([((i, 0), rnd.randbytes(1000)) for i in range(n)])


# -- classic pcap ------------------------------------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("nanos", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path, order, nanos):
    frac = 123456789 if nanos else 123456
    data = cb.pcap([((1700000000, frac), b"abc", 99), ((1700000001, 0), b"", 0)],
                   linktype=113, order=order, nanos=nanos)
    recs, cap = read_all(write(tmp_path, "x.pcap", data))
    units = 10**9 if nanos else 10**6
    assert recs == [
        ((1700000000 * units + frac) / units, 113, b"abc", 99),
        (1700000001.0, 113, b"", 0),
    ]
    assert cap.format == "pcap" and cap.compression is None
    assert cap.interfaces == [(113, "10^-9" if nanos else "10^-6")]
    assert cap.size == len(data) and cap.bytes_read == len(data)
    assert cap.packets_read == 2


def test_pcap_linktype_field_upper_bits_ignored(tmp_path):
    data = cb.pcap([((1, 0), b"x")], linktype=0x1000_0001)   # FCS-length bits set
    recs, _ = read_all(write(tmp_path, "x.pcap", data))
    assert recs[0][1] == 1


def test_pcap_header_only_is_an_empty_capture(tmp_path):
    recs, cap = read_all(write(tmp_path, "x.pcap", cb.pcap([])))
    assert recs == [] and cap.packets_read == 0


def test_records_identical_whatever_the_chunk_size(tmp_path, monkeypatch):
    data = sample_pcap(40)
    p = write(tmp_path, "x.pcap", data)
    whole, _ = read_all(p)
    for chunk in (1, 7, 16, 17, 1000):
        monkeypatch.setattr(compression, "CHUNK_BYTES", chunk)
        assert read_all(p)[0] == whole
    ng = cb.shb() + cb.idb() + b"".join(cb.epb("<", 0, i, PKTS[i % 4]) for i in range(30))
    p2 = write(tmp_path, "x.pcapng", ng)
    monkeypatch.setattr(compression, "CHUNK_BYTES", 256 * 1024)
    whole = read_all(p2)[0]
    for chunk in (1, 5, 12, 33):
        monkeypatch.setattr(compression, "CHUNK_BYTES", chunk)
        assert read_all(p2)[0] == whole


# -- pcapng ------------------------------------------------------------------

def test_pcapng_interfaces_resolutions_sections_and_blocks(tmp_path):
    le, be = "<", ">"
    data = b"".join([
        cb.shb(le),
        cb.idb(le, linktype=1),                                  # default µs
        cb.idb(le, linktype=113, tsresol=9),                     # ns
        cb.idb(le, linktype=101, tsresol=0x80 | 20, tsoffset=1000),   # 2^-20 s, +1000 s
        cb.nrb(le),
        cb.epb(le, 0, 1700000000_123456, b"eth", wirelen=1500, comment=b"hello"),
        cb.epb(le, 1, 1700000000_123456789, b"sll"),
        cb.epb(le, 2, 3 << 20 | 1 << 19, b"raw"),                # 3.5 s + offset
        cb.dsb(le, 0x544C534B, b"CLIENT_RANDOM aa bb\n"),        # TLS key log
        cb.isb(le, 0),
        cb.block(le, 0x40000BAD, b"\x00\x00\x7e\x8a" + b"custom"),  # custom block: skipped
        # Second section, other byte order: interfaces start again.
        cb.shb(be),
        cb.idb(be, linktype=105, snaplen=4),
        cb.spb(be, b"spbdata", wirelen=7),                       # cut to snaplen 4
        cb.obsolete_pb(be, 0, 5_000_000, b"oldpb"),
        cb.epb(be, 0, 1, b""),
    ])
    recs, cap = read_all(write(tmp_path, "x.pcapng", data))
    assert recs == [
        (1700000000.123456, 1, b"eth", 1500),
        (1700000000_123456789 / 10**9, 113, b"sll", 3),
        (1003.5, 101, b"raw", 3),
        (0.0, 105, b"spbd", 7),
        (5.0, 105, b"oldpb", 5),
        (1e-6, 105, b"", 0),
    ]
    assert cap.format == "pcapng"
    assert cap.interfaces == [(1, "10^-6"), (113, "10^-9"), (101, "2^-20"), (105, "10^-6")]
    assert cap.decryption_secrets == [(0x544C534B, b"CLIENT_RANDOM aa bb\n")]
    assert cap.bytes_read == len(data)


def test_pcapng_packet_on_undeclared_interface_is_damage(tmp_path):
    data = cb.shb() + cb.idb() + cb.epb("<", 0, 1, b"a") + cb.epb("<", 1, 2, b"b")
    with open_capture(str(write(tmp_path, "x.pcapng", data))) as cap:
        it = iter(cap)
        assert next(it)[2] == b"a"
        with pytest.raises(CaptureError, match="interface 1") as exc:
            next(it)
    assert exc.value.packets_read == 1


def test_pcapng_new_section_forgets_interfaces(tmp_path):
    data = cb.shb() + cb.idb() + cb.shb(">") + cb.epb(">", 0, 1, b"a")
    with pytest.raises(CaptureError, match="only 0 interfaces"):
        read_all(write(tmp_path, "x.pcapng", data))


@pytest.mark.parametrize("bad", [
    pytest.param(lambda b: b[:-4] + b"\x00\x00\x00\x00", id="trailing-length-mismatch"),
    pytest.param(lambda b: b + b"\x06\x00\x00\x00\x0d\x00\x00\x00" + b"\x00" * 8, id="length-not-multiple-of-4"),
    pytest.param(lambda b: b + b"\x06\x00\x00\x00\x08\x00\x00\x00\x08\x00\x00\x00", id="length-below-12"),
    pytest.param(lambda b: b + b"\x00" * 40, id="zero-garbage-tail"),
    pytest.param(lambda b: b + b"\x06\x00\x00\x00\xf0\xff\xff\xff" + b"\x00" * 20, id="huge-length"),
])
def test_pcapng_damage_after_good_packets(tmp_path, bad):
    good = cb.shb() + cb.idb() + cb.epb("<", 0, 1, b"a") + cb.epb("<", 0, 2, b"b")
    recs = []
    with pytest.raises(CaptureError) as exc:
        with open_capture(str(write(tmp_path, "x.pcapng", bad(good)))) as cap:
            for r in cap:
                recs.append(r)
    n = exc.value.packets_read
    assert [r[2] for r in recs] == [b"a", b"b"][:n] and n >= 1
    assert "x.pcapng" in str(exc.value)


# -- compression -------------------------------------------------------------

COMPRESSORS = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compression_detected_by_magic_not_name(tmp_path, kind):
    raw = sample_pcap(200)
    packed = COMPRESSORS[kind](raw)
    p = write(tmp_path, "misleading.pcapng.txt", packed)
    recs, cap = read_all(p)
    assert cap.compression == kind and cap.format == "pcap"
    assert recs == read_all(write(tmp_path, "plain.pcap", raw))[0]
    assert cap.size == len(packed) and 0 < cap.bytes_read <= len(packed)


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_concatenated_compressed_streams_read_through(tmp_path, kind):
    raw = sample_pcap(50)
    packed = COMPRESSORS[kind](raw[:1000]) + COMPRESSORS[kind](raw[1000:])
    recs, _ = read_all(write(tmp_path, "x", packed))
    assert recs == read_all(write(tmp_path, "plain.pcap", raw))[0]


def test_uncompressed_file_named_gz_is_read_plain(tmp_path):
    recs, cap = read_all(write(tmp_path, "x.pcap.gz", sample_pcap(3)))
    assert cap.compression is None and len(recs) == 3


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_compressed_stream_cut_short(tmp_path, kind):
    packed = COMPRESSORS[kind](noisy_pcap(3000))   # > 2 bzip2 blocks of 900 kB
    p = write(tmp_path, "x.pcap", packed[:len(packed) // 2])
    got = 0
    with pytest.raises(CaptureError) as exc:
        with open_capture(str(p)) as cap:
            for _ in cap:
                got += 1
    assert exc.value.packets_read == got and got > 0
    assert "x.pcap" in str(exc.value)


def test_gzip_corrupt_mid_stream(tmp_path):
    packed = bytearray(gzip.compress(noisy_pcap(3000), compresslevel=1))
    mid = len(packed) // 2
    packed[mid:mid + 64] = b"\xff" * 64
    got = 0
    with pytest.raises(CaptureError) as exc:
        with open_capture(str(write(tmp_path, "x.pcap", bytes(packed)))) as cap:
            for _ in cap:
                got += 1
    assert exc.value.packets_read == got and 0 < got < 3000


def test_gzip_bad_checksum_after_all_packets(tmp_path):
    packed = bytearray(gzip.compress(sample_pcap(300)))
    packed[-8] ^= 0xFF                                   # CRC32 of the member
    got = 0
    with pytest.raises(CaptureError, match=r"x\.pcap: gzip data is corrupt .* after 300 packets"):
        with open_capture(str(write(tmp_path, "x.pcap", bytes(packed)))) as cap:
            for _ in cap:
                got += 1
    assert got == 300


def test_compressed_non_capture_is_input_error(tmp_path):
    p = write(tmp_path, "x.pcap", gzip.compress(b"hello world, this is text\n" * 5))
    with pytest.raises(InputError, match=r"gzip-compressed.*looks like text"):
        open_capture(str(p))


def test_compressed_empty_is_input_error(tmp_path):
    with pytest.raises(InputError, match="empty"):
        open_capture(str(write(tmp_path, "x.gz", gzip.compress(b""))))


def test_garbage_with_gzip_magic_is_input_error(tmp_path):
    with pytest.raises(InputError, match="x.pcap"):
        open_capture(str(write(tmp_path, "x.pcap", b"\x1f\x8b" + b"\x00" * 30)))


# -- stdin -------------------------------------------------------------------

_STDIN_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from analyzer.capture import open_capture
from analyzer.errors import AnalyzerError
try:
    with open_capture("-") as cap:
        n = sum(1 for _ in cap)
        print(cap.name, cap.format, cap.compression, cap.size, n, cap.bytes_read)
except AnalyzerError as exc:
    print("ERROR", type(exc).__name__, exc)
"""


@pytest.mark.parametrize("kind", [None, "gzip", "zstd"])
def test_stdin_pipe(kind):
    raw = sample_pcap(500)
    data = COMPRESSORS[kind](raw) if kind else raw
    out = subprocess.run([sys.executable, "-c", _STDIN_SCRIPT, str(REPO)], input=data,
                         capture_output=True, check=True).stdout.decode().split()
    assert out == ["<stdin>", "pcap", str(kind), "None", "500", str(len(data))]


def test_stdin_not_a_capture():
    out = subprocess.run([sys.executable, "-c", _STDIN_SCRIPT, str(REPO)],
                         input=b"GET / HTTP/1.1\r\n\r\n", capture_output=True,
                         check=True).stdout.decode()
    assert out.startswith("ERROR InputError <stdin>: not a pcap or pcapng capture (looks like text")


def test_stdin_monkeypatched(monkeypatch):
    import io

    class Stdin:
        buffer = io.BufferedReader(io.BytesIO(sample_pcap(7)))

    monkeypatch.setattr(sys, "stdin", Stdin)
    with open_capture("-") as cap:
        assert len(list(cap)) == 7 and cap.name == "<stdin>" and cap.size is None


# -- errors a user meets -----------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(InputError, match=r"nope\.pcap: no such file"):
        open_capture(str(tmp_path / "nope.pcap"))


def test_directory(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        open_capture(str(tmp_path))


def test_empty_file(tmp_path):
    with pytest.raises(InputError, match=r"e\.pcap: the file is empty"):
        open_capture(str(write(tmp_path, "e.pcap", b"")))


@pytest.mark.parametrize("content, says", [
    (b"Hello, this is a README file.\nNot a capture.\n", "looks like text"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "looks like HTML"),
    (b'{"packets": []}', "looks like JSON"),
    (b"PK\x03\x04" + b"\x00" * 40, "zip archive"),
    (b"snoop\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x04", "snoop"),
    (b"\x00\x01\x02\xff" * 10, "unknown format"),
    (b"ab", "looks like text"),
])
def test_not_a_capture(tmp_path, content, says):
    with pytest.raises(InputError, match="not a pcap or pcapng capture") as exc:
        open_capture(str(write(tmp_path, "what.pcap", content)))
    assert says in str(exc.value) and "what.pcap" in str(exc.value)


def test_pcap_header_cut_short(tmp_path):
    with pytest.raises(CaptureError, match="cut short in the pcap file header") as exc:
        open_capture(str(write(tmp_path, "x.pcap", cb.pcap([])[:20])))
    assert exc.value.packets_read == 0


@pytest.mark.parametrize("cut, what", [(5, "a packet"), (1014 + 8, "a packet header")])
def test_truncated_last_record(tmp_path, monkeypatch, cut, what):
    monkeypatch.chdir(tmp_path)
    data = cb.pcap([((1, 0), b"a" * 1000), ((2, 0), b"b" * 1000), ((3, 0), b"c" * 10)])
    data = data[:-cut] if what == "a packet" else data[:24 + 2 * 1016 + 8]
    got = []
    with pytest.raises(CaptureError) as exc:
        with open_capture(write(tmp_path, "cut.pcap", data).name) as cap:
            got.extend(cap)
    assert len(got) == 2 and exc.value.packets_read == 2
    assert str(exc.value) == f"cut.pcap: cut short in the middle of {what} after 2 packets"


def test_huge_claimed_length_does_not_allocate(tmp_path):
    data = sample_pcap(2) + b"\x00" * 8 + b"\xff\xff\xff\x7f" + b"\x00" * 40
    with pytest.raises(CaptureError, match="claims 2147483647 captured bytes") as exc:
        read_all(write(tmp_path, "x.pcap", data))
    assert exc.value.packets_read == 2


def test_garbage_tail_after_pcap_records(tmp_path):
    data = sample_pcap(3) + b"this is trailing garbage"
    got = []
    with pytest.raises(CaptureError):
        with open_capture(str(write(tmp_path, "x.pcap", data))) as cap:
            got.extend(cap)
    assert len(got) == 3


def test_close_is_idempotent_and_stops_iteration(tmp_path):
    cap = open_capture(str(write(tmp_path, "x.pcap", sample_pcap(3))))
    cap.close()
    cap.close()
    assert list(cap) == []


# -- fuzzing: only InputError / CaptureError, ever ----------------------------

def _read_expecting_domain_errors(path) -> int:
    n = 0
    try:
        with open_capture(str(path)) as cap:
            for rec in cap:
                assert isinstance(rec[2], bytes)
                n += 1
    except CaptureError as exc:
        assert exc.packets_read == n
    except InputError:
        assert n == 0
    return n


_PREFIXES = [b"", cb.pcap([]), cb.pcap([], order=">", nanos=True),
             cb.shb() + cb.idb(), cb.shb(">") + cb.idb(">", tsresol=0x85),
             gzip.compress(cb.pcap([]))[:10], b"\xfd7zXZ\x00", b"\x28\xb5\x2f\xfd",
             b"BZh9"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prefix=st.sampled_from(_PREFIXES), body=st.binary(max_size=400))
def test_random_bytes_only_raise_domain_errors(tmp_path, prefix, body):
    _read_expecting_domain_errors(write(tmp_path, "fuzz.bin", prefix + body))


_VALID = [sample_pcap(6), sample_pcap(6, order=">", nanos=True),
          cb.shb() + cb.idb() + cb.idb(linktype=113, tsresol=9)
          + b"".join(cb.epb("<", i % 2, i, PKTS[i % 4]) for i in range(6))
          + cb.dsb("<", 1, b"k") + cb.shb(">") + cb.idb(">") + cb.spb(">", b"xyz")]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(range(len(_VALID))),
       edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
       cut=st.integers(0, 10**6))
def test_damaged_captures_only_raise_domain_errors(tmp_path, which, edits, cut):
    data = bytearray(_VALID[which])
    for pos, value in edits:
        data[pos % len(data)] = value
    del data[len(data) - cut % (len(data) + 1):]
    _read_expecting_domain_errors(write(tmp_path, "fuzz.bin", bytes(data)))


# -- the shared corpus ---------------------------------------------------------

def _corpus_rows():
    if not (CORPUS / "truth" / "SUMMARY.csv").exists():
        return []
    import pandas as pd
    table = pd.read_csv(CORPUS / "truth" / "SUMMARY.csv", keep_default_na=False)
    return [(r.capture, r.file, int(r.packets)) for r in table.itertuples()]


@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/corpus absent")
@pytest.mark.parametrize("capture, file, packets", _corpus_rows() or [("none", "", 0)])
def test_corpus_packet_counts_match_tshark(capture, file, packets):
    if capture == "none":
        pytest.skip("no SUMMARY.csv")
    recs, cap = read_all(CORPUS / file)
    assert len(recs) == packets
    assert cap.bytes_read == cap.size
