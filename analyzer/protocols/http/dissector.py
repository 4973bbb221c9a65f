# HTTP/1.x dissector: one event per status line, paired with its request.
#
# Strategy (after h11, adapted to a passive tap that must survive losses):
# each direction is a small state machine -- HEAD (collecting a message head),
# a body state chosen by `framing()` (a pure function of method, status and
# headers, like h11's `_body_framing`), RESYNC (lost our place: look for the
# next message start) or TUNNEL (not HTTP any more).  Bodies are skipped by
# counting, never buffered; only heads (bounded) and a bounded body prefix of
# 4xx/5xx responses (for IIS sub-status pages) are kept.
#
# Pairing is pairing.py's (shared with the tshark engine): a FIFO of
# requests, as in Zeek.  Requests are queued as soon as their head is
# complete, so a `100 Continue` or an early final status sent before the
# request body pairs correctly.
#
# Positions, for realignment after a loss (pairing.answer_after_gap): each
# side counts the stream offset of its bytes (gaps included), so every
# message knows where it starts.  The hot paths (here and in the compiled
# loop) only count body bytes down in `remaining`; the offset catches up
# from `mark` (`remaining` when last synchronised) at the next call that is
# not one of them, so they stay as they were.  Once a gap has been seen
# (`wants_acks`), the engine tells, before each delivery, what the packet
# acknowledged of the other direction (acked()); a message keeps the value
# of the packet holding its first byte.
#
# Framing per RFC 9112 §6.3: HEAD, 1xx, 204, 304 -> no body; 2xx to CONNECT ->
# tunnel; chunked -> chunked; Content-Length -> length; otherwise a response
# runs until the connection closes (a request has no body).
#
# After a request that asks to switch protocols (Upgrade, CONNECT) the client
# may already send bytes of the new protocol, so its later bytes are held
# until the response decides: 101 websocket -> WebSocket dissector; 101 to
# anything else or 2xx to CONNECT -> tunnel; any other status -> plain HTTP.
#
# Limits: message heads are bounded (MAX_HEAD_BYTES); beyond it the message is
# abandoned with an anomaly and the direction re-synchronises.
# XX: HTTP/2 prior-knowledge and TLS are not decoded here (tshark engine).
from __future__ import annotations

import re

from analyzer.events import Event
from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED, Dissector, Handover
from analyzer.protocols.http.pairing import HttpPairing, Request, interim, requested_upgrade, response_event

# h11 allows 16 KiB, nginx large_client_header_buffers 4x8 KiB = 32 KiB,
# Node.js 16 KiB (80 KiB before v11.6); a passive tap must be more lenient
# than any server it watches.
MAX_HEAD_BYTES = 64 * 1024
# A request/status line longer than this is not the start of a message we can
# use (Apache LimitRequestLine 8190; we allow long URIs seen in the wild).
MAX_START_LINE = 16 * 1024
# Bytes held from a client that asked to switch protocols (h11 holds without
# limit; a client rarely sends more than one flight before the 101).
MAX_HELD_UPGRADE_BYTES = 256 * 1024
# Body prefix kept from 4xx/5xx responses to find an IIS sub-status page;
# IIS detailed error pages put the code in the <title>, in the first 1 KiB.
MAX_SNIFF_BYTES = 8 * 1024

HEAD, BODY_LENGTH, BODY_CHUNKED, BODY_CLOSE, RESYNC, TUNNEL, HOLD = range(7)
# Sub-states of a chunked body.
CHUNK_SIZE, CHUNK_DATA, CHUNK_DATA_END, CHUNK_TRAILER = range(4)

