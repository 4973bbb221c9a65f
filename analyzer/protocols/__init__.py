# The protocol registry: one spec per protocol package, in detection order.
#
# Adding a protocol is adding a package under analyzer/protocols/ whose
# __init__.py declares `SPEC = Protocol(...)` (see spec.py) and one line in
# _PACKAGES.  Order matters: the connection table asks detectors in this
# order and the first DETECTED wins (HTTP before the strict, port-free
# WebSocket frame detector; TLS before WebSocket because a ClientHello is
# cheaper to recognise).  Only the specs are imported here, never a dissector.
from __future__ import annotations

import importlib

from analyzer.protocols.spec import Protocol

_PACKAGES = (
    "http",
    "ftp",
    "tls",
    "socks",
    "websocket",
)

_SPECS: tuple[Protocol, ...] = tuple(
    importlib.import_module(f"analyzer.protocols.{name}").SPEC for name in _PACKAGES)
_BY_NAME = {spec.name: spec for spec in _SPECS}

# Protocols whose events reach events.csv and the statistics, in report order.
EVENT_PROTOCOLS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.event_protocol)


def all_protocols() -> tuple[Protocol, ...]:
    """Every spec, in detection order."""
    return _SPECS


def get(name: str) -> Protocol:
    """The spec of `name`; KeyError for a protocol we do not know."""
    return _BY_NAME[name]


# port -> names of the protocols that hint it: asked once per connection
# (~1 us by the specs' port sets, ~0.2 by this table).
_HINTED: dict[int, frozenset[str]] = {}
for _spec in _SPECS:
    for _port in _spec.port_hints:
        _HINTED[_port] = _HINTED.get(_port, frozenset()) | {_spec.name}
_NONE: frozenset[str] = frozenset()


def port_hints(ports) -> frozenset[str]:
    """Names of the protocols whose hint ports include one of `ports`."""
    found = _NONE
    for port in ports:
        names = _HINTED.get(port)
        if names is not None:
            found = found | names if found else names
    return found
