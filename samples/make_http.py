#!/usr/bin/env python3
# Make the HTTP sample captures from real servers and clients on loopback.
#
# nginx (config from samples/nginx.conf.template) runs in front of
# samples/upstream.py; a second upstream instance is reached directly (for the
# framings nginx would normalise, and the IIS-style error pages).  curl and
# small raw-socket clients drive them while tcpdump records one BPF-selected
# port per capture, so each capture holds exactly the connections its clients
# made (nginx's own upstream hop is not in the nginx captures).
#
# Truth: next to every capture, http_<name>.expected.json lists, per
# connection and in order, what the CLIENT saw: status codes and reason
# phrases (interim 1xx included), method, URI and Host -- taken from curl's
# --verbose trace and --write-out '%{json}', and from the raw clients' own
# response parser.  Never from tshark or the analyzer: the point is to have a
# truth that owes nothing to either.  Each step also states the codes the
# scenario intends, and the script stops if the client saw anything else, so
# a changed nginx or curl cannot silently change a sample.
#
# Determinism: bodies, paths, order and file mtimes (hence ETag and
# Last-Modified) are fixed; ports, dates and timestamps change per run.
#
#   sudo python3 samples/make_http.py              # all captures
#   sudo python3 samples/make_http.py --only iis_substatus
#   python3 samples/make_http.py --check           # analyzer vs expected.json
#   python3 samples/golden.py --write              # rewrite every *.events.csv (golden)
#
# Limits: Linux only (tcpdump on `lo`, nginx, curl >= 7.72 for %{json} and
# %{method}); needs root for tcpdump.  Every server started here is stopped on
# the way out, failure included.
from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samples.capture import CAPTURES, SAMPLES, free_port, stop_process, tcpdump, wait_port  # noqa: E402

REPO = SAMPLES.parent
NGINX_TEMPLATE = SAMPLES / "nginx.conf.template"
UPSTREAM = SAMPLES / "upstream.py"

STATIC_MTIME = 1_700_000_000  # 2023-11-14T22:13:20Z: fixed, so ETag/Last-Modified repeat
CLIENT_TIMEOUT = 10.0         # seconds; the slowest step (nginx 504) takes 1 s
SPLIT_PAUSE = 0.05            # seconds between pieces sent as separate segments
BLOCK_TIMEOUT = 1.2           # seconds; libpcap's TPACKET_V3 block timeout is tcpdump's 1000 ms
MAX_CAPTURES_BYTES = 3 * 1024 * 1024  # all http_*.pcap together (repository budget)
HOST = "www.example.test"     # Host header of most requests (nginx's server_name is _)

STATIC_FILES = {
    "static/index.html": b"<!DOCTYPE html>\n<html><head><title>sample</title>"
                         b"<link rel=\"stylesheet\" href=\"style.css\"></head>\n"
                         b"<body><p>Static page served by nginx for the HTTP samples.</p></body></html>\n",
    "static/a.txt": b"plain text file\n",
    "static/style.css": b"body { font-family: sans-serif; }\n",
}

IIS_HEADING = re.compile(rb"<h3>HTTP Error (\d{3}\.\d+) - ")


# -- records of what a client saw ------------------------------------------------

@dataclass
class Response:
    code: int
    text: str
    version: str = "HTTP/1.1"
    headers: list = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return ""


@dataclass
class Exchange:
    method: str
    uri: str
    host: str
    responses: list = field(default_factory=list)
    note: str = ""
    substatus: str = ""  # IIS sub-status read by the client from the page it got

    def as_json(self) -> dict:
        out = {
            "method": self.method, "uri": self.uri, "host": self.host,
            "responses": [{"code": r.code, "text": r.text, "version": r.version} for r in self.responses],
            "outcome": "response" if self.responses else "closed-without-response",
        }
        if self.substatus:
            out["substatus"] = self.substatus
        if self.note:
            out["note"] = self.note
        return out


@dataclass
class Connection:
    tool: str
    client_ip: str
    client_port: int
    server_ip: str
    server_port: int
    exchanges: list = field(default_factory=list)
    note: str = ""


def check_codes(exchange: Exchange, expect: tuple) -> None:
    got = tuple(r.code for r in exchange.responses)
    if got != tuple(expect):
        raise RuntimeError(f"{exchange.method} {exchange.uri}: client saw {got or 'no response'}, "
                           f"the scenario expects {tuple(expect) or 'no response'}")


