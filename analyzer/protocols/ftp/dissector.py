# FTP control channel (RFC 959): one event per complete reply, paired with the
# command it answers.
#
# Strategy.  Each direction goes through two small filters before any FTP
# logic: a Telnet filter (RFC 854: IAC IP / IAC DM / option negotiation are
# dropped, IAC IAC is a literal 0xFF; the urgent-mode ABOR is just "ABOR"
# once filtered) and a line reader (split on LF, CR optional, a bounded
# buffer that keeps the first MAX_LINE_BYTES of a line and counts the rest).
# Server lines go through the RFC 959 section 4.2 reply grammar: "NNN text"
# is a reply; "NNN-text" opens a multi-line reply that only "NNN text" with
# the same code closes, every line in between being text whatever digits it
# starts with.  Client lines become commands.  Pairing a complete reply with
# its command, and the login outcome, are pairing.py's (shared with the
# tshark engine): a FIFO, with a table of which codes fit which command to
# re-align after a gap (a gap here calls its lost_bytes()).
#
# Secrets: the argument of PASS and ACCT is never stored.  The line reader
# stops buffering a line as soon as it starts with "PASS " / "ACCT ", so the
# password lives only in the caller's segment; the request is "PASS ****".
#
# Anomalies (names are stable): ftp_reply_without_command,
# ftp_command_without_reply, ftp_reply_malformed ("230_no_space", "99 x":
# not replies, but they answer the oldest command), ftp_reply_invalid_line,
# ftp_reply_too_long, ftp_reply_too_many_lines, ftp_reply_incomplete,
# ftp_command_too_long, ftp_command_unknown, ftp_too_many_pending_commands,
# ftp_data_address_invalid, ftp_tls_started, ftp_gap, ftp_gap_fragment,
# ftp_unparsed_line, ftp_line_unterminated.  Those about one reply are also
# in that event's flags.
#
# Limits (all named below): line length, pending commands, lines per reply,
# failed-login user names kept.  Every anomaly is emitted; counting and
# sampling of example rows is the anomaly policy's (meaning/anomalies.py).  After "AUTH TLS" is
# answered 234 the channel is encrypted: we stop (anomaly ftp_tls_started)
# and emit nothing more.  XX: "CCC" (back to clear text after TLS) is not
# followed; RFC 2228 protected replies (631-633) are not decoded.
from __future__ import annotations

import ipaddress
import re
from enum import IntEnum

from analyzer.events import Event, Expectation
from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED, Dissector
from analyzer.protocols.ftp.pairing import CODE_FITS, GREETING_CODES, TRANSFER_VERBS, FtpSession, fits

MAX_LINE_BYTES = 8 * 1024          # Python ftplib MAXLINE (8192, taken from vsftpd); Zeek truncates reply_msg at 4096
MAX_REPLY_LINES = 10_000           # our choice: the corpus' longest reply (NetBSD 230) has 37 lines; a lost final line must not swallow a session
MAX_DETECT_LINES = 8               # lines of a head after which detect() must have decided


class Telnet(IntEnum):
    """RFC 854 command bytes (those the filter must recognise)."""

    SE = 240
    DM = 242          # Data Mark: sent urgent with the ABOR sequence (RFC 959 section 4.1.3)
    IP = 244          # Interrupt Process
    SB = 250
    WILL = 251
    WONT = 252
    DO = 253
    DONT = 254
    IAC = 255


# Telnet filter states.
_T_DATA, _T_IAC, _T_OPTION, _T_SB, _T_SB_IAC = range(5)


