# FTP command/reply pairing and the login outcome, for every engine.
#
# Replies answer commands in order (RFC 959 section 5.3), so pairing is a
# FIFO of pending commands (after Zeek's ftp pending-commands table): a reply
# answers the oldest command, a 1xx answers it without consuming it, and the
# greeting (120/220/421 before the first final reply) answers nothing.
#
# Plain FIFO while the stream is intact.  After lost bytes (`lost_bytes()`)
# replies may answer commands we never saw, or commands may have had their
# replies lost; until a positive reply fits again a table of which reply codes
# fit which command (CODE_FITS, after Zeek's ftp_cmd_reply_code) decides, and
# commands whose reply was evidently lost are skipped.  The same table settles
# the ABOR dance (RFC 959 section 4.1.3) when a server folds 426/226 into one
# reply.
#
# The native dissector feeds it from reassembled lines, the tshark engine
# from tshark's ftp layer; both get the same pairs, anomalies and outcome.
# Anomalies: ftp_reply_without_command, ftp_command_without_reply,
# ftp_too_many_pending_commands.
from __future__ import annotations

from collections import deque
from typing import Callable

MAX_PENDING_COMMANDS = 20          # Zeek FTP::max_pending_commands default
MAX_FAILED_LOGINS_KEPT = 100       # our choice: enough to show a brute force, bounded per connection
MAX_USER_CHARS = 128               # Zeek FTP::max_user_length

Note = Callable[[str, float, int, str], None]

GREETING_CODES = frozenset({120, 220, 421})
# Replies a server sends on its own: 421 closing (RFC 959 section 5.4); 221
# when the client hung up without QUIT (NetBSD ftpd, ProFTPD).
UNSOLICITED_CODES = frozenset({421, 221})

TRANSFER_VERBS = frozenset({"RETR", "STOR", "STOU", "APPE", "LIST", "NLST", "MLSD"})

# Positive replies (1xx-3xx) each command can get (RFC 959 section 5.4 plus
# the extensions' RFCs and what servers send, after Zeek's
# ftp_cmd_reply_code).  4xx/5xx/6xx and 202 may answer anything, as may an
# unknown command.  Used only to re-align pairing (see the header).
_FITS_TEXT = """
    USER 230 232 331 332 336
    PASS 230 202 332
    ACCT 230 202
    CWD 250
    XCWD 250
    CDUP 200 250
    XCUP 200 250
    SMNT 202 250
    REIN 120 220
    QUIT 221
    PORT 200
    EPRT 200
    LPRT 200
    PASV 227
    EPSV 229 200
    LPSV 228
    SPSV 227
    TYPE 200
    STRU 200
    MODE 200
    RETR 110 125 150 226 250
    STOR 110 125 150 226 250
    STOU 110 125 150 226 250
    APPE 110 125 150 226 250
    LIST 125 150 226 250
    NLST 125 150 226 250
    MLSD 125 150 226 250
    ALLO 200
    REST 350
    RNFR 350
    RNTO 250
    ABOR 225 226
    DELE 250
    RMD 250
    XRMD 250
    MKD 257 250
    XMKD 257 250
    PWD 257
    XPWD 257
    SYST 215
    STAT 211 212 213
    HELP 211 214
    SITE 200 214 250
    NOOP 200
    FEAT 211
    OPTS 200
    AUTH 234 334
    ADAT 235 335
    PBSZ 200
    PROT 200
    CCC 200
    SIZE 213
    MDTM 213
    MFMT 213
    MLST 250
    HOST 220 120
    LANG 200
    CLNT 200
    AVBL 213
"""
CODE_FITS: dict[str, frozenset[int]] = {
    parts[0]: frozenset(int(code) for code in parts[1:])
    for parts in (line.split() for line in _FITS_TEXT.strip().splitlines())
}


def fits(verb: str, code: int) -> bool:
    """Could `code` be a reply to `verb`?  Errors (4xx-6xx) and 202 fit any command."""
    if code >= 400 or code == 202:
        return True
    allowed = CODE_FITS.get(verb)
    return allowed is None or code in allowed


class Command:
    """One command waiting for (or being answered by) its reply."""

    __slots__ = ("verb", "request", "data_bytes", "prelim", "user")

    def __init__(self, verb: str, request: str, user: str = "") -> None:
        self.verb = verb
        self.request = request               # as written out: "PASS ****", never the secret
        self.data_bytes: int | None = None   # bytes seen on its data connection
        self.prelim = False                  # a 1xx already answered it
        self.user = user                     # USER argument for USER/PASS/ACCT


