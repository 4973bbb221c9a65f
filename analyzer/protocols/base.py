# The contract every dissector keeps (sans-IO, after h11 and wsproto).
#
#   feed(data, direction, ts, frame) -> list[Event]
#       `data` is the next in-order bytes of one direction of a TCP
#       connection, all carried by packet number `frame` captured at `ts`.
#   gap(nbytes, direction, ts, frame) -> list[Event]
#       `nbytes` of that direction were never seen (lost, not captured, or
#       dropped by a memory limit).  The dissector skips them if it knows the
#       framing (inside a body of known length), else re-synchronises at the
#       next message boundary.
#   end(direction, ts, frame, rst) -> list[Event]
#       that direction sent FIN (rst=False) or RST (rst=True), in stream
#       order: every byte before it has been fed.
#   close(ts) -> list[Event]
#       the connection is finished (both FINs, RST, idle timeout, end of
#       the capture): flush what is pending.  Called exactly once.
#
# A dissector never raises on wire data: any exception escaping one of these
# calls is a bug.  Odd traffic becomes a named anomaly (`self.anomalies`), and
# announced side connections become `self.expectations`; the flow table
# drains both lists after every call.
#
# Detection by content: each dissector module exposes a `detect(head0,
# head1, port_hint)` function returning DETECTED, REJECTED or NEED_MORE given
# the first bytes of each direction.  The flow table calls it until one
# dissector accepts or all reject.  A flow is never decided from one byte.
#
# Tunnels: a dissector whose connection turns into a tunnel (a SOCKS
# CONNECT, an HTTP CONNECT answered 2xx) sets `self.handover` to a Handover
# holding what the tunnel is and the bytes that followed, and emits an
# anomaly naming it (so the table drains it); the table then detects the
# inner protocol afresh on the rest of the connection, as for a new one.
from __future__ import annotations

from analyzer.events import Anomaly, Event, Expectation

DETECTED, REJECTED, NEED_MORE = "detected", "rejected", "need-more"


class Dissector:
    """Base class: shared anomaly/expectation bookkeeping, no-op hooks.

    `buffered` is the memory (bytes) the dissector holds in its own buffers
    -- partial lines and heads, held bytes -- as of the last call returned:
    the flow table charges it to the connection's state (tcp/table.py), so a
    run bounds the total of every dissector's buffers, not each alone.  A
    dissector that buffers keeps it up to date after each call.
    """

    # Slots: the table holds tens of thousands of dissectors (issue 17).
    __slots__ = ("anomalies", "expectations", "server_direction", "handover", "buffered", "wants_acks")
    protocol = ""

    def __init__(self) -> None:
        self.anomalies: list[Anomaly] = []
        self.expectations: list[Expectation] = []
        # Direction (0/1) that plays the server, once the content has told us;
        # the flow table prefers the SYN when it saw one.
        self.server_direction: int | None = None
        self.handover: Handover | None = None   # set when the connection became a tunnel
        self.buffered = 0
        # True when the dissector wants acked() before each feed() (HTTP, once
        # bytes were lost: realigning its pairing); the hot paths read it.
        self.wants_acks = False

    def anomaly(self, name: str, ts: float, frame: int, detail: str = "") -> None:
        self.anomalies.append(Anomaly(name, ts, frame, detail))

    def feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        raise NotImplementedError

    def gap(self, nbytes: int, direction: int, ts: float, frame: int) -> list[Event]:
        return []

    def acked(self, direction: int, ahead: int | None) -> None:
        """The packet whose bytes feed() gets next in `direction` acknowledged
        the other direction `ahead` bytes past what was delivered of it
        (None: no ACK).  Called only while `wants_acks`."""

    def end(self, direction: int, ts: float, frame: int, rst: bool) -> list[Event]:
        return []

    def close(self, ts: float) -> list[Event]:
        return []

    def on_data(self, nbytes: int, ts: float) -> None:
        """Bytes moved on a side connection this dissector announced."""

    # Statistics the dissector wants reported per connection (e.g. FTP
    # login outcome, WebSocket close outcome); read after close().
    def outcome(self) -> dict:
        return {}


class Handover(Dissector):
    """The rest of a connection that became a tunnel: its bytes, in order,
    kept for the flow table to detect the inner protocol on.  `info` says
    what the tunnel is (JSON-ready: {"protocol": "socks5", "target": "h:80"})."""

    MAX_BYTES = 64 * 1024   # the table takes over after the call that made it

    def __init__(self, info: dict) -> None:
        super().__init__()
        self.info = info
        self.items: list[tuple] = []   # (direction, kind, value, ts, frame) as the table delivers them
        self.size = 0

    def feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        if data and self.size < self.MAX_BYTES:
            self.items.append((direction, "data", data, ts, frame))
            self.size += len(data)
        return []

    def gap(self, nbytes: int, direction: int, ts: float, frame: int) -> list[Event]:
        self.items.append((direction, "gap", nbytes, ts, frame))
        return []

    def end(self, direction: int, ts: float, frame: int, rst: bool) -> list[Event]:
        self.items.append((direction, "end", rst, ts, frame))
        return []