class _TelnetFilter:
    """Removes Telnet commands from one direction, across segment borders."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state = _T_DATA

    def __call__(self, data: bytes) -> bytes:
        if self.state == _T_DATA and 0xFF not in data:
            return data  # the common case: nothing to strip
        out = bytearray()
        pos, end = 0, len(data)
        while pos < end:
            state = self.state
            if state == _T_DATA:
                nxt = data.find(b"\xff", pos)
                if nxt < 0:
                    out += data[pos:]
                    break
                out += data[pos:nxt]
                self.state = _T_IAC
                pos = nxt + 1
                continue
            byte = data[pos]
            pos += 1
            if state == _T_IAC:
                if byte == Telnet.IAC:
                    out.append(0xFF)            # IAC IAC: a literal 0xFF
                    self.state = _T_DATA
                elif Telnet.WILL <= byte <= Telnet.DONT:
                    self.state = _T_OPTION      # one option byte follows
                elif byte == Telnet.SB:
                    self.state = _T_SB
                else:
                    self.state = _T_DATA        # IP, DM, NOP, AYT, ...: two bytes
            elif state == _T_OPTION:
                self.state = _T_DATA
            elif state == _T_SB:
                if byte == Telnet.IAC:
                    self.state = _T_SB_IAC
            else:  # _T_SB_IAC
                self.state = _T_DATA if byte == Telnet.SE else _T_SB
        return bytes(out)


_SECRET_VERBS = frozenset({b"PASS", b"ACCT"})
_SECRET_LOOKAHEAD = 64   # leading blanks tolerated before a PASS/ACCT verb


class _LineReader:
    """Bounded LF-delimited lines of one direction, with the packet of each line's first byte."""

    __slots__ = ("buf", "excess", "ts", "frame", "secret", "resync", "cut_secret", "mask")

    def __init__(self, mask_secrets: bool) -> None:
        self.buf = bytearray()
        self.excess = 0            # bytes of the current line beyond MAX_LINE_BYTES
        self.ts = 0.0
        self.frame = 0
        self.secret = False        # current line is PASS/ACCT: its argument is not kept
        self.resync = False        # a gap cut the stream: the next line may be a fragment
        self.cut_secret = False    # ... and it cut a PASS/ACCT line: that fragment is secret
        self.mask = mask_secrets

    def pending(self) -> bool:
        return bool(self.buf) or self.excess > 0 or self.secret

    def feed(self, data: bytes, ts: float, frame: int) -> list[tuple]:
        lines = []
        pos, end = 0, len(data)
        while pos < end:
            nl = data.find(b"\n", pos)
            stop = end if nl < 0 else nl
            if not self.pending():
                self.ts, self.frame = ts, frame
            if stop > pos:
                self._append(data, pos, stop)
            if nl < 0:
                break
            lines.append(self.take())
            pos = nl + 1
        return lines

    def _append(self, data: bytes, pos: int, stop: int) -> None:
        if self.secret:
            return  # never store what follows "PASS "
        before = len(self.buf)
        take = min(MAX_LINE_BYTES - before, stop - pos)
        if take > 0:
            self.buf += data[pos:pos + take]
        self.excess += (stop - pos) - max(take, 0)
        if self.mask and before < _SECRET_LOOKAHEAD:
            head = bytes(self.buf[:_SECRET_LOOKAHEAD])
            verb = head.lstrip(b" \t")
            if len(verb) >= 5 and verb[4] in (0x20, 0x09) and verb[:4].upper() in _SECRET_VERBS:
                self.secret = True
                del self.buf[len(head) - len(verb) + 5:]
                self.excess = 0

    def take(self) -> tuple:
        line = bytes(self.buf).rstrip(b"\r")
        item = (line, self.excess, self.ts, self.frame, self.secret)
        self.buf.clear()
        self.excess = 0
        self.secret = False
        return item

    def drop(self) -> None:
        self.buf.clear()
        self.excess = 0
        self.secret = False


# --- the reply grammar -------------------------------------------------------

# A reply line: three digits, the first 1-6 (6yz: RFC 2228 protected replies),
# then a space, a hyphen or the end of the line.
_REPLY_RE = re.compile(rb"([1-6][0-9]{2})(?:([ -])|$)")
_COMMAND_RE = re.compile(rb"[A-Za-z]{3,4}(?:[ \t]|$)")

