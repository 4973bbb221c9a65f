#!/usr/bin/env python3
# Record HTTPS, HTTP/2 and wss:// traffic on loopback together with the TLS
# key log that decrypts it, for the tshark engine (analyzer/engines/tshark.py).
#
# Strategy.  Real servers and clients only: nginx (TLS with a self-signed
# certificate this script makes with the openssl CLI; HTTP/1.1 and HTTP/2
# negotiated by ALPN; a second, cleartext listener speaking HTTP/2 with prior
# knowledge, h2c) answers curl, which writes its TLS secrets to the file
# named by SSLKEYLOGFILE.  A `websockets` server behind TLS is closed by a
# `websockets` client whose ssl.SSLContext has `keylog_filename` set, so
# Python's ssl writes the secrets too.  tcpdump records each group on its own
# free high ports (samples.capture.tcpdump).
#
# Truth comes from the clients, never from tshark or the analyzer: status
# codes from curl's own `--write-out '%{json}'` (http_code, http_version,
# local port) and its --verbose trace (which request went on which
# connection); close codes from the websockets protocol objects of both
# peers (close frame sent / received), which must agree.
#
# Outputs (run as root, for tcpdump), overwritten on every run:
#   samples/captures/tls_nginx.pcap    + .keylog + .expected.json
#       HTTP/1.1 over TLS 1.2 and TLS 1.3, HTTP/2 over TLS 1.3
#   samples/captures/tls_nginx_dsb.pcapng  the same packets with the key log
#       embedded as a pcapng Decryption Secrets Block (editcap --inject-secrets)
#   samples/captures/tls_h2c.pcap      + .expected.json (cleartext HTTP/2)
#   samples/captures/tls_wss.pcap      + .keylog + .expected.json
#
#   sudo python3 samples/make_tls.py
#
# Limits: Linux, nginx with the ssl and http_v2 modules (`nginx -V`), curl
# built with nghttp2, openssl, tcpdump and editcap.  nginx does not implement
# the h2c Upgrade dance (RFC 7540 section 3.2, removed by RFC 9113), so only
# prior-knowledge h2c is recorded.  Ports, client randoms and times change on
# every run.
from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `samples` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from samples.capture import CAPTURES, free_port, stop_process, tcpdump, wait_port  # noqa: E402

HOST = "127.0.0.1"
SERVER_NAME = "tls.example.test"   # certificate name; curl --resolve maps it to HOST
CLIENT_TIMEOUT = 10.0              # seconds per curl run / WebSocket step
FLUSH_S = 1.5                      # > libpcap's 1 s TPACKET_V3 block timeout

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server_tokens off;
    default_type text/plain;
    server {{
        listen {host}:{tls_port} ssl http2;
        listen {host}:{h2c_port} http2;
        server_name {name};
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location = /ok      {{ return 200 "ok\\n"; }}
        location = /created {{ return 201 "created\\n"; }}
        location = /moved   {{ return 301 /ok; }}
        location = /broken  {{ return 500; }}
        location /          {{ return 404; }}
    }}
}}
"""

# What each curl run asks, and the final codes nginx must answer.
PATHS = [("/ok", 200), ("/moved", 301), ("/missing", 404), ("/broken", 500), ("/created", 201)]


def need(tool: str, package: str) -> None:
    if shutil.which(tool) is None:
        raise SystemExit(f"{tool} is not installed (apt-get install {package})")


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for SERVER_NAME and 127.0.0.1 (openssl CLI)."""
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={SERVER_NAME}",
         "-addext", f"subjectAltName=DNS:{SERVER_NAME},IP:{HOST}"],
        check=True, capture_output=True)
    return cert, key


@contextlib.contextmanager
def nginx(workdir: Path, cert: Path, key: Path, tls_port: int, h2c_port: int):
    need("nginx", "nginx-light")
    modules = subprocess.run(["nginx", "-V"], capture_output=True, text=True).stderr
    for module in ("--with-http_ssl_module", "--with-http_v2_module"):
        if module not in modules:
            raise SystemExit(f"nginx lacks {module}")
    prefix = workdir / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, host=HOST, tls_port=tls_port, h2c_port=h2c_port,
                                      name=SERVER_NAME, cert=cert, key=key))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        try:
            wait_port(tls_port)
            wait_port(h2c_port)
        except TimeoutError:
            stop_process(proc)
            raise SystemExit(f"nginx did not start: {proc.stderr.read().strip()}")
        yield
    finally:
        stop_process(proc, signal.SIGQUIT)
        if proc.stderr:
            proc.stderr.close()