class FtpSession:
    """Pending commands, pairing and login outcome of one control connection."""

    def __init__(self, note: Note) -> None:
        self.note = note
        self.pending: deque[Command] = deque()
        self.greeted = False          # a final reply was seen: the greeting window is over
        self.desync = False           # lost bytes made FIFO pairing doubtful
        self.last_transfer: Command | None = None
        self.user = ""
        self.login = "none"
        self.failed: list[str] = []   # user names of failed logins, the first MAX_FAILED_LOGINS_KEPT
        self.failed_count = 0
        self.logins = 0
        self.commands = 0
        self.replies = 0

    def command(self, verb: str, request: str, ts: float, frame: int, user: str | None = None) -> Command | None:
        """A client command; `user` is USER's argument.  None when the queue is full."""
        self.commands += 1
        if verb == "USER":
            self.user = (user or "")[:MAX_USER_CHARS]
        if len(self.pending) >= MAX_PENDING_COMMANDS:
            self.note("ftp_too_many_pending_commands", ts, frame, request)
            return None
        cmd = Command(verb, request, self.user)
        self.pending.append(cmd)
        return cmd

    def lost_bytes(self) -> None:
        self.desync = True

    def reply(self, code: int, text: str, ts: float, frame: int, flags: list[str]) -> Command | None:
        """A complete reply: the command it answers (None for none), with the
        pairing anomalies appended to `flags`; the login outcome follows."""
        self.replies += 1
        cmd = self._pair(code, ts, frame, flags)
        if cmd is not None:
            self._session(cmd, code)
        return cmd

    def malformed(self) -> Command | None:
        """"230_no_space", "99 x": not an RFC 959 reply, but the server's
        (broken) answer to the oldest command, which it consumes."""
        return self.pending.popleft() if self.pending and self.greeted else None

    def clear(self) -> None:
        """The channel went encrypted (AUTH TLS): nothing more can pair."""
        self.pending.clear()

    def close(self, ts: float) -> None:
        for cmd in self.pending:
            self.note("ftp_command_without_reply", ts, 0, cmd.request)
        self.pending.clear()

    def outcome(self) -> dict:
        return {
            "user": self.user,
            "login": self.login,
            "failed_logins": list(self.failed),
            "failed_login_count": self.failed_count,
            "logins": self.logins,
            "commands": self.commands,
            "replies": self.replies,
        }

    def _pair(self, code: int, ts: float, frame: int, flags: list[str]) -> Command | None:
        prelim = code < 200
        if not self.greeted and code in GREETING_CODES:
            # The greeting answers nothing, even if commands were pipelined before it.
            self.greeted = not prelim
            return None
        self.greeted = True
        pending = self.pending
        if not pending:
            if code not in UNSOLICITED_CODES:
                flags.append("ftp_reply_without_command")
                self.note("ftp_reply_without_command", ts, frame, str(code))
            return None
        index = self._choose(code)
        if index is None:
            flags.append("ftp_reply_without_command")
            self.note("ftp_reply_without_command", ts, frame, f"{code} answers a command lost in a gap")
            return None
        for _ in range(index):
            lost = pending.popleft()
            self.note("ftp_command_without_reply", ts, frame, lost.request)
        cmd = pending[0]
        if prelim:
            cmd.prelim = True
        else:
            pending.popleft()
            if cmd.verb in TRANSFER_VERBS:
                self.last_transfer = cmd
        return cmd

    def _choose(self, code: int) -> int | None:
        """Index of the pending command this reply answers; None if it answers an unseen one."""
        pending = self.pending
        head = pending[0]
        if fits(head.verb, code):
            if self.desync and 200 <= code < 400:
                self.desync = False   # a positive reply fits: back in step
            return 0
        # The head does not fit.  Skip it only where a reply may legitimately be
        # missing: after lost bytes, or in the ABOR dance.
        if self.desync or head.verb in TRANSFER_VERBS or head.verb == "ABOR":
            for index in range(1, len(pending)):
                if fits(pending[index].verb, code):
                    return index
            if self.desync:
                return None
        return 0

    def _session(self, cmd: Command, code: int) -> None:
        if cmd.verb not in ("USER", "PASS", "ACCT") or code < 200:
            return
        if code in (230, 232) or (code == 202 and cmd.verb != "USER"):
            self.login = "success"
            self.logins += 1
        elif code == 530:
            self.login = "failed"
            self.failed_count += 1
            if len(self.failed) < MAX_FAILED_LOGINS_KEPT:
                self.failed.append(cmd.user)
