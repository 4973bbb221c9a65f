# Generated captures for the resource attacks of issue 17 ("Found"): each
# function returns the bytes of one small capture that used to hang, blow up
# memory or end in an internal error.  Built here with struct from the format
# documents (tests/captures_builder.py), never copied from a run, so a test
# can regenerate them and the fuzz harness can use them as seeds.
#
# Packets are Ethernet/IPv4/TCP unless said otherwise; `exchange()` writes one
# complete HTTP request/response over a handshake so that the analyzer has
# events (and a time axis) to report.
from __future__ import annotations

import struct

import zstandard

from tests import captures_builder as cb

MAC = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02"
CLIENT = bytes([10, 0, 0, 1])
SERVER = bytes([10, 0, 0, 2])
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src: bytes, dst: bytes, proto: int, body: bytes, ident: int = 1, frag: int = 0) -> bytes:
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), ident & 0xFFFF, frag, 64, proto, 0, src, dst)
    return hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + body


def tcp(sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                       5 << 4, flags, 65535, 0, 0) + payload


def ether(ip: bytes, ethertype: int = 0x0800) -> bytes:
    return MAC + struct.pack("!H", ethertype) + ip


def segment(src, dst, sport, dport, seq, ack, flags, payload=b"") -> bytes:
    return ether(ipv4(src, dst, 6, tcp(sport, dport, seq, ack, flags, payload)))


