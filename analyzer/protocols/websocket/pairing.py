# The close handshake of one WebSocket connection and what it says, for
# every engine.
#
# RFC 6455 section 7: each side sends one close frame; the first closes, the
# other's answers it.  The native dissector records the close frames it
# decodes, the tshark engine those tshark shows; both then ask this module
# the same questions: did the connection close, cleanly, and by whom; and,
# when it ended (FIN/RST) without any close frame, the inferred 1006
# (section 7.1.5: "The WebSocket Connection is Closed" without a close
# frame).  The inference waits until the connection is over: after the first
# FIN the peer may still send its close frame (half-close).
from __future__ import annotations

from analyzer.events import Event, side_label
from analyzer.protocols.websocket import SPEC as _SPEC

# Codes that end a connection cleanly when the close handshake completed;
# decided once, in the websocket spec (1000, 1001 and 1005: a close frame
# without a status code reports no error).
CLEAN_CODES = _SPEC.normal_codes
ABNORMAL_CLOSURE = 1006   # RFC 6455 section 7.4.1
# Flags of a close frame that break section 5.5.1 / 7.4: such a close is
# marked websocket_protocol_violation and a handshake holding one is not clean.
BROKEN_CLOSE_FLAGS = frozenset({
    "websocket_close_payload_1_byte", "websocket_reserved_close_code", "websocket_invalid_utf8_reason",
    "websocket_oversized_close", "websocket_duplicate_close",
})
VIOLATION = "websocket_protocol_violation"


def close_flags(flags: list[str], frame_violations: bool = False) -> list[str]:
    """`flags` of one close frame, led by VIOLATION when it breaks a rule."""
    if frame_violations or BROKEN_CLOSE_FLAGS.intersection(flags):
        flags.insert(0, VIOLATION)
    return flags


class CloseHandshake:
    """The close frames of one connection, its first FIN/RST, and the outcome."""

    __slots__ = ("closes", "abnormal", "first_end", "lost_close")

    def __init__(self) -> None:
        self.closes: list[Event] = []        # one per close frame on the wire
        self.abnormal: Event | None = None   # the inferred 1006, if any
        self.first_end: tuple[int, float, int, bool] | None = None   # (direction, ts, frame, rst)
        self.lost_close = False              # a close frame whose status code was lost

    def add(self, event: Event) -> None:
        self.closes.append(event)

    def sent_by(self, direction: int) -> int:
        return sum(1 for e in self.closes if e.sender == direction)

    def ended(self, direction: int, ts: float, frame: int, rst: bool) -> None:
        if self.first_end is None:
            self.first_end = (direction, ts, frame, rst)

    def infer_abnormal(self, request: str, server_direction: int, evidence: tuple[str, ...] = (),
                       midstream: bool = False) -> Event | None:
        """The 1006 of a connection that ended without any close frame, once
        it is over; None when a close frame was seen (or its code was lost)."""
        if self.first_end is None or self.closes or self.lost_close or self.abnormal is not None:
            return None
        direction, ts, frame, rst = self.first_end
        role = "server" if direction == server_direction else "client"
        flags = ("websocket_no_close_frame", f"{'rst' if rst else 'fin'}_by_{role}") + evidence
        if midstream:
            flags += ("websocket_midstream",)
        self.abnormal = Event(
            protocol="websocket", code=ABNORMAL_CLOSURE, text="", request=request, epoch=ts, frame=frame,
            sender=direction, direction=side_label(direction, server_direction), inferred=True, flags=flags,
        )
        return self.abnormal

    def outcome(self, server_direction: int, gap: bool = False) -> dict:
        """state: "closed" (a close frame was seen), "aborted" (FIN/RST without
        any close frame), "unknown" (ended, but lost bytes may have held the
        close frame, or its status code was lost), "open" (never ended).
        clean: both sides sent a close frame, the first carried a clean code
        and no close frame broke a rule.  closed_first_by: sender of the first
        close frame, else of the first FIN/RST."""
        closes = self.closes
        first = min(closes, key=lambda e: (e.epoch, e.frame)) if closes else self.abnormal
        if closes:
            state = "closed"
        elif self.lost_close or (self.abnormal is not None and gap):
            state = "unknown"
        elif self.abnormal is not None or self.first_end is not None:
            state = "aborted"
        else:
            state = "open"
        reply = next((e for e in closes if e.sender != first.sender), None) if closes else None
        clean = (reply is not None and first.code in CLEAN_CODES and not self.lost_close
                 and not any(VIOLATION in e.flags for e in closes))
        ended_by = ""
        if self.first_end is not None:
            direction, _, _, rst = self.first_end
            ended_by = f"{'rst' if rst else 'fin'}_by_{'server' if direction == server_direction else 'client'}"
        return {
            "state": state,
            "closed_first_by": ("server" if first.sender == server_direction else "client") if first else "",
            "clean": clean,
            "close_code": first.code if first is not None else None,
            "reply_code": reply.code if reply is not None else None,
            "inferred": bool(first.inferred) if first is not None else None,
            "ended_by": ended_by,
        }
