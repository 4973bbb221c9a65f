# SOCKS 4, 4a (SOCKS 4A note, Ying-Da Lee) and 5 (RFC 1928, with RFC 1929
# username/password): the proxy handshake, then a tunnel.
#
# A client behind a SOCKS proxy opens one TCP connection to the proxy, asks
# it to CONNECT to a target (host:port), and once the proxy grants it the
# same connection carries the client's protocol (HTTP, FTP, TLS...).  This
# dissector reads the handshake of both sides, records the target and the
# outcome, and hands the rest of the connection over to detection
# (protocols/base.py Handover): the tunnelled HTTP gets its events as if the
# client had connected directly.
#
# Both directions are buffered only during the handshake (bounded by
# MAX_HANDSHAKE_BYTES).  A client may send its request before the server has
# chosen a method (optimistic data): the client buffer is parsed in order
# whatever arrives first.  Passwords (RFC 1929) are never stored: the buffer
# holding one is cut off as soon as it is parsed.
#
# Anomalies: socks_tunnel (info: the target), socks_request_failed (the
# proxy refused: its code), socks_no_acceptable_method, socks_auth_failed,
# socks_handshake_malformed, socks_handshake_too_long.
from __future__ import annotations

import ipaddress

from analyzer.events import Event
from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED, Dissector, Handover

# The longest SOCKS5 handshake: 2 + 255 methods, 3 + 255 + 255 auth, 7 + 255
# domain; SOCKS4a: 8 + user id + domain.  More is not SOCKS.
MAX_HANDSHAKE_BYTES = 2048
MAX_FIELD = 255

# RFC 1928 section 6 replies.
SOCKS5_REPLIES = {
    0: "succeeded", 1: "general SOCKS server failure", 2: "connection not allowed by ruleset",
    3: "network unreachable", 4: "host unreachable", 5: "connection refused", 6: "TTL expired",
    7: "command not supported", 8: "address type not supported",
}
# SOCKS 4 CD of a reply.
SOCKS4_REPLIES = {90: "request granted", 91: "request rejected or failed",
                  92: "rejected: identd unreachable", 93: "rejected: user id mismatch"}
COMMANDS = {1: "connect", 2: "bind", 3: "udp-associate"}
NO_ACCEPTABLE = 0xFF
USERPASS = 0x02


def _addr(atyp: int, raw: bytes) -> str:
    if atyp == 1:
        return str(ipaddress.IPv4Address(raw))
    if atyp == 4:
        return f"[{ipaddress.IPv6Address(raw)}]"
    return raw.decode("utf-8", "backslashreplace")


# --- reading one message from the start of a buffer -----------------------------
# Each returns (message, length) or None for "need more"; raises ValueError
# for bytes that are not that message.

def _socks5_greeting(buf: bytes):
    if len(buf) < 2:
        return None
    if buf[0] != 5 or not 1 <= buf[1]:
        raise ValueError("not a SOCKS5 greeting")
    n = 2 + buf[1]
    return (bytes(buf[2:n]), n) if len(buf) >= n else None


def _socks5_request(buf: bytes):
    """VER CMD RSV ATYP DST.ADDR DST.PORT (RFC 1928 section 4); the reply has the same shape."""
    if len(buf) < 5:
        return None
    if buf[0] != 5 or buf[2] != 0 or buf[3] not in (1, 3, 4):
        raise ValueError("not a SOCKS5 request/reply")
    atyp = buf[3]
    alen = {1: 4, 4: 16}.get(atyp, buf[4] + 1)
    n = 4 + alen + 2
    if len(buf) < n:
        return None
    raw = buf[4:4 + alen] if atyp != 3 else buf[5:4 + alen]
    port = int.from_bytes(buf[4 + alen:n], "big")
    return (buf[1], _addr(atyp, bytes(raw)), port), n


def _userpass(buf: bytes):
    """RFC 1929: VER ULEN UNAME PLEN PASSWD; the password is not returned."""
    if len(buf) < 2:
        return None
    if buf[0] != 1:
        raise ValueError("not an RFC 1929 request")
    ulen = buf[1]
    if len(buf) < 3 + ulen:
        return None
    plen = buf[2 + ulen]
    n = 3 + ulen + plen
    return (bytes(buf[2:2 + ulen]).decode("utf-8", "backslashreplace"), n) if len(buf) >= n else None


