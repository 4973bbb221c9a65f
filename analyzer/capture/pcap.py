# Classic libpcap files (pcap-savefile(5); draft-ietf-opsawg-pcap): a 24-byte
# file header, then records of a 16-byte header (seconds, sub-seconds,
# captured length, original length) and the captured bytes.
#
# Strategy: the hot loop works on one bytes buffer refilled by chunks; per
# record it does one struct unpack, one slice (the packet bytes must be a
# bytes object anyway) and one output tuple, nothing else.  Timestamps are
# computed as (sec * units + frac) / units so that the float is the correctly
# rounded value of the exact time (int true division rounds once).
#
# Damage: a record header or body cut short by the end of the file, or a
# captured length no reader would accept, ends the iteration with
# CaptureError after every good record has been yielded.  Wireshark rejects
# records above WTAP_MAX_PACKET_SIZE_STANDARD (262144) for most link types;
# we accept up to MAX_RECORD_BYTES so that odd but real jumbo/USB/D-Bus
# captures still read, while a garbage length cannot make us allocate.
#
# Memory: a record longer than KEEP_RECORD_BYTES is read through in chunks
# and yielded cut to its first KEEP_RECORD_BYTES, with its original length
# as the wire length, so the decoder treats the rest like a snaplen cut (a
# gap) and no record costs more than that much memory, whatever its length
# (a 20 KB zstd capture of 200 MiB zero records used to take 1.2 GB).  Each
# such record is reported through `oversized()`.
#
# Limits: the "modified" (Kuznetzov, a1b2cd34) and other pcap variants are
# refused as unknown formats (Wireshark guesses between several incompatible
# layouts for that magic); the FCS-length bits of the link-type field are
# dropped (the decoder trims trailers by the IP length anyway).
from __future__ import annotations

import struct
from dataclasses import dataclass

from analyzer.errors import CaptureError
from analyzer.capture.compression import StreamError

# Largest captured length accepted for one record.  Wireshark's per-link-type
# maxima go from 262144 (WTAP_MAX_PACKET_SIZE_STANDARD) to 128 MiB
# (WTAP_MAX_PACKET_SIZE_DBUS / USBPCAP); twice that is plainly garbage.
MAX_RECORD_BYTES = 256 * 1024 * 1024
# Bytes of one record kept for decoding: 4x Wireshark's standard maximum
# (262144), twice Linux BIG TCP's 512 KiB GSO packets, so every real TCP
# packet is kept whole.
KEEP_RECORD_BYTES = 1024 * 1024

FILE_HEADER_BYTES = 24
_RECORD_HEADER_BYTES = 16

# magic as stored -> (struct byte order, sub-second units per second)
MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}


@dataclass(frozen=True, slots=True)
class PcapHeader:
    byte_order: str      # "<" or ">"
    units: int           # 1e6 (µs magic) or 1e9 (ns magic)
    version: tuple[int, int]
    snaplen: int
    linktype: int

    @property
    def tsresol(self) -> str:
        return "10^-6" if self.units == 1_000_000 else "10^-9"


def parse_header(head: bytes) -> PcapHeader:
    """The file header; `head` holds at least FILE_HEADER_BYTES, known magic."""
    order, units = MAGICS[head[:4]]
    major, minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(
        order + "HHiIII", head, 4)
    # The upper bits of `network` carry the FCS length and flags
    # (pcap-linktype(7)); the link type proper is the low 16 bits.
    return PcapHeader(order, units, (major, minor), snaplen, network & 0xFFFF)


def refill(name: str, fill, want: int, n: int) -> bytes:
    """More bytes from the (possibly compressed) stream; a broken stream is damage."""
    try:
        return fill(want)
    except StreamError as exc:
        raise CaptureError(f"{name}: {exc} after {_packets(n)}", n) from exc


def _packets(n: int) -> str:
    return f"{n} packet" if n == 1 else f"{n} packets"


def read_past(name: str, fill, rest: bytes, size: int, n: int, keep: int) -> tuple[bytes, bytes, bytes]:
    """A record (or block) of `size` bytes whose first bytes are `rest`:
    (its first `keep` bytes, its last 4 bytes, the bytes read after it).

    Reads the rest in chunks and keeps only the head, so memory stays at
    `keep` plus one chunk whatever `size` is.
    """
    if len(rest) >= size:
        return rest[:keep], rest[size - 4:size], rest[size:]
    head = [rest[:keep]]
    kept, got = len(head[0]), len(rest)
    last = rest[-4:]
    tail = b""
    while got < size:
        more = refill(name, fill, min(size - got, 1 << 18), n)
        if not more:
            raise CaptureError(f"{name}: cut short in the middle of a packet after {_packets(n)}", n)
        if kept < keep:
            head.append(more[:keep - kept])
            kept += len(head[-1])
        got += len(more)
        if got > size:
            tail = more[len(more) - (got - size):]
            more = more[:len(more) - (got - size)]
        last = (last + more)[-4:]
    return b"".join(head), last, tail


def _ignore(_n: int = 1) -> None:
    pass


def records(name: str, header: PcapHeader, buf: bytes, fill, progress, oversized=_ignore):
    """Yield (ts, linktype, data, wirelen) for every record after the header.

    `buf` holds the bytes already read past the file header, `fill(need)`
    returns more (see compression.chunk_reader), `progress(n)` is told the
    packet count at every refill and at the end.
    """
    unpack_from = struct.Struct(header.byte_order + "IIII").unpack_from
    units = header.units
    linktype = header.linktype
    pos = 0
    n = 0
    while True:
        end = len(buf)
        need = _RECORD_HEADER_BYTES
        while pos + 16 <= end:
            sec, frac, incl, orig = unpack_from(buf, pos)
            start = pos + 16
            stop = start + incl
            if stop > end:
                if incl > MAX_RECORD_BYTES:
                    raise CaptureError(
                        f"{name}: damaged record after {_packets(n)}: it claims "
                        f"{incl} captured bytes (more than {MAX_RECORD_BYTES})", n)
                if incl > KEEP_RECORD_BYTES:
                    data, _last, buf = read_past(name, fill, buf[start:], incl, n, KEEP_RECORD_BYTES)
                    oversized()
                    yield ((sec * units + frac) / units, linktype, data, max(orig, incl))
                    n += 1
                    pos, end = 0, len(buf)
                    continue
                need = stop - pos
                break
            yield ((sec * units + frac) / units, linktype, buf[start:stop], orig)
            n += 1
            pos = stop
        progress(n)
        more = refill(name, fill, need - (end - pos), n)
        if not more:
            if pos == end:
                return
            what = "a packet header" if end - pos < 16 else "a packet"
            raise CaptureError(
                f"{name}: cut short in the middle of {what} after {_packets(n)}", n)
        buf = buf[pos:] + more if pos < end else more
        pos = 0
