# WebSocket (RFC 6455) seen from a passive tap: every close frame in both
# directions, and the closes that never came.
#
# Strategy.  Layers after wsproto: a pure header parser (`maybe_parse_header`),
# one `FrameDecoder` per direction (bytes -> `DecodedFrame`s), and the
# connection (`WebSocketDissector`) that applies the RFC rules and turns close
# frames into events.  The HTTP dissector hands the connection over after a
# `101` with `Upgrade: websocket`; `detect()` can also recognise a connection
# caught mid-stream from the shape of its frames.
#
# Payload bytes are skipped by counting, never buffered: a length on the wire
# is a claim, and a 2**63-byte claim costs one integer.  The only payload kept
# is a bounded prefix of close frames (code + reason).  Data is never
# inflated: closing needs no message content.
#
# A connection without any close frame that ends by FIN or RST gets one
# inferred 1006 at the first FIN/RST, carrying its evidence in the flags.  A
# gap that broke the framing before the end may have swallowed a close frame:
# the 1006 is still emitted (the connection did end, and a report that hides
# it is worse) but flagged `websocket_gap_before_end`, and the outcome says
# "unknown" rather than "aborted".  The inference waits for close(): the peer
# may still send a close frame after the first FIN (half-close).
#
# Limits.  After a gap that broke the framing, decoding resumes only at a
# segment that holds whole, strictly well-formed frames and nothing else
# (false frames are worse than missed ones); frames inside the lost span are
# unknown.  Payloads are not inflated, so a message's text is never checked
# (1007 is reported when a peer says so, not diagnosed).  A 1-byte close
# payload carries no status code: it is reported as 1005 (as tshark shows it:
# no status code) flagged as a violation.
from __future__ import annotations

import codecs
import struct
from dataclasses import dataclass
from enum import IntEnum

from analyzer.events import Event, side_label
from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED, Dissector
from analyzer.protocols.websocket.pairing import CloseHandshake, close_flags


class Opcode(IntEnum):
    """RFC 6455, Section 5.2 (values registered in Section 11.8)."""

    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseReason(IntEnum):
    """RFC 6455, Section 7.4.1; 1012-1014 from the IANA "WebSocket Close Code
    Number Registry" (RFC 6455 Section 11.7)."""

    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    RESERVED = 1004             # "the specific meaning might be defined in the future"
    NO_STATUS_RCVD = 1005       # local only: close frame without a status code
    ABNORMAL_CLOSURE = 1006     # local only: connection lost without a close frame
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXT = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015        # local only: TLS handshake failure


# RFC 6455 Section 7.4.1: these "MUST NOT be set as a status code in a Close
# control frame by an endpoint".
LOCAL_ONLY_CODES = frozenset({1004, 1005, 1006, 1015})
# Section 7.4.2: 0-999 unused, 1000-2999 for the protocol (only registered
# values are meaningful), 3000-3999 registered by libraries/frameworks,
# 4000-4999 private.  Autobahn's test suite (case 7.9.x) fails a peer that
# sends an unassigned 1000-2999 code; we flag it the same way.
PRIVATE_CODES = range(3000, 5000)
WIRE_CODES = frozenset(int(c) for c in CloseReason) - LOCAL_ONLY_CODES

CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
DATA_OPCODES = frozenset({Opcode.TEXT, Opcode.BINARY})
KNOWN_OPCODES = frozenset(int(o) for o in Opcode)

RSV1, RSV2, RSV3 = 4, 2, 1  # bits of FrameHeader.rsv, as in byte 0 >> 4

MAX_CONTROL_PAYLOAD = 125  # RFC 6455 Section 5.5: control frames carry <= 125 bytes
# Close payload kept per frame.  The RFC caps it at 125; zeek's
# oversized-close-frame test sends 258, and we still want that reason whole.
# Beyond this the reason is cut (flagged), the rest skipped by counting.
MAX_CLOSE_KEPT = 4 * 1024
MAX_HEADER = 14  # RFC 6455 Section 5.2: 2 + 8 (64-bit length) + 4 (masking key)
# Frames a mid-stream connection must show, complete and well-formed, in
# each direction before detect() says WebSocket.  A random header passes the
# rules about 1 time in 20, the mask bit must agree within a direction and
# differ between them, and the frames must tile the bytes exactly: random
# data gets through with odds around 1e-8.
DETECT_MIN_FRAMES = 3
# Largest frame detect() believes in: node `ws` maxPayload default (100 MiB);
# websockets' max_size default is 1 MiB, so this is generous.
DETECT_MAX_FRAME = 100 * 1024 * 1024