def _socks4_request(buf: bytes):
    """VN=4 CD DSTPORT DSTIP USERID NUL [domain NUL for 4a, DSTIP 0.0.0.x]."""
    if len(buf) < 9:
        return None
    if buf[0] != 4 or buf[1] not in (1, 2):
        raise ValueError("not a SOCKS4 request")
    end = buf.find(b"\0", 8)
    if end < 0:
        if len(buf) > 8 + MAX_FIELD:
            raise ValueError("SOCKS4 user id too long")
        return None
    user = bytes(buf[8:end]).decode("utf-8", "backslashreplace")
    port = int.from_bytes(buf[2:4], "big")
    ip = bytes(buf[4:8])
    n = end + 1
    if ip[:3] == b"\0\0\0" and ip[3]:
        host_end = buf.find(b"\0", n)
        if host_end < 0:
            if len(buf) > n + MAX_FIELD:
                raise ValueError("SOCKS4a host name too long")
            return None
        host = bytes(buf[n:host_end]).decode("utf-8", "backslashreplace")
        return (buf[1], host, port, user, "socks4a"), host_end + 1
    return (buf[1], str(ipaddress.IPv4Address(ip)), port, user, "socks4"), n


def _socks4_reply(buf: bytes):
    if len(buf) < 8:
        return None
    if buf[0] != 0 or buf[1] not in SOCKS4_REPLIES:
        raise ValueError("not a SOCKS4 reply")
    return buf[1], 8


# --- detection ----------------------------------------------------------------------

def detect(head0: bytes, head1: bytes, port_hint: bool = False, midstream: bool = False) -> str:
    """A SOCKS client greeting/request from one side, answered by the proxy's
    reply shape from the other.  A handshake has no mid-stream form."""
    if midstream:
        return REJECTED
    for client, server in ((head0, head1), (head1, head0)):
        if len(client) < 2:
            continue
        if client[0] == 5:
            greeting = _try(_socks5_greeting, client)
            if greeting is False:
                continue
            if not server:
                return NEED_MORE if greeting is None or len(client) < 64 else REJECTED
            if len(server) >= 2 and server[0] == 5 and (server[1] in (0, 1, USERPASS, NO_ACCEPTABLE)
                                                        or 0x80 <= server[1] < 0xFF):
                return DETECTED
            return REJECTED if len(server) >= 2 else NEED_MORE
        if client[0] == 4:
            request = _try(_socks4_request, client)
            if request is False:
                continue
            if not server:
                return NEED_MORE if request is None or len(client) < 600 else REJECTED
            return DETECTED if _try(_socks4_reply, server) is True else (NEED_MORE if len(server) < 8 else REJECTED)
    return REJECTED if (head0 and head0[0] not in (4, 5)) or (head1 and head1[0] not in (0, 4, 5)) else NEED_MORE


def _try(reader, buf: bytes):
    """True when a whole message parses, None when more is needed, False when it is not one."""
    try:
        return reader(buf) is not None or None
    except ValueError:
        return False


# --- the dissector --------------------------------------------------------------------

