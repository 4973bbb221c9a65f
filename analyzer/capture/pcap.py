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


def records(name: str, header: PcapHeader, buf: bytes, fill, progress):
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