# Commands RFC 959, 2228, 2389, 2428, 2640, 3659, 7151 and common extensions
# define; used to recognise a client (detect, role inference, anomalies).
FTP_COMMANDS = frozenset("""
    ABOR ACCT ADAT ALLO APPE AUTH AVBL CCC CDUP CLNT CONF CSID CWD DELE DSIZ
    ENC EPRT EPSV FEAT HELP HOST LANG LIST LPRT LPSV MDTM MFCT MFF MFMT MIC
    MKD MLSD MLST MODE NLST NOOP OPTS PASS PASV PBSZ PORT PROT PWD QUIT REIN
    REST RETR RMD RMDA RNFR RNTO SITE SIZE SMNT SPSV STAT STOR STOU STRU SYST
    THMB TYPE USER XCRC XCUP XCWD XMD5 XMKD XPWD XRMD XSEM XSEN XSHA
""".split())
# Commands other line protocols share with FTP (POP3: USER PASS RETR LIST
# DELE STAT QUIT NOOP; SMTP: HELP AUTH NOOP QUIT).  Alone they prove nothing.
SHARED_COMMANDS = frozenset("USER PASS RETR LIST DELE STAT QUIT NOOP HELP AUTH REST".split())
# First words that prove another protocol.
FOREIGN_COMMANDS = frozenset("""
    EHLO HELO LHLO MAIL RCPT DATA RSET VRFY EXPN STARTTLS BDAT
    CAPA STLS APOP UIDL TOP
    GET POST HEAD PUT DELETE OPTIONS CONNECT TRACE PATCH PROPFIND PRI
    NICK JOIN PING SSH-2.0 SSH-1.99
    GROUP ARTICLE NEWGROUPS NEWNEWS XOVER OVER AUTHINFO CAPABILITIES LISTGROUP XHDR HDR IHAVE TAKETHIS
    XPAT XGTITLE
    AUTHENTICATE LOGOUT CAPABILITY HAVESPACE PUTSCRIPT LISTSCRIPTS SETACTIVE GETSCRIPT DELETESCRIPT
""".split())
# Lines 3-4 (RFC 3977 NNTP, RFC 5804 ManageSieve) above; an NNTP client's
# "MODE READER" / "MODE STREAM" uses FTP's MODE verb with an argument FTP
# never has (S, B, C, Z).
_NNTP_MODE_RE = re.compile(rb"MODE[ \t]+(?:READER|STREAM)\b", re.IGNORECASE)
# Greetings a line protocol other than FTP opens with: NNTP's 200/201
# ("posting allowed / not"); FTP greets with 120, 220 or 421 only.
FOREIGN_GREETING_CODES = frozenset({200, 201})
# Reply codes no SMTP/POP/IMAP server sends: a server head with one of these is FTP.
FTP_ONLY_CODES = frozenset({110, 125, 150, 202, 212, 213, 215, 225, 226, 227, 228, 229,
                            230, 257, 331, 332, 350, 425, 426, 532})

# --- data channel announcements ------------------------------------------------

_PASV_RE = re.compile(rb"(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3}),(\d{1,3})")
_EPSV_RE = re.compile(rb"\(([\x21-\x7e])\1\1(\d{1,5})\1\)")


def parse_host_port(text: bytes) -> tuple[str, int] | None:
    """PORT argument / 227 text: h1,h2,h3,h4,p1,p2 (RFC 959 section 4.1.2)."""
    m = _PASV_RE.search(text)
    if m is None:
        return None
    nums = [int(n) for n in m.groups()]
    if any(n > 255 for n in nums):
        return None
    port = nums[4] * 256 + nums[5]
    return ("%d.%d.%d.%d" % tuple(nums[:4]), port) if port else None


def parse_epsv(text: bytes) -> int | None:
    """229 text: "(|||port|)" with any repeated delimiter (RFC 2428 section 3)."""
    m = _EPSV_RE.search(text)
    if m is None:
        return None
    port = int(m.group(2))
    return port if 0 < port < 65536 else None


