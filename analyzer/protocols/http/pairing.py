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
# http_request_lost, with no latency); a response the tshark engine could
# not report consumes the oldest request (counted unanswered), one lost in a
# gap of the native engine is counted and placed by the next response (see
# below).  The queue is bounded (MAX_PENDING_REQUESTS); the oldest request
# beyond it is dropped, counted.
#
# After a gap, FIFO alone shifts: a gap may hide one request or three, one
# response or two, and from then on every response pairs with a neighbour.
# The TCP acknowledgement numbers say what each end had received when it
# sent, so the native dissector gives answer_after_gap() the byte positions
# of every request and response (client/server stream offsets) and the ACK of
# the packet carrying each one's first byte, as the other stream's offset.
# They are causal facts, true whatever the tap lost:
#   * a response cannot answer a request whose first byte the server had not
#     received (request.start >= response ACK);
#   * nor a request the client sent after it had received the response's
#     first byte (request ACK > response start).
# The requests that fit are a prefix of the queue.  None fits: the response
# answers a request lost in a client-side gap (http_request_lost), or none.
# Several fit after a server-side gap: the lost responses answered some of
# them -- at least as many as the gaps surely held (a gap past a message
# boundary held one), unless requests lost before could have taken those;
# at most all but the last.  When that leaves one choice, it is taken.  A
# client that sends one request at a time (seen, before any loss, sending a
# request only once all earlier ones were answered, and never two at once)
# had all its older requests answered by the lost responses, so the
# response answers the last one that fits (the server had it, not the
# next; Zeek and Wireshark pair FIFO here).  A pipelining client, or one
# not seen either way, leaves several choices: FIFO with the sure count,
# flagged http_pairing_uncertain; so
# is a pair that a request lost before it could still take, and one made
# without evidence (no ACK) after an unresolved loss.  An unsure pair may
# have taken a request that still waits, and no later ACK can prove it did
# not: every later pair of that connection is flagged too.
# Without any gap none of this runs: pairing is FIFO as before.
#
# Anomalies: http_response_without_request, http_request_lost,
# http_response_lost, http_too_many_pending_requests (and the engine's own
# reason a response is lost, e.g. tshark's http_response_not_reported),
# http_pairing_uncertain (also the response's flag).
from __future__ import annotations

from typing import Callable

from analyzer.events import Event

# Requests waiting for a response per connection.  Zeek's
# HTTP::max_pending_requests is 100; pipelining clients (wrk -d, ab) keep
# more in flight on a long capture, and a request costs ~100 bytes here.
MAX_PENDING_REQUESTS = 1000
# Client-side lost byte ranges remembered for realignment after a gap (each
# is pruned once a response pairs with a request after it).
MAX_LOST_RANGES = 16

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

    __slots__ = ("method", "uri", "host", "ts", "frame", "upgrade", "lost", "shown", "start", "ack")

    def __init__(self, method: str, uri: str, host: str, ts: float, frame: int, upgrade: str = "",
                 lost: bool = False, shown: int = 0, start: int | None = None, ack: int | None = None) -> None:
        self.method = method
        self.uri = uri
        self.host = host
        self.ts = ts            # first byte of the request
        self.frame = frame
        self.upgrade = upgrade  # requested_upgrade()
        self.lost = lost        # a placeholder for a request lost in a gap
        self.shown = shown      # tshark engine: the frame tshark reported it in
        self.start = start      # client stream offset of its first byte (of the lost bytes, for a placeholder)
        self.ack = ack          # server stream offset the client had received when it sent it (None: unknown)

    @property
    def line(self) -> str:
        if not self.method:
            return ""
        return f"{self.method} {self.uri}" if self.uri else self.method


