# Compressed captures: recognised by their magic bytes (never by the file
# name, which lies as often as not), decompressed as a stream so that a
# multi-gigabyte capture.pcap.zst costs one chunk of memory, and so that a
# pipe (stdin) works as well as a file.
#
# Strategy: the standard library's stream readers (gzip, bz2, lzma) and
# zstandard's stream_reader all take any object with a `read(n)` method, so
# the raw file is wrapped once in `CountingReader` (which also replays the
# magic bytes already peeked from a pipe, and counts the compressed bytes
# consumed for the progress bar) and handed to the matching reader.
# Concatenated members/streams/frames are read through (gzip -c a b > c).
#
# The capture readers pull bytes through `chunk_reader`, which asks for a
# large chunk but returns as soon as the bytes a record needs are there
# (read1 semantics), so a live `tcpdump -w - | analyzer -` is not held back
# until a full chunk has arrived.  Any failure below (I/O error, corrupt or
# cut-short compressed data) becomes one `StreamError` carrying a human
# message; the readers add the file name and the packet count.
#
# zstandard's stream reader returns end-of-stream, not an error, when its
# input stops inside a frame, so the compressed bytes of a zstd capture also
# pass through `ZstdFrames`, which walks the frame and block headers (RFC
# 8878: cheap, no decompression) and tells whether the input ended on a frame
# boundary; when it did not, the stream is "cut short" like a gzip member.
#
# Limits: one level of compression only (a .gz inside a .xz is "not a
# capture").  A stream cut exactly between two zstd frames (or two gzip
# members) is a valid, shorter stream: when the cut is also a record
# boundary, nothing can tell it from a complete capture.
from __future__ import annotations

import bz2
import gzip
import lzma
import zlib
from typing import BinaryIO

import zstandard