def parse_eprt(arg: bytes) -> tuple[str, int] | None:
    """EPRT argument: <d>proto<d>address<d>port<d> (RFC 2428 section 2)."""
    arg = arg.strip()
    if len(arg) < 7:
        return None
    delim = arg[:1]
    parts = arg.split(delim)
    if len(parts) != 5 or parts[0] or parts[4]:
        return None
    proto, addr, port = parts[1], parts[2], parts[3]
    try:
        host = ipaddress.ip_address(addr.decode("ascii"))
        number = int(port)
    except (UnicodeDecodeError, ValueError):
        return None
    if proto not in (b"1", b"2") or (host.version == 4) != (proto == b"1"):
        return None
    return (str(host), number) if 0 < number < 65536 else None


def _text(raw: bytes) -> str:
    """UTF-8 (RFC 2640) when it is; else Latin-1, so that no byte is lost."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start >= len(raw) - 3 and exc.reason == "unexpected end of data":
            return raw[:exc.start].decode("utf-8")   # a line cut by MAX_LINE_BYTES
        return raw.decode("latin-1")


# --- the dissector ---------------------------------------------------------------

class _OpenReply:
    """A multi-line reply whose final line has not arrived yet."""

    __slots__ = ("code", "prefix", "text", "lines", "ts", "frame", "flags", "gap")

    def __init__(self, code: int, text: str, ts: float, frame: int, flags: list[str]) -> None:
        self.code = code
        self.prefix = b"%d" % code
        self.text = text
        self.lines = 1
        self.ts = ts
        self.frame = frame
        self.flags = flags
        self.gap = False


class FtpDissector(Dissector):
    """Sans-IO FTP control-channel dissector; see the module comment."""

    protocol = "ftp"

    def __init__(self, server_direction: int | None = None, midstream: bool = False) -> None:
        # `midstream` is accepted for the uniform factory contract: the reply
        # assembly re-synchronises on line starts either way.
        super().__init__()
        self.server_direction = server_direction
        self._telnet = (_TelnetFilter(), _TelnetFilter())
        # Both readers mask: until the roles are known either side may be the client.
        self._lines = (_LineReader(True), _LineReader(True))
        self.session = FtpSession(self.anomaly)   # pairing and login outcome
        self._reply: _OpenReply | None = None
        self._tls = False
        self._auth_sent = False
        self._closed = False
        self._frame: int | None = None  # packet of the bytes being handled; None for a flush
        self._data_total = 0

    # --- contract -----------------------------------------------------------

    def feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        events = self._feed(data, direction, ts, frame)
        self._count_buffered()
        return events

    def _count_buffered(self) -> None:
        """`buffered` (base.py): the partial lines and an open reply's first line."""
        reply = self._reply
        self.buffered = len(self._lines[0].buf) + len(self._lines[1].buf) + \
            (len(reply.text) if reply is not None else 0)

    def _feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        if self._tls or self._closed or not data:
            return []
        if (self._auth_sent and direction == self._client_direction()
                and data[:2] == b"\x16\x03" and not self._lines[direction].pending()):
            # A TLS ClientHello right after AUTH: the 234 is not in the capture.
            self._start_tls(ts, frame)
            return []
        data = self._telnet[direction](data)
        events: list[Event] = []
        self._frame = frame     # a line that ends in these bytes ends in this packet
        reader = self._lines[direction]
        for item in reader.feed(data, ts, frame):
            self._line(item, direction, events)
            if self._tls:
                break
        return events

    def gap(self, nbytes: int, direction: int, ts: float, frame: int) -> list[Event]:
        if self._tls or self._closed:
            return []
        reader = self._lines[direction]
        reader.cut_secret = reader.cut_secret or reader.secret  # the gap cut a PASS line
        if reader.pending():
            reader.drop()
        reader.resync = True
        self._telnet[direction].state = _T_DATA
        self.session.lost_bytes()
        if self._reply is not None and direction == self.server_direction:
            self._reply.gap = True
        self._note("ftp_gap", ts, frame, f"{nbytes} bytes missing from direction {direction}")
        self._count_buffered()
        return []

    def end(self, direction: int, ts: float, frame: int, rst: bool) -> list[Event]:
        if self._tls or self._closed:
            return []
        events: list[Event] = []
        self._frame = None      # a line cut by the end did not end
        self._flush_partial(direction, events)
        self._count_buffered()
        return events

    def close(self, ts: float) -> list[Event]:
        self._frame = None
        if self._closed:
            return []
        events: list[Event] = []
        if not self._tls:
            for direction in (0, 1):
                self._flush_partial(direction, events)
            reply = self._reply
            if reply is not None:
                self._close_reply(reply, events, "ftp_reply_incomplete",
                                  f"multi-line {reply.code} reply has no final line")
            self.session.close(ts)
        self.session.clear()
        self._closed = True
        return events

    def on_data(self, nbytes: int, ts: float) -> None:
        target = next((c for c in self.session.pending if c.verb in TRANSFER_VERBS), None)
        if target is None:
            target = self.session.last_transfer   # late bytes: its event may already be out
        if nbytes > 0:
            self._data_total += nbytes
        if target is not None:
            target.data_bytes = (target.data_bytes or 0) + nbytes

    def outcome(self) -> dict:
        return {**self.session.outcome(), "tls": self._tls, "data_bytes": self._data_total}

    # --- lines ----------------------------------------------------------------

    def _client_direction(self) -> int | None:
        return None if self.server_direction is None else 1 - self.server_direction

    def _line(self, item: tuple, direction: int, events: list[Event]) -> None:
        line, excess, ts, frame, secret = item
        if self.server_direction is None:
            if _REPLY_RE.match(line):
                self.server_direction = direction
            elif secret or (_COMMAND_RE.match(line) and _verb(line) in FTP_COMMANDS):
                self.server_direction = 1 - direction
            else:
                self._note("ftp_unparsed_line", ts, frame, "line before the roles are known")
                return
        reader = self._lines[direction]
        if direction == self.server_direction:
            if reader.resync:
                reader.resync = False
                if self._reply is None and not _REPLY_RE.match(line):
                    self._note("ftp_gap_fragment", ts, frame, "reply fragment after a gap dropped")
                    return
            self._reply_line(line, excess, ts, frame, events)
        else:
            if reader.resync:
                # The start of this line may be what the gap lost ("PASS V" of
                # "PASS VERY GAPSECRET"): it is kept only when it begins with
                # a known verb (a whole segment was lost: the usual case) and
                # the gap did not cut a PASS/ACCT line; otherwise it is dropped
                # and not one of its bytes is recorded.
                cut_secret, reader.resync, reader.cut_secret = reader.cut_secret, False, False
                if not secret and (cut_secret or not _COMMAND_RE.match(line)
                                   or _verb(line) not in FTP_COMMANDS):
                    self._note("ftp_gap_fragment", ts, frame,
                               f"{len(line)}-byte command fragment after a gap dropped")
                    return
            self._command_line(line, excess, ts, frame, secret)

    def _flush_partial(self, direction: int, events: list[Event]) -> None:
        """A line the sender ended without LF (FIN / end of capture)."""
        reader = self._lines[direction]
        if not reader.pending():
            return
        line, excess, ts, frame, secret = item = reader.take()
        if not line and not secret:
            return
        self._note("ftp_line_unterminated", ts, frame, f"direction {direction}")
        if direction == self.server_direction or self.server_direction is None:
            self._line(item, direction, events)
        # An unterminated command cannot have been answered: nothing to queue.

    # --- server side ----------------------------------------------------------------

    def _reply_line(self, line: bytes, excess: int, ts: float, frame: int, events: list[Event]) -> None:
        if excess:
            self._note("ftp_reply_too_long", ts, frame,
                       f"{len(line) + excess} byte line, first {MAX_LINE_BYTES} kept")
        reply = self._reply
        if reply is not None:
            reply.lines += 1
            if excess and "ftp_reply_too_long" not in reply.flags:
                reply.flags.append("ftp_reply_too_long")
            if line[:3] == reply.prefix and (len(line) == 3 or line[3:4] == b" "):
                self._close_reply(reply, events, ended=True)
                return
            m = _REPLY_RE.match(line)
            if reply.gap and m and m.group(2) != b"-":
                # The final line was lost in a gap and a new reply has begun.
                reply.lines -= 1
                reply.flags.append("ftp_gap")
                self._close_reply(reply, events)
                self._reply_line(line, excess, ts, frame, events)
                return
            if reply.lines >= MAX_REPLY_LINES:
                self._close_reply(reply, events, "ftp_reply_too_many_lines",
                                  f"{reply.code} reply closed after {MAX_REPLY_LINES} lines")
            return
        flags = ["ftp_reply_too_long"] if excess else []
        m = _REPLY_RE.match(line)
        if m is None:
            if line[:1].isdigit():
                # "230_no_space", "99 PASV invalid": the server's (broken)
                # answer to the oldest command; not an RFC 959 reply.
                cmd = self.session.malformed()
                shown = _text(line[:40])
                self._note("ftp_reply_malformed", ts, frame,
                           f"{shown!r}" + (f" answers {cmd.request}" if cmd else ""))
            elif line.strip():
                self._note("ftp_reply_invalid_line", ts, frame, "text outside a reply")
            return
        code = int(m.group(1))
        text = _text(line[4:])
        if m.group(2) == b"-":
            self._reply = _OpenReply(code, text, ts, frame, flags)
            return
        events.append(self._complete(code, text, 1, ts, frame, flags, self._frame))

    def _close_reply(self, reply, events: list, anomaly: str = "", detail: str = "", ended: bool = False) -> None:
        """End the open multi-line reply and emit it, with a named anomaly if
        given; `ended`: its final line ended in the packet being handled."""
        self._reply = None
        if anomaly:
            reply.flags.append(anomaly)
            self._note(anomaly, reply.ts, reply.frame, detail)
        events.append(self._complete(reply.code, reply.text, reply.lines, reply.ts, reply.frame, reply.flags,
                                     self._frame if ended else None))

    def _complete(self, code: int, text: str, lines: int, ts: float, frame: int,
                  flags: list[str], last_frame: int | None = None) -> Event:
        """A whole reply: pair it, track the session, build the event."""
        cmd = self.session.reply(code, text, ts, frame, flags)
        data_bytes = cmd.data_bytes if cmd is not None else None
        if code == 227:
            self._expect(parse_host_port(text.encode("utf-8", "replace")), ts, frame)
        elif code == 229:
            port = parse_epsv(text.encode("utf-8", "replace"))
            if port is not None:
                self.expectations.append(Expectation("ftp-data", None, port, owner=self))
        elif code == 234:
            flags.append("ftp_tls_started")
            self._start_tls(ts, frame)
        return Event(
            protocol="ftp", code=code, text=text,
            request=cmd.request if cmd is not None else "",
            epoch=ts, frame=frame, sender=self.server_direction if self.server_direction is not None else 1,
            lines=lines, data_bytes=data_bytes, flags=tuple(dict.fromkeys(flags)), last_frame=last_frame,
        )

    # --- client side -------------------------------------------------------------------

    def _command_line(self, line: bytes, excess: int, ts: float, frame: int, secret: bool) -> None:
        stripped = line.strip()
        if not stripped and not secret:
            return  # an empty line asks nothing
        verb_raw, _, arg = stripped.partition(b" ")
        verb = _text(verb_raw[:32]).upper()
        if secret or verb in ("PASS", "ACCT"):
            request = f"{verb} ****" if (secret or arg.strip()) else verb
            arg = b""
        else:
            arg_text = _text(arg).strip()
            request = f"{verb} {arg_text}" if arg_text else verb
            if excess:
                self._note("ftp_command_too_long", ts, frame, f"{verb}: {len(line) + excess} bytes")
        if verb not in FTP_COMMANDS:
            self._note("ftp_command_unknown", ts, frame, verb)
        user = None
        if verb == "USER":
            user = _text(arg.strip())
        elif verb == "PORT":
            self._expect(parse_host_port(arg), ts, frame)
        elif verb == "EPRT":
            self._expect(parse_eprt(arg), ts, frame)
        elif verb == "AUTH":
            self._auth_sent = True
        self.session.command(verb, request, ts, frame, user)

    # --- helpers --------------------------------------------------------------------

    def _expect(self, hostport: tuple[str, int] | None, ts: float, frame: int) -> None:
        if hostport is None:
            self._note("ftp_data_address_invalid", ts, frame)
            return
        self.expectations.append(Expectation("ftp-data", hostport[0], hostport[1], owner=self))

    def _start_tls(self, ts: float, frame: int) -> None:
        if not self._tls:
            self._tls = True
            self._note("ftp_tls_started", ts, frame, "control channel encrypted from here")
        self._reply = None
        self.session.clear()
        for reader in self._lines:
            reader.drop()

    def _note(self, name: str, ts: float, frame: int, detail: str = "") -> None:
        self.anomaly(name, ts, frame, detail)