TRACE_REQUEST = re.compile(r"^> ([A-Z]+) (\S+) HTTP/")
TRACE_H2_REQUEST = re.compile(r"^\[HTTP/2\] \[\d+\] \[:method: ([A-Z]+)\]")
TRACE_H2_PATH = re.compile(r"^\[HTTP/2\] \[\d+\] \[:path: (\S+)\]")


def run_curl(base: str, options: list[str], keylog: Path | None, transport: str, note: str,
             paths: list = PATHS) -> list[dict]:
    """One curl process, every `paths` entry in turn on one kept-alive connection.

    Returns the connections it made, each with its exchanges, from curl's own
    --write-out records (code, version, local port).
    """
    cmd = ["curl", "-s", "-v", "--resolve", f"{SERVER_NAME}:{base.rsplit(':', 1)[1]}:{HOST}"] + options
    for index, (path, _) in enumerate(paths):
        if index:
            cmd.append("--next")
            cmd += ["--resolve", f"{SERVER_NAME}:{base.rsplit(':', 1)[1]}:{HOST}"] + options
        cmd += ["-o", os.devnull, "-w", "%{json}\\n", "--max-time", str(CLIENT_TIMEOUT), base + path]
    env = dict(os.environ)
    env.pop("SSLKEYLOGFILE", None)
    if keylog is not None:
        env["SSLKEYLOGFILE"] = str(keylog)
    proc = subprocess.run(cmd, capture_output=True, env=env, timeout=CLIENT_TIMEOUT * len(paths) + 10)
    stats = [json.loads(line) for line in proc.stdout.decode().splitlines() if line.strip()]
    if len(stats) != len(paths):
        raise SystemExit(f"curl wrote {len(stats)} records for {len(paths)} transfers:\n"
                         + proc.stderr.decode(errors="replace")[-3000:])
    methods = [m.group(1) for m in map(TRACE_REQUEST.match, proc.stderr.decode("latin-1").splitlines()) if m]
    methods += [m.group(1) for m in map(TRACE_H2_REQUEST.match, proc.stderr.decode("latin-1").splitlines()) if m]
    connections: list[dict] = []
    for (path, want), stat in zip(paths, stats):
        code = int(stat["http_code"])
        if code != want:
            raise SystemExit(f"{note}: {path} answered {code}, the scenario expects {want}")
        version = str(stat["http_version"])
        key = (stat["local_ip"], int(stat["local_port"]), stat["remote_ip"], int(stat["remote_port"]))
        last = connections[-1] if connections else None
        if last is None or (last["client_ip"], last["client_port"], last["server_ip"], last["server_port"]) != key:
            last = {"tool": f"curl {options}", "note": note, "transport": transport, "http_version": version,
                    "client_ip": key[0], "client_port": key[1], "server_ip": key[2], "server_port": key[3],
                    "exchanges": []}
            connections.append(last)
        last["exchanges"].append({"method": stat.get("method") or "GET", "uri": path,
                                  "host": f"{SERVER_NAME}:{key[3]}", "code": code})
    if "GET" not in methods:
        raise SystemExit(f"{note}: curl's trace shows no request: {proc.stderr.decode(errors='replace')[-2000:]}")
    return connections


def client_randoms(keylog: Path) -> list[str]:
    """Client randoms named in an NSS key log, in file order (no duplicates)."""
    seen: dict[str, None] = {}
    for line in keylog.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and not line.startswith("#"):
            seen[parts[1].lower()] = None
    return list(seen)