# Magic numbers from each format's specification (RFC 1952 for gzip, the
# bzip2 and xz file format documents, RFC 8878 for zstd).  bzip2's "BZh" is
# followed by the block size digit '1'..'9'; checking it rules out text that
# happens to start with "BZh".
_MAGICS = (
    (b"\x1f\x8b", "gzip"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
)
MAGIC_BYTES_NEEDED = 6

# Bytes asked of the stream per refill.  Big enough that the per-chunk work
# (one concatenation of the leftover) vanishes next to per-packet work, small
# enough to stay in a CPU cache (measured: 64 KiB..1 MiB perform alike).
CHUNK_BYTES = 256 * 1024

_CORRUPT = (zlib.error, lzma.LZMAError, zstandard.ZstdError)


class StreamError(Exception):
    """The bytes under the capture could not be read; str() is for humans.

    `cut_short` tells a stream that simply ends too early (damage) from
    one that is unreadable.
    """

    def __init__(self, message: str, cut_short: bool = False) -> None:
        super().__init__(message)
        self.cut_short = cut_short


def detect(head: bytes) -> str | None:
    """The compression named by the first bytes of a file, or None."""
    for magic, name in _MAGICS:
        if head.startswith(magic):
            return name
    if head[:3] == b"BZh" and head[3:4] in b"123456789" and len(head) > 3:
        return "bzip2"
    return None


class CountingReader:
    """A `read(n)` object over a raw file that first replays `prefix`.

    `count` is the number of bytes taken from the raw file so far (the
    prefix was counted when it was first read).
    """

    __slots__ = ("_raw", "_prefix", "count")

    def __init__(self, raw: BinaryIO, prefix: bytes = b"", count: int = 0) -> None:
        self._raw = raw
        self._prefix = prefix
        self.count = count

    def read(self, n: int = -1) -> bytes:
        prefix = self._prefix
        if prefix:
            if n is None or n < 0:
                self._prefix = b""
                rest = self._raw.read()
                self.count += len(rest)
                return prefix + rest
            if n <= len(prefix):
                self._prefix = prefix[n:]
                return prefix[:n]
            self._prefix = b""
            rest = self._raw.read(n - len(prefix))
            self.count += len(rest)
            return prefix + rest
        data = self._raw.read(n)
        self.count += len(data)
        return data

    def read1(self, n: int = -1) -> bytes:
        """Whatever one read of the raw file gives (a pipe: what is there)."""
        prefix = self._prefix
        if prefix:
            return self.read(min(n, len(prefix)) if n >= 0 else -1)
        raw_read1 = getattr(self._raw, "read1", None) or self._raw.read
        data = raw_read1(n)
        self.count += len(data)
        return data

    # zstandard's stream_reader and the stdlib readers only need read();
    # these keep `io` helpers that probe the object happy.
    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


class ZstdFrames:
    """Follows zstd frame structure (RFC 8878 section 3.1) over the compressed
    bytes fed to it; `at_boundary` is True between frames."""

    __slots__ = ("_need", "_state", "_buf", "_checksum", "_last")

    # states: what the next `_need` bytes are
    _MAGIC, _FHD, _HEADER_REST, _BLOCK_HEADER, _SKIP, _SKIP_SIZE = range(6)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._need = 4
        self._buf = b""
        self._checksum = False
        self._last = False

    @property
    def at_boundary(self) -> bool:
        return self._state == self._MAGIC and not self._buf

    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._state == self._SKIP:        # block body, checksum or skippable content
                take = min(self._need, n - pos)
                self._need -= take
                pos += take
                if self._need == 0:
                    self._after_skip()
                continue
            take = min(self._need - len(self._buf), n - pos)
            self._buf += data[pos:pos + take]
            pos += take
            if len(self._buf) == self._need:
                field, self._buf = self._buf, b""
                self._field(field)

    def _after_skip(self) -> None:
        if self._last:                           # the frame (or skippable frame) is over
            self._state, self._need, self._last, self._checksum = self._MAGIC, 4, False, False
        else:
            self._state, self._need = self._BLOCK_HEADER, 3

    def _field(self, field: bytes) -> None:
        state = self._state
        if state == self._MAGIC:
            magic = int.from_bytes(field, "little")
            if 0x184D2A50 <= magic <= 0x184D2A5F:    # skippable frame: 4-byte size, content
                self._state, self._need = self._SKIP_SIZE, 4
            else:                                    # the decompressor judges a bad magic
                self._state, self._need = self._FHD, 1
        elif state == self._SKIP_SIZE:
            self._state, self._need, self._last = self._SKIP, int.from_bytes(field, "little"), True
            if self._need == 0:
                self._after_skip()
        elif state == self._FHD:
            fhd = field[0]
            single = fhd & 0x20
            self._checksum = bool(fhd & 0x04)
            fcs = (1 if single else 0, 2, 4, 8)[fhd >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 3] + fcs
            if rest:
                self._state, self._need = self._HEADER_REST, rest
            else:
                self._state, self._need = self._BLOCK_HEADER, 3
        elif state == self._HEADER_REST:
            self._state, self._need = self._BLOCK_HEADER, 3
        elif state == self._BLOCK_HEADER:
            header = int.from_bytes(field, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            body = 1 if kind == 1 else size              # an RLE block stores its byte once
            if last:
                body += 4 if self._checksum else 0
            self._last = bool(last)
            self._state, self._need = self._SKIP, body
            if body == 0:
                self._after_skip()


class _TrackedSource:
    """The compressed bytes on their way to the zstd reader, shown to ZstdFrames."""

    __slots__ = ("_source", "frames")

    def __init__(self, source) -> None:
        self._source = source
        self.frames = ZstdFrames()

    def read(self, n: int = -1) -> bytes:
        data = self._source.read(n)
        self.frames.feed(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        pass


class _ZstdReader:
    """zstandard's stream reader, plus "cut short" when the input ends inside a frame."""

    def __init__(self, source: CountingReader) -> None:
        self._source = _TrackedSource(source)
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            self._source, read_across_frames=True, closefd=False)

    def read(self, n: int = -1) -> bytes:
        data = self._reader.read(n)
        if not data and n != 0 and not self._source.frames.at_boundary:
            raise EOFError("zstd frame cut short")
        return data

    def read1(self, n: int = -1) -> bytes:
        data = self._reader.read1(n)
        if not data and n != 0 and not self._source.frames.at_boundary:
            raise EOFError("zstd frame cut short")
        return data

    def close(self) -> None:
        self._reader.close()


def open_stream(kind: str, source: CountingReader):
    """A reader object with `read(n)` yielding the decompressed bytes."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(source, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(source, mode="rb")
    if kind == "zstd":
        return _ZstdReader(source)
    raise ValueError(f"unknown compression {kind!r}")


def chunk_reader(stream, compression: str | None):
    """`fill(need)`: at least `need` bytes of `stream` (fewer only at its end).

    Returns b"" at the end of the stream; raises StreamError on failure.
    """
    read1 = getattr(stream, "read1", None) or stream.read

    def fill(need: int) -> bytes:
        want = need if need > CHUNK_BYTES else CHUNK_BYTES
        try:
            data = read1(want)
            if len(data) >= need or not data:
                return data
            parts = [data]
            got = len(data)
            while got < need:
                more = read1(want - got)
                if not more:
                    break
                parts.append(more)
                got += len(more)
            return b"".join(parts)
        except EOFError as exc:
            raise StreamError(f"{compression} data cut short", cut_short=True) from exc
        except _CORRUPT as exc:
            raise StreamError(f"{compression} data is corrupt ({exc})") from exc
        except OSError as exc:
            # gzip and bz2 report bad data as OSError (BadGzipFile, "Invalid
            # data stream"); without compression it is a real I/O error.
            if compression:
                raise StreamError(f"{compression} data is corrupt ({exc})") from exc
            raise StreamError(f"read error ({exc.strerror or exc})") from exc

    return fill
