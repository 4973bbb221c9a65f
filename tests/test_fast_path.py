"""The compiled packet loop (analyzer/_fast) against the pure-Python reference.

Both loops must give the same outputs -- events.csv, connections.csv,
anomalies.csv and the coverage counters -- on every sample capture, every
corpus capture (../shared/corpus, when present), random captures made here
(random splits, losses, reordering, duplicates, snaplen cuts, link types,
flipped bytes, clock steps), and for one share of a parallel run.  The C decoder, where
it answers at all, answers what decode/packets.py answers; the C header scan
equals the regex one.  Tests of the compiled side skip when it is not built.
"""
from __future__ import annotations

import inspect
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer import _fast
from analyzer.decode.packets import Decoder
from analyzer.engines.native import Session, read_all

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted(p for p in (ROOT / "samples" / "captures").iterdir() if p.suffix in (".pcap", ".pcapng"))
CORPUS = ROOT.parent / "shared" / "corpus" / "captures"
CORPUS_FILES = sorted(CORPUS.iterdir()) if CORPUS.is_dir() else []

compiled = pytest.mark.skipif(not _fast.available(), reason="the compiled fast path is not built")


def outputs(path: Path, workdir: Path, implementation: str, partition=None) -> dict:
    """Everything a run leaves, order-free where the order is not part of the contract."""
    _fast.use(implementation)
    try:
        out = workdir / implementation
        session = Session(out)
        if partition is None:
            result = read_all(session, [str(path)])
        else:
            session.read_file(str(path), partition=partition)
            result = session.finish()
    finally:
        _fast.use(None)
    coverage = result.coverage()
    coverage.pop("seconds")
    return {
        "coverage": coverage,
        "errors": [str(e) for e in result.errors],
        # events.csv is in time order in both; the ties of one instant may come in either order.
        **{name: sorted((out / name).read_text(encoding="utf-8").splitlines())
           for name in ("events.csv", "connections.csv", "anomalies.csv")},
    }


def same_outputs(path: Path, workdir: Path, partition=None) -> None:
    python = outputs(path, workdir, "python", partition)
    fast = outputs(path, workdir, "compiled", partition)
    for key in python:
        assert fast[key] == python[key], f"{path.name}: {key} differs"


@compiled
@pytest.mark.parametrize("capture", SAMPLES, ids=lambda p: p.name)
def test_same_outputs_on_every_sample(capture, tmp_path):
    same_outputs(capture, tmp_path)


@compiled
@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS_FILES, reason="../shared/corpus is absent")
@pytest.mark.parametrize("capture", CORPUS_FILES, ids=lambda p: p.name)
def test_same_outputs_on_every_corpus_capture(capture, tmp_path):
    same_outputs(capture, tmp_path)


@compiled
@pytest.mark.parametrize("share", [0, 1])
@pytest.mark.parametrize("capture", ["ftp_vsftpd_curl.pcap", "http_nginx_codes.pcap", "ftp_pyftpdlib_ipv6.pcap"])
def test_same_share_of_a_parallel_run(capture, share, tmp_path):
    same_outputs(ROOT / "samples" / "captures" / capture, tmp_path, partition=(share, 2))


# -- random captures ----------------------------------------------------------------------

CLIENT4, SERVER4 = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
CLIENT6, SERVER6 = bytes(15) + b"\x01", bytes(15) + b"\x02"
# Link types the C decoder reads, and two it leaves to the reference (PPP, Cisco HDLC).
LINKS = (1, 113, 276, 101, 228, 229, 0, 108, 9, 104)


def _tcp(sport, dport, seq, ack, flags, payload, options=b""):
    doff = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + options + payload


def _ip(src, dst, tcp, v6, ip_options=b""):
    if v6:
        return struct.pack("!IHBB", 0x60000000, len(tcp), 6, 64) + src + dst + tcp
    ihl = 5 + len(ip_options) // 4
    return struct.pack("!BBHHHBBH", 0x40 | ihl, 0, ihl * 4 + len(tcp), 1, 0x4000, 64, 6, 0) + src + dst \
        + ip_options + tcp