def record_nginx(workdir: Path) -> None:
    need("curl", "curl")
    need("editcap", "wireshark-common")
    cert, key = make_certificate(workdir)
    tls_port, h2c_port = free_port(), free_port()
    pcap = CAPTURES / "tls_nginx.pcap"
    keylog = CAPTURES / "tls_nginx.keylog"
    h2c = CAPTURES / "tls_h2c.pcap"
    keylog.unlink(missing_ok=True)
    base = f"https://{SERVER_NAME}:{tls_port}"
    with nginx(workdir, cert, key, tls_port, h2c_port):
        with tcpdump(pcap, f"tcp port {tls_port}"):
            conns = run_curl(base, ["--cacert", str(cert), "--http1.1", "--tlsv1.2", "--tls-max", "1.2"],
                             keylog, "tls1.2", "HTTP/1.1 over TLS 1.2, keep-alive")
            conns += run_curl(base, ["--cacert", str(cert), "--http1.1", "--tlsv1.3"],
                              keylog, "tls1.3", "HTTP/1.1 over TLS 1.3, keep-alive")
            conns += run_curl(base, ["--cacert", str(cert), "--http2", "--tlsv1.3"],
                              keylog, "tls1.3", "HTTP/2 over TLS 1.3 (ALPN h2)")
            time.sleep(FLUSH_S)
        with tcpdump(h2c, f"tcp port {h2c_port}"):
            # curl 7.88 cannot reuse a prior-knowledge connection (the second
            # transfer fails with code 000): one connection per request.
            plain = []
            for step in PATHS:
                plain += run_curl(f"http://{SERVER_NAME}:{h2c_port}", ["--http2-prior-knowledge"], None,
                                  "tcp", "cleartext HTTP/2 with prior knowledge (h2c)", [step])
            time.sleep(FLUSH_S)
    for conn in conns:
        want = "2" if "HTTP/2" in conn["note"] else "1.1"
        if conn["http_version"] != want:
            raise SystemExit(f"curl negotiated HTTP/{conn['http_version']} for {conn['note']}")
    randoms = client_randoms(keylog)
    if len(randoms) != len(conns):
        raise SystemExit(f"{len(conns)} TLS connections but {len(randoms)} client randoms in {keylog}")
    dsb = CAPTURES / "tls_nginx_dsb.pcapng"
    subprocess.run(["editcap", "--inject-secrets", f"tls,{keylog}", str(pcap), str(dsb)], check=True)
    os.chmod(dsb, 0o644)
    write_expected(pcap, conns, port=tls_port, keylog=keylog, extra={
        "client_randoms": randoms, "with_secrets": dsb.name,
        "without_keylog": "every connection is TLS whose status codes are unknown: the analyzer must count "
                          "them as encrypted (tls_undecrypted) and list their client randoms"})
    write_expected(h2c, plain, port=h2c_port)


