# TLS, recognised so that it is counted, not decoded.
#
# The native engine cannot see status codes inside TLS; what it can do is say
# how many connections were encrypted (status unknown) and to which server
# name, so a report never silently omits them.  The tshark engine with a key
# log decodes them (analyzer/engines/tshark.py).
#
# Only the first handshake message of each direction is read: the
# ClientHello's server_name (RFC 6066 §3) and the record version.  Everything
# after is skipped without buffering.
from __future__ import annotations

from analyzer.events import Event
from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED, Dissector

HANDSHAKE = 0x16
CLIENT_HELLO, SERVER_HELLO = 1, 2
EXT_SERVER_NAME = 0
# A ClientHello is one record (RFC 8446 allows up to 2^14 bytes of it).
MAX_HELLO_BYTES = 16 * 1024 + 5


def _looks_like_hello(head: bytes) -> str:
    if len(head) < 6:
        prefix = bytes([HANDSHAKE, 3])
        return NEED_MORE if head == prefix[: len(head)] or (len(head) >= 2 and head[:2] == prefix) else REJECTED
    if head[0] == HANDSHAKE and head[1] == 3 and head[2] <= 4 and head[5] in (CLIENT_HELLO, SERVER_HELLO):
        length = int.from_bytes(head[3:5], "big")
        return DETECTED if 4 <= length <= MAX_HELLO_BYTES else REJECTED
    return REJECTED


def detect(head0: bytes, head1: bytes, port_hint: bool = False, midstream: bool = False) -> str:
    verdicts = [_looks_like_hello(h) for h in (head0, head1) if h]
    if DETECTED in verdicts:
        return DETECTED
    if NEED_MORE in verdicts or not verdicts or len(verdicts) == 1:
        return NEED_MORE
    return REJECTED


def server_name(hello: bytes) -> str:
    """The SNI host name of a ClientHello record, or ""; never raises."""
    try:
        pos = 5 + 4 + 2 + 32                     # record + handshake headers, version, random
        pos += 1 + hello[pos]                    # session id
        pos += 2 + int.from_bytes(hello[pos:pos + 2], "big")   # cipher suites
        pos += 1 + hello[pos]                    # compression methods
        end = pos + 2 + int.from_bytes(hello[pos:pos + 2], "big")
        pos += 2
        while pos + 4 <= min(end, len(hello)):
            kind = int.from_bytes(hello[pos:pos + 2], "big")
            size = int.from_bytes(hello[pos + 2:pos + 4], "big")
            if kind == EXT_SERVER_NAME:
                name_len = int.from_bytes(hello[pos + 7:pos + 9], "big")
                return hello[pos + 9:pos + 9 + name_len].decode("ascii", "backslashreplace")
            pos += 4 + size
    except IndexError:
        pass
    return ""


class TlsDissector(Dissector):
    protocol = "tls"

    def __init__(self, server_direction: int | None = None, midstream: bool = False) -> None:
        super().__init__()
        self.server_direction = server_direction
        self.heads = [b"", b""]
        self.sni = ""
        self.bytes = [0, 0]

    def feed(self, data: bytes, direction: int, ts: float, frame: int) -> list[Event]:
        self.bytes[direction] += len(data)
        head = self.heads[direction]
        if len(head) < MAX_HELLO_BYTES:
            head = self.heads[direction] = head + data[: MAX_HELLO_BYTES - len(head)]
            self.buffered = len(self.heads[0]) + len(self.heads[1])   # base.py: charged by the table
            if len(head) >= 6 and head[0] == HANDSHAKE:
                if head[5] == CLIENT_HELLO:
                    if self.server_direction is None:
                        self.server_direction = 1 - direction
                    if not self.sni:
                        self.sni = server_name(head)
                elif head[5] == SERVER_HELLO and self.server_direction is None:
                    self.server_direction = direction
        return []

    def outcome(self) -> dict:
        return {"encrypted": True, "status": "unknown", "sni": self.sni}