def _frame(link, ip, v6, vlans):
    et = b"\x86\xdd" if v6 else b"\x08\x00"
    tags = b"".join(b"\x81\x00" + struct.pack("!H", v) for v in vlans)
    if link == 1:
        return b"\x02" * 6 + b"\x04" * 6 + tags + et + ip
    if link == 113:
        return struct.pack("!HHH", 0, 1, 6) + b"\x02" * 8 + (tags + et if tags else et) + ip
    if link == 276:
        return et + b"\x00\x00" + struct.pack("!IHBB", 1, 1, 0, 6) + b"\x02" * 8 + ip
    if link in (101, 228, 229):
        return ip
    if link == 0:
        return struct.pack("<I", 24 if v6 else 2) + ip
    if link == 108:
        return struct.pack(">I", 24 if v6 else 2) + ip
    if link == 9:
        return b"\xff\x03" + (b"\x00\x57" if v6 else b"\x00\x21") + ip
    return b"\x0f\x00" + et + ip   # Cisco HDLC


def _pcap(link, records, snaplen=65535):
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, link)]
    for ts, data in records:
        cut = data[:snaplen]
        sec, usec = divmod(ts, 1_000_000)
        out.append(struct.pack("<IIII", sec, usec, len(cut), len(data)) + cut)
    return b"".join(out)


REQUEST = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


def _response(code, body):
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (code, len(body)) + body


@st.composite
def conversations(draw):
    """A capture of keep-alive HTTP exchanges, damaged at random."""
    link = draw(st.sampled_from(LINKS))
    v6 = draw(st.booleans()) if link not in (228, 229) else link == 229
    vlans = draw(st.lists(st.integers(1, 4094), max_size=2)) if link in (1, 113) else []
    ip_options = b"\x01\x01\x01\x00" if not v6 and draw(st.booleans()) else b""
    tcp_options = b"\x01\x01\x08\x0a" + bytes(8) if draw(st.booleans()) else b""
    src, dst = (CLIENT6, SERVER6) if v6 else (CLIENT4, SERVER4)
    bodies = draw(st.lists(st.tuples(st.sampled_from([200, 204, 304, 404, 500]), st.integers(0, 3000)),
                           min_size=1, max_size=5))
    segments = []   # (from client, payload)
    for code, size in bodies:
        segments.append((True, REQUEST))
        reply = _response(code, bytes(i % 251 for i in range(size)) if code not in (204, 304) else b"")
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(reply) - 1)), max_size=4))))
        for a, b in zip([0] + cuts, cuts + [len(reply)]):
            if a < b:
                segments.append((False, reply[a:b]))
    seq = {True: 1000, False: 5000}
    packets = [(True, 0x02, 999, 0, b""), (False, 0x12, 4999, 1000, b""), (True, 0x10, 1000, 5000, b"")]
    for client, payload in segments:
        packets.append((client, 0x18, seq[client], seq[not client], payload))
        seq[client] += len(payload)
        packets.append((not client, 0x10, seq[not client], seq[client], b""))   # its ACK
    if draw(st.booleans()):
        packets.append((True, 0x11, seq[True], seq[False], b""))
        packets.append((False, 0x11, seq[False], seq[True] + 1, b""))
    # Damage: drop, duplicate, swap neighbours, an ACK that acknowledges
    # less or more than was sent (as delayed ACKs do, or after a segment the
    # capture lost: while the stream holds later ones that is a gap), flip a byte.
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(packets) - 1))
        action = draw(st.sampled_from(["drop", "dup", "swap", "ack"]))
        if action == "ack":
            client, flags, s, a, payload = packets[i]
            if flags == 0x10 and not payload:
                packets[i] = (client, flags, s, (a + draw(st.integers(-3000, 3000))) & 0xFFFFFFFF, payload)
        elif action == "drop":
            packets.pop(i)
        elif action == "dup":
            packets.insert(i, packets[i])
        elif i + 1 < len(packets):
            packets[i], packets[i + 1] = packets[i + 1], packets[i]
    frames = []
    for client, flags, s, a, payload in packets:
        sport, dport = (40000, 80) if client else (80, 40000)
        ip = _ip(src if client else dst, dst if client else src,
                 _tcp(sport, dport, s, a, flags, payload, tcp_options), v6, ip_options)
        frames.append(bytearray(_frame(link, ip, v6, vlans)))
    for _ in range(draw(st.integers(0, 2))):
        frame = frames[draw(st.integers(0, len(frames) - 1))]
        frame[draw(st.integers(0, len(frame) - 1))] ^= draw(st.integers(1, 255))
    snaplen = draw(st.sampled_from([65535, 65535, 96, 200]))
    times = [1_700_000_000_000_000 + 1000 * i for i in range(len(frames))]
    for i in draw(st.lists(st.integers(0, len(frames) - 1), max_size=2)):
        times[i:] = [t - 5_000_000 for t in times[i:]]   # the clock steps back (two captures pasted)
    return _pcap(link, list(zip(times, map(bytes, frames))), snaplen)


