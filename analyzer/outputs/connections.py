# connections.csv, written as connections end, and the rows kept for the
# statistics outside memory.
#
# A run used to keep every finished connection's row (a dict, ~1 KB) until
# its end, for connections.csv and the per-host statistics: 200,000
# connections held ~210 MB (issue 17).  Now each row goes to connections.csv
# when its connection is finalised, and into a spill file: the rows
# marshalled in chunks of SPILL_ROWS, so the statistics (which need pandas,
# only imported after the packet loop) read them back at the end, chunk by
# chunk, in the order they ended.  marshal round-trips Python's ints, floats,
# strings and None exactly, so the statistics see the very values the rows
# held (a typed Arrow schema would have to guess what every engine puts in
# a column).
#
# The spill is an anonymous temporary file (unlinked at once: nothing is
# left behind, even by SIGKILL) unless the run names one: a parallel worker
# spills into its part folder, which its parent reads and then removes.
# Memory: at most SPILL_ROWS rows in flight, whatever the number of
# connections.
from __future__ import annotations

import marshal
import os
import tempfile
from pathlib import Path
from typing import Iterator

from analyzer.events import CONNECTION_COLUMNS
from analyzer.outputs.csvfile import CsvWriter

# Rows marshalled at a time.  Small: the pending rows are long-lived blocks
# made among the packet loop's short-lived ones, and 10,000 of them (a
# quarter of the api benchmark's connections, held for a quarter of its run)
# cost ~4 MB of peak RSS in allocator pools they kept from emptying.  The
# statistics regroup them by reports.CONNECTION_CHUNK_ROWS when they read
# them back.
SPILL_ROWS = 1_000


class ConnectionRows:
    """Finished connections' rows: connections.csv at once, the spill for later.

    `count` and `tls` are what the coverage needs (connections dissected,
    TLS connections); `rows()` yields the rows again, in the order added.
    """

    def __init__(self, outdir: str | os.PathLike | None, spill: str | os.PathLike | None = None,
                 csv: bool = True) -> None:
        self.csv = CsvWriter(Path(outdir) / "connections.csv", CONNECTION_COLUMNS) if csv else None
        self.spill_path = Path(spill) if spill is not None else None
        self._spill = open(self.spill_path, "w+b") if spill is not None else \
            tempfile.TemporaryFile(prefix=".connections-", dir=outdir)
        self._pending: list[tuple] = []
        self.count = 0
        self.tls = 0
        self._done = False

    def add(self, row: dict) -> None:
        values = tuple(row[c] for c in CONNECTION_COLUMNS)
        if self.csv is not None:
            self.csv.write_rows((values,))
        self._pending.append(values)
        self.count += 1
        if row["protocol"] == "tls":
            self.tls += 1
        if len(self._pending) >= SPILL_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            # Length-prefixed: marshal.load on a file reads value by value
            # through Python calls, loads() on one read is ~30x faster.
            data = marshal.dumps(self._pending)
            self._spill.write(len(data).to_bytes(8, "little"))
            self._spill.write(data)
            self._pending = []

    def commit(self) -> None:
        """Every row written: connections.csv into place, the spill complete."""
        self._flush()
        self._spill.flush()
        self._done = True
        if self.csv is not None:
            self.csv.commit()

    def abort(self) -> None:
        if self.csv is not None:
            self.csv.abort()
        self.close()

    def chunks(self) -> Iterator[list[dict]]:
        """The rows as dicts (CONNECTION_COLUMNS), SPILL_ROWS at a time, in the order added."""
        if not self._done:
            self.commit()
        if self._spill is None:
            self._spill = open(self.spill_path, "rb")
        spill = self._spill
        spill.seek(0)
        while True:
            size = spill.read(8)
            if not size:
                return
            chunk = marshal.loads(spill.read(int.from_bytes(size, "little")))
            yield [dict(zip(CONNECTION_COLUMNS, values)) for values in chunk]

    def rows(self) -> Iterator[dict]:
        for chunk in self.chunks():
            yield from chunk

    def close(self) -> None:
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    # A parallel worker hands its rows to the parent by the spill's name.
    def __getstate__(self) -> dict:
        if self.spill_path is None:
            raise TypeError("an anonymous connection spill cannot leave its process")
        self._flush()
        self._spill.flush()
        return {"spill_path": self.spill_path, "count": self.count, "tls": self.tls}

    def __setstate__(self, state: dict) -> None:
        self.csv = None
        self.spill_path = state["spill_path"]
        self._spill = None
        self._pending = []
        self.count, self.tls = state["count"], state["tls"]
        self._done = True
