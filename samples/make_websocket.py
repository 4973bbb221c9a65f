#!/usr/bin/env python3
# Record real WebSocket traffic on loopback, and write down what the peers
# themselves say happened, for the WebSocket dissector to be checked against.
#
# Strategy.  Servers and clients are real implementations: the `websockets`
# library (asyncio, sync) and aiohttp, plus a raw-socket client for the
# frames libraries refuse to send (invalid UTF-8 text, a close frame split in
# two segments).  Every scenario is one TCP connection; the truth comes from
# the peers' own logs, never from a dissector: websockets' protocol object
# records the close frame it sent and the one it received (and in which
# order), the raw client records its own frames, and the script knows which
# process it SIGKILLed or reset.  Where both peers keep such a log, the two
# must agree or the script fails.
#
# Output (run as root: tcpdump): samples/captures/ws_<group>.pcap and
# ws_<group>.expected.json, one entry per scenario with its ports, the close
# events the analyzer must report (code, reason, direction, inferred) in
# wire order, the connection state, who closed first, and the raw logs.
# Re-runnable: ports are picked afresh, files are overwritten.
#
# Limits.  Which side's FIN comes first after a close handshake is up to the
# implementations and is not part of the expectation; nor are frame numbers.
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import websockets  # noqa: E402
from aiohttp import web  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402

from samples.capture import CAPTURES, free_port, tcpdump  # noqa: E402

HOST = "127.0.0.1"
IMPL_WS = f"websockets {websockets.__version__}"
IMPL_AIO = f"aiohttp {aiohttp.__version__}"
IMPL_RAW = "raw socket client (samples/make_websocket.py)"
WAIT = 5.0  # seconds any peer may take to finish a close handshake
FLUSH_S = 1.5  # > libpcap's 1 s TPACKET_V3 block timeout (see record())

# ------------------------------------------------------------------ logs --


def close_dict(close) -> dict | None:
    """A websockets Close record as data (code 1005 = sent without status)."""
    return None if close is None else {"code": int(close.code), "reason": close.reason}


def protocol_log(conn) -> dict:
    """What websockets' sans-IO protocol object saw on this connection."""
    proto = conn.protocol
    return {
        "close_sent": close_dict(proto.close_sent),
        "close_rcvd": close_dict(proto.close_rcvd),
        "close_rcvd_then_sent": proto.close_rcvd_then_sent,
    }


def wire_closes(name: str, logs: dict) -> list[dict]:
    """Close frames on the wire, in wire order, from the peers' logs.

    A peer's log is authoritative for the close frame it sent; what it
    received confirms the other direction, or stands in for a peer that
    keeps no such log (aiohttp).  A peer that fails the connection (e.g.
    websockets on invalid UTF-8) stops reading, so "not received" proves
    nothing.  Order: any log holding both frames says which came first.
    """
    peers = {role: log for role, log in logs.items()
             if role in ("client", "server") and log is not None and "close_sent" in log}
    if not peers:
        raise SystemExit(f"{name}: no peer log to derive the truth from")
    other = {"client": "server", "server": "client"}
    frames = {role: log["close_sent"] for role, log in peers.items() if log["close_sent"]}
    for role, log in peers.items():
        received = log["close_rcvd"]
        if received is None:
            continue
        sender = other[role]
        if sender in peers and frames.get(sender) != received:
            raise SystemExit(f"{name}: {role} received {received}, {sender} sent {frames.get(sender)}")
        frames[sender] = received
    order = list(frames)
    if len(frames) == 2:
        verdicts = {other[role] if log["close_rcvd_then_sent"] else role
                    for role, log in peers.items() if log["close_rcvd_then_sent"] is not None}
        if len(verdicts) != 1:
            raise SystemExit(f"{name}: cannot tell which close frame came first: {logs}")
        first = verdicts.pop()
        order = [first, other[first]]
    return [{"code": frames[r]["code"], "text": frames[r]["reason"],
             "direction": f"{r}->{other[r]}", "inferred": frames[r]["code"] == 1005}
            for r in order]