def iis_substatus(response: Response) -> str:
    """The sub-status a client reads in an IIS detailed error page, if any."""
    if response.code < 400 or not response.body:
        return ""
    body = response.body
    encoding = response.header("Content-Encoding").lower()
    if encoding == "gzip":
        body = gzip.decompress(body)
    elif encoding == "deflate":
        body = zlib.decompress(body)
    match = IIS_HEADING.search(body)
    return match.group(1).decode() if match else ""


# -- servers ---------------------------------------------------------------------

@contextlib.contextmanager
def upstream_server(port: int, workdir: Path, name: str = "upstream"):
    """Run samples/upstream.py on [::]:port (dual stack) for the block."""
    log = workdir / f"{name}.log"
    proc = subprocess.Popen([sys.executable, str(UPSTREAM), "--port", str(port), "--log", str(log)],
                            stdout=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        stop_process(proc, signal.SIGINT)


def write_static(root: Path) -> None:
    for rel, content in STATIC_FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (STATIC_MTIME, STATIC_MTIME))


def nginx_etag(rel: str) -> str:
    # nginx's ETag is "<mtime hex>-<size hex>" (ngx_http_set_etag).
    return '"%x-%x"' % (STATIC_MTIME, len(STATIC_FILES[rel]))


@contextlib.contextmanager
def nginx_server(port: int, upstream_port: int, dead_port: int, workdir: Path,
                 static: dict | None = None, access_log: bool = True):
    """Run nginx (foreground, own prefix under workdir) for the block.

    `static` adds files under www/ (path -> bytes); the benchmark turns the
    access log off so that nginx spends its time serving, not logging.
    """
    if shutil.which("nginx") is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    prefix = workdir / "nginx"
    for sub in ("tmp", "www", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    write_static(prefix / "www")
    for rel, content in (static or {}).items():
        path = prefix / "www" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        os.utime(path, (STATIC_MTIME, STATIC_MTIME))
    conf = NGINX_TEMPLATE.read_text()
    for key, value in {"PREFIX": prefix, "PORT": port, "UPSTREAM_PORT": upstream_port,
                       "DEAD_PORT": dead_port,
                       "ACCESS_LOG": prefix / "access.log" if access_log else "off"}.items():
        conf = conf.replace(f"@{key}@", str(value))
    leftover = re.search(r"^[^#\n]*(@[A-Z_]+@)", conf, re.MULTILINE)
    if leftover:
        raise RuntimeError(f"nginx.conf.template: unfilled placeholder {leftover.group(1)}")
    conf_path = prefix / "nginx.conf"
    conf_path.write_text(conf)
    proc = subprocess.Popen(["nginx", "-c", str(conf_path), "-p", str(prefix),
                             "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_port(port)
            wait_port(port, "::1")
        except TimeoutError:
            stop_process(proc)
            errors = (prefix / "error.log").read_text(errors="replace") if (prefix / "error.log").exists() else ""
            raise RuntimeError(f"nginx did not start: {proc.stderr.read().strip()} {errors[-2000:]}")
        yield port
    finally:
        stop_process(proc, signal.SIGQUIT)  # graceful: workers finish, then exit
        if proc.stderr:
            proc.stderr.close()


# -- curl ------------------------------------------------------------------------

@dataclass
class Transfer:
    """One curl transfer; all transfers of one curl run share its connection cache."""

    path: str
    expect: tuple = (200,)
    method: str = "GET"
    headers: tuple = ()
    data: bytes | None = None
    head: bool = False
    note: str = ""
    keep_body: bool = False  # save the body (for IIS pages)


REQUEST_LINE = re.compile(r"^> ([A-Z]+) (\S+) (HTTP/1\.[01])$")
STATUS_LINE = re.compile(r"^< (HTTP/1\.[01]) (\d{3})(?: (.*))?$")
HEADER_LINE = re.compile(r"^([<>]) ([A-Za-z0-9-]+): ?(.*)$")


def run_curl(base: str, transfers: list[Transfer], workdir: Path, note: str = "") -> list[Connection]:
    """Run all transfers in one curl process (--next keeps connections alive)."""
    cmd = ["curl", "-s", "-v", "-g"]
    bodies = []
    for index, transfer in enumerate(transfers):
        if index:
            cmd.append("--next")
        body_path = workdir / f"curl-body-{index}" if transfer.keep_body else None
        bodies.append(body_path)
        cmd += ["-o", str(body_path or os.devnull), "-w", "%{json}\\n", "--max-time", str(CLIENT_TIMEOUT)]
        if transfer.head:
            cmd.append("-I")
        elif transfer.data is not None:
            data_path = workdir / f"curl-data-{index}"
            data_path.write_bytes(transfer.data)
            cmd += ["--data-binary", f"@{data_path}"]
            if transfer.method != "POST":
                cmd += ["-X", transfer.method]
        elif transfer.method != "GET":
            cmd += ["-X", transfer.method]
        for header in transfer.headers:
            cmd += ["-H", header]
        cmd.append(base + transfer.path)
    proc = subprocess.run(cmd, capture_output=True, timeout=CLIENT_TIMEOUT * len(transfers) + 10)
    stats = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    if len(stats) != len(transfers):
        raise RuntimeError(f"curl wrote {len(stats)} --write-out records for {len(transfers)} transfers:\n"
                           + proc.stderr.decode(errors="replace")[-3000:])

    # Split the verbose trace into transfers at each request line it sent.
    exchanges: list[Exchange] = []
    current = None
    for raw in proc.stderr.decode("latin-1").splitlines():
        line = raw.rstrip("\r")
        match = REQUEST_LINE.match(line)
        if match:
            current = Exchange(method=match.group(1), uri=match.group(2), host="")
            exchanges.append(current)
            continue
        if current is None:
            continue
        match = STATUS_LINE.match(line)
        if match:
            current.responses.append(Response(int(match.group(2)), match.group(3) or "", match.group(1)))
            continue
        match = HEADER_LINE.match(line)
        if match:
            side, name, value = match.groups()
            if side == ">" and name.lower() == "host" and not current.responses:
                current.host = value
            elif side == "<" and current.responses:
                current.responses[-1].headers.append((name, value))
    if len(exchanges) != len(transfers):
        raise RuntimeError(f"curl trace shows {len(exchanges)} requests for {len(transfers)} transfers")

    connections: list[Connection] = []
    for transfer, exchange, stat, body_path in zip(transfers, exchanges, stats, bodies):
        exchange.note = transfer.note
        final = exchange.responses[-1].code if exchange.responses else 0
        if final != int(stat.get("http_code") or 0):
            raise RuntimeError(f"curl trace ({final}) and --write-out ({stat.get('http_code')}) disagree "
                               f"for {exchange.method} {exchange.uri}")
        if body_path is not None and body_path.exists() and exchange.responses:
            exchange.responses[-1].body = body_path.read_bytes()
            exchange.substatus = iis_substatus(exchange.responses[-1])
        check_codes(exchange, transfer.expect)
        key = (stat["local_ip"], int(stat["local_port"]), stat["remote_ip"], int(stat["remote_port"]))
        last = connections[-1] if connections else None
        if last is None or (last.client_ip, last.client_port, last.server_ip, last.server_port) != key \
                or int(stat.get("num_connects") or 0) > 0:
            last = Connection("curl", *key, note=note)
            connections.append(last)
        last.exchanges.append(exchange)
    return connections


# -- raw-socket client -------------------------------------------------------------

def request_bytes(method: str, uri: str, host: str | None, headers: tuple = (), body: bytes = b"",
                  version: str = "HTTP/1.1", length: bool = True) -> bytes:
    lines = [f"{method} {uri} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    lines += list(headers)
    if length and (body or method in ("POST", "PUT")):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class RawClient:
    """A socket client with its own (small, strict) HTTP/1.x response reader."""

    def __init__(self, host: str, port: int, note: str = ""):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.settimeout(CLIENT_TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.connect((host, port))
        local, remote = self.sock.getsockname(), self.sock.getpeername()
        self.conn = Connection("raw-socket", local[0], local[1], remote[0], remote[1], note=note)
        self.buf = b""
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes, cuts: tuple = ()) -> None:
        """Send data; `cuts` are offsets where it is split into separate segments."""
        start = 0
        for cut in list(cuts) + [len(data)]:
            self.sock.sendall(data[start:cut])
            start = cut
            if cut != len(data):
                time.sleep(SPLIT_PAUSE)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if chunk:
            self.buf += chunk
        else:
            self.eof = True

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n and not self.eof:
            self._fill()
        if len(self.buf) < n:
            raise RuntimeError("connection closed inside a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            if self.eof:
                raise RuntimeError("connection closed inside a chunked body")
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def read_head(self) -> Response | None:
        while b"\r\n\r\n" not in self.buf:
            if self.eof:
                if self.buf:
                    raise RuntimeError(f"connection closed inside a header block: {self.buf[:80]!r}")
                return None
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        match = re.match(r"^(HTTP/1\.[01]) (\d{3})(?: (.*))?$", lines[0])
        if not match:
            raise RuntimeError(f"not a status line: {lines[0]!r}")
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines[1:]]
        return Response(int(match.group(2)), match.group(3) or "", match.group(1), headers)

    def read_body(self, method: str, response: Response) -> None:
        if method == "HEAD" or response.code in (204, 304) or response.code < 200:
            return
        if "chunked" in response.header("Transfer-Encoding").lower():
            parts = []
            while True:
                size = int(self._line().split(b";")[0], 16)
                if size == 0:
                    break
                parts.append(self._take(size))
                self._take(2)
            while self._line():  # trailer fields, up to the empty line
                pass
            response.body = b"".join(parts)
        elif response.header("Content-Length"):
            response.body = self._take(int(response.header("Content-Length")))
        else:  # close-delimited
            while not self.eof:
                self._fill()
            response.body, self.buf = self.buf, b""

    def read_exchange(self, exchange: Exchange) -> Exchange:
        """Read every response (1xx, then the final one) to one request."""
        while True:
            response = self.read_head()
            if response is None:
                return exchange
            self.read_body(exchange.method, response)
            exchange.responses.append(response)
            if response.code >= 200 or response.code == 101:
                exchange.substatus = iis_substatus(response)
                return exchange

    def exchange(self, method: str, uri: str, host: str | None = HOST, headers: tuple = (),
                 body: bytes = b"", version: str = "HTTP/1.1", expect: tuple = (200,),
                 cuts: tuple = (), note: str = "") -> Exchange:
        self.send(request_bytes(method, uri, host, headers, body, version), cuts)
        exchange = self.read_exchange(Exchange(method, uri, host or "", note=note))
        check_codes(exchange, expect)
        self.conn.exchanges.append(exchange)
        return exchange

    def pipeline(self, requests: list[tuple], note: str = "") -> None:
        """Send (method, uri, headers, expect) requests in a single send()."""
        data = b"".join(request_bytes(m, u, HOST, h) for m, u, h, _ in requests)
        self.sock.sendall(data)
        for method, uri, _, expect in requests:
            exchange = self.read_exchange(Exchange(method, uri, HOST, note=note))
            check_codes(exchange, expect)
            self.conn.exchanges.append(exchange)

    def expect_continue(self, uri: str, body: bytes, expect: tuple, note: str = "") -> Exchange:
        """POST with Expect: 100-continue; the body goes only after a 100."""
        exchange = Exchange("POST", uri, HOST, note=note)
        self.send(request_bytes("POST", uri, HOST, ("Expect: 100-continue", f"Content-Length: {len(body)}"),
                                length=False))
        first = self.read_head()
        if first is not None:
            exchange.responses.append(first)
            if first.code == 100:
                self.send(body)
                self.read_exchange(exchange)
            else:
                self.read_body("POST", first)
        check_codes(exchange, expect)
        self.conn.exchanges.append(exchange)
        return exchange


@contextlib.contextmanager
def raw_client(host: str, port: int, connections: list, note: str = ""):
    client = RawClient(host, port, note)
    try:
        yield client
    finally:
        client.close()
        connections.append(client.conn)


# -- scenarios -------------------------------------------------------------------

@dataclass
class Env:
    workdir: Path
    nginx: int       # nginx port (127.0.0.1 and ::1)
    app: int         # upstream behind nginx
    direct: int      # upstream reached directly (framing, IIS pages)


def scenario_nginx_codes(env: Env) -> tuple[int, list[Connection]]:
    """Keep-alive series of status codes through nginx, 400, 444 and IPv6."""
    base = f"http://127.0.0.1:{env.nginx}"
    host = (f"Host: {HOST}",)
    index = "static/index.html"
    series = [
        Transfer("/static/index.html", headers=host),
        Transfer("/static/index.html", head=True, headers=host, note="HEAD: Content-Length, no body"),
        Transfer("/static/index.html", (304,), headers=host + (f"If-None-Match: {nginx_etag(index)}",)),
        Transfer("/static/index.html", (304,),
                 headers=host + (f"If-Modified-Since: {formatdate(STATIC_MTIME, usegmt=True)}",)),
        Transfer("/app/upload", (201,), "POST", host, data=b"name=value&n=1"),
        Transfer("/nothing", (204,), headers=host),
        Transfer("/app/status/204", (204,), headers=host),
        Transfer("/moved", (301,), headers=host),
        Transfer("/found", (302,), headers=host),
        Transfer("/app/status/401", (401,), headers=host),
        Transfer("/app/status/403", (403,), headers=host),
        Transfer("/static/missing.html", (404,), headers=host),
        Transfer("/static/index.html", (405,), "POST", host, data=b"x=1", note="POST to a static file"),
        Transfer("/teapot", (418,), headers=host, note="nginx sends 418 without a reason phrase"),
        Transfer("/app/status/429", (429,), headers=host),
        Transfer("/app/status/500", (500,), headers=host),
        Transfer("/dead/", (502,), headers=host, note="upstream port closed"),
        Transfer("/app/status/503", (503,), headers=host),
        Transfer("/slow/3000", (504,), headers=host, note="nginx proxy_read_timeout 1s"),
        Transfer("/app/status/599?reason=Network%20Connect%20Timeout%20Error", (599,), headers=host,
                 note="unofficial code, custom reason phrase"),
        Transfer("/app/status/200", head=True, headers=host, note="HEAD through the proxy"),
        Transfer("/trailer/chunked", headers=host, note="chunked, trailer added by nginx"),
        Transfer("/app/upload", (100, 201), "POST", host + ("Expect: 100-continue",), data=b"d" * 600,
                 note="Expect: 100-continue answered by nginx"),
        Transfer("/limited/upload", (413,), "POST", host + ("Expect: 100-continue",), data=b"e" * 4000,
                 note="early 413 instead of 100; body never sent"),
    ]
    connections = run_curl(base, series, env.workdir, "curl keep-alive series")
    connections += run_curl(base, [Transfer("/static/a.txt", (400,), headers=("Host:",),
                                            note="HTTP/1.1 request without Host")],
                            env.workdir, "curl without Host header")
    connections += run_curl(base, [Transfer("/drop", (), headers=host,
                                            note="nginx return 444: closed without a response")],
                            env.workdir, "nginx 444")
    connections += run_curl(f"http://[::1]:{env.nginx}",
                            [Transfer("/static/a.txt"), Transfer("/app/status/404", (404,))],
                            env.workdir, "IPv6 keep-alive")
    return env.nginx, connections


def scenario_nginx_raw(env: Env) -> tuple[int, list[Connection]]:
    """Raw clients through nginx: pipelining, split request line, HTTP/1.0."""
    connections: list[Connection] = []
    etag = nginx_etag("static/index.html")
    with raw_client("127.0.0.1", env.nginx, connections, "pipelined: six requests in one send()") as c:
        c.pipeline([
            ("GET", "/static/a.txt", (), (200,)),
            ("HEAD", "/static/index.html", (), (200,)),
            ("GET", "/app/status/404", (), (404,)),
            ("GET", "/app/chunked", (), (200,)),
            ("GET", "/static/index.html", (f"If-None-Match: {etag}",), (304,)),
            ("GET", "/nothing", ("Connection: close",), (204,)),
        ])
    request = request_bytes("GET", "/app/echo", "split.example.test")
    with raw_client("127.0.0.1", env.nginx, connections, "request line split over segments") as c:
        c.exchange("GET", "/app/echo", "split.example.test", cuts=(2, 14, 21, len(request) - 2),
                   note="segments: 'GE' 'T /app/echo ' 'HTTP/1.' ... final CRLF")
        c.exchange("GET", "/app/status/201", expect=(201,))
    with raw_client("127.0.0.1", env.nginx, connections, "HTTP/1.0 client, close-delimited body") as c:
        c.exchange("GET", "/app/nolength", version="HTTP/1.0", note="no Content-Length: body ends at FIN")
    with raw_client("::1", env.nginx, connections, "IPv6 raw client") as c:
        c.exchange("GET", "/moved", expect=(301,))
        c.exchange("HEAD", "/app/status/503", expect=(503,))
    return env.nginx, connections


def scenario_direct(env: Env) -> tuple[int, list[Connection]]:
    """Framings straight from the Python upstream (nginx would normalise them)."""
    connections: list[Connection] = []
    with raw_client("127.0.0.1", env.direct, connections, "keep-alive framings") as c:
        c.exchange("GET", "/chunked", note="chunked with a trailer (X-Checksum)")
        c.exchange("GET", "/early-hints", expect=(103, 200))
        c.exchange("GET", "/split", note="status line split over three segments")
        c.exchange("HEAD", "/large/100000", note="HEAD: Content-Length 100000, no body")
        c.exchange("GET", "/etag")
        c.exchange("GET", "/etag", headers=('If-None-Match: "v1"',), expect=(304,))
        c.exchange("GET", "/status/204", expect=(204,))
        c.exchange("GET", "/large/200000", note="body of 200000 bytes")
        c.exchange("DELETE", "/status/405", expect=(405,))
    with raw_client("127.0.0.1", env.direct, connections, "Expect: 100-continue, then early 417") as c:
        c.expect_continue("/upload", b"u" * 3000, (100, 201))
        c.expect_continue("/upload/reject", b"r" * 3000, (417,), note="early final status, body never sent")
    with raw_client("127.0.0.1", env.direct, connections, "HTTP/1.0 response, close-delimited") as c:
        c.exchange("GET", "/http10", version="HTTP/1.0")
    with raw_client("127.0.0.1", env.direct, connections, "HTTP/1.1 response, close-delimited") as c:
        c.exchange("GET", "/nolength")
    with raw_client("127.0.0.1", env.direct, connections, "pipelined straight to the upstream") as c:
        c.pipeline([
            ("GET", "/status/200", (), (200,)),
            ("HEAD", "/status/500", (), (500,)),
            ("GET", "/status/404", (), (404,)),
            ("GET", "/status/302", ("Connection: close",), (302,)),
        ])
    connections += run_curl(f"http://[::1]:{env.direct}",
                            [Transfer("/upload", (100, 201), "POST", ("Expect: 100-continue",),
                                      data=b"v" * 2000, note="curl, IPv6, 100-continue")],
                            env.workdir, "curl 100-continue over IPv6")
    return env.direct, connections


def scenario_iis_substatus(env: Env) -> tuple[int, list[Connection]]:
    """IIS 10-style detailed error pages (sub-status only in the body)."""
    base = f"http://127.0.0.1:{env.direct}"
    host = ("Host: iis.example.test",)
    gz, deflate = ("Accept-Encoding: gzip",), ("Accept-Encoding: deflate",)
    transfers = [
        Transfer("/iis/403.14", (403,), headers=host, keep_body=True, note="plain detailed page"),
        Transfer("/iis/404.0", (404,), headers=host + gz, keep_body=True, note="gzip detailed page"),
        Transfer("/iis/401.2", (401,), headers=host, keep_body=True),
        Transfer("/iis/500.19", (500,), headers=host + deflate, keep_body=True, note="deflate detailed page"),
        Transfer("/iis-custom/404", (404,), headers=host, keep_body=True, note="custom page: no sub-status"),
        Transfer("/iis-help", (200,), headers=host, keep_body=True,
                 note="200 page quoting an IIS heading: no sub-status"),
        Transfer("/iis/403.14", (403,), head=True, headers=host, note="HEAD: no body, no sub-status"),
        Transfer("/iis/502.2", (502,), headers=host + gz, keep_body=True),
    ]
    connections = run_curl(base, transfers, env.workdir, "curl against the IIS mimic")
    with raw_client("127.0.0.1", env.direct, connections, "raw client against the IIS mimic") as c:
        c.exchange("GET", "/iis/404.3", "iis.example.test", headers=gz, expect=(404,))
        c.exchange("GET", "/status/404", "iis.example.test", expect=(404,), note="plain 404: no sub-status")
    return env.direct, connections


SCENARIOS = {
    "nginx_codes": scenario_nginx_codes,
    "nginx_raw": scenario_nginx_raw,
    "direct": scenario_direct,
    "iis_substatus": scenario_iis_substatus,
}


# -- expected.json -------------------------------------------------------------------

def expected_document(name: str, port: int, connections: list[Connection]) -> dict:
    conns, events = [], []
    for number, conn in enumerate(connections, 1):
        conns.append({
            "id": number, "tool": conn.tool, "note": conn.note,
            "client_ip": conn.client_ip, "client_port": conn.client_port,
            "server_ip": conn.server_ip, "server_port": conn.server_port,
            "exchanges": [exchange.as_json() for exchange in conn.exchanges],
        })
        for exchange in conn.exchanges:
            for response in exchange.responses:
                events.append({
                    "protocol": "http",
                    "client_ip": conn.client_ip, "client_port": conn.client_port,
                    "server_ip": conn.server_ip, "server_port": conn.server_port,
                    "code": response.code, "text": response.text,
                    "request": f"{exchange.method} {exchange.uri}", "host": exchange.host,
                    "substatus": exchange.substatus if response is exchange.responses[-1] else "",
                    "connection": number,
                })
    return {
        "capture": f"http_{name}.pcap",
        "made_by": "samples/make_http.py",
        "truth": "what the clients saw: curl --verbose/--write-out and the raw clients' own parser; "
                 "never tshark. `events` is in client order per connection (score.py layout).",
        "server_port": port,
        "connections": conns,
        "events": events,
    }


def make_captures(names: list[str]) -> None:
    if os.geteuid() != 0:
        raise SystemExit("make_http.py: tcpdump needs root (run with sudo)")
    for tool in ("tcpdump", "nginx", "curl"):
        if shutil.which(tool) is None:
            raise SystemExit(f"make_http.py: {tool} is not installed")
    CAPTURES.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="make_http-")))
        app, direct, nginx = free_port(), free_port(), free_port()
        dead = free_port()  # nothing ever listens here: nginx answers 502
        stack.enter_context(upstream_server(app, workdir, "app"))
        stack.enter_context(upstream_server(direct, workdir, "direct"))
        stack.enter_context(nginx_server(nginx, app, dead, workdir))
        env = Env(workdir, nginx, app, direct)
        for name in names:
            tmp = workdir / f"http_{name}.pcap"
            started = time.monotonic()
            with tcpdump(tmp, f"tcp port {nginx if name.startswith('nginx') else direct}"):
                port, connections = SCENARIOS[name](env)
                # XX: samples.capture runs tcpdump without --immediate-mode, so
                # libpcap hands packets over in blocks retired every 1 s; stopping
                # sooner loses the last block.  Wait for it to be retired.
                time.sleep(BLOCK_TIMEOUT)
            missing = unclosed_connections(tmp, connections)
            if missing:
                raise RuntimeError(f"http_{name}.pcap lacks the FIN/RST of client ports {missing}: "
                                   "tcpdump lost the end of the traffic")
            document = expected_document(name, port, connections)
            shutil.move(tmp, CAPTURES / f"http_{name}.pcap")
            with contextlib.suppress(OSError):  # tcpdump wrote it as its own user
                owner = CAPTURES.stat()
                os.chown(CAPTURES / f"http_{name}.pcap", owner.st_uid, owner.st_gid)
            (CAPTURES / f"http_{name}.expected.json").write_text(json.dumps(document, indent=1) + "\n")
            print(f"http_{name}.pcap: {len(connections)} connections, {len(document['events'])} status lines, "
                  f"{(CAPTURES / f'http_{name}.pcap').stat().st_size} bytes, {time.monotonic() - started:.1f} s")
    total = sum(p.stat().st_size for p in CAPTURES.glob("http_*.pcap"))
    print(f"all http_*.pcap: {total} bytes")
    if total > MAX_CAPTURES_BYTES:
        raise SystemExit(f"make_http.py: captures total {total} bytes, over {MAX_CAPTURES_BYTES}")


def unclosed_connections(pcap: Path, connections: list[Connection]) -> list[int]:
    """Client ports whose FIN or RST is not in the capture (a truncated capture)."""
    data = pcap.read_bytes()
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0] & 0xFFFF
    closed = set()
    offset = 24
    while offset + 16 <= len(data):
        caplen = struct.unpack(endian + "I", data[offset + 8:offset + 12])[0]
        frame = data[offset + 16:offset + 16 + caplen]
        offset += 16 + caplen
        if linktype == 1:        # Ethernet (Linux `lo`)
            ethertype, ip = struct.unpack("!H", frame[12:14])[0], frame[14:]
        elif linktype == 113:    # Linux cooked (SLL)
            ethertype, ip = struct.unpack("!H", frame[14:16])[0], frame[16:]
        else:
            raise RuntimeError(f"{pcap.name}: unexpected link type {linktype}")
        if ethertype == 0x0800 and len(ip) >= 20 and ip[9] == 6:
            tcp = ip[(ip[0] & 0x0F) * 4:]
        elif ethertype == 0x86DD and len(ip) >= 40 and ip[6] == 6:
            tcp = ip[40:]
        else:
            continue
        if len(tcp) >= 14 and tcp[13] & 0x05:  # FIN or RST
            closed.update(struct.unpack("!HH", tcp[:4]))
    return [conn.client_port for conn in connections if conn.client_port not in closed]