_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


# ---------------------------------------------------------------- headers --

@dataclass(frozen=True, slots=True)
class FrameHeader:
    """RFC 6455 Section 5.2 base framing, as read off the wire."""

    fin: bool
    rsv: int            # RSV1..RSV3 as a 3-bit number (RSV1 = 4)
    opcode: int         # not necessarily a known Opcode
    masked: bool
    length: int         # claimed payload length (untrusted)
    mask: bytes         # 4-byte masking key, b"" when not masked
    size: int           # header bytes on the wire (2..14)
    minimal: bool       # Section 5.2: "the minimal number of bytes MUST be used"


def maybe_parse_header(buf: bytes | bytearray | memoryview) -> FrameHeader | None:
    """Parse a frame header at the start of `buf`; None means "need more".

    Any byte string is a syntactically valid header prefix, so there is no
    error case here: the rules are applied by the caller.
    """
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    masked = bool(b1 & 0x80)
    size7 = b1 & 0x7F
    base = 4 if size7 == 126 else 10 if size7 == 127 else 2
    size = base + (4 if masked else 0)
    if len(buf) < size:
        return None
    if size7 == 126:
        length = _U16.unpack_from(buf, 2)[0]
        minimal = length >= 126
    elif size7 == 127:
        length = _U64.unpack_from(buf, 2)[0]
        minimal = length > 0xFFFF
    else:
        length, minimal = size7, True
    mask = bytes(buf[base:base + 4]) if masked else b""
    return FrameHeader(bool(b0 & 0x80), (b0 >> 4) & 7, b0 & 0x0F, masked, length, mask, size, minimal)


