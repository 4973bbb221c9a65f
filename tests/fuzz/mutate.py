# Mutation operators over capture files, for the fuzz harness.
#
# Each operator takes (rng, data) and returns new bytes; a case applies one
# to three of them to a seed capture (samples/captures/ and the generated
# attacks).  They know the container formats well enough to hit the places
# that matter: record and block lengths, timestamps, pcapng block structure,
# zero-length and jumbo records, compressed streams cut short, and blind
# bit flips and byte runs for everything else.  Everything is a pure
# function of the random generator, so a (seed, case) pair names a case.
from __future__ import annotations

import bz2
import gzip
import lzma
import random
import struct

import zstandard

from tests import captures_builder as cb

PCAP_MAGICS = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">",
               b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}
PCAPNG = b"\x0a\x0d\x0d\x0a"
# Lengths and times that break naive readers: zero, one, off-by-a-few,
# sign-bit and all-ones values, and the limits our readers name.
INTERESTING_U32 = (0, 1, 3, 4, 11, 12, 16, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 65535 * 4,
                   262144, 262145, 1 << 24, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF,
                   256 * 1024 * 1024, 256 * 1024 * 1024 + 1)


# -- container views -------------------------------------------------------------

def pcap_records(data: bytes) -> tuple[str, list[tuple[int, int]]] | None:
    """(byte order, [(offset of record header, record bytes incl. header)])."""
    order = PCAP_MAGICS.get(data[:4])
    if order is None or len(data) < 24:
        return None
    out, pos = [], 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from(order + "I", data, pos + 8)[0]
        if pos + 16 + incl > len(data):
            break
        out.append((pos, 16 + incl))
        pos += 16 + incl
    return order, out


def pcapng_blocks(data: bytes) -> tuple[str, list[tuple[int, int]]] | None:
    if data[:4] != PCAPNG or len(data) < 12:
        return None
    order = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    out, pos = [], 0
    while pos + 12 <= len(data):
        blen = struct.unpack_from(order + "I", data, pos + 4)[0]
        if blen < 12 or pos + blen > len(data):
            break
        out.append((pos, blen))
        pos += blen
    return order, out


def to_pcapng(data: bytes) -> bytes:
    """A pcap rewritten as pcapng (one interface, µs), so block operators apply."""
    view = pcap_records(data)
    if view is None:
        return data
    order, records = view
    linktype = struct.unpack_from(order + "I", data, 20)[0] & 0xFFFF
    out = [cb.shb(order), cb.idb(order, linktype)]
    for pos, size in records:
        sec, usec, incl, orig = struct.unpack_from(order + "IIII", data, pos)
        out.append(cb.epb(order, 0, sec * 1_000_000 + usec, data[pos + 16:pos + 16 + incl], orig))
    return b"".join(out)


def _records(data: bytes):
    """Records or blocks, whichever the container has: (kind, order, list)."""
    view = pcap_records(data)
    if view is not None:
        return "pcap", view[0], view[1]
    view = pcapng_blocks(data)
    if view is not None:
        return "pcapng", view[0], view[1]
    return None, "<", []


# -- operators ---------------------------------------------------------------------

def bit_flips(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 2, 4, 8, 32))):
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
    return bytes(b)


def byte_run(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    n = min(len(b), rng.choice((2, 4, 8, 64, 512)))
    i = rng.randrange(len(b) - n + 1)
    value = rng.choice((0x00, 0xFF, 0x7F, 0x80, rng.randrange(256)))
    b[i:i + n] = bytes([value]) * n
    return bytes(b)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[:rng.randrange(len(data))]


def record_length(rng: random.Random, data: bytes) -> bytes:
    kind, order, recs = _records(data)
    if not recs:
        return bit_flips(rng, data)
    pos, size = rng.choice(recs)
    b = bytearray(data)
    value = rng.choice(INTERESTING_U32) if rng.random() < 0.7 else (size + rng.randint(-8, 8)) & 0xFFFFFFFF
    if kind == "pcap":
        field = pos + (8 if rng.random() < 0.7 else 12)     # captured or original length
    else:
        field = pos + (4 if rng.random() < 0.5 else size - 4)
        if struct.unpack_from(order + "I", data, pos)[0] == 6 and rng.random() < 0.5:
            field = pos + 20                                 # EPB captured length
    struct.pack_into(order + "I", b, field, value)
    return bytes(b)


def pcapng_block(rng: random.Random, data: bytes) -> bytes:
    data = to_pcapng(data)
    view = pcapng_blocks(data)
    if view is None or not view[1]:
        return bit_flips(rng, data)
    order, blocks = view
    pieces = [data[p:p + n] for p, n in blocks]
    tail = data[blocks[-1][0] + blocks[-1][1]:]
    op = rng.randrange(6)
    i = rng.randrange(len(pieces))
    if op == 0:     # unknown or wrong block type
        t = rng.choice((0, 2, 3, 5, 6, 0x0A, 0x0A0D0D0A, 0x80000001, rng.randrange(1 << 32)))
        pieces[i] = struct.pack(order + "I", t) + pieces[i][4:]
    elif op == 1:   # drop a block (an IDB, often)
        del pieces[i]
    elif op == 2:   # duplicate one
        pieces.insert(i, pieces[i])
    elif op == 3:   # swap two
        j = rng.randrange(len(pieces))
        pieces[i], pieces[j] = pieces[j], pieces[i]
    elif op == 4:   # an interface description with odd options (tsresol, tsoffset)
        resol = rng.choice((0, 1, 3, 6, 9, 19, 0x7F, 0x80, 0x94, 0xBF, 0xFF))
        offset = rng.choice((None, 0, 1 << 40, -(1 << 62), (1 << 63) - 1))
        pieces.insert(1 if len(pieces) > 1 else 0, cb.idb(order, 1, 0, resol, offset))
    else:           # a second section header midway
        pieces.insert(i, cb.shb(rng.choice("<>")))
    return b"".join(pieces) + tail


def timestamps(rng: random.Random, data: bytes) -> bytes:
    kind, order, recs = _records(data)
    if not recs:
        return bit_flips(rng, data)
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 3, 10))):
        pos, _size = rng.choice(recs)
        if kind == "pcap":
            sec = rng.choice((0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, rng.randrange(1 << 32)))
            frac = rng.choice((0, 999_999, 1_000_000, 0xFFFFFFFF))
            struct.pack_into(order + "II", b, pos, sec, frac)
        elif struct.unpack_from(order + "I", data, pos)[0] == 6:
            ticks = rng.choice((0, 1, (1 << 63), (1 << 64) - 1, 10 ** 19, rng.randrange(1 << 64)))
            struct.pack_into(order + "II", b, pos + 12, ticks >> 32, ticks & 0xFFFFFFFF)
    return bytes(b)