# The reason phrase runs to the line feed: a stray CR or control byte inside
# it (seen in the wild and in fuzzed captures) does not hide the status code.
STATUS_LINE = re.compile(rb"HTTP/(\d)\.(\d) (\d{3})(?:[ \t]([^\n]*))?\r?\n?$")
STATUS_START = re.compile(rb"HTTP/\d\.\d \d{3}[ \t\r\n]")
# Lenient on purpose: real clients send "GET / HTTP/1." or "OPTIONS" alone and
# servers answer them (with 400), so the answer still pairs with the method and
# URI, as Wireshark does.  Detection and resynchronisation use the strict forms.
REQUEST_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]{1,32})(?: +(\S+))?(?: +([^\r\n]*))?\r?\n?$")
REQUEST_START = re.compile(rb"[A-Z][A-Z_-]{1,31} [^\s]{1,16384} HTTP/\d\.\d\r?\n")
# For resynchronisation we look for a message start at a line start.
_RESYNC_STATUS = re.compile(rb"(?:^|\n)(HTTP/1\.[01] \d{3}[ \r\n])")
_RESYNC_REQUEST = re.compile(rb"(?:^|\n)([A-Z][A-Z_-]{1,31} [^\s]{1,16384} HTTP/1\.[01]\r?\n)")
_INTERRUPTING_HEAD = re.compile(rb"HTTP/1\.[01] \d{3} [^\r\n]*\r?\n[!#$%&'*+.^_`|~0-9A-Za-z-]+:")
# How much of a mid-stream direction we search for a message start.
MIDSTREAM_DETECT_BYTES = 16 * 1024
# A line start that may still grow into a message start (kept across chunks).
_MAYBE_START = re.compile(rb"(?:HTTP(?:/(?:1(?:\.(?:[01]( \d{0,3})?)?)?)?)?|[A-Z][A-Z_-]{0,31}(?: [^\s]*(?: H[^\r\n]*)?)?)$")


def detect(head0: bytes, head1: bytes, port_hint: bool = False, midstream: bool = False) -> str:
    """HTTP if either direction starts with a request line or a status line.

    Mid-stream (no SYN seen), a message start after a line break also counts,
    so a capture that begins inside a body is still recognised.  An empty
    direction may still speak (a server answers TLS garbage with a plain 400).
    """
    undecided = False
    for head in (head0, head1):
        if not head:
            undecided = True
            continue
        h = head.lstrip(b"\r\n")
        if STATUS_START.match(h) or REQUEST_START.match(h):
            return DETECTED
        if midstream and (_RESYNC_STATUS.search(head) or _RESYNC_REQUEST.search(head)):
            return DETECTED
        if b"\n" not in h and len(h) < MAX_START_LINE and _MAYBE_START.match(h):
            undecided = True   # an incomplete first line that may still become one
        elif midstream and len(head) < MIDSTREAM_DETECT_BYTES:
            undecided = True   # a message may start on a later line
    return NEED_MORE if undecided else REJECTED


_NO_EVENTS: list = []  # shared and never appended to: callers only iterate it


# The only fields the dissector reads, found by one case-insensitive scan of
# the head (several times faster than splitting and lower-casing every line).
_WANTED = re.compile(
    rb"\n(content-length|transfer-encoding|host|upgrade|connection|content-encoding|sec-websocket-extensions)"
    rb"[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE)


def _headers(head: bytes, start: int = 0) -> dict[str, str]:
    """Wanted header fields of a head, from `start` (the start line's LF) on.

    Lower-cased name -> value; repeated fields joined with ',' (RFC 9110 §5.3).
    """
    out: dict[str, str] = {}
    # findall: (name, value) tuples, no match object per field.
    for name, raw in _WANTED.findall(head, start):
        name = name.decode("latin-1").lower()
        value = _text(raw.strip())  # UTF-8 (IDN hosts), \xNN for bytes that are not
        out[name] = out[name] + "," + value if name in out else value
    return out


def framing(is_response: bool, method: str, code: int, headers: dict[str, str]) -> tuple[int, int]:
    """Body framing per RFC 9112 §6.3 as (state, length).

    The compiled twin uses analyzer/_fast/http_head.pyx's framing, equal to
    this on every method, code and header values (str semantics included).
    """
    if is_response:
        if 100 <= code < 200 or code in (204, 304) or method == "HEAD":
            return HEAD, 0
        if method == "CONNECT" and 200 <= code < 300:
            return TUNNEL, 0
    te = headers.get("transfer-encoding")
    if te is not None and te.replace(" ", "").lower().split(",")[-1] == "chunked":
        return BODY_CHUNKED, 0
    cl = headers.get("content-length")
    if cl is not None:
        first = cl.partition(",")[0].strip()
        # ASCII digits only: str.isdigit() is also true for "³" (latin-1 0xB3),
        # which int() refuses (found by the fuzz harness).
        if first.isascii() and first.isdigit():
            n = int(first)
            return (BODY_LENGTH, n) if n else (HEAD, 0)
        return (BODY_CLOSE, 0) if is_response else (HEAD, 0)
    return (BODY_CLOSE, 0) if is_response else (HEAD, 0)


def _text(raw: bytes) -> str:
    """Wire text as UTF-8; a byte that is not part of valid UTF-8 becomes \\xNN (README "Outputs")."""
    return raw.decode("utf-8", "backslashreplace")


def _start_line(line: bytes) -> tuple | None:
    """A message's first line: (code, reason) of a status line, (method, URI)
    of a request line, None when it is neither.

    A line starting "HTTP/" can only be a status line.  The reason is text
    up to the line feed without its trailing CRs; a request without a URI
    (or with one that is not a \\S+ token) gives "".  The compiled twin uses
    analyzer/_fast/http_head.pyx's start_line, equal on every input.
    """
    if line[:5] == b"HTTP/":
        m = STATUS_LINE.match(line)
        return None if m is None else (int(m.group(3)), _text(m.group(4) or b"").rstrip("\r"))
    m = REQUEST_LINE.match(line)
    return None if m is None else (m.group(1).decode("latin-1"), _text(m.group(2) or b""))


_FIELD_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}")