# --- detection -------------------------------------------------------------------

_HTTP_RE = re.compile(rb"(?:HTTP/\d|[A-Z]+ \S+ HTTP/\d|PRI \* HTTP/2)")
_FOREIGN_BANNERS = (b"SSH-", b"+OK", b"-ERR", b"* OK", b"* PREAUTH", b"* BYE")
_FOREIGN_GREETING_RE = re.compile(rb"E?SMTP|POP3|IMAP|LMTP|NNTP|NNRP|InterNetNews|Sieve", re.IGNORECASE)
_FTP_WORD_RE = re.compile(rb"FTP", re.IGNORECASE)
# Bytes no line protocol sends (TAB, LF, CR allowed; 0xFF is Telnet, filtered first).
_CONTROL_BYTES = bytes([b for b in range(0x20) if b not in (0x09, 0x0A, 0x0D)] + [0x7F])

# What one direction's first bytes look like.
_EMPTY, _UNSURE, _FOREIGN, _REPLIES, _COMMANDS = range(5)


def _shape(head: bytes) -> tuple[int, list[bytes], int]:
    """Classify one head: its kind, its complete lines from the first FTP-shaped
    one, and how many lines before that were skipped (a capture begun mid-line)."""
    if len(head) < 2:
        return (_UNSURE if head else _EMPTY), [], 0   # never decide from one byte
    head = _TelnetFilter()(head[:64 * 1024])
    if _HTTP_RE.match(head) or head.startswith(_FOREIGN_BANNERS):
        return _FOREIGN, [], 0
    parts = head.split(b"\n")
    lines = [part.rstrip(b"\r") for part in parts[:-1]]
    if len(parts[-1]) >= MAX_LINE_BYTES:
        lines.append(parts[-1])                      # a very long line counts as seen
    for index, line in enumerate(lines or parts[:1]):
        if _is_binary(line[:MAX_LINE_BYTES]):
            if index == 0:
                return _FOREIGN, [], 0               # binary: TLS, SSH packets, databases...
            del lines[index:]                        # e.g. TLS after AUTH TLS / 234
            break
    first = lines[0] if lines else parts[0]
    if first.split(b" ", 1)[0].upper() in _FOREIGN_WORDS:
        return _FOREIGN, [], 0
    for index, line in enumerate(lines[:MAX_DETECT_LINES]):
        if _REPLY_RE.match(line):
            return _REPLIES, lines[index:], index
        if _COMMAND_RE.match(line) and _verb(line) in FTP_COMMANDS:
            return _COMMANDS, lines[index:], index
        # Anything else may be the tail of a line the capture began inside.
    return (_FOREIGN if len(lines) >= MAX_DETECT_LINES else _UNSURE), [], 0