def scenario(name: str, what: str, client: str, server: str, client_port: int, server_port: int,
             request: str, logs: dict, *, abort: str = "", how: str = "") -> dict:
    """Expected outcome from the logs.  `abort` = "client"/"server": the
    script killed ("fin": its kernel closes the drained socket) or reset
    ("rst") that side, so without a close frame the analyzer must infer
    1006 from that side's FIN/RST."""
    events = wire_closes(name, logs)
    state = "closed" if events else "aborted"
    if not events:
        if not abort:
            raise SystemExit(f"{name}: no close frame and no abort: the connection is still open?")
        events = [{"code": 1006, "text": "", "inferred": True,
                   "direction": "client->server" if abort == "client" else "server->client"}]
    first = events[0]["direction"].split("->")[0]
    result = {
        "name": name, "what": what, "client": client, "server": server,
        "client_port": client_port, "server_port": server_port, "request": request,
        "events": events, "state": state, "closed_first_by": first, "logs": logs,
    }
    if state == "aborted":
        result["ended_by"] = f"{how}_by_{abort}"
    return result


# --------------------------------------------------------------- servers --

class WsServer:
    """A websockets server whose connections stay inspectable after close."""

    def __init__(self, **options) -> None:
        self.port = free_port()
        self.options = options
        self.conns: dict[int, object] = {}   # client port -> ServerConnection
        self.server = None

    async def start(self) -> None:
        self.server = await serve(self.handler, HOST, self.port, ping_interval=None,
                                  close_timeout=WAIT, **self.options)

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def handler(self, ws) -> None:
        self.conns[ws.remote_address[1]] = ws
        url = urllib.parse.urlsplit(ws.request.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        if url.path == "/echo":
            async for message in ws:
                await ws.send(message)
        elif url.path == "/close":
            await ws.recv()
            code = None if query["code"] == "none" else int(query["code"])
            await ws.close(code, query.get("reason", ""))
        elif url.path == "/crash":
            await ws.recv()
            raise RuntimeError("handler failed on purpose (expect 1011)")
        elif url.path == "/hold":
            await ws.wait_closed()

    async def log(self, client_port: int) -> dict:
        for _ in range(int(WAIT / 0.05)):
            if client_port in self.conns:
                break
            await asyncio.sleep(0.05)
        conn = self.conns[client_port]
        await asyncio.wait_for(conn.wait_closed(), WAIT)
        return protocol_log(conn)


class AioLog:
    """An aiohttp peer's own close log, kept like websockets' (autoclose is
    off so that the script, not aiohttp, answers a close and writes it down)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.log = {"close_sent": None, "close_rcvd": None, "close_rcvd_then_sent": None}

    def received(self, msg) -> None:
        # aiohttp reports an empty close payload as code 0: that is 1005.
        self.log["close_rcvd"] = {"code": msg.data or 1005, "reason": msg.extra or ""}

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Send our close frame: 1000 without reason, as aiohttp's autoclose
        would, unless told otherwise."""
        first = self.log["close_rcvd"] is None
        if await self.ws.close(code=code, message=reason.encode()):
            self.log["close_sent"] = {"code": code, "reason": reason}
            if not first:
                self.log["close_rcvd_then_sent"] = True
            else:
                # aiohttp reads the answer inside close(); it keeps the code only.
                self.log["close_rcvd_then_sent"] = None
                self.log["answer_code_seen"] = self.ws.close_code


CLOSING = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
           aiohttp.WSMsgType.ERROR)


class AioServer:
    """An aiohttp server (permessage-deflate offered, its default)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.logs: dict[int, dict] = {}
        self.done: dict[int, asyncio.Event] = {}
        self.runner = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{tail:.*}", self.handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, HOST, self.port).start()

    async def stop(self) -> None:
        await self.runner.cleanup()

    async def handler(self, request):
        port = request.transport.get_extra_info("peername")[1]
        done = self.done.setdefault(port, asyncio.Event())
        ws = web.WebSocketResponse(compress=True, autoclose=False, heartbeat=None)
        await ws.prepare(request)
        me = AioLog(ws)
        try:
            while True:
                msg = await ws.receive()
                if msg.type in CLOSING:
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        me.received(msg)
                        await me.close()
                    break
                if request.path == "/close":
                    await me.close(int(request.query["code"]), request.query["reason"])
                    break
                if request.path == "/text-only" and msg.type == aiohttp.WSMsgType.BINARY:
                    await me.close(1003, "binary messages are not accepted")
                    break
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await ws.send_str(msg.data)
                elif msg.type == aiohttp.WSMsgType.BINARY:
                    await ws.send_bytes(msg.data)
        finally:
            self.logs[port] = me.log
            done.set()
        return ws

    async def log(self, client_port: int) -> dict:
        for _ in range(int(WAIT / 0.05)):
            if client_port in self.done:
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(self.done[client_port].wait(), WAIT)
        return self.logs[client_port]


# ------------------------------------------------------------ raw client --

def _mask(payload: bytes, key: bytes) -> bytes:
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def raw_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame, masked as RFC 6455 Section 5.3 requires."""
    key = os.urandom(4)
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n <= 0xFFFF:
        head += bytes([0x80 | 126]) + struct.pack("!H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", n)
    return head + key + _mask(payload, key)