def _shown(line: bytes, client: bool) -> str:
    """An unparsable line as an anomaly detail, without secrets.

    A client line may be the rest of an Authorization, Cookie or
    Proxy-Authorization field or a form body whose start was lost: none of
    its bytes are kept, only its length.  A server line keeps a field's
    name only (Set-Cookie values stay out), else its first 80 bytes.
    """
    line = line.rstrip(b"\r\n")
    if client:
        return f"{len(line)}-byte client line (not recorded)"
    name, colon, _ = line.partition(b":")
    if colon and _FIELD_NAME.fullmatch(name):
        return f"{_text(name)}: …"
    return _text(line[:80])


class _Side:
    """Parser state of one direction."""

    __slots__ = ("state", "buf", "remaining", "chunk", "msg_ts", "msg_frame", "held", "held_bytes",
                 "sniff", "after_gap", "seen", "deferred", "end", "mark", "msg_off", "msg_ack")

    def __init__(self, state: int) -> None:
        self.state = state
        self.buf = bytearray()
        self.remaining = 0
        self.chunk = CHUNK_SIZE
        self.msg_ts = 0.0
        self.msg_frame = 0
        self.held: list = []
        self.held_bytes = 0
        self.sniff = None    # [Event, bytearray, content-encoding] of a deferred 4xx/5xx
        self.deferred = None  # the Event of another response, until its body ends (last_frame)
        self.after_gap = False
        self.seen = False    # any byte of this direction delivered yet
        self.end = 0         # stream offset after the bytes handled so far (see `mark`)
        self.mark = 0        # `remaining` when `end` was last brought up to date
        self.msg_off = 0     # stream offset of the current message's first byte
        self.msg_ack = None  # what its packet acknowledged of the other stream (offset), None: unknown


