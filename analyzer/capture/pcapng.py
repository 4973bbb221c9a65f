# pcapng files (draft-ietf-opsawg-pcapng): a sequence of blocks (type, total
# length, body, total length again).  A file is one or more sections, each
# opened by a Section Header Block that fixes the byte order of what follows
# and forgets the interfaces of the previous section.
#
# Read: Interface Description (link type, snaplen, if_tsresol, if_tsoffset),
# Enhanced Packet, Simple Packet (interface 0, no timestamp: 0.0 like
# Wireshark), the obsolete Packet Block, and Decryption Secrets Blocks (kept
# whole in `decryption_secrets` for the TLS feature).  Every other block
# (name resolution, statistics, journal, custom...) is skipped by its length,
# as the format intends.
#
# Strategy: as in pcap.py, one bytes buffer refilled by chunks; per Enhanced
# Packet Block three small unpacks (block header, trailing length, packet
# header), one slice, one tuple.  Timestamps are ticks / units with an int
# divisor (10**n or 2**n), so the float is correctly rounded.
#
# Damage (what Wireshark also refuses): a block length below 12 or not a
# multiple of 4, a trailing length that differs from the leading one, a
# packet longer than its block, an interface id that no Interface Description
# Block announced, a bad byte-order magic.  Each ends the iteration with
# CaptureError after every good packet has been yielded.
from __future__ import annotations

import struct

from analyzer.errors import CaptureError
from analyzer.capture.pcap import KEEP_RECORD_BYTES, MAX_RECORD_BYTES, _ignore, _packets, read_past, refill

SHB = 0x0A0D0D0A
IDB = 0x00000001
PB = 0x00000002      # obsolete Packet Block
SPB = 0x00000003
EPB = 0x00000006
DSB = 0x0000000A

BOM_BIG = b"\x1a\x2b\x3c\x4d"
BOM_LITTLE = b"\x4d\x3c\x2b\x1a"

# A block holds at most one packet plus its options: the record bound of
# pcap.py plus room for options (Wireshark's reader likewise caps a block at
# its largest packet plus a fixed allowance), so that a garbage length cannot
# make us buffer the rest of the file.
MAX_BLOCK_BYTES = MAX_RECORD_BYTES + 64 * 1024
# Blocks longer than this are read through and their packet cut to
# KEEP_RECORD_BYTES (pcap.py, "Memory"); other long blocks are skipped.
KEEP_BLOCK_BYTES = KEEP_RECORD_BYTES + 64 * 1024

_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


def byte_order(bom: bytes) -> str | None:
    if bom == BOM_LITTLE:
        return "<"
    if bom == BOM_BIG:
        return ">"
    return None


def _interface(order: str, buf: bytes, pos: int, nxt: int):
    """(linktype, units, offset seconds, snaplen, tsresol text) of an IDB."""
    linktype, _reserved, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
    units = 1_000_000
    resol = "10^-6"
    offset = 0
    opt = pos + 16
    stop = nxt - 4
    unpack_opt = struct.Struct(order + "HH").unpack_from
    while opt + 4 <= stop:
        code, length = unpack_opt(buf, opt)
        value = opt + 4
        if code == 0 or value + length > stop:
            break
        if code == _OPT_IF_TSRESOL and length >= 1:
            v = buf[value]
            if v & 0x80:
                units = 1 << (v & 0x7F)
                resol = f"2^-{v & 0x7F}"
            else:
                units = 10 ** v
                resol = f"10^-{v}"
        elif code == _OPT_IF_TSOFFSET and length >= 8:
            (offset,) = struct.unpack_from(order + "q", buf, value)
        opt = value + ((length + 3) & ~3)
    return linktype, units, offset, snaplen, resol