def write_expected(pcap: Path, connections: list, port: int, keylog: Path | None = None, extra=None) -> None:
    events = []
    for conn in connections:
        for ex in conn["exchanges"]:
            events.append({"protocol": "http", "client_ip": conn["client_ip"], "client_port": conn["client_port"],
                           "server_ip": conn["server_ip"], "server_port": conn["server_port"],
                           "code": ex["code"], "request": f"{ex['method']} {ex['uri']}", "host": ex["host"]})
    doc = {
        "capture": pcap.name, "made_by": "samples/make_tls.py",
        "truth": "what the clients saw (curl --write-out, websockets' close logs); never tshark",
        "keylog": keylog.name if keylog else None, "server_port": port,
        "connections": connections, "events": events,
    }
    doc.update(extra or {})
    out = pcap.with_suffix(".expected.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    os.chmod(out, 0o644)


# ---------------------------------------------------------------- wss:// --

def record_wss(workdir: Path) -> None:
    cert, key = make_certificate(workdir)
    port = free_port()
    pcap = CAPTURES / "tls_wss.pcap"
    keylog = CAPTURES / "tls_wss.keylog"
    keylog.unlink(missing_ok=True)
    with tcpdump(pcap, f"tcp port {port}"):
        scenarios = asyncio.run(_wss(cert, key, port, keylog))
        time.sleep(FLUSH_S)
    randoms = client_randoms(keylog)
    if len(randoms) != len(scenarios):
        raise SystemExit(f"{len(scenarios)} wss connections but {len(randoms)} client randoms")
    events = [dict(ev, protocol="websocket", client_ip=HOST, client_port=s["client_port"], server_ip=HOST,
                   server_port=port, request=s["request"])
              for s in scenarios for ev in s["events"]]
    doc = {"capture": pcap.name, "made_by": "samples/make_tls.py",
           "truth": "websockets' own close logs of both peers (they must agree); never tshark",
           "keylog": keylog.name, "server_port": port, "client_randoms": randoms,
           "scenarios": scenarios, "events": events}
    out = pcap.with_suffix(".expected.json")
    out.write_text(json.dumps(doc, indent=1) + "\n")
    os.chmod(out, 0o644)


def _close_log(conn) -> dict:
    proto = conn.protocol
    as_dict = (lambda c: None if c is None else {"code": int(c.code), "reason": c.reason})
    return {"close_sent": as_dict(proto.close_sent), "close_rcvd": as_dict(proto.close_rcvd),
            "close_rcvd_then_sent": proto.close_rcvd_then_sent}


async def _wss(cert: Path, key: Path, port: int, keylog: Path) -> list[dict]:
    from websockets.asyncio.client import connect
    from websockets.asyncio.server import serve

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    client_ctx.keylog_filename = str(keylog)   # Python's ssl writes the NSS key log
    conns: dict[int, object] = {}

    async def handler(ws) -> None:
        conns[ws.remote_address[1]] = ws
        path = ws.request.path
        if path.startswith("/server-closes"):
            await ws.recv()
            await ws.close(4002, "server says bye")
        else:
            await ws.wait_closed()

    async def server_log(client_port: int) -> dict:
        for _ in range(100):
            if client_port in conns:
                break
            await asyncio.sleep(0.05)
        await asyncio.wait_for(conns[client_port].wait_closed(), CLIENT_TIMEOUT)
        return _close_log(conns[client_port])

    scenarios = []
    async with serve(handler, HOST, port, ssl=server_ctx, ping_interval=None, close_timeout=CLIENT_TIMEOUT):
        uri = f"wss://{SERVER_NAME}:{port}"
        kwargs = dict(ssl=client_ctx, server_hostname=SERVER_NAME, host=HOST, port=port, ping_interval=None,
                      close_timeout=CLIENT_TIMEOUT)
        # 1. the client closes with 1001 and a reason.
        async with connect(uri + "/client-closes", **kwargs) as ws:
            cport = ws.local_address[1]
            await ws.send("hello")
            await ws.close(1001, "client leaving")
        scenarios.append(_scenario("client-closes", "/client-closes", cport, _close_log(ws), await server_log(cport)))
        # 2. the server closes with a private-use code (RFC 6455 section 7.4.2) after a message.
        async with connect(uri + "/server-closes", **kwargs) as ws:
            cport = ws.local_address[1]
            await ws.send("please close")
            with contextlib.suppress(Exception):
                await ws.recv()
            await ws.wait_closed()
        scenarios.append(_scenario("server-closes", "/server-closes", cport, _close_log(ws), await server_log(cport)))
        # 3. the client drops the TCP connection without a close frame: 1006 must be inferred.
        ws = await connect(uri + "/hold", **kwargs)
        cport = ws.local_address[1]
        await ws.send("about to vanish")
        await asyncio.sleep(0.2)
        ws.transport.abort()              # RST, no close frame from the client
        slog = await server_log(cport)
        scenarios.append(_scenario("client-aborts", "/hold", cport, None, slog, abort="client"))
    return scenarios


def _scenario(name: str, path: str, client_port: int, client: dict | None, server: dict,
              abort: str = "") -> dict:
    if client is not None:
        # Each peer's log must confirm what the other says it sent.
        if client["close_sent"] != server["close_rcvd"] or client["close_rcvd"] != server["close_sent"]:
            raise SystemExit(f"{name}: the peers disagree: client {client}, server {server}")
    events = []
    if client is not None and client["close_sent"]:
        first = "client" if not client["close_rcvd_then_sent"] else "server"
        frames = {"client": client["close_sent"], "server": client["close_rcvd"]}
        for role in (first, "server" if first == "client" else "client"):
            frame = frames[role]
            if frame is not None:
                other = "server" if role == "client" else "client"
                events.append({"code": frame["code"], "text": frame["reason"], "direction": f"{role}->{other}",
                               "inferred": frame["code"] == 1005})
    if not events:
        if not abort:
            raise SystemExit(f"{name}: no close frame and no abort")
        events = [{"code": 1006, "text": "", "direction": f"{abort}->server", "inferred": True}]
    return {"name": name, "client_port": client_port, "request": f"GET {path}", "events": events,
            "logs": {"client": client, "server": server}}


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("run as root (tcpdump): sudo python3 samples/make_tls.py")
    need("openssl", "openssl")
    need("tcpdump", "tcpdump")
    with tempfile.TemporaryDirectory(prefix="make_tls-") as tmp:
        record_nginx(Path(tmp) / "nginx")
        record_wss(Path(tmp) / "wss")
    for name in sorted(CAPTURES.glob("tls_*")):
        print(f"{name.relative_to(CAPTURES.parent.parent)}  {name.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