class RawClient:
    """Blocking client speaking just enough RFC 6455 for crafted frames."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=WAIT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.port = self.sock.getsockname()[1]
        self.buf = b""
        self.log = {"close_sent": None, "close_rcvd": None, "close_rcvd_then_sent": None}
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(f"handshake refused: {head[:40]!r}")

    def _more(self) -> bool:
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def read_frame(self) -> tuple[int, bytes]:
        while True:
            if len(self.buf) >= 2:
                n, off = self.buf[1] & 0x7F, 2
                if n == 126 and len(self.buf) >= 4:
                    n, off = struct.unpack("!H", self.buf[2:4])[0], 4
                elif n == 127 and len(self.buf) >= 10:
                    n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
                if n < 126 and len(self.buf) >= off + n:
                    opcode, payload = self.buf[0] & 0x0F, self.buf[off:off + n]
                    self.buf = self.buf[off + n:]
                    return opcode, payload
            if not self._more():
                raise ConnectionError("EOF before a whole frame")

    def send_close(self, code: int, reason: str, split_at: int | None = None) -> None:
        wire = raw_frame(0x8, struct.pack("!H", code) + reason.encode())
        if split_at is None:
            self.sock.sendall(wire)
        else:
            # Two send() calls with TCP_NODELAY and a pause: two segments.
            self.sock.sendall(wire[:split_at])
            time.sleep(0.15)
            self.sock.sendall(wire[split_at:])
        self.log["close_sent"] = {"code": code, "reason": reason}
        if self.log["close_rcvd"] is not None and self.log["close_rcvd_then_sent"] is None:
            self.log["close_rcvd_then_sent"] = True

    def await_close(self) -> None:
        """Read until the server's close frame; echo its code (Section 5.5.1)."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.log["close_rcvd"] = {"code": code, "reason": payload[2:].decode("utf-8", "replace")}
                if self.log["close_sent"] is not None:
                    self.log["close_rcvd_then_sent"] = False
                return

    def finish(self) -> None:
        """Wait for the server to close TCP first (Section 7.1.1), then close."""
        self.sock.settimeout(WAIT)
        try:
            while self._more():
                pass
        except ConnectionResetError:
            pass                       # the server had already closed its socket
        self.sock.close()


# ------------------------------------------------------------- scenarios --

async def ws_client(url: str, **options):
    return await connect(url, ping_interval=None, close_timeout=WAIT, proxy=None, **options)


async def client_close_1000(aio: AioServer) -> dict:
    ws = await ws_client(f"ws://{HOST}:{aio.port}/echo")
    port = ws.local_address[1]
    for i in range(3):
        await ws.send(f"hello {i}")
        await ws.recv()
    await ws.close(1000, "done")
    return scenario("client_close_1000", "client closes normally; aiohttp answers the close",
                    IMPL_WS, IMPL_AIO, port, aio.port, "GET /echo",
                    {"client": protocol_log(ws), "server": await aio.log(port)})


async def aio_client_session(url: str, messages: list, compress: int = 0):
    """aiohttp client: send `messages`, read until the server closes, answer
    with 1000 (what aiohttp's autoclose sends)."""
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, compress=compress, autoclose=False, autoping=True) as ws:
            port = ws.get_extra_info("sockname")[1]
            me = AioLog(ws)
            for message in messages:
                if isinstance(message, bytes):
                    await ws.send_bytes(message)
                else:
                    await ws.send_str(message)
            while True:
                msg = await ws.receive(timeout=WAIT)
                if msg.type in CLOSING:
                    if msg.type == aiohttp.WSMsgType.CLOSE:
                        me.received(msg)
                        await me.close()
                    break
            return port, me.log