def records(name: str, buf: bytes, fill, progress, interfaces: list, secrets: list, oversized=_ignore):
    """Yield (ts, linktype, data, wirelen) for every packet block.

    `buf` starts at the first Section Header Block.  `interfaces` receives
    (linktype, tsresol text) per Interface Description Block of any section,
    `secrets` (secrets_type, data) per Decryption Secrets Block.
    """
    n = 0
    pos = 0
    order = "<"
    u32 = struct.Struct("<I").unpack_from
    hdr = struct.Struct("<II").unpack_from
    epb = struct.Struct("<IIIII").unpack_from
    section: list = []   # (linktype, units, offset, snaplen) by interface id

    def damaged(why: str) -> CaptureError:
        return CaptureError(f"{name}: damaged pcapng block after {_packets(n)}: {why}", n)

    while True:
        end = len(buf)
        need = 12
        while pos + 12 <= end:
            btype, blen = hdr(buf, pos)
            if btype == SHB:
                order = byte_order(buf[pos + 8:pos + 12])
                if order is None:
                    raise damaged("section header with a bad byte-order magic")
                u32 = struct.Struct(order + "I").unpack_from
                hdr = struct.Struct(order + "II").unpack_from
                epb = struct.Struct(order + "IIIII").unpack_from
                blen = u32(buf, pos + 4)[0]
            if blen < 12 or blen & 3:
                raise damaged(f"impossible block length {blen} (below 12 or not a multiple of 4)")
            nxt = pos + blen
            if nxt > end:
                if blen > MAX_BLOCK_BYTES:
                    raise damaged(f"block length {blen} is larger than {MAX_BLOCK_BYTES}")
                if blen > KEEP_BLOCK_BYTES:
                    head, last, buf = read_past(name, fill, buf[pos:], blen, n, KEEP_BLOCK_BYTES)
                    pos, end = 0, len(buf)
                    if u32(last, 0)[0] != blen:
                        raise damaged(f"block length {blen} does not match its trailing copy")
                    oversized()
                    packet = _long_block(btype, order, head, blen, section, damaged)
                    if packet is not None:
                        yield packet
                        n += 1
                    elif btype == SHB:
                        section = []
                    continue
                need = blen
                break
            if u32(buf, nxt - 4)[0] != blen:
                raise damaged(f"block length {blen} does not match its trailing copy")
            if btype == EPB or btype == PB:
                if blen < 32:
                    raise damaged(f"{'enhanced packet' if btype == EPB else 'packet'} block of {blen} bytes")
                ifid, hi, lo, caplen, wirelen = epb(buf, pos + 8)
                if btype == PB:  # obsolete block: a 16-bit interface id, then a drops count
                    ifid = struct.unpack_from(order + "H", buf, pos + 8)[0]
                if caplen > blen - 32:
                    raise damaged(f"packet of {caplen} bytes in a block of {blen}")
                if ifid >= len(section):
                    raise damaged(f"packet on interface {ifid}, but only "
                                  f"{len(section)} interfaces are described")
                linktype, units, offset, _snaplen = section[ifid]
                start = pos + 28
                yield (((hi << 32) | lo) / units + offset, linktype,
                       buf[start:start + caplen], wirelen)
                n += 1
            elif btype == IDB:
                if blen < 20:
                    raise damaged(f"interface description block of {blen} bytes")
                linktype, units, offset, snaplen, resol = _interface(order, buf, pos, nxt)
                section.append((linktype, units, offset, snaplen))
                interfaces.append((linktype, resol))
            elif btype == SPB:
                if blen < 16:
                    raise damaged(f"simple packet block of {blen} bytes")
                if not section:
                    raise damaged("simple packet block before any interface description")
                wirelen = u32(buf, pos + 8)[0]
                linktype, _units, _offset, snaplen = section[0]
                caplen = min(wirelen, blen - 16)
                if snaplen:
                    caplen = min(caplen, snaplen)
                yield (0.0, linktype, buf[pos + 12:pos + 12 + caplen], wirelen)
                n += 1
            elif btype == SHB:
                if blen < 28:
                    raise damaged(f"section header block of {blen} bytes")
                major = struct.unpack_from(order + "H", buf, pos + 12)[0]
                if major != 1:
                    raise damaged(f"section header of unsupported version {major}")
                section = []
            elif btype == DSB:
                if blen < 20:
                    raise damaged(f"decryption secrets block of {blen} bytes")
                stype, slen = struct.unpack_from(order + "II", buf, pos + 8)
                if slen > blen - 20:
                    raise damaged(f"{slen} bytes of secrets in a block of {blen}")
                secrets.append((stype, buf[pos + 16:pos + 16 + slen]))
            pos = nxt
        progress(n)
        more = refill(name, fill, need - (end - pos), n)
        if not more:
            if pos == end:
                return
            raise CaptureError(
                f"{name}: cut short in the middle of a block after {_packets(n)}", n)
        buf = buf[pos:] + more if pos < end else more
        pos = 0


def _long_block(btype: int, order: str, head: bytes, blen: int, section: list, damaged):
    """The packet of a block longer than KEEP_BLOCK_BYTES, of which `head`
    holds the first KEEP_BLOCK_BYTES: (ts, linktype, data cut to
    KEEP_RECORD_BYTES, wire length), or None for a block that is not a packet."""
    if btype == EPB or btype == PB:
        ifid, hi, lo, caplen, wirelen = struct.unpack_from(order + "IIIII", head, 8)
        if btype == PB:
            ifid = struct.unpack_from(order + "H", head, 8)[0]
        if caplen > blen - 32:
            raise damaged(f"packet of {caplen} bytes in a block of {blen}")
        if ifid >= len(section):
            raise damaged(f"packet on interface {ifid}, but only {len(section)} interfaces are described")
        linktype, units, offset, _snaplen = section[ifid]
        return (((hi << 32) | lo) / units + offset, linktype,
                head[28:28 + min(caplen, KEEP_RECORD_BYTES)], max(wirelen, caplen))
    if btype == SPB:
        if not section:
            raise damaged("simple packet block before any interface description")
        wirelen = struct.unpack_from(order + "I", head, 8)[0]
        linktype, _units, _offset, snaplen = section[0]
        caplen = min(wirelen, blen - 16)
        if snaplen:
            caplen = min(caplen, snaplen)
        return (0.0, linktype, head[12:12 + min(caplen, KEEP_RECORD_BYTES)], max(wirelen, caplen))
    if btype == SHB:
        major = struct.unpack_from(order + "H", head, 12)[0]
        if major != 1:
            raise damaged(f"section header of unsupported version {major}")
    return None   # interface, secrets, statistics...: far too long to be real; skipped