class HttpPairing:
    """The pending requests of one connection and the counts they leave."""

    __slots__ = ("note", "pending", "requests", "responses", "unanswered", "lossy", "pipelining", "waited",
                 "zone", "lost_responses", "lost_ranges", "uncertain", "unsettled")

    def __init__(self, note: Note) -> None:
        self.note = note
        # A list, not a deque: most connections wait for one request at a
        # time, and an empty deque costs ~630 bytes (a list 56), per
        # connection held in the table (issue 17).
        self.pending: list[Request] = []
        self.requests = 0
        self.responses = 0
        self.unanswered = 0
        # Realignment state (answer_after_gap), untouched while nothing is lost.
        self.lossy = False        # bytes of this connection were lost
        self.pipelining = False   # the client was seen sending a request while another waited
        self.waited = False       # ... and sending one after all earlier ones were answered
        self.zone = False         # server bytes lost since the last response pinned the queue
        self.lost_responses = 0   # responses certainly lost in them (each lost a message start)
        # Client (start, end) offsets that may hold requests; a shared empty
        # tuple until a loss (a list per connection costs 56 bytes, issue 17).
        self.lost_ranges: list[tuple[int, int]] | tuple = ()
        self.uncertain = False    # the last answer_after_gap() left several candidates
        self.unsettled = False    # one did: a request it took may still wait, so every later pair is unsure

    def request(self, req: Request) -> None:
        self.requests += 1
        if not self.lossy:
            # Nothing lost yet, so what waits really is unanswered (a lost
            # response or request would fake either later).
            if self.pending:
                self.pipelining = True
            elif self.responses:
                self.waited = True
        if len(self.pending) >= MAX_PENDING_REQUESTS:
            self.note("http_too_many_pending_requests", req.ts, req.frame, "")
            self.pending.pop(0)
            self.unanswered += 1
        self.pending.append(req)

    def request_lost(self, ts: float, frame: int, start: int | None = None, end: int | None = None) -> None:
        """Bytes lost on the client side held the start of a request (client
        stream offsets `start`..`end` of the bytes that may have held it)."""
        if start is not None:
            self.client_loss(start, end if end is not None else start)
        if len(self.pending) < MAX_PENDING_REQUESTS:
            self.pending.append(Request("", "", "", ts, frame, lost=True, start=start))
            self.note("http_request_lost", ts, frame, "")

    def client_loss(self, start: int, end: int) -> None:
        """Client bytes `start`..`end` were lost and may have held requests."""
        self.lossy = True
        ranges = self.lost_ranges = list(self.lost_ranges)
        if len(ranges) >= MAX_LOST_RANGES:
            del ranges[0]
        ranges.append((start, end))

    def server_loss(self, certain: bool = False) -> None:
        """Server bytes were lost that may have held responses (`certain`: they
        held a response start).  Unlike response_lost(), nothing is taken
        now: the next response's ACK decides (answer_after_gap)."""
        self.lossy = True
        self.zone = True
        if certain:
            self.lost_responses += 1

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

    def answer_after_gap(self, code: int, ts: float, frame: int, start: int, ack: int | None) -> Request | None:
        """answer() for a connection that lost bytes: the response starts at
        server offset `start`, its packet acknowledged client offset `ack`
        (None: no ACK).  Sets `uncertain` when the evidence leaves several
        candidates (see the module comment)."""
        pending = self.pending
        lost, self.lost_responses = self.lost_responses, 0
        uncertain = False
        if ack is None:
            # No evidence: the lost responses took the oldest requests and
            # this one answers the next (FIFO, as answer() after
            # response_lost()), unsure while a loss is unresolved.
            uncertain = self.zone or bool(self.lost_ranges)
            self._answered_by_lost(min(lost, len(pending)), ts, frame)
            req = self.answer(code, ts, frame)
            if not uncertain:
                self.zone = False
            return self._settle(req, uncertain, ts, frame, code)
        fits = 0
        for req in pending:
            if (req.start is not None and req.start >= ack) or (req.ack is not None and req.ack > start):
                break
            fits += 1
        if fits > 1 and not self.zone:
            # No response can be missing, so the server had the next
            # request before it answered this one: a pipelining client.
            self.pipelining = True
        # How many of the fitting requests lost responses answered: at
        # most all but the last; at least those the lost responses must
        # have taken, unless requests lost before them could have.
        hi = fits - 1 if self.zone and fits else 0
        last = pending[hi] if fits else None
        older = last is None or last.start is None or any(lo_ < last.start for lo_, _ in self.lost_ranges)
        lo = 0 if older else min(lost, hi)
        one_at_a_time = self.waited and not self.pipelining
        if fits == 0:
            self.responses += 1
            if ack is not None and any(lo_ < ack for lo_, _ in self.lost_ranges):
                # The server had received lost client bytes and nothing we
                # saw waits: it answers a request lost in the gap.
                req = Request("", "", "", ts, frame, lost=True)
                self.note("http_request_lost", ts, frame, "")
            else:
                req = None
                self.note("http_response_without_request", ts, frame, str(code))
            self.zone = False
            return self._settle(req, uncertain, ts, frame, code)
        if lo == hi:
            skip = lo
        elif one_at_a_time:
            skip = hi             # one request at a time: the lost responses answered the older ones
        else:
            skip = lo             # pipelining, or not seen either way: FIFO
            uncertain = True
        first = pending[skip]
        if not uncertain and not one_at_a_time and not first.lost and \
                first.start is not None and any(lo_ < first.start for lo_, _ in self.lost_ranges):
            uncertain = True      # a request lost before it (pipelined) may still be waiting
        self._answered_by_lost(skip, ts, frame)
        req = self.answer(code, ts, frame)
        if not uncertain:
            self.zone = False
            if req is not None and not req.lost and req.start is not None:
                # Requests lost before this one are answered (or lost) by now.
                self.lost_ranges = [r for r in self.lost_ranges if r[0] >= req.start]
        return self._settle(req, uncertain, ts, frame, code)

    def _answered_by_lost(self, n: int, ts: float, frame: int) -> None:
        """The `n` oldest requests were answered by responses lost in a gap."""
        for _ in range(n):
            self.pending.pop(0)
            self.unanswered += 1
            self.note("http_response_lost", ts, frame, "")

    def _settle(self, req: Request | None, uncertain: bool, ts: float, frame: int, code: int) -> Request | None:
        # Once a pair was unsure, the queue may be one off (a request it took
        # may still wait) and no later ACK can show it is not: every later
        # pair of the connection says so too.
        uncertain = uncertain or self.unsettled
        self.unsettled = self.uncertain = uncertain
        if uncertain:
            self.note("http_pairing_uncertain", ts, frame, str(code))
        return req

    def close(self) -> None:
        """The connection is over: whatever still waits was never answered."""
        self.unanswered += len(self.pending)
        self.pending.clear()

    def outcome(self) -> dict:
        return {"requests": self.requests, "responses": self.responses, "unanswered": self.unanswered}


def response_event(code: int, text: str, ts: float, frame: int, sender: int, req: Request | None,
                   flags: tuple[str, ...] = (), last_frame: int | None = None) -> Event:
    """The Event of a response paired with `req` (see answer())."""
    if req is None:
        lead: tuple[str, ...] = ("http_response_without_request",)
        return Event("http", code, text, "", ts, frame, sender, "", None, flags=lead + flags, last_frame=last_frame)
    # Positional: one call, no field dict (this runs once per response).
    if req.lost:
        return Event("http", code, text, req.line, ts, frame, sender, req.host, None,
                     flags=("http_request_lost",) + flags, last_frame=last_frame)
    return Event("http", code, text, req.line, ts, frame, sender, req.host, round((ts - req.ts) * 1000.0, 3),
                 flags=flags, last_frame=last_frame)