def unmask(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """XOR `data` (payload bytes from `offset` on) with the masking key."""
    if not mask or not data:
        return bytes(data)
    rolled = mask[offset % 4:] + mask[:offset % 4]
    key = (rolled * (len(data) // 4 + 1))[:len(data)]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(len(data), "big")


def rsv1_policy(extensions: str) -> str:
    """Which frames may set RSV1, from the server's Sec-WebSocket-Extensions.

    "message": permessage-deflate (RFC 7692 Section 6: first frame of a data
    message only); "frame": the older per-frame deflate drafts (any data
    frame); "any": an extension we do not know (it may define any RSV bit);
    "none": no extension, every RSV bit is a violation (Section 5.2).
    """
    names = {part.split(";", 1)[0].strip().lower() for part in extensions.split(",")}
    names.discard("")
    if not names:
        return "none"
    if names <= {"permessage-deflate", "x-webkit-deflate-frame", "deflate-frame"}:
        return "message" if names == {"permessage-deflate"} else "frame"
    return "any"


def decode_reason(raw: bytes, truncated: bool) -> tuple[str, bool]:
    """Close reason as text; invalid UTF-8 kept as escapes (returns ok=False).

    A reason cut at MAX_CLOSE_KEPT may end inside a character: that tail is
    dropped, not counted as invalid.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        return decoder.decode(raw, final=not truncated), True
    except UnicodeDecodeError:
        return raw.decode("utf-8", errors="backslashreplace"), False


def close_code_ok(code: int) -> bool:
    """May this status code be sent in a close frame (Section 7.4)?"""
    return code in WIRE_CODES or code in PRIVATE_CODES


# ---------------------------------------------------------- strict scanning --

def scan_strict(data: bytes, allow_continuation_first: bool = False,
                max_frame: int = DETECT_MAX_FRAME, rsv1_ok: bool = True) -> tuple[int, bool | None, str]:
    """Walk frames from offset 0 as a strict receiver would.

    Returns (complete frames, mask bit shared by all frames or None if no
    header was read, status): "ok" when the last frame ends exactly at the
    end of `data`, "partial" when it ends inside a well-formed frame, "bad"
    when a frame breaks a rule of RFC 6455 Section 5 (or the mask bit
    changes between frames).  Used where a false positive is worse than a
    miss: mid-stream detection and re-synchronisation after a gap.
    """
    pos, frames, mask_bit = 0, 0, None
    in_message = None if allow_continuation_first else False
    n = len(data)
    while pos < n:
        header = maybe_parse_header(memoryview(data)[pos:pos + MAX_HEADER])
        if header is None:
            return frames, mask_bit, "partial"
        op = header.opcode
        if op not in KNOWN_OPCODES or not header.minimal or header.length > max_frame:
            return frames, mask_bit, "bad"
        if mask_bit is not None and header.masked != mask_bit:
            return frames, mask_bit, "bad"
        mask_bit = header.masked
        if header.rsv & (RSV2 | RSV3) or (header.rsv & RSV1 and (op not in DATA_OPCODES or not rsv1_ok)):
            return frames, mask_bit, "bad"
        if op in CONTROL_OPCODES:
            if not header.fin or header.length > MAX_CONTROL_PAYLOAD:
                return frames, mask_bit, "bad"
        elif op == Opcode.CONTINUATION:
            if in_message is False:
                return frames, mask_bit, "bad"
            in_message = not header.fin
        else:
            if in_message:
                return frames, mask_bit, "bad"
            in_message = not header.fin
        end = pos + header.size + header.length
        if end > n:
            return frames, mask_bit, "partial"
        if op == Opcode.TEXT and header.fin and not header.rsv:
            payload = unmask(data[pos + header.size:end], header.mask)
            try:
                payload.decode("utf-8")
            except UnicodeDecodeError:
                return frames, mask_bit, "bad"
        if op == Opcode.CLOSE:
            payload = unmask(data[pos + header.size:end], header.mask)
            if header.length == 1:
                return frames, mask_bit, "bad"
            if header.length >= 2:
                if not close_code_ok(_U16.unpack_from(payload)[0]):
                    return frames, mask_bit, "bad"
                if not decode_reason(payload[2:], False)[1]:
                    return frames, mask_bit, "bad"
        frames += 1
        pos = end
    return frames, mask_bit, "ok"


def server_direction_from_heads(head0: bytes, head1: bytes) -> int | None:
    """For a connection detect() accepted: the direction sending unmasked
    frames plays the server (None when the heads do not say)."""
    _, m0, s0 = scan_strict(head0)
    _, m1, s1 = scan_strict(head1)
    if "bad" in (s0, s1) or m0 is None or m1 is None or m0 == m1:
        return None
    return 1 if m0 else 0


def detect(head0: bytes, head1: bytes, port_hint=None, midstream: bool = True) -> str:
    """Recognise WebSocket frames on a connection whose handshake was not seen.

    Strict on purpose: both directions must show DETECT_MIN_FRAMES complete,
    well-formed frames, one direction all masked (the client) and the other
    all unmasked.  The port is ignored: WebSocket runs on any port.
    """
    r0 = scan_strict(head0)
    r1 = scan_strict(head1)
    if r0[2] == "bad" or r1[2] == "bad":
        return REJECTED
    if r0[1] is not None and r1[1] is not None and r0[1] == r1[1]:
        return REJECTED
    if r0[0] >= DETECT_MIN_FRAMES and r1[0] >= DETECT_MIN_FRAMES:
        return DETECTED
    return NEED_MORE


def detected_midstream(server_direction: int | None = None, midstream: bool = True) -> "WebSocketDissector":
    """The dissector for a connection detect() accepted.  Its handshake was
    not seen (a seen one is HTTP's Upgrade), so it is mid-stream even when
    the SYN was; without a SYN or an opinion from the heads, direction 1
    (the receiver of the first packet) is taken as the server."""
    return WebSocketDissector(server_direction if server_direction is not None else 1, midstream=True)


# ----------------------------------------------------------- frame decoder --

@dataclass(frozen=True, slots=True)
class DecodedFrame:
    """One frame, its payload skipped (close frames: a bounded prefix kept)."""

    header: FrameHeader
    ts: float              # packet holding the frame's first byte
    frame: int
    payload: bytes         # unmasked prefix, close frames only; stops at a gap
    cut: str               # "" every payload byte seen; "gap" bytes lost; "end" stream ended
    after_gap: bool        # decoded after a re-synchronisation


class FrameDecoder:
    """Frames of one direction; bytes in, `DecodedFrame`s out.

    `expect_masked` and `rsv1` only steer re-synchronisation after a gap.
    """

    def __init__(self, expect_masked: bool, rsv1: str = "none") -> None:
        self.expect_masked = expect_masked
        self.rsv1 = rsv1
        self._head = bytearray()          # header bytes so far (< MAX_HEADER)
        self._header: FrameHeader | None = None
        self._remaining = 0               # payload bytes still to come
        self._offset = 0                  # payload bytes consumed (mask phase)
        self._kept = bytearray()          # close payload prefix, unmasked
        self._holed = False               # a gap fell inside this frame's payload
        self._start = (0.0, 0)
        self.synced = True
        self.resynced = False             # sticky: frames after a lost sync
        self.lost_sync = 0                # gaps that broke the framing
        self.unparsed_bytes = 0           # bytes dropped while out of sync
        self.frames = 0

    @property
    def partial_bytes(self) -> int:
        """Bytes of the frame in progress (0 at a frame boundary)."""
        if self._header is None:
            return len(self._head)
        return self._header.size + self._offset

    def feed(self, data: bytes, ts: float, frame: int) -> list[DecodedFrame]:
        out: list[DecodedFrame] = []
        if not data:
            return out
        if not self.synced:
            if not self._resync_here(data):
                self.unparsed_bytes += len(data)
                return out
            self.synced, self.resynced = True, True
        view = memoryview(data)
        pos, n = 0, len(data)
        while pos < n:
            if self._header is None:
                if not self._head:
                    self._start = (ts, frame)
                had = len(self._head)
                chunk = view[pos:pos + MAX_HEADER - had]
                header = maybe_parse_header(bytes(self._head) + bytes(chunk) if had else chunk)
                if header is None:
                    self._head += chunk
                    pos += len(chunk)
                    continue
                pos += header.size - had
                self._head.clear()
                self._begin(header)
            else:
                take = min(self._remaining, n - pos)
                if self._header.opcode == Opcode.CLOSE and not self._holed:
                    room = MAX_CLOSE_KEPT - len(self._kept)
                    if room > 0:
                        self._kept += unmask(bytes(view[pos:pos + min(take, room)]),
                                             self._header.mask, self._offset)
                self._remaining -= take
                self._offset += take
                pos += take
            if self._header is not None and self._remaining == 0:
                out.append(self._finish("gap" if self._holed else ""))
        return out

    def gap(self, nbytes: int) -> list[DecodedFrame]:
        """`nbytes` lost.  Inside a payload they are skipped; else sync is lost."""
        if nbytes <= 0:
            return []
        if not self.synced:
            self.unparsed_bytes += nbytes
            return []
        if self._header is not None and nbytes <= self._remaining:
            self._remaining -= nbytes
            self._offset += nbytes
            self._holed = True
            return [self._finish("gap")] if self._remaining == 0 else []
        out = []
        if self._header is not None and self._header.opcode == Opcode.CLOSE:
            out.append(self._finish("gap"))
        self._reset()
        self.synced = False
        self.lost_sync += 1
        return out

    @property
    def pending_header(self) -> FrameHeader | None:
        """Header of the frame in progress, if its header is complete."""
        return self._header

    @property
    def pending_start(self) -> tuple[float, int]:
        """(ts, frame) of the packet holding the pending frame's first byte."""
        return self._start

    def flush(self) -> list[DecodedFrame]:
        """The stream ended: a close frame in progress is reported as cut."""
        if self._header is not None and self._header.opcode == Opcode.CLOSE:
            return [self._finish("gap" if self._holed else "end")]
        return []

    def _begin(self, header: FrameHeader) -> None:
        self._header = header
        self._remaining = header.length
        self._offset = 0
        self._kept.clear()
        self._holed = False

    def _finish(self, cut: str) -> DecodedFrame:
        ts, frame = self._start
        decoded = DecodedFrame(self._header, ts, frame, bytes(self._kept), cut, self.resynced)
        self.frames += 1
        self._reset()
        return decoded

    def _reset(self) -> None:
        self._head.clear()
        self._header = None
        self._remaining = self._offset = 0
        self._kept.clear()
        self._holed = False

    def _resync_here(self, data: bytes) -> bool:
        # A segment made of whole, well-formed frames with this direction's
        # mask bit: senders write frames per send(), so after a loss the
        # next such segment starts on a frame boundary.
        frames, mask_bit, status = scan_strict(data, allow_continuation_first=True,
                                               rsv1_ok=self.rsv1 != "none")
        return status == "ok" and frames > 0 and mask_bit == self.expect_masked


# -------------------------------------------------------------- connection --

class _Side:
    """What one direction has done so far."""

    def __init__(self, role: str, decoder: FrameDecoder) -> None:
        self.role = role                  # "client" | "server"
        self.decoder = decoder
        self.in_message: bool | None = False  # None: unknown (after a gap)
        self.closes = 0                   # close frames sent (incl. damaged ones)
        self.messages = 0
        self.pings = 0
        self.pongs = 0
        self.payload_bytes = 0            # claimed lengths of complete frames
        self.ended: tuple[float, int, bool] | None = None  # (ts, frame, rst)
        self.partial_at_end = 0           # bytes of an unfinished frame at the end


class WebSocketDissector(Dissector):
    """A WebSocket connection after its handshake (or caught mid-stream).

    `request` is the handshake's "GET /path"; `extensions` the server's
    Sec-WebSocket-Extensions value (it decides which RSV bits are legal);
    `opened_ts` the time of the 101 (duration is measured from it).
    """

    protocol = "websocket"

    def __init__(self, server_direction: int, request: str = "", extensions: str = "",
                 opened_ts: float | None = None, midstream: bool = False) -> None:
        super().__init__()
        self.server_direction = server_direction
        self.request = request
        self.extensions = extensions
        self.opened_ts = opened_ts
        self.midstream = midstream
        self.rsv1 = rsv1_policy(extensions)
        self._sides = {
            1 - server_direction: _Side("client", FrameDecoder(True, self.rsv1)),
            server_direction: _Side("server", FrameDecoder(False, self.rsv1)),
        }
        self.handshake = CloseHandshake()   # close frames, first FIN/RST, outcome (pairing.py)
        self._first_ts: float | None = None
        self._finished = False
        self._frame: int | None = None   # packet of the bytes being decoded (None: a gap or a flush)
        self.anomaly_counts: dict[str, int] = {}

    # -- contract ------------------------------------------------------
    def feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        side = self._sides.get(direction)
        if side is None or self._finished or not data:
            return []
        if self._first_ts is None:
            self._first_ts = ts
        events: list[Event] = []
        self._frame = frame     # frames decoded from these bytes end in this packet
        for decoded in side.decoder.feed(data, ts, frame):
            self._on_frame(direction, side, decoded, events)
        self._frame = None
        return events

    def gap(self, nbytes: int, direction: int, ts: float, frame: int) -> list[Event]:
        side = self._sides.get(direction)
        if side is None or self._finished:
            return []
        was_synced = side.decoder.synced
        events: list[Event] = []
        for decoded in side.decoder.gap(nbytes):
            self._on_frame(direction, side, decoded, events)
        if was_synced and not side.decoder.synced:
            side.in_message = None
            self._note("websocket_gap_lost_framing", direction, ts, frame, f"{nbytes} bytes lost")
        return events

    def end(self, direction: int, ts: float, frame: int, rst: bool) -> list[Event]:
        side = self._sides.get(direction)
        if side is None or self._finished or side.ended is not None:
            return []
        side.ended = (ts, frame, rst)
        side.partial_at_end = side.decoder.partial_bytes
        self.handshake.ended(direction, ts, frame, rst)
        events: list[Event] = []
        self._note_unfinished(direction, side)
        for decoded in side.decoder.flush():
            self._on_frame(direction, side, decoded, events)
        return events

    def close(self, ts: float) -> list[Event]:
        if self._finished:
            return []
        self._finished = True
        events: list[Event] = []
        for direction, side in self._sides.items():
            if side.ended is None:
                side.partial_at_end = side.decoder.partial_bytes
                self._note_unfinished(direction, side)
                for decoded in side.decoder.flush():
                    self._on_frame(direction, side, decoded, events)
        # Decided only now: after the first FIN the peer may still close.
        if self.handshake.first_end is not None:
            abnormal = self.handshake.infer_abnormal(self.request, self.server_direction, self._end_evidence(),
                                                     self.midstream)
            if abnormal is not None:
                events.append(abnormal)
        return events

    def outcome(self) -> dict:
        """Per-connection summary for the statistics: the close handshake's
        outcome (pairing.py: state, clean, who closed first, codes) plus
        duration (handshake, or first byte seen, to the first close or
        FIN/RST), frame/message/ping counts and anomalies."""
        client, server = self._side("client"), self._side("server")
        gap = any(side.decoder.lost_sync for side in self._sides.values())
        out = self.handshake.outcome(self.server_direction, gap)
        hs = self.handshake
        first = min(hs.closes, key=lambda e: (e.epoch, e.frame)) if hs.closes else hs.abnormal
        start = self.opened_ts if self.opened_ts is not None else self._first_ts
        duration = None
        if first is not None and start is not None:
            duration = max(0.0, first.epoch - start)
        out.update({
            "duration_s": duration,
            "frames": {"client": client.decoder.frames, "server": server.decoder.frames},
            "messages": {"client": client.messages, "server": server.messages},
            "pings": {"client": client.pings, "server": server.pings},
            "payload_bytes": {"client": client.payload_bytes, "server": server.payload_bytes},
            "gap": gap,
            "midstream": self.midstream,
            "anomalies": dict(self.anomaly_counts),
        })
        return out

    # -- frames ----------------------------------------------------------
    def _on_frame(self, direction: int, side: _Side, f: DecodedFrame, events: list[Event]) -> None:
        h = f.header
        violations = self._frame_violations(side, h)
        for name in violations:
            self._note(name, direction, f.ts, f.frame)
        if side.closes and h.opcode != Opcode.CLOSE:
            self._note("websocket_frame_after_close", direction, f.ts, f.frame)  # Section 5.5.1
        if not f.cut:
            side.payload_bytes += h.length
        if h.opcode == Opcode.PING:
            side.pings += 1
        elif h.opcode == Opcode.PONG:
            side.pongs += 1
        elif h.opcode == Opcode.CONTINUATION:
            if side.in_message is False:
                self._note("websocket_unexpected_continuation", direction, f.ts, f.frame)
            side.in_message = not h.fin
            side.messages += h.fin
        elif h.opcode in DATA_OPCODES:
            if side.in_message:
                self._note("websocket_data_frame_inside_fragmented_message", direction, f.ts, f.frame)
            side.in_message = not h.fin
            side.messages += h.fin
        elif h.opcode == Opcode.CLOSE:
            side.closes += 1
            event = self._close_event(direction, side, f, violations)
            if event is not None:
                self.handshake.add(event)
                events.append(event)

    def _close_event(self, direction: int, side: _Side, f: DecodedFrame,
                     violations: list[str]) -> Event | None:
        """Section 5.5.1 / 7.1.5: status code (2 bytes) then a UTF-8 reason."""
        h = f.header
        flags = list(violations)
        if side.closes > 1:
            flags.append("websocket_duplicate_close")             # Section 5.5.1
        if h.length > MAX_CONTROL_PAYLOAD:
            flags.append("websocket_oversized_close")
        if f.cut == "gap":
            flags.append("websocket_close_damaged_by_gap")
        elif f.cut == "end":
            flags.append("websocket_truncated_close")
        inferred = False
        if h.length == 0:
            code, text, inferred = int(CloseReason.NO_STATUS_RCVD), "", True
        elif h.length == 1:
            code, text, inferred = int(CloseReason.NO_STATUS_RCVD), "", True
            flags.append("websocket_close_payload_1_byte")
        elif len(f.payload) < 2:
            # The status code itself was lost (gap, or the stream ended in
            # it): a close frame was sent, its code is unknown.  No event
            # rather than a guessed code; the outcome says "unknown".
            self.handshake.lost_close = True
            self._note("websocket_close_code_lost", direction, f.ts, f.frame)
            return None
        else:
            code = _U16.unpack_from(f.payload)[0]
            truncated = len(f.payload) < h.length
            if truncated and not f.cut:
                flags.append("websocket_close_reason_truncated")
            text, utf8_ok = decode_reason(f.payload[2:], truncated)
            if not utf8_ok:
                flags.append("websocket_invalid_utf8_reason")     # Section 5.5.1
            if not close_code_ok(code):
                flags.append("websocket_reserved_close_code")     # Section 7.4
        close_flags(flags, bool(violations))
        if f.after_gap:
            flags.append("websocket_after_gap")
        if self.midstream:
            flags.append("websocket_midstream")
        return Event(
            protocol=self.protocol, code=code, text=text, request=self.request,
            epoch=f.ts, frame=f.frame, sender=direction, last_frame=None if f.cut else self._frame,
            direction=side_label(direction, self.server_direction),
            inferred=inferred, flags=tuple(dict.fromkeys(flags)),
        )

    def _frame_violations(self, side: _Side, h: FrameHeader) -> list[str]:
        """RFC 6455 Section 5 rules one frame breaks, as stable anomaly names."""
        names = []
        if side.role == "client" and not h.masked:
            names.append("websocket_unmasked_client_frame")       # Section 5.1
        elif side.role == "server" and h.masked:
            names.append("websocket_masked_server_frame")         # Section 5.1
        if h.opcode not in KNOWN_OPCODES:
            names.append("websocket_reserved_opcode")             # Section 5.2
        if not h.minimal:
            names.append("websocket_non_minimal_length")          # Section 5.2
        if h.length >> 63:
            names.append("websocket_length_msb_set")              # Section 5.2
        if h.rsv and not self._rsv_allowed(h):
            names.append("websocket_reserved_bits")               # Section 5.2; RFC 7692 Section 6
        if h.opcode in CONTROL_OPCODES:
            if not h.fin:
                names.append("websocket_fragmented_control_frame")  # Section 5.5
            if h.length > MAX_CONTROL_PAYLOAD:
                names.append("websocket_control_frame_too_long")    # Section 5.5
        return names

    def _note_unfinished(self, direction: int, side: _Side) -> None:
        # A frame the stream ended inside (e.g. a 2**63-byte claim) never
        # reaches _on_frame; its header still broke the rules it broke.
        h = side.decoder.pending_header
        if h is not None and h.opcode != Opcode.CLOSE:
            ts, frame = side.decoder.pending_start
            for name in self._frame_violations(side, h):
                self._note(name, direction, ts, frame)

    def _rsv_allowed(self, h: FrameHeader) -> bool:
        if h.opcode in CONTROL_OPCODES:
            return False                      # RFC 7692 Section 6.1: never compressed
        if self.rsv1 == "any":
            return True
        if h.rsv != RSV1 or self.rsv1 == "none":
            return False
        if self.rsv1 == "frame":
            return True
        return h.opcode in DATA_OPCODES       # permessage-deflate: first frame only

    # -- the close that never came ------------------------------------------
    def _end_evidence(self) -> tuple[str, ...]:
        """Flags of an inferred 1006 after its first two: bytes left in frames,
        the peer's end, lost framing."""
        direction = self.handshake.first_end[0]
        side, peer = self._sides[direction], self._sides[1 - direction]
        flags = [f"bytes_after_last_frame={side.partial_at_end}"]
        if peer.partial_at_end:
            flags.append(f"peer_bytes_after_last_frame={peer.partial_at_end}")
        if peer.ended is not None:
            flags.append(f"then_{'rst' if peer.ended[2] else 'fin'}_by_{peer.role}")
        lost = [s for s in self._sides.values() if s.decoder.lost_sync]
        if lost:
            flags.append("websocket_gap_before_end")
            flags.append(f"unparsed_bytes={sum(s.decoder.unparsed_bytes for s in lost)}")
        return tuple(flags)

    def _side(self, role: str) -> _Side:
        return next(s for s in self._sides.values() if s.role == role)

    def _note(self, name: str, direction: int, ts: float, frame: int, detail: str = "") -> None:
        # Emitted every time (the flow table drains them after each feed, so
        # memory does not grow per frame); which rows are written is the
        # anomaly policy's.  The per-connection count goes into the outcome.
        self.anomaly_counts[name] = self.anomaly_counts.get(name, 0) + 1
        role = self._sides[direction].role
        self.anomaly(name, ts, frame, f"{role}: {detail}" if detail else role)