async def server_close_1000(wss: WsServer) -> dict:
    path = "/close?" + urllib.parse.urlencode({"code": 1000, "reason": "bye"})
    port, log = await aio_client_session(f"ws://{HOST}:{wss.port}{path}", ["hi"])
    return scenario("server_close_1000", "server closes normally; aiohttp client answers",
                    IMPL_AIO, IMPL_WS, port, wss.port, f"GET {path}",
                    {"client": log, "server": await wss.log(port)})


async def going_away_1001(bye: WsServer) -> dict:
    ws = await ws_client(f"ws://{HOST}:{bye.port}/hold")
    port = ws.local_address[1]
    await ws.send("hello")
    await asyncio.sleep(0.1)
    await bye.stop()                   # websockets closes open connections with 1001
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return scenario("going_away_1001", "server shuts down: websockets sends 1001 to its clients",
                    IMPL_WS, IMPL_WS, port, bye.port, "GET /hold",
                    {"client": protocol_log(ws), "server": protocol_log(bye.conns[port])})


async def unsupported_1003(aio: AioServer) -> dict:
    ws = await ws_client(f"ws://{HOST}:{aio.port}/text-only")
    port = ws.local_address[1]
    await ws.send("text is fine")
    await ws.recv()
    await ws.send(b"\x00\x01binary is not")
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return scenario("unsupported_1003", "aiohttp server refuses a binary message with 1003",
                    IMPL_WS, IMPL_AIO, port, aio.port, "GET /text-only",
                    {"client": protocol_log(ws), "server": await aio.log(port)})


def _raw_invalid_utf8(port: int) -> RawClient:
    raw = RawClient(port, "/echo")
    raw.sock.sendall(raw_frame(0x1, b"caf\xc3\xa9 ok"))
    raw.read_frame()
    raw.sock.sendall(raw_frame(0x1, b"bad \xff\xfe text"))
    raw.await_close()
    code = raw.log["close_rcvd"]["code"]
    raw.send_close(code, "")
    raw.finish()
    return raw


async def invalid_utf8_1007(wss: WsServer) -> dict:
    raw = await asyncio.to_thread(_raw_invalid_utf8, wss.port)
    return scenario("invalid_utf8_1007", "client sends invalid UTF-8 text; websockets closes with 1007",
                    IMPL_RAW, IMPL_WS, raw.port, wss.port, "GET /echo",
                    {"client": raw.log, "server": await wss.log(raw.port)})


async def policy_1008(wss: WsServer) -> dict:
    path = "/close?" + urllib.parse.urlencode({"code": 1008, "reason": "token expired"})
    port, log = await aio_client_session(f"ws://{HOST}:{wss.port}{path}", ["token=abc"], compress=15)
    return scenario("policy_1008", "server closes with 1008 and a reason (aiohttp client, compression on)",
                    IMPL_AIO, IMPL_WS, port, wss.port, f"GET {path}",
                    {"client": log, "server": await wss.log(port)})


async def too_big_1009(small: WsServer) -> dict:
    port, log = await aio_client_session(f"ws://{HOST}:{small.port}/echo", ["x" * 4096])
    return scenario("too_big_1009", "4 KiB message to a server limited to 1 KiB: 1009",
                    IMPL_AIO, IMPL_WS, port, small.port, "GET /echo",
                    {"client": log, "server": await small.log(port)})


async def internal_1011(wss: WsServer) -> dict:
    ws = await ws_client(f"ws://{HOST}:{wss.port}/crash")
    port = ws.local_address[1]
    await ws.send("boom")
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return scenario("internal_1011", "server handler raises: websockets closes with 1011",
                    IMPL_WS, IMPL_WS, port, wss.port, "GET /crash",
                    {"client": protocol_log(ws), "server": await wss.log(port)})


async def private_4001_zh(wss: WsServer) -> dict:
    path = "/close?" + urllib.parse.urlencode({"code": 4001, "reason": "会话已过期，请重新登录"})
    ws = await ws_client(f"ws://{HOST}:{wss.port}{path}")
    port = ws.local_address[1]
    await ws.send("你好")
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return scenario("private_4001_zh", "server closes with a private code and a Chinese reason",
                    IMPL_WS, IMPL_WS, port, wss.port, f"GET {path}",
                    {"client": protocol_log(ws), "server": await wss.log(port)})