@compiled
@pytest.mark.parametrize("then", ["request", "the end", "the lost segment"])
@pytest.mark.parametrize("acked", [None, 1200, 400])  # all of it, into the hole, short of it
def test_a_pure_ack_past_a_lost_segment_is_a_gap_in_both(acked, then, tmp_path):
    # A response in three segments, the middle one lost by the capture: the
    # third waits out of order until the client's pure ACK shows that the
    # server sent what is missing.  The compiled lane takes pure ACKs itself
    # only while the other stream holds nothing; here it must hand this one
    # to the flow table (an ACK short of the hole tells nothing: the same).
    # The lost segment seen after the ACK shows which was done: after a gap
    # it is old data, without one it fills the hole.
    body = bytes(i % 251 for i in range(2400))
    reply = _response(200, body)
    cuts = [0, 800, 1600, len(reply)]
    packets = [(True, 0x02, 999, 0, b""), (False, 0x12, 4999, 1000, b""), (True, 0x10, 1000, 5000, b""),
               (True, 0x18, 1000, 5000, REQUEST)]
    for k in range(3):
        if k != 1:
            packets.append((False, 0x18, 5000 + cuts[k], 1000 + len(REQUEST), reply[cuts[k]:cuts[k + 1]]))
    end = 5000 + len(reply)
    packets.append((True, 0x10, 1000 + len(REQUEST), end if acked is None else 5000 + acked, b""))
    if then == "the lost segment":  # after the ACK past it: the hole was given up as a gap
        packets.append((False, 0x18, 5000 + cuts[1], 1000 + len(REQUEST), reply[cuts[1]:cuts[2]]))
    if then == "request":
        packets.append((True, 0x18, 1000 + len(REQUEST), end, REQUEST))
        packets.append((False, 0x18, end, 1000 + 2 * len(REQUEST), _response(404, b"no")))
    frames = []
    for client, flags, seq, ack, payload in packets:
        sport, dport = (40000, 80) if client else (80, 40000)
        ip = _ip(CLIENT4 if client else SERVER4, SERVER4 if client else CLIENT4,
                 _tcp(sport, dport, seq, ack, flags, payload, b""), False)
        frames.append(_frame(1, ip, False, []))
    path = tmp_path / "lost.pcap"
    path.write_bytes(_pcap(1, [(1_700_000_000_000_000 + 1000 * i, f) for i, f in enumerate(frames)]))
    same_outputs(path, tmp_path)