def _is_binary(data: bytes) -> bool:
    return len(data.translate(None, _CONTROL_BYTES)) != len(data)


_FOREIGN_WORDS = frozenset(word.encode() for word in FOREIGN_COMMANDS)


def _verb(line: bytes) -> str:
    return line.split(b" ", 1)[0].strip().upper().decode("ascii", "replace")


def detect(head0: bytes, head1: bytes, port_hint: bool, midstream: bool = False) -> str:
    """DETECTED / REJECTED / NEED_MORE for a flow whose directions begin with head0 / head1.

    FTP if a server greets (120/220/421) and either port 21 is involved or
    the greeting says FTP; or well-formed replies come from port 21 (or from
    an endpoint the capture already showed to be FTP: `port_hint`); or
    replies carry a code only FTP uses; or FTP commands are answered by
    well-formed replies; or, one-sided, the client uses a command only FTP
    has.
    """
    shape0, lines0, skipped0 = _shape(head0)
    shape1, lines1, skipped1 = _shape(head1)
    if _FOREIGN in (shape0, shape1):
        return REJECTED
    if shape0 == shape1 and shape0 in (_REPLIES, _COMMANDS):
        return REJECTED                              # two servers or two clients: not FTP
    server = lines0 if shape0 == _REPLIES else lines1 if shape1 == _REPLIES else None
    skipped = skipped0 if shape0 == _REPLIES else skipped1
    client = lines0 if shape0 == _COMMANDS else lines1 if shape1 == _COMMANDS else None
    verbs = [_verb(line) for line in client or () if _COMMAND_RE.match(line)]
    if any(verb in FOREIGN_COMMANDS for verb in verbs) or any(_NNTP_MODE_RE.match(line) for line in client or ()):
        return REJECTED
    verbs = [verb for verb in verbs if verb in FTP_COMMANDS]
    if server is not None:
        first = server[0]
        if _FOREIGN_GREETING_RE.search(first) and not _FTP_WORD_RE.search(first):
            return REJECTED                          # "220 mail ESMTP Postfix"
        if not midstream and not skipped and int(first[:3]) in FOREIGN_GREETING_CODES:
            return REJECTED                          # "200 news.example InterNetNews NNRP server ready"
        if b"." in server[1:]:
            return REJECTED                          # a dot-terminated block (NNTP, POP3, SMTP): FTP has none
        if _misfits(verbs, _final_codes(server)):
            return REJECTED                          # commands answered with codes that do not fit FTP
        if int(first[:3]) in GREETING_CODES and (port_hint or _FTP_WORD_RE.search(first)):
            return DETECTED
        if port_hint:
            # Port 21 (or an endpoint already proven FTP in this capture) and
            # RFC 959 replies: a session caught mid-way, e.g. one "530 Login
            # incorrect." before the capture ends.
            return DETECTED
        codes = _reply_codes(server)
        # After a skipped fragment one "150 people" line of some text is no proof.
        if any(code in FTP_ONLY_CODES for code in codes) and (not skipped or len(codes) >= 2):
            return DETECTED
        if verbs:
            return DETECTED                          # FTP commands, well-formed replies
        if len(server) >= MAX_DETECT_LINES:
            return REJECTED
        return NEED_MORE
    if client is not None:
        if any(verb not in SHARED_COMMANDS for verb in verbs) or port_hint:
            return DETECTED
        if len(client) >= MAX_DETECT_LINES:
            return REJECTED
    return NEED_MORE


