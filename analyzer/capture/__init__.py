# Where packets come from: capture files (pcap, pcapng), plain or compressed
# (gzip, bzip2, xz, zstd), or the same on stdin ("-").
#
#   with open_capture("trace.pcapng.zst") as cap:
#       for ts, linktype, data, wirelen in cap:
#           ...
#
# Every packet record is yielded, in file order, whatever it holds (empty,
# truncated by the snaplen, unknown link type): the frame number of a packet
# is the count of records yielded so far, as in Wireshark.
#
# Errors, and when they are raised:
#   * open_capture() raises InputError when the file cannot be opened, is
#     empty, or is not a capture (unknown magic; the message says what the
#     bytes look like when it can tell), and CaptureError(packets_read=0)
#     when the capture's own header (or the compressed stream holding it)
#     is cut short.  Nothing is raised later
#     for these.
#   * Iteration raises CaptureError(packets_read=N) after yielding the N
#     good records when the capture is damaged part-way (cut short, garbage
#     lengths, corrupt compressed data, I/O error).
#   * Anything else escaping is a bug.
#
# Limits: the whole file is never in memory (chunks of CHUNK_BYTES; of one
# record at most KEEP_RECORD_BYTES are kept, longer ones are yielded cut, and
# lengths above MAX_RECORD_BYTES are damage); magic sniffing reads 24 bytes (more
# only to describe a file that is not a capture), so a pipe works.
from __future__ import annotations

import os
import stat
import sys

from analyzer.errors import CaptureError, InputError
from analyzer.capture import pcap
from analyzer.capture import pcapng
from analyzer.capture.compression import CountingReader, StreamError, chunk_reader, detect, open_stream

__all__ = ["CaptureReader", "open_capture"]

_SNIFF_BYTES = 24          # a pcap file header; more than pcapng needs
_DESCRIBE_BYTES = 512      # enough to tell text, HTML, JSON, archives apart

