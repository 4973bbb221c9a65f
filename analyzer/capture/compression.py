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
# Limits: one level of compression only (a .gz inside a .xz is "not a
# capture").
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


def open_stream(kind: str, source: CountingReader):
    """A reader object with `read(n)` yielding the decompressed bytes."""
    if kind == "gzip":
        return gzip.GzipFile(fileobj=source, mode="rb")
    if kind == "bzip2":
        return bz2.BZ2File(source, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(source, mode="rb")
    if kind == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(
            source, read_across_frames=True, closefd=False)
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