def odd_records(rng: random.Random, data: bytes) -> bytes:
    """Insert a zero-length record or a jumbo one (zeros or noise)."""
    kind, order, recs = _records(data)
    if kind != "pcap" or not recs:
        data = _pcap_of(data) or data
        kind, order, recs = _records(data)
        if kind != "pcap" or not recs:
            return bit_flips(rng, data)
    pos, _size = rng.choice(recs)
    sec, usec = struct.unpack_from(order + "II", data, pos)
    size = rng.choice((0, 0, 1, 65536, 262145, 1 << 20, 4 << 20))
    body = bytes(size) if rng.random() < 0.5 else rng.randbytes(min(size, 1 << 16)) * (size // (1 << 16) or 1)
    body = body[:size]
    rec = struct.pack(order + "IIII", sec, usec, len(body), rng.choice((len(body), len(body) + 100, 0))) + body
    return data[:pos] + rec + data[pos:]


def shuffle_records(rng: random.Random, data: bytes) -> bytes:
    """Reorder or duplicate a window of records (out-of-order TCP, retransmissions)."""
    kind, _order, recs = _records(data)
    if len(recs) < 3:
        return bit_flips(rng, data)
    start = recs[0][0]
    pieces = [data[p:p + n] for p, n in recs]
    i = rng.randrange(len(pieces) - 1)
    window = pieces[i:i + rng.randint(2, 12)]
    if rng.random() < 0.5:
        rng.shuffle(window)
    else:
        window = window + window[:rng.randint(1, len(window))]
    pieces[i:i + len(window)] = window
    end = recs[-1][0] + recs[-1][1]
    return data[:start] + b"".join(pieces) + data[end:]


def cut_compressed(rng: random.Random, data: bytes) -> bytes:
    """Compress (gzip, bzip2, xz, or zstd in one or several frames) and cut."""
    kind = rng.choice(("gzip", "bzip2", "xz", "zstd", "zstd-frames"))
    if kind == "gzip":
        packed = gzip.compress(data, mtime=0)
    elif kind == "bzip2":
        packed = bz2.compress(data)
    elif kind == "xz":
        packed = lzma.compress(data)
    elif kind == "zstd":
        packed = zstandard.ZstdCompressor().compress(data)
    else:
        c = zstandard.ZstdCompressor()
        step = max(64, len(data) // rng.randint(2, 8))
        packed = b"".join(c.compress(data[i:i + step]) for i in range(0, len(data), step))
    if rng.random() < 0.8:
        packed = packed[:rng.randrange(1, len(packed))]
    else:
        packed = bit_flips(rng, packed)
    return packed


def splice(rng: random.Random, data: bytes, other: bytes) -> bytes:
    """Bytes of another seed pasted in (records from another capture, another link type)."""
    if not other:
        return data
    n = rng.randint(1, min(len(other), 4096))
    i = rng.randrange(len(other) - n + 1)
    at = rng.randrange(len(data) + 1)
    return data[:at] + other[i:i + n] + data[at:]


def _pcap_of(data: bytes) -> bytes | None:
    return data if data[:4] in PCAP_MAGICS else None


OPERATORS = {
    "bit_flips": bit_flips,
    "byte_run": byte_run,
    "truncate": truncate,
    "record_length": record_length,
    "pcapng_block": pcapng_block,
    "timestamps": timestamps,
    "odd_records": odd_records,
    "shuffle_records": shuffle_records,
}
# Applied last, because the container operators need a plain container.
FINAL_OPERATORS = {"cut_compressed": cut_compressed}


def mutate(rng: random.Random, data: bytes, other: bytes = b"") -> tuple[bytes, list[str]]:
    """One case from one seed: 1-3 operators, sometimes a splice, sometimes a cut stream."""
    names = []
    for _ in range(rng.choice((1, 1, 2, 3))):
        if not data:
            break
        name = rng.choice(list(OPERATORS))
        data = OPERATORS[name](rng, data)
        names.append(name)
    if data and other and rng.random() < 0.1:
        data = splice(rng, data, other)
        names.append("splice")
    if data and rng.random() < 0.12:
        data = cut_compressed(rng, data)
        names.append("cut_compressed")
    return data, names