async def registered_3003_zh(aio: AioServer) -> dict:
    path = "/close?" + urllib.parse.urlencode({"code": 3003, "reason": "禁止访问"})
    ws = await ws_client(f"ws://{HOST}:{aio.port}{path}")
    port = ws.local_address[1]
    await ws.send("请求")
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return scenario("registered_3003_zh", "aiohttp server closes with 3003 and a Chinese reason",
                    IMPL_WS, IMPL_AIO, port, aio.port, f"GET {path}",
                    {"client": protocol_log(ws), "server": await aio.log(port)})


async def client_no_status(wss: WsServer) -> dict:
    ws = await ws_client(f"ws://{HOST}:{wss.port}/echo")
    port = ws.local_address[1]
    await ws.send("hello")
    await ws.recv()
    await ws.close(None)               # an empty close frame: no status code
    return scenario("client_no_status", "client closes without a status code (empty close frame)",
                    IMPL_WS, IMPL_WS, port, wss.port, "GET /echo",
                    {"client": protocol_log(ws), "server": await wss.log(port)})


async def server_no_status(wss: WsServer) -> dict:
    path = "/close?code=none"
    port, log = await aio_client_session(f"ws://{HOST}:{wss.port}{path}", ["hello"])
    return scenario("server_no_status", "server closes without a status code; aiohttp answers",
                    IMPL_AIO, IMPL_WS, port, wss.port, f"GET {path}",
                    {"client": log, "server": await wss.log(port)})


def _raw_split_close(port: int) -> RawClient:
    raw = RawClient(port, "/echo")
    raw.sock.sendall(raw_frame(0x1, b"hello"))
    raw.read_frame()
    # Header (2) + key (4) + the first byte of the status code, then the rest.
    raw.send_close(1000, "split across two segments", split_at=7)
    raw.await_close()
    raw.finish()
    return raw


async def split_close(wss: WsServer) -> dict:
    raw = await asyncio.to_thread(_raw_split_close, wss.port)
    return scenario("split_close", "client close frame split inside its status code over two segments",
                    IMPL_RAW, IMPL_WS, raw.port, wss.port, "GET /echo",
                    {"client": raw.log, "server": await wss.log(raw.port)})


# The peer that gets SIGKILLed runs as a separate process.
KILLED_CLIENT = """
import sys
from websockets.sync.client import connect
with connect(sys.argv[1], ping_interval=None, proxy=None, compression=None) as ws:
    ws.send("hello from a process about to die")
    ws.recv()
    print(ws.local_address[1], flush=True)
    sys.stdin.read()
"""

KILLED_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve
async def handler(ws):
    async for message in ws:
        await ws.send(message)
async def main():
    async with serve(handler, "127.0.0.1", int(sys.argv[1]), ping_interval=None, compression=None):
        print("ready", flush=True)
        await asyncio.Future()