@compiled
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(capture=conversations())
def test_same_outputs_on_random_captures(capture, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("random")
    path = workdir / "random.pcap"
    path.write_bytes(capture)
    same_outputs(path, workdir)


def _pcapng_from(pcap: bytes, draw) -> bytes:
    """The records of a classic pcap as pcapng, with the block mix and
    damage drawn: byte order, time resolution and offset, Enhanced, Simple
    and obsolete Packet Blocks, blocks to skip, secrets, a second section,
    a cut or a broken length."""
    link = struct.unpack_from("<I", pcap, 20)[0]
    records, pos = [], 24
    while pos + 16 <= len(pcap):
        sec, usec, incl, orig = struct.unpack_from("<IIII", pcap, pos)
        records.append((sec * 1_000_000 + usec, pcap[pos + 16:pos + 16 + incl], orig))
        pos += 16 + incl
    order = draw(st.sampled_from("<>"))

    def block(btype, body):
        body += bytes(-len(body) % 4)
        return struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12)

    def section():
        return block(0x0A0D0D0A, struct.pack(order + "IHHq", 0x1A2B3C4D, 1, 0, -1))

    def interface(resol, offset):
        options = b""
        if resol is not None:
            options += struct.pack(order + "HH", 9, 1) + bytes([resol]) + bytes(3)
        if offset:
            options += struct.pack(order + "HHq", 14, 8, offset)
        return block(1, struct.pack(order + "HHI", link, 0, 0) + options + struct.pack(order + "HH", 0, 0))

    resol = draw(st.sampled_from([None, None, 6, 9, 0x80 | 20]))
    units = 1_000_000 if resol in (None, 6) else (10 ** 9 if resol == 9 else 1 << 20)
    offset = draw(st.sampled_from([0, 0, 0, 3600]))
    out = [section(), interface(resol, offset)]
    for i, (micros, data, orig) in enumerate(records):
        ticks = micros * units // 1_000_000 - offset * units
        kind = draw(st.sampled_from(["epb"] * 6 + ["spb", "pb", "skip", "secrets", "section"]))
        if kind == "skip":   # a name resolution block, then the packet
            out.append(block(4, struct.pack(order + "HH", 0, 0)))
        elif kind == "secrets":
            out.append(block(0x0A, struct.pack(order + "II", 0x544C534B, 5) + b"CLIENT"[:5]))
        elif kind == "section":   # a new section forgets the interfaces
            out += [section(), interface(resol, offset)]
        if kind == "spb":
            out.append(block(3, struct.pack(order + "I", orig) + data))
        elif kind == "pb":
            out.append(block(2, struct.pack(order + "HHIIII", 0, 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), orig)
                             + data))
        else:
            out.append(block(6, struct.pack(order + "IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(data), orig)
                             + data))
    raw = bytearray(b"".join(out))
    damage = draw(st.sampled_from([None, None, "cut", "length", "interface"]))
    if damage == "cut":
        del raw[draw(st.integers(28, len(raw) - 1)):]
    elif damage == "length" and len(out) > 2:   # a block's leading or trailing length
        i = draw(st.integers(2, len(out) - 1))
        at = sum(map(len, out[:i])) + draw(st.sampled_from([4, len(out[i]) - 4]))
        raw[at:at + 4] = struct.pack(order + "I", draw(st.sampled_from([13, 8, 1 << 30, 36, 28])))
    elif damage == "interface" and len(out) > 2:
        raw += block(6, struct.pack(order + "IIIII", 7, 0, 0, 0, 0))
    return bytes(raw)


def _ng_block(btype: int, body: bytes, order: str = "<", length: int | None = None, trailing: int | None = None):
    body += bytes(-len(body) % 4)
    size = len(body) + 12
    return struct.pack(order + "II", btype, size if length is None else length) + body + \
        struct.pack(order + "I", size if trailing is None else trailing)


_NG_SHB = _ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
_NG_IDB = _ng_block(1, struct.pack("<HHI", 1, 0, 0))
_NG_EPB = _ng_block(6, struct.pack("<IIIII", 0, 0, 1, 4, 4) + b"abcd")
# Each damage pcapng.py names, after one good packet: both walks must stop
# at the same block with the same message.
PCAPNG_DAMAGE = {
    "length below 12": struct.pack("<II", 6, 8) + bytes(8),
    "length not a multiple of 4": struct.pack("<II", 6, 13) + bytes(20),
    "trailing copy differs": _ng_block(6, struct.pack("<IIIII", 0, 0, 1, 4, 4) + b"abcd", trailing=44),
    "block too large": struct.pack("<II", 6, 1 << 30) + bytes(64),
    "short enhanced packet": _ng_block(6, bytes(16)),
    "packet longer than its block": _ng_block(6, struct.pack("<IIIII", 0, 0, 1, 40, 40) + b"abcd"),
    "unknown interface": _ng_block(6, struct.pack("<IIIII", 3, 0, 1, 4, 4) + b"abcd"),
    "short packet block": _ng_block(2, bytes(16)),
    "short interface block": _ng_block(1, b""),
    "short simple packet": _ng_block(3, b""),
    "short secrets": _ng_block(0x0A, b""),
    "secrets longer than the block": _ng_block(0x0A, struct.pack("<II", 1, 99) + b"x"),
    "bad byte-order magic": _ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x11223344, 1, 0, -1)),
    "unsupported version": _ng_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 2, 0, -1)),
    "short section header": _ng_block(0x0A0D0D0A, struct.pack("<I", 0x1A2B3C4D)),
    "simple packet before any interface": _NG_SHB + _ng_block(3, struct.pack("<I", 4) + b"abcd"),
    "cut in a block": _NG_EPB[:30],
}