class SocksDissector(Dissector):
    """The SOCKS handshake of one connection; then a Handover of the tunnel."""

    protocol = "socks"

    def __init__(self, server_direction: int | None = None, midstream: bool = False) -> None:
        super().__init__()
        self.server_direction = 1 if server_direction is None else server_direction
        self.bufs = (bytearray(), bytearray())
        self.version = ""
        self.target = ""
        self.command = ""
        self.user = ""
        self.reply = ""
        self.done = False
        # Where the client stands: "greeting", "auth", "request", "sent"
        self._client_step = "start"
        self._server_step = "start"
        self._method: int | None = None
        self._replies_wanted = 1

    def feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        if self.handover is not None:
            return self.handover.feed(data, direction, ts, frame)
        if self.done or not data:
            return []
        buf = self.bufs[direction]
        buf += data
        if len(buf) > MAX_HANDSHAKE_BYTES:
            self._fail("socks_handshake_too_long", ts, frame, f"{len(buf)} bytes without a complete handshake")
            return []
        try:
            self._advance(ts, frame)
        except ValueError as exc:
            self._fail("socks_handshake_malformed", ts, frame, str(exc))
        return []

    def gap(self, nbytes: int, direction: int, ts: float, frame: int) -> list[Event]:
        if self.handover is not None:
            return self.handover.gap(nbytes, direction, ts, frame)
        if not self.done:
            self._fail("socks_handshake_malformed", ts, frame, f"{nbytes} bytes lost in the handshake")
        return []

    def end(self, direction: int, ts: float, frame: int, rst: bool) -> list[Event]:
        if self.handover is not None:
            return self.handover.end(direction, ts, frame, rst)
        return []

    def outcome(self) -> dict:
        return {"version": self.version, "command": self.command, "target": self.target,
                "user": self.user, "reply": self.reply}

    # -- the handshake, client and server in step -------------------------------
    def _advance(self, ts: float, frame: int) -> None:
        sd = self.server_direction
        client, server = self.bufs[1 - sd], self.bufs[sd]
        progress = True
        while progress and not self.done:
            progress = False
            if self._client_step == "start" and client:
                if client[0] == 5:
                    got = _socks5_greeting(client)
                    if got is not None:
                        self.version = "socks5"
                        del client[:got[1]]
                        self._client_step = "greeted"
                        progress = True
                elif client[0] == 4:
                    got = _socks4_request(client)
                    if got is not None:
                        (cmd, host, port, user, version), n = got
                        del client[:n]
                        self.version, self.user = version, user[:128]
                        self._request(cmd, host, port)
                        self._client_step = "sent"
                        progress = True
                else:
                    raise ValueError(f"client version {client[0]}")
            if self.version == "socks5":
                progress |= self._socks5(client, server, ts, frame)
            elif self.version in ("socks4", "socks4a") and self._client_step == "sent":
                got = _socks4_reply(server) if server else None
                if got is not None:
                    code, n = got
                    del server[:n]
                    self._replied(code == 90, f"{code} {SOCKS4_REPLIES[code]}", ts, frame)
                    progress = True

    def _socks5(self, client: bytearray, server: bytearray, ts: float, frame: int) -> bool:
        progress = False
        if self._server_step == "start" and len(server) >= 2:
            if server[0] != 5:
                raise ValueError("server version is not 5")
            self._method = server[1]
            del server[:2]
            self._server_step = "method"
            progress = True
            if self._method == NO_ACCEPTABLE:
                self._fail("socks_no_acceptable_method", ts, frame, "the proxy accepted none of the methods")
                return progress
        if self._method == USERPASS:
            if self._client_step == "greeted":
                got = _userpass(client)
                if got is not None:
                    user, n = got
                    del client[:n]      # the password goes with it
                    self.user = user[:128]
                    self._client_step = "authed"
                    progress = True
            if self._server_step == "method" and len(server) >= 2:
                status = server[1]
                del server[:2]
                self._server_step = "authed"
                progress = True
                if status != 0:
                    self._fail("socks_auth_failed", ts, frame, f"status {status} for user {self.user!r}")
                    return progress
        ready = self._client_step == ("authed" if self._method == USERPASS else "greeted")
        if self._method is not None and ready:
            got = _socks5_request(client)
            if got is not None:
                (cmd, host, port), n = got
                del client[:n]
                self._request(cmd, host, port)
                self._client_step = "sent"
                progress = True
        waiting = self._server_step == ("authed" if self._method == USERPASS else "method")
        if self._client_step == "sent" and waiting:
            got = _socks5_request(server)
            if got is not None:
                (code, _, _), n = got
                del server[:n]
                self._replies_wanted -= 1
                if code != 0 or self._replies_wanted == 0:
                    self._replied(code == 0, f"{code} {SOCKS5_REPLIES.get(code, 'unassigned')}", ts, frame)
                progress = True
        return progress

    def _request(self, cmd: int, host: str, port: int) -> None:
        self.command = COMMANDS.get(cmd, f"command {cmd}")
        self.target = f"{host}:{port}"
        if cmd == 2:
            self._replies_wanted = 2   # BIND: the second reply says the peer connected

    def _replied(self, ok: bool, reply: str, ts: float, frame: int) -> None:
        self.reply = reply
        if not ok:
            self._fail("socks_request_failed", ts, frame, f"{self.command} {self.target}: {reply}")
            return
        if self.command not in ("connect", "bind"):
            self._fail("", ts, frame)     # UDP ASSOCIATE: the TCP connection carries nothing more
            return
        self.done = True
        sd = self.server_direction
        hand = self.handover = Handover({"protocol": self.version, "target": self.target, "user": self.user})
        for direction in (1 - sd, sd):
            rest = self.bufs[direction]
            if rest:
                hand.feed(bytes(rest), direction, ts, frame)
        self.bufs[0].clear()
        self.bufs[1].clear()
        self.anomaly("socks_tunnel", ts, frame, f"{self.version} {self.command} {self.target}")

    def _fail(self, name: str, ts: float, frame: int, detail: str = "") -> None:
        self.done = True
        self.bufs[0].clear()
        self.bufs[1].clear()
        if name:
            self.anomaly(name, ts, frame, detail)