def _misfits(verbs: list[str], codes: list[int]) -> bool:
    """Commands and replies in order mostly do not fit FTP (the code-fit
    table): the exchange is some other line protocol.  Only positive replies
    to known verbs count; the greeting is skipped; two pairs at least."""
    if codes and codes[0] in GREETING_CODES and len(codes) > len(verbs):
        codes = codes[1:]
    pairs = [(v, c) for v, c in zip(verbs, codes) if c < 400 and v in CODE_FITS]
    bad = sum(1 for v, c in pairs if not fits(v, c))
    return len(pairs) >= 2 and bad * 2 > len(pairs)


def _final_codes(lines: list[bytes]) -> list[int]:
    """The code of each complete reply, a multi-line reply once (RFC 959 section 4.2)."""
    out, open_code = [], None
    for line in lines:
        if open_code is not None:
            if line[:3] == open_code and line[3:4] in (b" ", b""):
                out.append(int(open_code))
                open_code = None
            continue
        m = _REPLY_RE.match(line)
        if m is None:
            continue
        if m.group(2) == b"-":
            open_code = m.group(1)
        else:
            out.append(int(m.group(1)))
    return out


def _reply_codes(lines: list[bytes]) -> list[int]:
    return [int(m.group(1)) for m in map(_REPLY_RE.match, lines) if m]
