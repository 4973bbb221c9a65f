# Writes pcap / pcapng bytes for tests, independently of the readers under
# test (plain struct.pack from the format documents), so that a reader bug
# and a writer bug cannot cancel out.  Packets are (ts_ticks, data) or
# (ts_ticks, data, wirelen) with ticks in the file's/interface's unit.
from __future__ import annotations

import struct


def pcap(packets, linktype: int = 1, order: str = "<", nanos: bool = False,
         snaplen: int = 65535) -> bytes:
    """A classic pcap file; ts of each packet given as (sec, frac)."""
    magic = 0xA1B23C4D if nanos else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for pkt in packets:
        (sec, frac), data = pkt[0], pkt[1]
        wirelen = pkt[2] if len(pkt) > 2 else len(data)
        out.append(struct.pack(order + "IIII", sec, frac, len(data), wirelen))
        out.append(data)
    return b"".join(out)


def _pad4(b: bytes) -> bytes:
    return b + b"\x00" * (-len(b) % 4)


def _options(order: str, opts) -> bytes:
    if not opts:
        return b""
    out = []
    for code, value in opts:
        out.append(struct.pack(order + "HH", code, len(value)) + _pad4(value))
    out.append(struct.pack(order + "HH", 0, 0))
    return b"".join(out)


def block(order: str, btype: int, body: bytes) -> bytes:
    body = _pad4(body)
    total = 12 + len(body)
    return struct.pack(order + "II", btype, total) + body + struct.pack(order + "I", total)


def shb(order: str = "<", major: int = 1) -> bytes:
    return block(order, 0x0A0D0D0A,
                 struct.pack(order + "IHHq", 0x1A2B3C4D, major, 0, -1))


def idb(order: str = "<", linktype: int = 1, snaplen: int = 0,
        tsresol: int | None = None, tsoffset: int | None = None) -> bytes:
    opts = []
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(order + "q", tsoffset)))
    return block(order, 1, struct.pack(order + "HHI", linktype, 0, snaplen)
                 + _options(order, opts))


def epb(order: str, ifid: int, ticks: int, data: bytes, wirelen: int | None = None,
        comment: bytes | None = None) -> bytes:
    body = struct.pack(order + "IIIII", ifid, ticks >> 32, ticks & 0xFFFFFFFF,
                       len(data), len(data) if wirelen is None else wirelen)
    opts = _options(order, [(1, comment)] if comment else [])
    return block(order, 6, body + _pad4(data) + opts)


def spb(order: str, data: bytes, wirelen: int | None = None) -> bytes:
    return block(order, 3, struct.pack(order + "I", len(data) if wirelen is None
                                       else wirelen) + data)


def obsolete_pb(order: str, ifid: int, ticks: int, data: bytes) -> bytes:
    body = struct.pack(order + "HHIIII", ifid, 0, ticks >> 32, ticks & 0xFFFFFFFF,
                       len(data), len(data))
    return block(order, 2, body + _pad4(data))


def dsb(order: str, secrets_type: int, data: bytes) -> bytes:
    return block(order, 0x0A, struct.pack(order + "II", secrets_type, len(data)) + data)


def nrb(order: str) -> bytes:
    # One IPv4 record (type 1) then end of records.
    rec = struct.pack(order + "HH", 1, 13) + _pad4(b"\x7f\x00\x00\x01localhost\x00")
    return block(order, 4, rec + struct.pack(order + "HH", 0, 0))


def isb(order: str, ifid: int = 0) -> bytes:
    return block(order, 5, struct.pack(order + "III", ifid, 0, 0))


def ether_tcp(src: bytes, sport: int, dst: bytes, dport: int, seq: int, ack: int, flags: int,
              payload: bytes) -> bytes:
    """One Ethernet/IPv4/TCP frame (checksums zero: readers must not need them)."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, src, dst) + tcp
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip


def conversation(packets, client: bytes, cport: int, server: bytes, sport: int,
                 start: int = 1_700_000_000, step: int = 1) -> bytes:
    """A pcap of one TCP connection from (sender "c"/"s", flags, payload)
    triples, sequence numbers following the payloads; one packet per
    `step` seconds."""
    syn, fin = 0x02, 0x01
    seq = {"c": 1000, "s": 5000}
    out = []
    for i, (side, flags, payload) in enumerate(packets):
        peer = "s" if side == "c" else "c"
        ends = (client, cport, server, sport) if side == "c" else (server, sport, client, cport)
        out.append(((start + i * step, 0), ether_tcp(*ends, seq[side], seq[peer], flags, payload)))
        seq[side] += len(payload) + bool(flags & (syn | fin))
    return pcap(out)