@compiled
@pytest.mark.parametrize("damage", PCAPNG_DAMAGE, ids=str)
def test_same_damage_report_on_pcapng(damage, tmp_path):
    path = tmp_path / "damaged.pcapng"
    path.write_bytes(_NG_SHB + _NG_IDB + _NG_EPB + PCAPNG_DAMAGE[damage])
    python = outputs(path, tmp_path, "python")
    assert len(python["errors"]) == 1 and python["coverage"]["packets_read"] == 1
    same_outputs(path, tmp_path)


@compiled
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(capture=conversations(), data=st.data())
def test_same_outputs_on_random_pcapng_captures(capture, data, tmp_path_factory):
    # The compiled block walk (Loop.walk_pcapng) against capture/pcapng.py's records().
    workdir = tmp_path_factory.mktemp("random")
    path = workdir / "random.pcapng"
    path.write_bytes(_pcapng_from(capture, data.draw))
    same_outputs(path, workdir)


@compiled
@settings(max_examples=120, deadline=None)
@given(capture=conversations(), data=st.data())
def test_c_decoder_answers_as_the_reference_or_not_at_all(capture, data):
    from analyzer._fast.loop import decode_segment

    link = struct.unpack_from("<I", capture, 20)[0]
    pos = 24
    while pos < len(capture):
        incl, orig = struct.unpack_from("<II", capture, pos + 8)
        frame = capture[pos + 16:pos + 16 + incl]
        pos += 16 + incl
        wirelen = data.draw(st.sampled_from([orig, incl, orig + 7]))
        fast = decode_segment(link, frame, wirelen)
        if fast is not None:
            assert fast == Decoder().decode(link, frame, 0.0, wirelen)


@compiled
@given(frame=st.binary(max_size=120), link=st.sampled_from(LINKS), wirelen=st.integers(0, 300))
@settings(max_examples=1000, deadline=None)
def test_c_decoder_on_random_bytes(frame, link, wirelen):
    from analyzer._fast.loop import decode_segment

    fast = decode_segment(link, frame, wirelen)
    if fast is not None:
        assert fast == Decoder().decode(link, frame, 0.0, wirelen)


@compiled
@pytest.mark.parametrize("link, v6, vlans", [(1, False, []), (1, True, [5]), (1, False, [5, 6]), (113, False, []),
                                              (276, True, []), (101, False, []), (229, True, []), (0, False, []),
                                              (108, True, [])])
def test_c_decoder_takes_the_common_cases(link, v6, vlans):
    from analyzer._fast.loop import decode_segment

    src, dst = (CLIENT6, SERVER6) if v6 else (CLIENT4, SERVER4)
    frame = _frame(link, _ip(src, dst, _tcp(40000, 80, 7, 9, 0x18, REQUEST), v6), v6, vlans)
    seg = decode_segment(link, frame, len(frame))
    assert seg == (src, dst, 40000, 80, 7, 9, 0x18, REQUEST, len(REQUEST))


# -- HTTP head scan ------------------------------------------------------------------------

