"""Tunnels and link types real captures hold (mobile cores, overlays, Linux
NFLOG): the TCP segment inside is decoded, whatever wraps it."""
from __future__ import annotations

import struct

import pytest

from analyzer.decode.packets import Decoder

CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
OUTER_A, OUTER_B = bytes([192, 0, 2, 1]), bytes([192, 0, 2, 2])
PAYLOAD = b"HTTP/1.1 200 OK\r\n\r\n"


def tcp_ip4(payload: bytes = PAYLOAD) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 80, 40000, 1000, 2000, 5 << 4, 0x18, 65535, 0, 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, SERVER, CLIENT) + tcp


def tcp_ip6(payload: bytes = PAYLOAD) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 80, 40000, 1000, 2000, 5 << 4, 0x18, 65535, 0, 0) + payload
    src, dst = b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x02", b"\x20\x01\x0d\xb8" + b"\0" * 11 + b"\x01"
    return struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst) + tcp


def ether(inner: bytes, ethertype: int = 0x0800) -> bytes:
    return b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01" + struct.pack("!H", ethertype) + inner


def udp_ip4(dport: int, body: bytes, sport: int = 33333) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(body), 0) + body
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, OUTER_A, OUTER_B) + udp


def vxlan(inner_frame: bytes) -> bytes:
    return b"\x08\0\0\0" + b"\0\x12\x34\0" + inner_frame


def geneve(inner_frame: bytes, options: bytes = b"") -> bytes:
    return bytes([len(options) // 4, 0]) + b"\x65\x58" + b"\0\x12\x34\0" + options + inner_frame


def gtpu(inner_ip: bytes, extension: bool = False) -> bytes:
    if not extension:
        return bytes([0x30, 0xFF]) + struct.pack("!HI", len(inner_ip), 0x1234) + inner_ip
    # E flag: sequence/N-PDU/next type, then a PDU Session Container (type 0x85, 1 x 4 bytes).
    ext = bytes([0, 0, 0, 0x85]) + bytes([1, 0x00, 0x09, 0x00])
    return bytes([0x34, 0xFF]) + struct.pack("!HI", len(ext) + len(inner_ip), 0x1234) + ext + inner_ip


def teredo(inner_ip6: bytes) -> bytes:
    return b"\x00\x00" + b"\x8c\x3f" + bytes([0x3f, 0xfe, 0xff, 0xfe]) + inner_ip6   # origin indication


def ayiya(inner_ip6: bytes) -> bytes:
    # idlen 4 (16-byte identity), idtype 1, siglen 5 (20 bytes), hash 2, auth 2, opcode 1, next header 41.
    return bytes([0x41, 0x52, 0x21, 41]) + struct.pack("!I", 0) + b"\x11" * 16 + b"\x22" * 20 + inner_ip6


def nflog(inner_ip: bytes, family: int = 2) -> bytes:
    def tlv(kind: int, value: bytes) -> bytes:
        body = struct.pack("<HH", 4 + len(value), kind) + value
        return body + b"\0" * (-len(body) % 4)
    return bytes([family, 0]) + struct.pack("!H", 5) + tlv(1, b"\x08\x00\x03\x00") + tlv(10, b"ab\0") + \
        tlv(9, inner_ip)


CASES = {
    "vxlan-4789": (1, ether(udp_ip4(4789, vxlan(ether(tcp_ip4()))))),
    "vxlan-linux-8472": (1, ether(udp_ip4(8472, vxlan(ether(tcp_ip4()))))),
    "vxlan-any-port": (1, ether(udp_ip4(10000, vxlan(ether(tcp_ip4()))))),
    "geneve": (1, ether(udp_ip4(6081, geneve(ether(tcp_ip4()))))),
    "geneve-options": (1, ether(udp_ip4(6081, geneve(ether(tcp_ip4()), b"\x01\x02\x03\x01" + b"\0" * 4)))),
    "gtp-u": (1, ether(udp_ip4(2152, gtpu(tcp_ip4())))),
    "gtp-u-extension": (1, ether(udp_ip4(2152, gtpu(tcp_ip4(), extension=True)))),
    "gtp-u-ipv6": (1, ether(udp_ip4(2152, gtpu(tcp_ip6())))),
    "gre-in-udp": (1, ether(udp_ip4(4754, b"\0\0\x08\x00" + tcp_ip4()))),
    "teredo": (1, ether(udp_ip4(3544, teredo(tcp_ip6()), sport=3544))),
    "ayiya": (1, ether(udp_ip4(5072, ayiya(tcp_ip6())))),
    "nflog-ipv4": (239, nflog(tcp_ip4())),
    "nflog-ipv6": (239, nflog(tcp_ip6(), family=10)),
    "erspan-vxlan": (1, ether(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 14 + 20 + 8 + 16 + 14 + 40 + len(PAYLOAD),
                                          1, 0, 64, 47, 0, OUTER_A, OUTER_B)
                              + b"\x00\x00\x88\xbe" + ether(udp_ip4(10000, vxlan(ether(tcp_ip4())))))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_tcp_inside_the_tunnel_is_decoded(name):
    linktype, frame = CASES[name]
    decoder = Decoder()
    seg = decoder.decode(linktype, frame, 1.0, len(frame))
    assert seg is not None, dict(decoder.skipped)
    src, dst, sport, dport, seq, ack, flags, payload, seglen = seg
    assert (sport, dport, seq, ack, payload, seglen) == (80, 40000, 1000, 2000, PAYLOAD, len(PAYLOAD))
    assert len(src) in (4, 16) and src not in (OUTER_A, OUTER_B)


@pytest.mark.parametrize("frame,reason", [
    (ether(udp_ip4(2152, bytes([0x30, 0x01]) + struct.pack("!HI", 0, 1))), "gtp-u-signalling"),
    (ether(udp_ip4(3544, b"\x00\x01\x00\x00" + b"\0" * 9 + b"\x00")), "teredo-non-ipv6"),
    (ether(udp_ip4(53, b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")), "udp"),
    (nflog(b"", family=2)[:8], "nflog-no-payload"),
])
def test_what_the_tunnel_does_not_carry_is_named(frame, reason):
    decoder = Decoder()
    assert decoder.decode(239 if frame[:1] == b"\x02" and len(frame) < 14 else 1, frame, 1.0) is None
    assert dict(decoder.skipped) == {reason: 1}


def test_a_capture_mostly_not_decoded_says_so_in_one_line(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.captures_builder import pcap

    root = Path(__file__).resolve().parent.parent
    l2tp = ether(udp_ip4(1701, b"\x02\x02" + b"\0" * 10))      # L2TP data: not decoded
    capture = tmp_path / "l2tp.pcap"
    capture.write_bytes(pcap([((1_700_000_000 + i, 0), l2tp) for i in range(30)] +
                             [((1_700_000_100, 0), CASES["gtp-u"][1])]))
    proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(capture), "-o", str(tmp_path / "o"),
                           "-q"], capture_output=True, env=dict(os.environ, PYTHONPATH=str(root)), timeout=120)
    assert proc.returncode == 0
    assert proc.stderr.decode().splitlines() == [
        "analyzer: 30 of 31 packets were not decoded (udp 30); see packets_skipped in summary.json"]
