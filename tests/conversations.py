# TCP conversations as Ethernet/IPv4 frames for tests: a handshake, the
# payloads each side sends (any of which can be left out of the capture to
# make a gap), and a close.  Written with struct from RFC 791/793, not with
# the decoder under test.
from __future__ import annotations

import struct

from captures_builder import pcap

CLIENT_MAC, SERVER_MAC = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def frame(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: bytes = b"",
          to_server: bool = True) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags,
                      65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0,
                     bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
    macs = SERVER_MAC + CLIENT_MAC if to_server else CLIENT_MAC + SERVER_MAC
    return macs + b"\x08\x00" + ip + tcp


def conversation(messages, *, client=("10.0.0.1", 40000), server=("10.0.0.2", 80), t0: float = 1_700_000_000.0,
                 step: float = 0.001, handshake: bool = True, close: bool = True):
    """Frames (ts, bytes) of one connection.

    `messages` is a list of (side, payload) with side "c" (client) or "s"
    (server); side "c-" / "s-" sends the payload but leaves it out of the
    capture (a gap of len(payload) bytes).
    """
    (cip, cport), (sip, sport) = client, server
    cseq, sseq = 1000, 5000
    out, t = [], t0

    def emit(to_server: bool, flags: int, payload: bytes = b"") -> None:
        nonlocal t
        if to_server:
            out.append((t, frame(cip, sip, cport, sport, cseq, sseq, flags, payload, True)))
        else:
            out.append((t, frame(sip, cip, sport, cport, sseq, cseq, flags, payload, False)))
        t += step

    if handshake:
        emit(True, SYN)
        cseq += 1
        emit(False, SYN | ACK)
        sseq += 1
        emit(True, ACK)
    for side, payload in messages:
        to_server = side.startswith("c")
        if not side.endswith("-"):
            emit(to_server, PSH | ACK, payload)
        if to_server:
            cseq += len(payload)
        else:
            sseq += len(payload)
    if close:
        emit(True, FIN | ACK)
        cseq += 1
        emit(False, FIN | ACK)
        sseq += 1
        emit(True, ACK)
    return out


def write_pcap(path, frames) -> None:
    """Frames (ts, bytes), in time order, as a microsecond pcap."""
    packets = []
    for ts, data in sorted(frames, key=lambda f: f[0]):
        sec = int(ts)
        packets.append(((sec, int(round((ts - sec) * 1e6))), data))
    with open(path, "wb") as handle:
        handle.write(pcap(packets))


def many_http_connections(path, connections: int, body: int = 1200, t0: float = 1_700_000_000.0) -> None:
    """A pcap of `connections` HTTP exchanges (one request, one response of
    `body` bytes each, some of them errors), for runs that take a while."""
    packets = []
    for i in range(connections):
        client = (f"10.{1 + i // 60000 % 200}.{i // 250 % 240}.{1 + i % 250}", 1024 + i % 60000)
        code = (200, 404, 500, 302)[i % 4]
        response = (b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n" % (code, body)) + b"x" * body
        for ts, data in conversation([("c", b"GET /item/%d HTTP/1.1\r\nHost: example.test\r\n\r\n" % i),
                                      ("s", response)], client=client, t0=t0 + i * 0.01, step=0.001):
            sec = int(ts)
            packets.append(((sec, int(round((ts - sec) * 1e6))), data))
    with open(path, "wb") as handle:
        handle.write(pcap(packets))
