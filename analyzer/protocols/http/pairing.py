# HTTP/1.x request/response pairing, for every engine.
#
# A connection answers its requests in order (RFC 9112 section 9.3.2), so
# pairing is a FIFO of pending requests, as in Zeek's http/main.zeek: a
# response answers the oldest one; an interim 1xx (not 101) answers without
# consuming it, so the final response pairs with the same request.  The
# native dissector feeds it from the reassembled stream; the tshark engine
# from tshark's dissection (which reports a request only when its body is
# complete, so it holds early responses itself and asks here only which
# request a response gets).
#
# What was lost is kept in line: a request whose bytes were lost in a gap is
# queued as a placeholder (it still takes its response, flagged
# http_request_lost, with no latency), and a response lost in a gap consumes
# the oldest request (counted unanswered).  The queue is bounded
# (MAX_PENDING_REQUESTS); the oldest request beyond it is dropped, counted.
#
# Anomalies: http_response_without_request, http_request_lost,
# http_response_lost, http_too_many_pending_requests (and the engine's own
# reason a response is lost, e.g. tshark's http_response_not_reported).
from __future__ import annotations

from typing import Callable

from analyzer.events import Event

# Requests waiting for a response per connection.  Zeek's
# HTTP::max_pending_requests is 100; pipelining clients (wrk -d, ab) keep
# more in flight on a long capture, and a request costs ~100 bytes here.
MAX_PENDING_REQUESTS = 1000

Note = Callable[[str, float, int, str], None]


def interim(code: int) -> bool:
    """A 1xx other than 101 precedes the final response (RFC 9110 section 15.2)."""
    return 100 <= code < 200 and code != 101


def requested_upgrade(method: str, upgrade: str | None, connection: str | None) -> str:
    """The protocol a request asks to switch to, "" for none.

    CONNECT asks for a tunnel (RFC 9110 section 9.3.6).  An Upgrade header
    counts when the Connection header names it (RFC 9110 section 7.8) or when
    there is no Connection header at all (clients behind proxies that strip
    it still get switched by real servers)."""
    if method == "CONNECT":
        return "connect"
    if upgrade and (connection is None or "upgrade" in connection.lower()):
        return upgrade.strip().lower()
    return ""


class Request:
    """One request waiting for its response."""

    __slots__ = ("method", "uri", "host", "ts", "frame", "upgrade", "lost", "shown")

    def __init__(self, method: str, uri: str, host: str, ts: float, frame: int, upgrade: str = "",
                 lost: bool = False, shown: int = 0) -> None:
        self.method = method
        self.uri = uri
        self.host = host
        self.ts = ts            # first byte of the request
        self.frame = frame
        self.upgrade = upgrade  # requested_upgrade()
        self.lost = lost        # a placeholder for a request lost in a gap
        self.shown = shown      # tshark engine: the frame tshark reported it in

    @property
    def line(self) -> str:
        if not self.method:
            return ""
        return f"{self.method} {self.uri}" if self.uri else self.method


class HttpPairing:
    """The pending requests of one connection and the counts they leave."""

    __slots__ = ("note", "pending", "requests", "responses", "unanswered")

    def __init__(self, note: Note) -> None:
        self.note = note
        # A list, not a deque: most connections wait for one request at a
        # time, and an empty deque costs ~630 bytes (a list 56), per
        # connection held in the table (issue 17).
        self.pending: list[Request] = []
        self.requests = 0
        self.responses = 0
        self.unanswered = 0

    def request(self, req: Request) -> None:
        self.requests += 1
        if len(self.pending) >= MAX_PENDING_REQUESTS:
            self.note("http_too_many_pending_requests", req.ts, req.frame, "")
            self.pending.pop(0)
            self.unanswered += 1
        self.pending.append(req)

    def request_lost(self, ts: float, frame: int) -> None:
        """Bytes lost on the client side held the start of a request."""
        if len(self.pending) < MAX_PENDING_REQUESTS:
            self.pending.append(Request("", "", "", ts, frame, lost=True))
            self.note("http_request_lost", ts, frame, "")

    def response_lost(self, ts: float, frame: int, detail: str = "", name: str = "http_response_lost") -> None:
        """A response we will never see took the oldest request (`name`: the
        anomaly that says why)."""
        if self.pending:
            self.pending.pop(0)
            self.unanswered += 1
            self.note(name, ts, frame, detail)

    def answer(self, code: int, ts: float, frame: int, unpaired: bool = False) -> Request | None:
        """The request a response with `code` answers (FIFO); None when there is
        none (`unpaired`: the caller knows no waiting request can be its own)."""
        self.responses += 1
        pending = self.pending
        req = pending[0] if pending and not unpaired else None
        if req is not None and not interim(code):
            pending.pop(0)
        if req is None:
            self.note("http_response_without_request", ts, frame, str(code))
        return req

    def close(self) -> None:
        """The connection is over: whatever still waits was never answered."""
        self.unanswered += len(self.pending)
        self.pending.clear()

    def outcome(self) -> dict:
        return {"requests": self.requests, "responses": self.responses, "unanswered": self.unanswered}


def response_fields(code: int, text: str, ts: float, frame: int, sender: int, req: Request | None,
                    flags: tuple[str, ...] = ()) -> dict:
    """The Event fields of a response paired with `req` (see answer())."""
    if req is None:
        lead: tuple[str, ...] = ("http_response_without_request",)
    elif req.lost:
        lead = ("http_request_lost",)
    else:
        lead = ()
    return dict(
        protocol="http", code=code, text=text, request=req.line if req else "",
        epoch=ts, frame=frame, sender=sender, host=req.host if req else "",
        latency_ms=round((ts - req.ts) * 1000.0, 3) if req is not None and not req.lost else None,
        flags=lead + flags,
    )


def response_event(code: int, text: str, ts: float, frame: int, sender: int, req: Request | None,
                   flags: tuple[str, ...] = (), last_frame: int | None = None) -> Event:
    return Event(**response_fields(code, text, ts, frame, sender, req, flags), last_frame=last_frame)