asyncio.run(main())
"""


async def killed_client(wss: WsServer) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT, f"ws://{HOST}:{wss.port}/echo"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    port = int(await asyncio.to_thread(proc.stdout.readline))
    await asyncio.sleep(0.2)
    proc.kill()                        # SIGKILL: the kernel closes the socket, no close frame
    await asyncio.to_thread(proc.wait)
    return scenario("killed_client", "client process SIGKILLed: its kernel sends FIN, no close frame",
                    "websockets.sync " + websockets.__version__ + " (SIGKILLed)", IMPL_WS, port, wss.port,
                    "GET /echo", {"server": await wss.log(port), "killed": "client"},
                    abort="client", how="fin")


async def killed_server(server_port: int) -> dict:
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SERVER, str(server_port)],
                            stdout=subprocess.PIPE, text=True)
    try:
        await asyncio.to_thread(proc.stdout.readline)   # "ready": no probe connection needed
        ws = await ws_client(f"ws://{HOST}:{server_port}/echo", compression=None)
        port = ws.local_address[1]
        await ws.send("hello")
        await ws.recv()
        await asyncio.sleep(0.2)
    finally:
        proc.kill()                    # SIGKILL: the kernel closes the socket, no close frame
        await asyncio.to_thread(proc.wait)
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return scenario("killed_server", "server process SIGKILLed: its kernel sends FIN, no close frame",
                    IMPL_WS, f"{IMPL_WS} (SIGKILLed)", port, server_port, "GET /echo",
                    {"client": protocol_log(ws), "killed": "server"}, abort="server", how="fin")


async def reset_by_client(aio: AioServer) -> dict:
    ws = await ws_client(f"ws://{HOST}:{aio.port}/echo")
    port = ws.local_address[1]
    await ws.send("hello")
    await ws.recv()
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    ws.transport.abort()               # close with SO_LINGER 0: RST, no close frame
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return scenario("reset_by_client", "client aborts with SO_LINGER 0: RST, no close frame",
                    IMPL_WS, IMPL_AIO, port, aio.port, "GET /echo",
                    {"client": protocol_log(ws), "server": await aio.log(port), "reset": "client"},
                    abort="client", how="rst")


async def compression(wss: WsServer, on: bool) -> dict:
    ws = await ws_client(f"ws://{HOST}:{wss.port}/echo", compression="deflate" if on else None)
    port = ws.local_address[1]
    extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
    for i in range(5):
        await ws.send(f"message {i}: " + "compressible text " * 40)
        await ws.recv()
    await ws.send(["fragmented " * 30, "message " * 30, "end"])   # one message, three frames
    await ws.recv()
    await ws.close(1000, f"compression {'on' if on else 'off'}")
    name = f"compression_{'on' if on else 'off'}"
    result = scenario(name, f"permessage-deflate {'negotiated' if on else 'not offered'}; "
                      "text and a fragmented message, client closes",
                      IMPL_WS, IMPL_WS, port, wss.port, "GET /echo",
                      {"client": protocol_log(ws), "server": await wss.log(port)})
    result["extensions"] = extensions
    return result


# ------------------------------------------------------------------ main --

def write(group: str, scenarios: list[dict]) -> None:
    spec = {
        "capture": f"ws_{group}.pcap",
        "generated_by": "samples/make_websocket.py",
        "about": "close events each connection must yield, from the peers' own logs "
                 "(code 1005 = close frame without status code, inferred; "
                 "1006 = no close frame at all, inferred at the first FIN/RST)",
        "scenarios": scenarios,
    }
    path = CAPTURES / f"ws_{group}.expected.json"
    path.write_text(json.dumps(spec, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.chmod(path, 0o644)
    print(f"{path.relative_to(CAPTURES.parent.parent)}: {len(scenarios)} scenarios")


def bpf(ports) -> str:
    return "tcp and (" + " or ".join(f"port {p}" for p in sorted(set(ports))) + ")"


async def record(group: str, ports: list[int], steps) -> None:
    """Capture while running `steps` (coroutine factories) one after another."""
    path = CAPTURES / f"ws_{group}.pcap"
    results = []
    with tcpdump(path, bpf(ports)):
        for step in steps:
            results.append(await step())
            await asyncio.sleep(0.15)
        # libpcap hands packets over in blocks with a 1 s timeout (TPACKET_V3)
        # and capture.tcpdump does not ask for immediate mode: wait past it,
        # or the last packets never reach the file.
        await asyncio.sleep(FLUSH_S)
    write(group, results)


async def main() -> None:
    wss = WsServer()                              # compression offered (websockets default)
    small = WsServer(max_size=1024, compression=None)
    bye = WsServer(compression=None)              # shut down during going_away_1001
    aio = AioServer()
    for server in (wss, small, bye, aio):
        await server.start()
    try:
        await record("closes", [wss.port, small.port, bye.port, aio.port], [
            lambda: client_close_1000(aio),
            lambda: server_close_1000(wss),
            lambda: going_away_1001(bye),
            lambda: unsupported_1003(aio),
            lambda: invalid_utf8_1007(wss),
            lambda: policy_1008(wss),
            lambda: too_big_1009(small),
            lambda: internal_1011(wss),
            lambda: private_4001_zh(wss),
            lambda: registered_3003_zh(aio),
            lambda: client_no_status(wss),
            lambda: server_no_status(wss),
            lambda: split_close(wss),
        ])
        # The killed server's port must be in the filter before tcpdump starts.
        doomed = free_port()
        await record("aborts", [wss.port, aio.port, doomed], [
            lambda: killed_client(wss),
            lambda: killed_server(doomed),
            lambda: reset_by_client(aio),
        ])
        await record("compression", [wss.port], [
            lambda: compression(wss, True),
            lambda: compression(wss, False),
        ])
    finally:
        for server in (wss, small, aio):
            await server.stop()


if __name__ == "__main__":
    if os.geteuid() != 0:
        raise SystemExit("run as root: tcpdump needs to capture on lo")
    asyncio.run(main())