class HttpDissector(Dissector):
    __slots__ = ("sides", "pairing", "upgraded", "tunnel", "midstream", "_events", "_frame", "_ack", "_ack_dir")
    protocol = "http"

    def __init__(self, server_direction: int | None = None, midstream: bool = False) -> None:
        super().__init__()
        self.server_direction = server_direction
        start = RESYNC if midstream else HEAD
        self.sides = (_Side(start), _Side(start))
        self.pairing = HttpPairing(self.anomaly)
        self.upgraded: Dissector | None = None
        self.tunnel = ""
        self.midstream = midstream
        self._events: list[Event] = []
        self._frame = 0       # packet of the bytes being handled: a message ending now ends there
        self._ack = None      # acked(): other-stream offset the packet being fed acknowledged
        self._ack_dir = -1    # ... and the direction of that packet

    # -- contract --------------------------------------------------------------
    def feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        if self.upgraded is not None:
            return self._forward(self.upgraded.feed(data, direction, ts, frame))
        side = self.sides[direction]
        if side.state == BODY_LENGTH and len(data) < side.remaining and side.sniff is None \
                and not data.startswith(b"HTTP/"):
            # Hot path: a segment in the middle of a body is only counted.
            side.remaining -= len(data)
            side.seen = True
            return _NO_EVENTS
        self._events = []
        # Body bytes the hot paths counted since, then these.
        side.end += side.mark - side.remaining + len(data)
        self._consume(direction, data, ts, frame)
        side.mark = side.remaining
        self._count_buffered()
        return self._events

    def acked(self, direction: int, ahead: int | None) -> None:
        """The packet whose bytes come next in `direction` acknowledged the
        other direction up to `ahead` bytes past what was delivered of it
        (negative: not all of it yet; None: no ACK).  Called by the engine
        before feed() while `wants_acks`."""
        self._ack_dir = direction
        if ahead is None:
            self._ack = None
        else:
            other = self.sides[1 - direction]
            self._ack = other.end + other.mark - other.remaining + ahead

    def _count_buffered(self) -> None:
        """`buffered` (base.py): partial heads, held upgrade bytes, 4xx/5xx body prefixes."""
        n = 0
        for side in self.sides:
            n += len(side.buf) + side.held_bytes
            if side.sniff is not None:
                n += len(side.sniff[1])
        self.buffered = n

    def gap(self, nbytes: int, direction: int, ts: float, frame: int) -> list[Event]:
        if self.upgraded is not None:
            return self._forward(self.upgraded.gap(nbytes, direction, ts, frame))
        self._events = []
        side = self.sides[direction]
        side.end += side.mark - side.remaining + nbytes
        self.wants_acks = True
        self._gap(direction, nbytes, ts, frame)
        side.mark = side.remaining
        self._count_buffered()
        return self._events

    def _gap(self, direction: int, nbytes: int, ts: float, frame: int) -> None:
        self._frame = frame
        side = self.sides[direction]
        st = side.state
        lost_start = side.end - nbytes   # side.end already counts the gap
        if st == BODY_LENGTH:
            first = lost_start + side.remaining   # where a next message could start
        elif st == HEAD and side.buf:
            first = side.msg_off                  # the message the gap cuts
        else:
            first = lost_start
        certain = (st == BODY_LENGTH and nbytes > side.remaining) or (st == HEAD and not side.buf) or \
            (st == RESYNC and not side.seen)
        if self.server_direction is not None and first < side.end and st not in (BODY_CLOSE, TUNNEL, HOLD) and \
                not (st == BODY_CHUNKED and side.chunk == CHUNK_DATA and nbytes < side.remaining):
            # Lost bytes that may have held message starts (certain: past a
            # message boundary).  A lost request is queued as a placeholder;
            # a lost response takes no request now: the next response's ACK
            # says which (pairing.answer_after_gap), so FIFO does not shift.
            if direction == self.server_direction:
                self.pairing.server_loss(certain)
            elif certain:
                self.pairing.request_lost(ts, frame, first, side.end)
            else:
                self.pairing.client_loss(first, side.end)
        if st == BODY_LENGTH and nbytes < side.remaining:
            side.remaining -= nbytes
        elif st == BODY_LENGTH and nbytes == side.remaining:
            side.remaining = 0
            self._message_done(direction)
        elif st == BODY_CHUNKED and side.chunk == CHUNK_DATA and nbytes < side.remaining:
            side.remaining -= nbytes
        elif st in (BODY_CLOSE, TUNNEL):
            pass
        elif st == HOLD:
            side.held.append((None, nbytes, ts, frame, side.end))
        else:
            if st == HEAD and side.buf:
                self._salvage_head(direction, "http_gap_in_head")
            self._flush_sniff(direction)
            side.buf.clear()
            side.state = RESYNC
            side.after_gap = True

    def end(self, direction: int, ts: float, frame: int, rst: bool) -> list[Event]:
        if self.upgraded is not None:
            return self._forward(self.upgraded.end(direction, ts, frame, rst))
        self._events = []
        self._frame = frame
        side = self.sides[direction]
        if side.state == BODY_CLOSE:
            self._message_done(direction)
        self._count_buffered()
        return self._events

    def close(self, ts: float) -> list[Event]:
        if self.upgraded is not None:
            return self._forward(self.upgraded.close(ts))
        self._events = []
        for d in (0, 1):
            side = self.sides[d]
            if side.state == HEAD and side.buf:
                self._salvage_head(d, "http_incomplete_head_at_end")
            self._flush_sniff(d)
        self.pairing.close()
        self._count_buffered()
        return self._events

    def outcome(self) -> dict:
        out = self.pairing.outcome()
        if self.tunnel:
            out["tunnel"] = self.tunnel
        if self.upgraded is not None and self.handover is None:
            out["websocket"] = self.upgraded.outcome()
        return out

    # -- helpers ---------------------------------------------------------------
    def _forward(self, events: list[Event]) -> list[Event]:
        self.anomalies.extend(self.upgraded.anomalies)
        self.upgraded.anomalies.clear()
        return events

    def _is_server(self, direction: int, data: bytes) -> bool:
        if self.server_direction is not None:
            return direction == self.server_direction
        return data.lstrip(b"\r\n")[:5] == b"HTTP/"

    def _consume(self, d: int, data: bytes, ts: float, frame: int) -> None:
        self._frame = frame
        side = self.sides[d]
        side.seen = True
        pos = 0
        n = len(data)
        if side.state in (BODY_LENGTH, BODY_CHUNKED) and data[:5] == b"HTTP/" and \
                d == self.server_direction and _INTERRUPTING_HEAD.match(data):
            # A segment that starts with a full response head while a body was
            # expected: the body was cut short (a proxy or a capture tool
            # dropped it).  Trusting the head is what a reader of the capture
            # would do; the anomaly keeps it visible.
            self.anomaly("http_body_interrupted", ts, frame)
            self._message_lost_body(d)
        while pos < n:
            st = side.state
            if st == BODY_LENGTH:
                pos = self._take(side, data, pos, n)
                if side.remaining == 0:
                    self._message_done(d)
            elif st == HEAD:
                if not side.buf:
                    # Empty lines before a message are allowed (RFC 9112 §2.2).
                    while pos < n and data[pos] in (13, 10):
                        pos += 1
                    if pos == n:
                        return
                    side.msg_ts, side.msg_frame = ts, frame
                    side.msg_off = side.end - n + pos
                    side.msg_ack = self._ack if self._ack_dir == d else None
                    end = data.find(b"\r\n\r\n", pos)
                    if end >= 0:
                        # Fast path: the whole head is in this chunk; copy only it.
                        end += 4
                        lf = data.find(b"\n\n", pos, end)
                        if lf >= 0:
                            end = lf + 2
                        bad = self._head(d, data[pos:end])
                        if self.upgraded is not None:
                            self._start_upgraded(d, data[end:], ts, frame)
                            return
                        if bad is not None:  # a bad start line: resynchronise from its end
                            data, pos, n = bad + data[end:], 0, len(bad) + n - end
                        else:
                            pos = end
                        continue
                side.buf += data[pos:] if pos else data
                pos = n
                rest = self._parse_head(d)
                if rest is not None:
                    if self.upgraded is not None:
                        self._start_upgraded(d, rest, ts, frame)
                        return
                    data, pos, n = rest, 0, len(rest)
            elif st == BODY_CHUNKED:
                pos = self._chunked(d, data, pos)
            elif st == BODY_CLOSE:
                if side.sniff is not None:
                    self._sniff(side, data[pos:])
                return
            elif st == RESYNC:
                carry = len(side.buf)
                window = bytes(side.buf) + data[pos:] if carry else (data[pos:] if pos else data)
                start = self._find_start(d, window)
                side.buf.clear()
                if start < 0:
                    self._keep_tail(d, side, window, carry, ts, frame)
                    return
                side.state = HEAD
                if start < carry:
                    # The message began in an earlier chunk: keep its time.
                    side.msg_off = side.end - len(window) + start
                    side.buf += window[start:]
                    rest = self._parse_head(d)
                    if rest is None:
                        return
                    if self.upgraded is not None:
                        self._start_upgraded(d, rest, ts, frame)
                        return
                    data, pos, n = rest, 0, len(rest)
                else:
                    pos += start - carry
                    side.msg_ts, side.msg_frame = ts, frame
                    side.msg_off = side.end - n + pos
                    side.msg_ack = self._ack if self._ack_dir == d else None
            elif st == HOLD:
                if side.held_bytes + n - pos > MAX_HELD_UPGRADE_BYTES:
                    self.anomaly("http_upgrade_hold_limit", ts, frame)
                    side.held.clear()
                    side.held_bytes = 0
                    side.state = RESYNC
                    continue
                chunk = data[pos:] if pos else data
                side.held.append((chunk, 0, ts, frame, side.end))
                side.held_bytes += len(chunk)
                return
            else:  # TUNNEL
                return

    def _keep_tail(self, d: int, side: _Side, window: bytes, carry: int, ts: float, frame: int) -> None:
        """Keep a trailing partial line that may be the start of a message."""
        nl = window.rfind(b"\n")
        tail = window[nl + 1:]
        if tail and len(tail) <= MAX_START_LINE and _MAYBE_START.match(tail):
            if nl >= 0 or not carry:
                side.msg_ts, side.msg_frame = ts, frame
                side.msg_off = side.end - len(tail)
                side.msg_ack = self._ack if self._ack_dir == d else None
            side.buf += tail

    def _find_start(self, d: int, window: bytes) -> int:
        if self.server_direction is None:
            patterns = (_RESYNC_STATUS, _RESYNC_REQUEST)
        elif d == self.server_direction:
            patterns = (_RESYNC_STATUS,)
        else:
            patterns = (_RESYNC_REQUEST,)
        best = -1
        for pat in patterns:
            m = pat.search(window)
            if m and (best < 0 or m.start(1) < best):
                best = m.start(1)
        return best

    def _parse_head(self, d: int) -> bytes | None:
        """Parse a complete head from the side buffer; return bytes after it.

        Returns None while the head is incomplete; after a bad start line the
        side is in RESYNC and the bytes from that line's end are returned.
        """
        side = self.sides[d]
        buf = side.buf
        end = buf.find(b"\r\n\r\n")
        end = end + 4 if end >= 0 else -1
        lf = buf.find(b"\n\n")
        if lf >= 0 and (end < 0 or lf + 2 < end):
            end = lf + 2
        if end < 0:
            first_nl = buf.find(b"\n")
            # Reject what is not a message start as early as the first line allows.
            if first_nl >= 0 or len(buf) > MAX_START_LINE:
                line = bytes(buf[: first_nl + 1]) if first_nl >= 0 else bytes(buf[:MAX_START_LINE])
                if first_nl < 0 or _start_line(line) is None:
                    return self._bad_start(d, line, bytes(buf[first_nl:]) if first_nl >= 0 else None)
            if len(buf) > MAX_HEAD_BYTES:
                self._salvage_head(d, "http_head_too_long")
                buf.clear()
                side.state = RESYNC
            return None
        head = bytes(buf[:end])
        rest = bytes(buf[end:]) if end < len(buf) else b""
        buf.clear()
        bad = self._head(d, head)
        return bad + rest if bad is not None else rest

    def _head(self, d: int, head: bytes) -> bytes | None:
        """Handle one complete head; on a bad start line return what follows it."""
        nl = head.find(b"\n")
        line = head[: nl + 1]
        start = _start_line(line)
        if start is None:
            return self._bad_start(d, line, head[nl:])
        if line[:5] == b"HTTP/":
            self._response(d, start[0], start[1], _headers(head, nl))
        else:
            self._request(d, start[0], start[1], _headers(head, nl))
        return None

    def _bad_start(self, d: int, line: bytes, rest: bytes | None) -> bytes | None:
        side = self.sides[d]
        server = self._is_server(d, line[:8])
        is_resp = line[:5] == b"HTTP/"
        name = "http_bad_status_line" if server else "http_bad_request_line"
        if server and not is_resp:
            name = "http_response_without_status_line"
        self.anomaly(name, side.msg_ts, side.msg_frame, _shown(line, client=not server))
        side.buf.clear()
        side.state = RESYNC
        return rest

    def _request(self, d: int, method: str, uri: str, headers: dict[str, str]) -> None:
        side = self.sides[d]
        if self.server_direction is None:
            self.server_direction = 1 - d
        upgrade = requested_upgrade(method, headers.get("upgrade"), headers.get("connection"))
        self.pairing.request(Request(method, uri, headers.get("host", ""), side.msg_ts, side.msg_frame, upgrade,
                                     False, 0, side.msg_off, side.msg_ack))
        state, length = framing(False, method, 0, headers)
        side.state, side.remaining, side.chunk = state, length, CHUNK_SIZE
        if upgrade and state == HEAD:
            # Later client bytes may already speak the new protocol.
            side.state = HOLD

    def _response(self, d: int, code: int, reason: str, headers: dict[str, str],
                  extra_flags: tuple[str, ...] = ()) -> None:
        side = self.sides[d]
        if self.server_direction is None:
            self.server_direction = d
        pairing = self.pairing
        if self.wants_acks:
            req = pairing.answer_after_gap(code, side.msg_ts, side.msg_frame, side.msg_off, side.msg_ack)
        else:
            req = pairing.answer(code, side.msg_ts, side.msg_frame)
        flags = extra_flags
        if self.wants_acks and pairing.uncertain:
            flags = ("http_pairing_uncertain",) + flags
        if side.after_gap and req is not None and not req.lost:
            flags = ("http_after_gap",) + flags
        side.after_gap = False
        method = req.method if req else ""
        state, length = framing(True, method, code, headers)
        # A head cut short (extra_flags) never ended; a bodiless message ends with its head.
        # A response with a body is completed (last_frame, substatus) when the body
        # ends, by _flush_sniff, before it leaves the dissector.
        ev = response_event(code, reason, side.msg_ts, side.msg_frame, d, req, flags,
                            None if extra_flags else self._frame)
        if code == 101 or (state == TUNNEL):
            self._events.append(ev)
            self._switch(d, req, code, headers)
            return
        side.state, side.remaining, side.chunk = state, length, CHUNK_SIZE
        if state == HEAD:
            self._events.append(ev)
        elif 400 <= code < 600:
            side.sniff = [ev, bytearray(), headers.get("content-encoding", "")]
        else:
            # Out when the body ends, to say where (Wireshark reports it there).
            side.deferred = ev
        if req is not None and req.upgrade and not interim(code):
            # The server declined the switch: the client's held bytes are HTTP.
            self._release_hold(1 - d)

    def _switch(self, d: int, req: Request | None, code: int, headers: dict[str, str]) -> None:
        proto = headers.get("upgrade", "").strip().lower()
        if code == 101 and proto == "websocket":
            from analyzer.protocols.websocket.dissector import WebSocketDissector  # imported on first use

            ws = WebSocketDissector(
                server_direction=d, request=req.line if req else "",
                extensions=headers.get("sec-websocket-extensions", ""), opened_ts=self.sides[d].msg_ts,
            )
            self.upgraded = ws
        elif req is not None and req.method == "CONNECT" and code != 101:
            # A proxy tunnel: what goes through it is detected afresh (plain
            # HTTP to the target, TLS, anything) by the flow table.
            self.tunnel = "connect"
            self.upgraded = self.handover = Handover({"protocol": "http-connect", "target": req.uri})
            self.anomaly("http_tunnel", self.sides[d].msg_ts, self.sides[d].msg_frame, f"connect {req.uri}")
        else:
            self.tunnel = proto or ("connect" if req and req.method == "CONNECT" else "unknown")
            self.anomaly("http_tunnel", self.sides[d].msg_ts, self.sides[d].msg_frame, self.tunnel)
            for side in self.sides:
                side.state = TUNNEL
                side.held = []
                side.buf.clear()

    def _message_lost_body(self, d: int) -> None:
        side = self.sides[d]
        self._flush_sniff(d)
        side.buf.clear()
        side.state, side.remaining, side.chunk = HEAD, 0, CHUNK_SIZE

    def _start_upgraded(self, d: int, rest: bytes, ts: float, frame: int) -> None:
        """Hand the bytes that followed the 101 (and the client's held ones) over."""
        ws = self.upgraded
        client = self.sides[1 - d]
        held, client.held, client.held_bytes = client.held, [], 0
        for data, gap, hts, hframe, _ in held:
            if data is None:
                self._events.extend(ws.gap(gap, 1 - d, hts, hframe))
            else:
                self._events.extend(ws.feed(data, 1 - d, hts, hframe))
        if rest:
            self._events.extend(ws.feed(rest, d, ts, frame))
        self.anomalies.extend(ws.anomalies)
        ws.anomalies.clear()

    def _release_hold(self, d: int) -> None:
        side = self.sides[d]
        if side.state != HOLD:
            return
        held, side.held, side.held_bytes = side.held, [], 0
        side.state = HEAD
        for data, gap, ts, frame, end in held:
            side.end = end    # the offsets they had when they came
            if data is None:
                self._gap(d, gap, ts, frame)
            else:
                self._consume(d, data, ts, frame)
        side.mark = side.remaining

    def _take(self, side: _Side, data: bytes, pos: int, n: int) -> int:
        """Skip up to `side.remaining` body bytes (kept only for a 4xx/5xx sniff)."""
        take = side.remaining if side.remaining < n - pos else n - pos
        if side.sniff is not None:
            self._sniff(side, data[pos:pos + take])
        side.remaining -= take
        return pos + take

    def _chunked(self, d: int, data: bytes, pos: int) -> int:
        side = self.sides[d]
        n = len(data)
        while pos < n:
            if side.chunk == CHUNK_DATA:
                pos = self._take(side, data, pos, n)
                if side.remaining == 0:
                    side.chunk = CHUNK_DATA_END
                continue
            nl = data.find(b"\n", pos)
            if nl < 0:
                side.buf += data[pos:]
                if len(side.buf) > MAX_START_LINE:
                    self.anomaly("http_bad_chunk", side.msg_ts, side.msg_frame)
                    self._abandon(d)
                return n
            line = bytes(side.buf) + data[pos:nl] if side.buf else data[pos:nl]
            side.buf.clear()
            pos = nl + 1
            line = line.strip()
            if side.chunk == CHUNK_DATA_END:
                side.chunk = CHUNK_SIZE
                if line:
                    self.anomaly("http_bad_chunk", side.msg_ts, side.msg_frame, "missing CRLF after chunk")
                    self._abandon(d)
                    return pos
            elif side.chunk == CHUNK_SIZE:
                size = line.split(b";", 1)[0].strip()
                try:
                    length = int(size, 16)
                except ValueError:
                    length = -1
                if length < 0 or not size:
                    self.anomaly("http_bad_chunk", side.msg_ts, side.msg_frame,
                                 _shown(line, client=d != self.server_direction))
                    self._abandon(d)
                    return pos
                if length == 0:
                    side.chunk = CHUNK_TRAILER
                else:
                    side.remaining = length
                    side.chunk = CHUNK_DATA
            else:  # trailer fields until an empty line
                if not line:
                    self._message_done(d)
                    return pos
        return pos

    def _abandon(self, d: int) -> None:
        side = self.sides[d]
        self._flush_sniff(d)
        side.buf.clear()
        side.state = RESYNC

    def _message_done(self, d: int) -> None:
        side = self.sides[d]
        self._flush_sniff(d, ended=True)
        side.state = HEAD
        side.remaining = 0
        side.chunk = CHUNK_SIZE

    def _sniff(self, side: _Side, chunk: bytes) -> None:
        buf = side.sniff[1]
        room = MAX_SNIFF_BYTES - len(buf)
        if room > 0:
            buf += chunk[:room]

    def _flush_sniff(self, d: int, ended: bool = False) -> None:
        """Emit the response waiting for its body's end; `ended`: it ended
        in the packet being handled (else it never did: gap, cut, close)."""
        side = self.sides[d]
        last_frame = self._frame if ended else None
        if side.deferred is not None:
            ev, side.deferred = side.deferred, None
            ev.last_frame = last_frame
            self._events.append(ev)
            return
        if side.sniff is None:
            return
        ev, body, encoding = side.sniff
        side.sniff = None
        try:
            from analyzer.protocols.http.iis import find_substatus
        except ImportError:  # catalogue module not installed
            find_substatus = None
        if find_substatus is not None and body:
            sub = find_substatus(ev.code, bytes(body), encoding)
            if sub:
                ev.substatus, ev.substatus_source = sub, "body"
        ev.last_frame = last_frame
        self._events.append(ev)

    def _salvage_head(self, d: int, reason: str) -> None:
        """A response head cut short still proves its status line."""
        side = self.sides[d]
        buf = bytes(side.buf)
        nl = buf.find(b"\n")
        start = _start_line(buf[: nl + 1]) if buf[:5] == b"HTTP/" and nl >= 0 else None
        if start is not None:
            self.anomaly(reason, side.msg_ts, side.msg_frame)
            self._response(d, start[0], start[1], _headers(buf, nl), (reason,))
            self._flush_sniff(d)
        side.buf.clear()
        if self.upgraded is None and side.state != TUNNEL:
            side.state = RESYNC