# Things people feed a capture tool by mistake, or captures in formats we do
# not read: magic -> what to tell them.
_KNOWN_OTHERS = (
    (b"\xa1\xb2\xcd\x34", "a 'modified' (Kuznetzov) pcap, which is not supported; "
                          "convert it with: editcap -F pcap IN OUT"),
    (b"\x34\xcd\xb2\xa1", "a 'modified' (Kuznetzov) pcap, which is not supported; "
                          "convert it with: editcap -F pcap IN OUT"),
    (b"snoop\x00\x00\x00", "a Solaris snoop capture, which is not supported; "
                           "convert it with: editcap -F pcap IN OUT"),
    (b"GMBU", "a Microsoft Network Monitor capture, which is not supported; "
              "convert it with: editcap -F pcap IN OUT"),
    (b"RTSS", "a Microsoft Network Monitor 1.x capture, which is not supported; "
              "convert it with: editcap -F pcap IN OUT"),
    (b"XCP\x00", "a NetXRay/Sniffer capture, which is not supported; "
                 "convert it with: editcap -F pcap IN OUT"),
    (b"PK\x03\x04", "a zip archive; extract the capture first"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive; extract the capture first"),
    (b"Rar!", "a RAR archive; extract the capture first"),
    (b"\x04\x22\x4d\x18", "lz4-compressed data, which is not supported; "
                          "decompress it first"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable (ELF)"),
    (b"SQLite format 3\x00", "an SQLite database"),
)


def open_capture(path: str) -> "CaptureReader":
    """Open a capture file ("-" for stdin); see the module comment."""
    return CaptureReader(path)


def describe(head: bytes) -> str:
    """A short guess at what non-capture bytes are, for the error message."""
    for magic, what in _KNOWN_OTHERS:
        if head.startswith(magic):
            return f"looks like {what}"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "looks like a tar archive; extract the capture first"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sniff window is still text.
        text = head[:exc.start].decode("utf-8") if exc.start >= len(head) - 3 else None
    if text is not None and text.strip() and all(
            c.isprintable() or c in "\t\r\n\f" for c in text):
        first = text.lstrip()[:40].splitlines()[0]
        low = first.lower()
        if low.startswith(("<!doctype html", "<html")):
            kind = "HTML"
        elif low.startswith("<?xml"):
            kind = "XML"
        elif first.startswith(("{", "[")):
            kind = "JSON or other text"
        else:
            kind = "text"
        return f"looks like {kind} (starts with {first!r})"
    return f"unknown format (starts with bytes {head[:8].hex(' ')})"


def open_file(path: str):
    """Open a capture file for reading; any failure is one clear InputError."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a capture file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot open ({exc.strerror or exc})") from None


class CaptureReader:
    """Iterable of (ts, linktype, data, wirelen), one per packet record.

    Attributes:
      name        the path, or "<stdin>"
      format      "pcap" | "pcapng"
      compression None | "gzip" | "bzip2" | "xz" | "zstd"
      size        bytes of the file as stored; None for stdin and pipes
      bytes_read  bytes of the stored file consumed so far (progress bar)
      packets_read  records yielded, updated at every chunk and at the end
      interfaces  [(linktype, tsresol text like "10^-6" or "2^-20")]; for
                  pcapng it grows as Interface Description Blocks are read
      decryption_secrets  [(secrets_type, data)] from pcapng DSBs read so far
      pcap_source (header, bytes after the file header, fill) of a classic
                  pcap, for a record walk of its own (the compiled loop,
                  analyzer/_fast); None for pcapng
      pcapng_source (bytes from the first section header on, fill) of a
                  pcapng file, for the same; None for classic pcap
      records_cut  records longer than pcap.KEEP_RECORD_BYTES, yielded cut to
                  that length (and skipped pcapng blocks of that size)
    """

    def __init__(self, path: str) -> None:
        self.format = ""
        self.compression: str | None = None
        self.interfaces: list[tuple[int, str]] = []
        self.decryption_secrets: list[tuple[int, bytes]] = []
        self.packets_read = 0
        self.pcap_source = None
        self.pcapng_source = None
        self.records_cut = 0
        self._gen = None
        if path == "-":
            self.name = "<stdin>"
            self.size = None
            self._raw = sys.stdin.buffer
            self._owns_raw = False
        else:
            self.name = path
            self._raw = self._open(path)
            self._owns_raw = True
            try:
                st = os.fstat(self._raw.fileno())
            except OSError:
                st = None
            # A named pipe or device (e.g. bash's <(zcat x)) has no size.
            self.size = st.st_size if st is not None and stat.S_ISREG(st.st_mode) else None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _open(path: str):
        return open_file(path)

    def _start(self) -> None:
        name = self.name
        try:
            head = self._raw.read(6)
        except OSError as exc:
            raise InputError(f"{name}: cannot read ({exc.strerror or exc})") from None
        if not head:
            raise InputError(f"{name}: the input is empty" if self._raw is sys.stdin.buffer
                             else f"{name}: the file is empty")
        self.compression = detect(head)
        self._counter = CountingReader(self._raw, head, len(head))
        stream = self._counter
        if self.compression:
            try:
                stream = open_stream(self.compression, self._counter)
            except Exception as exc:  # noqa: BLE001 - any failure here means "not readable"
                raise InputError(f"{name}: cannot read {self.compression} data ({exc})") from None
        self._stream = stream
        fill = chunk_reader(stream, self.compression)
        inner = f"the {self.compression}-compressed content" if self.compression else "it"
        try:
            buf = fill(_SNIFF_BYTES)
        except StreamError as exc:
            if exc.cut_short:
                raise CaptureError(f"{name}: {exc} before the first packet", 0) from None
            raise InputError(f"{name}: {exc}") from None
        if not buf:
            raise InputError(f"{name}: {inner} is empty" if self.compression
                             else f"{name}: the file is empty")
        magic = buf[:4]
        if magic in pcap.MAGICS:
            if len(buf) < pcap.FILE_HEADER_BYTES:
                raise CaptureError(f"{name}: cut short in the pcap file header", 0)
            header = pcap.parse_header(buf)
            self.format = "pcap"
            self.interfaces.append((header.linktype, header.tsresol))
            self.pcap_source = (header, buf[pcap.FILE_HEADER_BYTES:], fill)
            self._gen = pcap.records(name, header, buf[pcap.FILE_HEADER_BYTES:],
                                     fill, self._progress, self._cut)
        elif magic == b"\x0a\x0d\x0d\x0a":
            if len(buf) < 12:
                raise CaptureError(f"{name}: cut short in the pcapng section header", 0)
            if pcapng.byte_order(buf[8:12]) is None:
                raise InputError(f"{name}: not a capture (starts like pcapng, but "
                                 f"the byte-order magic is {buf[8:12].hex()})")
            self.format = "pcapng"
            self.pcapng_source = (buf, fill)
            self._gen = pcapng.records(name, buf, fill, self._progress,
                                       self.interfaces, self.decryption_secrets, self._cut)
        else:
            if len(buf) < _DESCRIBE_BYTES:
                try:
                    buf += fill(_DESCRIBE_BYTES - len(buf))[:_DESCRIBE_BYTES]
                except StreamError:
                    pass
            what = describe(buf)
            if self.compression:
                raise InputError(f"{name}: {self.compression}-compressed, but the content "
                                 f"is not a pcap or pcapng capture ({what})")
            raise InputError(f"{name}: not a pcap or pcapng capture ({what})")

    def _progress(self, n: int) -> None:
        self.packets_read = n

    def _cut(self) -> None:
        self.records_cut += 1

    @property
    def bytes_read(self) -> int:
        return self._counter.count if hasattr(self, "_counter") else 0

    def __iter__(self):
        # One pass only: iterating again continues where the last one stopped.
        return self._gen if self._gen is not None else iter(())

    def close(self) -> None:
        gen, self._gen = self._gen, None
        if gen is not None:
            gen.close()
        stream = getattr(self, "_stream", None)
        if stream is not None and stream is not getattr(self, "_counter", None):
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - closing a half-read decompressor
                pass
        if self._owns_raw:
            self._raw.close()

    def __enter__(self) -> "CaptureReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<CaptureReader {self.name!r} {self.format}"
                f"{'+' + self.compression if self.compression else ''}>")
