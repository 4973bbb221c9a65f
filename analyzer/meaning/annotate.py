# The catalogue's columns for a batch of events, as one join.
#
# Events arrive as Arrow record batches.  Their (protocol, code, substatus)
# keys are few (a capture has tens of distinct codes, not millions), so the
# catalogue is asked once per distinct key and the answers kept in a small
# Arrow table; a batch then gets its class/name/meaning/standard columns by
# `take`, with no Python call per event.  A batch's keys are found as
# integers (protocol and sub-status numbered by dictionary encoding, packed
# with the code into one int64), so Python sees each distinct key of a batch
# once and looks it up in a dict; joining the keys as text cost ~4x as much.
#
# The same join settles sub-statuses: a dissector reports the sub-status an
# error page claims (protocols/http/iis.py); only one the catalogue lists is
# kept, so a made-up "403.99" never reaches an output (the event keeps its
# plain 403 meaning).  Deciding what is a known code is this layer's job,
# not the dissector's.
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.meaning import catalog


class Annotator:
    """Adds ANNOTATION_COLUMNS (class, name, meaning, standard) in one language,
    and the sub-status column with only the sub-statuses the catalogue knows."""

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang
        self._index: dict[tuple[str, int, str], int] = {}  # key -> its row of the table
        self._rows: list[tuple[str, str, str, bool, str]] = []
        self._dropped: set[int] = set()  # rows whose claimed sub-status the catalogue does not list
        self._table: tuple | None = None  # (class, name, meaning, standard, kept sub-status arrays)

    def _row(self, proto: str, number: int, sub: str) -> int:
        """The table row of a key, asking the catalogue the first time."""
        row = self._index.get((proto, number, sub))
        if row is None:
            claimed = sub
            if sub and catalog.lookup(proto, sub).level != "exact":
                sub = ""   # claimed, but not a sub-status the catalogue lists: never invented
            a = catalog.annotate(proto, number, sub, self.lang)
            row = self._index[(proto, number, claimed)] = len(self._rows)
            self._rows.append((a["class"], a["name"], a["meaning"], bool(a["standard"]), sub))
            if sub != claimed:
                self._dropped.add(row)
            self._table = None
        return row

    def columns(self, protocol: pa.Array, code: pa.Array, substatus: pa.Array) -> list[pa.Array]:
        """class, name, meaning, standard, and the kept sub-status, per event
        (`substatus` itself when it keeps every one)."""
        protocols, subs = pc.dictionary_encode(protocol), pc.dictionary_encode(substatus)
        codes = code.to_numpy(zero_copy_only=False)
        width = len(protocols.dictionary) * len(subs.dictionary)
        low, high = (int(codes.min()), int(codes.max())) if len(codes) else (0, 0)
        if low < 0 or (high + 1) * max(width, 1) >> 62:
            # Codes no protocol has (a hand-made batch): the key by code too.
            numbers = pc.dictionary_encode(code)
            codes, names = numbers.indices.to_numpy().astype(np.int64), numbers.dictionary.to_pylist()
        else:
            names = None
        keys = pc.dictionary_encode(pa.array(
            (codes.astype(np.int64) * len(protocols.dictionary) + protocols.indices.to_numpy()) * len(subs.dictionary)
            + subs.indices.to_numpy()))
        proto_names, sub_names = protocols.dictionary.to_pylist(), subs.dictionary.to_pylist()
        rows = []
        for key in keys.dictionary.to_pylist():
            number, sub = divmod(key, len(sub_names))
            number, proto = divmod(number, len(proto_names))
            rows.append(self._row(proto_names[proto], names[number] if names else number, sub_names[sub]))
        if self._table is None:
            cls, name, meaning, standard, sub = zip(*self._rows) if self._rows else ((), (), (), (), ())
            self._table = (pa.array(cls, pa.string()), pa.array(name, pa.string()), pa.array(meaning, pa.string()),
                           pa.array(standard, pa.bool_()), pa.array(sub, pa.string()))
        where = pa.array(np.asarray(rows, dtype=np.int32)[keys.indices.to_numpy()])
        annotation = [column.take(where) for column in self._table[:4]]
        kept = self._table[4].take(where) if self._dropped.intersection(rows) else substatus
        return annotation + [kept]
