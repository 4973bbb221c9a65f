# What the rest of the analyzer may know about a protocol, as data.
#
# Each protocol package declares one `Protocol` in its `__init__.py`; the
# registry (analyzer.protocols) lists them.  A spec is import-light on
# purpose: it names its dissector module instead of importing it, so code
# that only needs meanings (`analyzer explain 404`, severity, statistics)
# never loads a parser.  `detect`, `dissector` and `roles` are resolved on
# first use and cached.
#
# Uniform contracts, so the connection table has no per-protocol `if`:
#   detect(head0, head1, port_hint, midstream) -> DETECTED | REJECTED | NEED_MORE
#   dissector(server_direction=int|None, midstream=bool) -> Dissector
#   roles(head0, head1) -> int | None   which direction is the server, from
#       content, for a connection whose SYN was not seen (None: no opinion).
from __future__ import annotations

import importlib
from dataclasses import dataclass

_RESOLVED: dict[tuple[str, str], object] = {}


def _resolve(module: str, attr: str):
    key = (module, attr)
    found = _RESOLVED.get(key)
    if found is None:
        found = _RESOLVED[key] = getattr(importlib.import_module(module), attr)
    return found


@dataclass(frozen=True, slots=True)
class Protocol:
    name: str
    # Module holding the dissector; the three names below live there.
    module: str
    detect_name: str = "detect"
    dissector_name: str = ""
    roles_name: str = ""
    # Ports that make detection less strict (a hint, never a verdict).
    port_hints: tuple[int, ...] = ()
    # Produces status events (rows of events.csv, columns of hosts.csv).
    event_protocol: bool = False
    # Fallback class of a code when the catalogue has none: "xx" (HTTP 4xx),
    # "yz" (FTP, RFC 959 notation), or ranges (WebSocket, RFC 6455 7.4.2).
    class_suffix: str = ""
    class_ranges: tuple[tuple[int, int], ...] = ()
    # Default severity policy: selectors of error codes, and of codes that
    # are never errors (expected wins).
    default_errors: tuple[str, ...] = ()
    default_expected: tuple[str | int, ...] = ()
    # Codes that end a connection normally (WebSocket: a clean close).
    normal_codes: frozenset[int] = frozenset()

    # -- lazily resolved behaviour -----------------------------------------
    @property
    def detect(self):
        return _resolve(self.module, self.detect_name)

    @property
    def dissector(self):
        return _resolve(self.module, self.dissector_name)

    def roles(self, head0: bytes, head1: bytes) -> int | None:
        if not self.roles_name:
            return None
        return _resolve(self.module, self.roles_name)(head0, head1)

    # -- meaning hooks -------------------------------------------------------
    def class_label(self, code: int) -> str:
        """Class of a code: "4xx", "4yz", "1000-2999"; "other" when none fits."""
        code = int(code)
        if self.class_ranges:
            for low, high in self.class_ranges:
                if low <= code <= high:
                    return f"{low}-{high}"
            return "other"
        if 100 <= code <= 999:
            return f"{code // 100}{self.class_suffix}"
        return "other"

    def is_normal(self, code: int) -> bool:
        return int(code) in self.normal_codes
