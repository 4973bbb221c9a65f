# CSV output that is safe to open in a spreadsheet and never seen half-written.
#
# Spreadsheet formula injection: a cell starting with = + - @ (or tab / CR,
# which some spreadsheets strip before evaluating) is run as a formula.  Wire
# strings (URIs, reasons, FTP text) are attacker-controlled, so such cells get
# a leading apostrophe, the OWASP-recommended neutraliser.  Numbers are
# written as numbers: negative latencies never occur and codes are positive,
# so a numeric column never needs the prefix.
#
# Atomicity: rows go to a temporary file in the same directory, renamed over
# the target on close(); a reader sees the old file or the new one, never a
# partial one.  Live capture rewrites reports this way every interval.
from __future__ import annotations

import csv
import io
import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

from analyzer.outputs.visible import visible

DANGEROUS_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value):
    """A cell as a spreadsheet and a terminal may show it: controls visible, no formula."""
    if isinstance(value, str):
        value = visible(value)
        if value.startswith(DANGEROUS_PREFIXES):
            return "'" + value
    return value


class AtomicWriter:
    """A text file written to a temporary sibling and renamed into place."""

    def __init__(self, path: str | os.PathLike, binary: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix="." + self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        self.tmp = Path(tmp)
        os.chmod(fd, 0o644)  # mkstemp makes 0600; reports are meant to be shared
        self.handle = io.open(fd, "wb") if binary else io.open(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        if not self.handle.closed:  # a writer that closes its sink (pyarrow's) has flushed it
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.handle.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self):
        return self.handle

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class DirectFile:
    """A file written in place (live capture: readers follow it while it grows)."""

    def __init__(self, path: str | os.PathLike, binary: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.handle = open(self.path, "wb") if binary else open(self.path, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        if not self.handle.closed:
            self.handle.close()

    def abort(self) -> None:
        self.handle.close()


def write_atomic(path: str | os.PathLike, text: str) -> None:
    with AtomicWriter(path) as handle:
        handle.write(text)


class CsvWriter:
    """Streams rows (sequences in `columns` order) into an atomically committed CSV."""

    def __init__(self, path: str | os.PathLike, columns: Sequence[str], atomic: bool = True) -> None:
        self.columns = list(columns)
        # Not atomic: rows go straight to `path` and become visible at each
        # flush() (live capture appends events.csv while it runs).
        self._file = AtomicWriter(path) if atomic else DirectFile(path)
        # RFC 4180 line ends: with a bare "\n" terminator the csv module would
        # leave a lone CR inside a cell unquoted, and readers split the row there.
        self._csv = csv.writer(self._file.handle, lineterminator="\r\n")
        self._csv.writerow(self.columns)
        self.rows = 0

    def write_rows(self, rows: Iterable[Sequence]) -> None:
        for row in rows:
            self._csv.writerow([neutralise(v) for v in row])
            self.rows += 1

    def write_trusted(self, row: Sequence) -> None:
        """A row whose string cells the caller already neutralised (hot path)."""
        self._csv.writerow(row)
        self.rows += 1

    def write_trusted_rows(self, rows: Iterable[Sequence]) -> None:
        for row in rows:
            self.write_trusted(row)

    def write_rendered(self, chunks: Iterable[bytes]) -> None:
        """Rows another CsvWriter of the same columns already wrote, as its bytes
        after the header (a parallel worker's part file; not counted in `rows`)."""
        self._file.handle.flush()
        raw = self._file.handle.buffer
        for chunk in chunks:
            raw.write(chunk)

    def flush(self) -> None:
        self._file.handle.flush()

    def commit(self) -> None:
        self._file.commit()

    def abort(self) -> None:
        self._file.abort()


def rendered_rows(path: str | os.PathLike, chunk: int = 1 << 20):
    """The bytes of a CsvWriter's file after its header line, a chunk at a time
    (nothing when there is no file)."""
    try:
        handle = open(path, "rb")
    except FileNotFoundError:
        return
    with handle:
        handle.readline()  # the header: column names, never quoted across lines
        while data := handle.read(chunk):
            yield data


def write_dataframe(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame with the same neutralisation, atomically."""
    writer = CsvWriter(path, [str(c) for c in frame.columns])
    try:
        writer.write_rows(frame.itertuples(index=False, name=None))
        writer.commit()
    except BaseException:
        writer.abort()
        raise