HEAD_PIECES = [b"\n", b"\r", b"\r\n", b" ", b"\t", b":", b"\x0b", b"\xe9", b"\xc3\xa9", b"\xc3", b"x", b"content-length",
               b"Content-Length", b"HOST", b"host", b"Upgrade", b"connection", b"Transfer-Encoding",
               b"content-encoding", b"Sec-WebSocket-Extensions", b"content-", b"hostname", b"12", b"chunked"]


@compiled
@settings(max_examples=800, deadline=None)
@given(pieces=st.lists(st.sampled_from(HEAD_PIECES), max_size=30), start=st.integers(0, 40))
def test_c_header_scan_equals_the_regex_one(pieces, start):
    from analyzer.protocols.http.dissector import _headers

    headers = _fast.helper_for("analyzer._fast.http_dissector", "_headers")
    assert headers is not None, "http_head.headers no longer answers as dissector._headers: follow it"
    head = b"".join(pieces)
    assert headers(head, start) == _headers(head, start)


@compiled
def test_the_http_twin_is_compiled_from_the_reference_and_uses_the_c_helpers():
    from analyzer.protocols import all_protocols
    from analyzer._fast import http_head

    _fast.use("compiled")
    try:
        specs = {s.name: s for s in _fast.protocols(all_protocols())}
    finally:
        _fast.use(None)
    http = specs["http"]
    # The spec points at the compiled lane, which makes the twin for what it does not dissect.
    assert (http.module, http.dissector_name) == ("analyzer._fast.http_conn", "dissector_for")
    import analyzer._fast.http_dissector as twin

    assert http.detect is twin.detect
    assert type(http.dissector(server_direction=None, midstream=True)) is twin.HttpDissector
    import analyzer.protocols.http.dissector as reference

    assert not twin.__file__.endswith(".py")
    assert twin._headers in (http_head.headers, http_head.headers_utf8)
    assert twin._start_line is http_head.start_line and twin.framing is http_head.framing
    assert reference._start_line is not http_head.start_line and reference.framing is not http_head.framing
    def defined(module):  # what the source defines (imports and __future__ aside)
        return {n for n, v in vars(module).items()
                if not n.startswith("__") and not inspect.ismodule(v) and n != "annotations"}

    assert defined(twin) == defined(reference)


# -- selection ------------------------------------------------------------------------------

def _selected(env: dict, code: str = "") -> subprocess.CompletedProcess:
    program = code + "from analyzer import _fast; print(_fast.selected())"
    return subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=60)


@pytest.mark.parametrize("switch", ["ANALYZER_NO_EXTENSIONS", "ANALYZER_PURE_PYTHON"])
def test_environment_switch_forces_the_python_loop(switch):
    assert _selected({switch: "1"}).stdout.strip() == "python"


@compiled
def test_compiled_loop_is_the_default_when_built():
    env = {k: "" for k in _fast.SWITCHES}
    assert _selected(env).stdout.strip() == "compiled"


def test_without_the_build_analyze_says_so_once_and_works(tmp_path):
    # A missing extension looks like this to Python: the import fails.
    program = ("import sys; sys.modules['analyzer._fast.loop'] = None\n"
               "from analyzer.cli import main; sys.exit(main())")
    capture = ROOT / "samples" / "captures" / "http_nginx_codes.pcap"
    env = {**os.environ, "PYTHONPATH": str(ROOT), **{k: "" for k in _fast.SWITCHES}}
    done = subprocess.run([sys.executable, "-c", program, "analyze", str(capture), "-o", str(tmp_path / "o"),
                           "-q", "-j", "1"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("the compiled fast path is not built") == 1
    assert (tmp_path / "o" / "events.csv").read_text(encoding="utf-8").count("\n") > 1


def test_the_read_loop_leaves_the_collector_as_it_found_it(tmp_path):
    # fewer_collections (engines/native.py): thresholds restored, our freeze
    # undone, and a caller's own freeze kept.
    import gc

    from analyzer.engines.native import LOOP_GC_THRESHOLD, fewer_collections

    before = gc.get_threshold()
    with fewer_collections():
        assert gc.get_threshold()[0] == LOOP_GC_THRESHOLD
        assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with fewer_collections():
            pass
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