# -- running the analyzer on the samples (checks against the clients' view) ----------

def run_analyzer(analyzer: list[str], capture: Path, workdir: Path) -> list[dict]:
    out = workdir / capture.stem
    proc = subprocess.run(analyzer + ["analyze", str(capture), "-o", str(out), "--lang", "en", "-q"],
                          cwd=REPO, capture_output=True, text=True)
    events = out / "events.csv"
    if not events.exists():
        raise SystemExit(f"make_http.py: `{' '.join(analyzer)} analyze` wrote no events.csv "
                         f"(exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    return list(csv.DictReader(events.open(newline="", encoding="utf-8")))


def norm_ip(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        return value


def compare(expected: dict, rows: list[dict]) -> list[str]:
    """Differences between the clients' view and the analyzer's http events."""
    problems = []
    by_conn: dict = {}
    for row in rows:
        if row.get("protocol") != "http":
            continue
        key = (norm_ip(row["client_ip"]), int(row["client_port"]), norm_ip(row["server_ip"]), int(row["server_port"]))
        by_conn.setdefault(key, []).append(row)
    has_substatus = any("substatus" in row for row in rows)
    seen = set()
    for conn in expected["connections"]:
        key = (norm_ip(conn["client_ip"]), conn["client_port"], norm_ip(conn["server_ip"]), conn["server_port"])
        seen.add(key)
        want, got = [], []
        for exchange in conn["exchanges"]:
            for number, response in enumerate(exchange["responses"], 1):
                final = number == len(exchange["responses"])
                item = (response["code"], f"{exchange['method']} {exchange['uri']}", exchange["host"])
                want.append(item + ((exchange.get("substatus", "") if final else ""),) if has_substatus else item)
        for row in sorted(by_conn.get(key, []), key=lambda row: (float(row["epoch"]), int(row["frame"]))):
            item = (int(row["code"]), row["request"], row["host"])
            got.append(item + (row.get("substatus") or "",) if has_substatus else item)
        if want != got:
            problems.append(f"connection {conn['id']} ({conn['note']}): expected {want}, analyzer {got}")
    for key in set(by_conn) - seen:
        problems.append(f"analyzer reports a connection no client made: {key}")
    return problems


def check(names: list[str], analyzer: list[str]) -> int:
    failures = 0
    with tempfile.TemporaryDirectory(prefix="make_http-check-") as tmp:
        for name in names:
            capture = CAPTURES / f"http_{name}.pcap"
            expected_path = CAPTURES / f"http_{name}.expected.json"
            if not capture.exists():
                print(f"{capture.name}: missing (make it with sudo python3 samples/make_http.py)")
                failures += 1
                continue
            rows = run_analyzer(analyzer, capture, Path(tmp))
            problems = compare(json.loads(expected_path.read_text()), rows)
            failures += bool(problems)
            print(f"{capture.name}: {'OK' if not problems else f'{len(problems)} difference(s)'}")
            for problem in problems:
                print("  " + problem)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make the HTTP sample captures (nginx + samples/upstream.py + curl/raw clients, tcpdump).",
        epilog="example: sudo python3 samples/make_http.py --only iis_substatus")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="make these captures only")
    parser.add_argument("--check", action="store_true",
                        help="do not capture; run the analyzer on the captures and compare with expected.json")
    parser.add_argument("--analyzer", default=f"{sys.executable} -m analyzer",
                        help="analyzer command (default: %(default)s)")
    args = parser.parse_args(argv)
    names = args.only or list(SCENARIOS)
    if args.check:
        return check(names, args.analyzer.split())
    make_captures(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