def exchange(sport: int = 40000, status: int = 200, path: str = "/") -> list[bytes]:
    """Frames of one HTTP/1.1 GET and its response, handshake and close included."""
    req = f"GET {path} HTTP/1.1\r\nHost: example.test\r\n\r\n".encode()
    body = b"hello"
    resp = (f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    c, s = 1000, 5000
    c_, s_ = CLIENT, SERVER
    return [
        segment(c_, s_, sport, 80, c, 0, SYN),
        segment(s_, c_, 80, sport, s, c + 1, SYN | ACK),
        segment(c_, s_, sport, 80, c + 1, s + 1, ACK),
        segment(c_, s_, sport, 80, c + 1, s + 1, PSH | ACK, req),
        segment(s_, c_, 80, sport, s + 1, c + 1 + len(req), PSH | ACK, resp),
        segment(c_, s_, sport, 80, c + 1 + len(req), s + 1 + len(resp), FIN | ACK),
        segment(s_, c_, 80, sport, s + 1 + len(resp), c + 2 + len(req), FIN | ACK),
    ]


def pcap_at(frames_with_times) -> bytes:
    """A classic µs pcap of (seconds as float or (sec, usec), frame)."""
    pkts = []
    for t, frame in frames_with_times:
        if not isinstance(t, tuple):
            sec = int(t)
            t = (sec, int(round((t - sec) * 1e6)))
        pkts.append((t, frame))
    return cb.pcap(pkts)


# -- item 1/2: time axis --------------------------------------------------------------

def time_span_pcapng(spread: float = 2e13, exchanges: int = 4) -> bytes:
    """pcapng (1 s timestamp units) whose exchanges lie `spread` seconds apart.

    The time axis spans ~600,000 years: a chart bucket per interval was
    3.1 GB and 17 s.
    """
    out = [cb.shb(), cb.idb(tsresol=0)]
    for i in range(exchanges):
        base = 1_700_000_000 + int(i * spread)
        for j, frame in enumerate(exchange(40000 + i)):
            out.append(cb.epb("<", 0, base + j, frame))
    return b"".join(out)


def corrupted_timestamps_pcap(exchanges: int = 20, corrupt=(3, 11)) -> bytes:
    """Many exchanges one second apart; the responses of `corrupt` carry
    timestamps decades/centuries away (a fuzzed seconds field)."""
    frames = []
    for i in range(exchanges):
        for j, frame in enumerate(exchange(40000 + i, status=500 if i % 3 else 200)):
            t = (1_700_000_000 + i, j * 1000)
            if i in corrupt and j == 4:
                t = (0xFFFFFF00 - i, 0) if i % 2 else (7 + i, 0)
            frames.append((t, frame))
    return pcap_at(frames)


def timestamp_near_1e19() -> bytes:
    """pcapng with 1 s units and a tick count near 10^19: one exchange.

    Used to raise MemoryError (a chart of 10^13 weekly buckets)."""
    out = [cb.shb(), cb.idb(tsresol=0)]
    for j, frame in enumerate(exchange()):
        out.append(cb.epb("<", 0, 1_700_000_000 + j, frame))
    for j, frame in enumerate(exchange(40001, status=404)):
        out.append(cb.epb("<", 0, 10 ** 19 + j, frame))
    return b"".join(out)


# -- item 3: nesting ----------------------------------------------------------------

def llc_snap_nesting(depth: int = 3000) -> bytes:
    """One frame: 802.3 length field, then `depth` LLC/SNAP headers each
    announcing another 802.3 length, then IPv4/TCP."""
    inner = ipv4(CLIENT, SERVER, 6, tcp(40000, 80, 1, 0, SYN))
    snap = b"\xaa\xaa\x03\x00\x00\x00"
    layers = (snap + struct.pack("!H", 0x0040)) * depth + snap + b"\x08\x00" + inner
    frame = MAC + struct.pack("!H", 0x05DC) + layers
    return cb.pcap([((1_700_000_000, 0), frame)] + [((1_700_000_001, 0), f) for f in exchange()])


def ah_chain(depth: int = 4000) -> bytes:
    """IPv4 with `depth` IPsec AH headers (RFC 4302, 12 bytes each) before TCP."""
    body = tcp(40000, 80, 1, 0, SYN)
    for _ in range(depth):
        # next header, payload length (in 4-byte words minus 2), reserved, SPI, sequence
        body = struct.pack("!BBHII", 51, 1, 0, 0x100, 1) + body
    # the innermost AH names TCP
    body = body[: 12 * (depth - 1)] + bytes([6]) + body[12 * (depth - 1) + 1:]
    frame = ether(ipv4(CLIENT, SERVER, 51, body)[:20 + len(body)])
    return cb.pcap([((1_700_000_000, 0), frame)] + [((1_700_000_001, 0), f) for f in exchange()])


# -- item 7: limits that count the wrong thing -------------------------------------------

def tiny_out_of_order(segments: int = 200_000, connections: int = 1) -> bytes:
    """Per connection a handshake, then one-byte segments each one byte
    ahead of a hole that never fills (held out of order until the end)."""
    frames = []
    t = 1_700_000_000.0
    for k in range(connections):
        sport = 20000 + k
        c = 1000
        frames.append((t, segment(CLIENT, SERVER, sport, 80, c, 0, SYN)))
        frames.append((t, segment(SERVER, CLIENT, 80, sport, 9000, c + 1, SYN | ACK)))
        for i in range(segments):
            # every other byte: byte 0 is never sent, so all are held
            frames.append((t + i * 1e-6, segment(CLIENT, SERVER, sport, 80, c + 2 + 2 * i, 9001, ACK, b"x")))
    return pcap_at(frames)


def fragmented_datagram(fragments: int = 8190, datagrams: int = 1) -> bytes:
    """IPv4 datagrams of `fragments` 8-byte fragments each (the most a
    65,535-byte datagram can have), in order."""
    frames = []
    for d in range(datagrams):
        payload = tcp(40000, 80, 1, 0, PSH | ACK, b"A" * (fragments * 8 - 20))
        for i in range(fragments):
            piece = payload[i * 8:(i + 1) * 8]
            more = 0x2000 if i < fragments - 1 else 0
            frames.append((1_700_000_000.0 + d, ether(ipv4(CLIENT, SERVER, 6, piece, ident=d + 1,
                                                           frag=more | i))))
    return pcap_at(frames)


def _pcap_of_exchanges(n: int) -> bytes:
    frames = []
    for i in range(n):
        for j, frame in enumerate(exchange(30000 + i)):
            frames.append((1_700_000_000 + i + j * 1e-3, frame))
    return pcap_at(frames)


def zstd_frames(n: int = 21, per_frame: int = 1) -> tuple[bytes, list[int]]:
    """A pcap of `n` exchanges compressed as one zstd frame per `per_frame`
    exchanges; returns the bytes and the offsets where frames end."""
    raw = _pcap_of_exchanges(n)
    header, rest = raw[:24], raw[24:]
    # split the records per exchange (7 frames each) at record boundaries
    chunks, pos, records = [], 0, []
    while pos < len(rest):
        incl = struct.unpack_from("<I", rest, pos + 8)[0]
        records.append(rest[pos:pos + 16 + incl])
        pos += 16 + incl
    step = 7 * per_frame
    chunks = [b"".join(records[i:i + step]) for i in range(0, len(records), step)]
    chunks[0] = header + chunks[0]
    cctx = zstandard.ZstdCompressor()
    out, ends = b"", []
    for chunk in chunks:
        out += cctx.compress(chunk)
        ends.append(len(out))
    return out, ends


def zstd_cut_between_frames(n: int = 21) -> bytes:
    """The zstd capture above cut at the end of its 12th frame: a clean frame
    boundary that is also a pcap record boundary."""
    data, ends = zstd_frames(n)
    return data[:ends[11]]


def zstd_cut_inside_frame(n: int = 21) -> bytes:
    data, ends = zstd_frames(n)
    return data[:ends[11] + (ends[12] - ends[11]) // 2]


def gzip_cut(n: int = 21) -> bytes:
    import gzip
    raw = _pcap_of_exchanges(n)
    data = gzip.compress(raw)
    return data[: len(data) * 12 // 21]


def jumbo_records_zstd(records: int = 4, size: int = 200 * 1024 * 1024) -> bytes:
    """zstd of a pcap holding `records` zero-filled records of `size` bytes:
    ~20 KB on disk, far more when each record is buffered whole."""
    cctx = zstandard.ZstdCompressor(level=3)
    chunks = [cb.pcap([])]
    zero = bytes(1 << 20)
    with_frames = []
    for i in range(records):
        with_frames.append(struct.pack("<IIII", 1_700_000_000 + i, 0, size, size))
    obj = cctx.compressobj()
    out = [obj.compress(chunks[0])]
    for hdr in with_frames:
        out.append(obj.compress(hdr))
        for _ in range(size // len(zero)):
            out.append(obj.compress(zero))
    out.append(obj.flush())
    return b"".join(out)


def detection_replay(connections: int = 4, segments: int = 60_000) -> bytes:
    """Connections whose client sends a request head one byte per segment
    that never ends (no CRLF CRLF): detection keeps waiting and used to keep
    every segment for the replay."""
    frames = []
    t = 1_700_000_000.0
    for k in range(connections):
        sport = 21000 + k
        c = 1000
        frames.append((t, segment(CLIENT, SERVER, sport, 80, c, 0, SYN)))
        frames.append((t, segment(SERVER, CLIENT, 80, sport, 9000, c + 1, SYN | ACK)))
        head = b"GET /" + b"a" * segments
        for i in range(0, len(head)):
            frames.append((t + i * 1e-6, segment(CLIENT, SERVER, sport, 80, c + 1 + i, 9001, ACK,
                                                 head[i:i + 1])))
    return pcap_at(frames)


def half_headers(connections: int = 200_000) -> bytes:
    """Connections whose response stops half-way through its header: each
    keeps a dissector with a partial line until the end of the run."""
    eth = MAC + b"\x08\x00"
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"
    resp = b"HTTP/1.1 200 OK\r\nServer: x\r\nContent-Le"
    t = 1_700_000_000_000_000
    for i in range(connections):
        n, port = divmod(i, 64512)
        cli = bytes([10, 1 + (n >> 8), n & 0xFF, 1])
        sport = 1024 + port
        c, s = 1000, 9000
        for src, dst, sp, dp, seq, ack, flags, payload in (
                (cli, SERVER, sport, 80, c, 0, SYN, b""),
                (SERVER, cli, 80, sport, s, c + 1, SYN | ACK, b""),
                (cli, SERVER, sport, 80, c + 1, s + 1, PSH | ACK, req),
                (SERVER, cli, 80, sport, s + 1, c + 1 + len(req), PSH | ACK, resp)):
            frame = eth + ipv4(src, dst, 6, tcp(sp, dp, seq, ack, flags, payload), ident=i)
            t += 1
            out.append(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
            out.append(frame)
    return b"".join(out)


def syn_flood(syns: int) -> bytes:
    """`syns` SYNs from distinct (address, port) pairs to one server, 1 µs apart."""
    eth = MAC + b"\x08\x00"
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(syns):
        n, port = divmod(i, 64512)
        src = bytes([10, (n >> 8) & 0xFF, n & 0xFF, 1])
        frame = eth + ipv4(src, SERVER, 6, tcp(1024 + port, 80, i * 7919, 0, SYN), ident=i)
        ts = 1_700_000_000_000_000 + i
        out.append(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)))
        out.append(frame)
    return b"".join(out)


ATTACKS = {
    "time_span_pcapng": time_span_pcapng,
    "corrupted_timestamps": corrupted_timestamps_pcap,
    "timestamp_near_1e19": timestamp_near_1e19,
    "llc_snap_nesting": llc_snap_nesting,
    "ah_chain": ah_chain,
    "tiny_out_of_order": tiny_out_of_order,
    "fragments_8190": fragmented_datagram,
    "zstd_cut_between_frames": zstd_cut_between_frames,
    "zstd_cut_inside_frame": zstd_cut_inside_frame,
    "gzip_cut": gzip_cut,
    "jumbo_records_zstd": jumbo_records_zstd,
    "detection_replay": detection_replay,
    "syn_flood_502k": lambda: syn_flood(502_000),
    "half_headers_200k": half_headers,
}
