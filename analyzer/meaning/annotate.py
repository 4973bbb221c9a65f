# The catalogue's columns for a batch of events, as one join.
#
# Events arrive as Arrow record batches.  Their (protocol, code, substatus)
# keys are few (a capture has tens of distinct codes, not millions), so the
# catalogue is asked once per distinct key and the answers kept in a small
# Arrow table; a batch then gets its class/name/meaning/standard columns by
# `index_in` (the join) and `take`, with no Python call per event.
#
# The same join settles sub-statuses: a dissector reports the sub-status an
# error page claims (protocols/http/iis.py); only one the catalogue lists is
# kept, so a made-up "403.99" never reaches an output (the event keeps its
# plain 403 meaning).  Deciding what is a known code is this layer's job,
# not the dissector's.
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from analyzer.meaning import catalog

_SEP = "\x1f"  # unit separator: never part of a protocol name, a code or a sub-status


class Annotator:
    """Adds ANNOTATION_COLUMNS (class, name, meaning, standard) in one language,
    and the sub-status column with only the sub-statuses the catalogue knows."""

    def __init__(self, lang: str = "en") -> None:
        self.lang = lang
        self._keys: list[str] = []
        self._index: set[str] = set()
        self._rows: list[tuple[str, str, str, bool, str]] = []
        self._table: tuple | None = None  # (key array, class, name, meaning, standard arrays)

    def columns(self, protocol: pa.Array, code: pa.Array, substatus: pa.Array) -> list[pa.Array]:
        """class, name, meaning, standard, and the kept sub-status, per event."""
        keys = pc.binary_join_element_wise(protocol, pc.cast(code, pa.string()), substatus, _SEP)
        new = [k for k in pc.unique(keys).to_pylist() if k not in self._index]
        for key in new:
            proto, number, sub = key.split(_SEP)
            if sub and catalog.lookup(proto, sub).level != "exact":
                sub = ""   # claimed, but not a sub-status the catalogue lists: never invented
            a = catalog.annotate(proto, int(number), sub, self.lang)
            self._keys.append(key)
            self._index.add(key)
            self._rows.append((a["class"], a["name"], a["meaning"], bool(a["standard"]), sub))
        if new or self._table is None:
            cls, name, meaning, standard, sub = zip(*self._rows) if self._rows else ((), (), (), (), ())
            self._table = (pa.array(self._keys, pa.string()), pa.array(cls, pa.string()),
                           pa.array(name, pa.string()), pa.array(meaning, pa.string()),
                           pa.array(standard, pa.bool_()), pa.array(sub, pa.string()))
        where = pc.index_in(keys, value_set=self._table[0])
        return [column.take(where) for column in self._table[1:]]
