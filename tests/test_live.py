"""Live capture: real servers on loopback, `analyzer live` as a subprocess, known traffic.

The expected events are built from what the clients themselves sent and
received (http.client status codes, ftplib's command/reply transcript, the
WebSocket close frames websockets sent and got), never from the analyzer's
own output.  Capture tests need root or CAP_NET_RAW (CI runs as root) and
skip otherwise; the error-message tests run anywhere on Linux.
"""
from __future__ import annotations

import csv
import http.client
import http.server
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINUX = sys.platform.startswith("linux")

pytestmark = [pytest.mark.live, pytest.mark.skipif(not LINUX, reason="live capture is Linux only"),
              pytest.mark.filterwarnings("ignore:The asyn.* module is deprecated:DeprecationWarning")]  # pyftpdlib


def _can_capture() -> bool:
    if not LINUX or not hasattr(socket, "AF_PACKET"):
        return False
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        return False
    return os.path.exists("/sys/class/net/lo")


needs_capture = pytest.mark.skipif(not _can_capture(), reason="needs root or CAP_NET_RAW and a lo interface")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def analyzer(*args, timeout=60):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "analyzer", *map(str, args)], capture_output=True,
                          cwd=ROOT, env=env, timeout=timeout)


def one_line_error(proc) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("analyzer: error")]
    assert len(lines) == 1, err
    return lines[0]


# -- the analyzer as a subprocess ------------------------------------------------


class Live:
    """`analyzer live -i lo ...` running in the background; stderr/stdout go to files."""

    def __init__(self, tmp: Path, bpf: str, *args) -> None:
        self.err_path, self.out_path = tmp / "live.stderr", tmp / "live.stdout"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "analyzer", "live", "-i", "lo", "-f", bpf, *map(str, args)],
                stdout=out, stderr=err, cwd=ROOT, env=env)
        self._wait_for("listening on lo")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    def _wait_for(self, text: str, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc.poll() is not None:
                raise AssertionError(f"analyzer live exited early ({self.proc.returncode}):\n{self.stderr}")
            if time.monotonic() > end:
                self.kill()
                raise AssertionError(f"analyzer live never said {text!r}:\n{self.stderr}")
            time.sleep(0.05)

    def stop(self, sig=signal.SIGINT, settle: float = 0.3, timeout: float = 30) -> int:
        time.sleep(settle)  # the last packets of the traffic reach the socket
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"analyzer live did not stop:\n{self.stderr}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def live_runs():
    runs = []
    yield runs
    for run in runs:
        run.kill()


# -- servers -------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release: threading.Event

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if self.path == "/slow":
            self.release.wait(20)
            code = 200
        else:
            code = int(self.path.rsplit("/", 1)[-1])
        body = b"" if code in (204, 304) else f"status {code}\n".encode()
        self.send_response(code)
        if code in (301, 302):
            self.send_header("Location", "/status/200")
        if code not in (204, 304):
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.release = release
    yield server
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def ftp_server(tmp_path):
    pytest.importorskip("pyftpdlib")
    import logging

    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    logging.getLogger("pyftpdlib").setLevel(logging.ERROR)
    home = tmp_path / "ftp-home"
    home.mkdir()
    (home / "readme.txt").write_text("hello\n")
    auth = DummyAuthorizer()
    auth.add_user("alice", "secret", str(home), perm="elr")
    handler = type("Handler", (FTPHandler,), {"authorizer": auth, "banner": "test ftp ready"})
    server = FTPServer(("127.0.0.1", free_port()), handler)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server
    stop.set()
    thread.join(5)


@pytest.fixture
def ws_server():
    pytest.importorskip("websockets")
    from websockets.sync.server import serve

    def handler(ws) -> None:
        try:
            for message in ws:
                if message == "close-me":
                    ws.close(1008, "policy")
                    return
                ws.send(message)
        except Exception:  # noqa: BLE001 - a client that vanished is not this test's business
            pass

    server = serve(handler, "127.0.0.1", free_port())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    thread.join(5)


def port_of(server) -> int:
    if hasattr(server, "socket") and hasattr(server.socket, "getsockname"):
        return server.socket.getsockname()[1]
    if hasattr(server, "server_address"):
        return server.server_address[1]
    return server.address[1]  # pyftpdlib


# -- clients: each returns the events the traffic must produce --------------------


def http_traffic(port: int, calls=(("GET", 200), ("GET", 404), ("POST", 201), ("GET", 500),
                                   ("GET", 301), ("HEAD", 503))) -> list[tuple]:
    expected = []
    for method, code in calls:
        path = f"/status/{code}"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request(method, path, body=b"x=1" if method == "POST" else None)
        response = conn.getresponse()
        response.read()
        conn.close()
        expected.append(("http", response.status, f"{method} {path}"))
    return expected


def ftp_traffic(port: int) -> list[tuple]:
    import ftplib

    transcript = []  # ("cmd", line) / ("reply", text) in the order the client saw them

    class Recording(ftplib.FTP):
        def putcmd(self, line):
            transcript.append(("cmd", line))
            super().putcmd(line)

        def getmultiline(self):
            reply = super().getmultiline()
            transcript.append(("reply", reply))
            return reply

    ftp = Recording()
    ftp.connect("127.0.0.1", port, timeout=10)
    with pytest.raises(ftplib.error_perm):
        ftp.login("alice", "wrong")
    ftp.login("alice", "secret")
    listing = []
    ftp.retrlines("LIST", listing.append)
    assert any("readme.txt" in line for line in listing)
    ftp.quit()

    expected, command = [], ""
    for kind, text in transcript:
        if kind == "cmd":
            verb, _, arg = text.partition(" ")
            command = "PASS ****" if verb.upper() == "PASS" else text
        else:
            expected.append(("ftp", int(text[:3]), command))
    return expected


def ws_traffic(port: int) -> list[tuple]:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    expected = []
    with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=10) as ws:  # the client closes
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        ws.close(4000, "done")
        sent, got = ws.protocol.close_sent, ws.protocol.close_rcvd
    expected += [("http", 101, "GET /chat"), ("websocket", sent.code, sent.reason, "client->server"),
                 ("websocket", got.code, got.reason, "server->client")]
    with connect(f"ws://127.0.0.1:{port}/policy", open_timeout=10) as ws:  # the server closes
        ws.send("close-me")
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)
        sent, got = ws.protocol.close_sent, ws.protocol.close_rcvd
    expected += [("http", 101, "GET /policy"), ("websocket", got.code, got.reason, "server->client"),
                 ("websocket", sent.code, sent.reason, "client->server")]
    return expected


def read_events(outdir: Path) -> list[dict]:
    with open(outdir / "events.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def observed(rows: list[dict]) -> list[tuple]:
    out = []
    for r in rows:
        if r["protocol"] == "websocket":
            out.append(("websocket", int(r["code"]), r["text"], r["direction"]))
        else:
            out.append((r["protocol"], int(r["code"]), r["request"]))
    return out


def assert_reports_parse(outdir: Path) -> dict:
    import pandas as pd

    from analyzer.stats.hosts import CODE_COLUMNS, HOST_COLUMNS

    for name in ("events.csv", "connections.csv", "anomalies.csv"):
        with open(outdir / name, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        assert rows and all(len(r) == len(rows[0]) for r in rows), name
    assert tuple(pd.read_csv(outdir / "hosts.csv").columns) == HOST_COLUMNS
    assert tuple(pd.read_csv(outdir / "codes.csv").columns) == CODE_COLUMNS
    html = (outdir / "report.html").read_text(encoding="utf-8")
    assert html.rstrip().endswith("</html>")
    leftovers = [p.name for p in outdir.iterdir() if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    return json.loads((outdir / "summary.json").read_text(encoding="utf-8"))


# -- the capture itself ----------------------------------------------------------------


@needs_capture
def test_events_equal_the_generated_traffic_exactly(tmp_path, live_runs, http_server, ftp_server, ws_server):
    hp, fp, wp = port_of(http_server), port_of(ftp_server), port_of(ws_server)
    out = tmp_path / "out"
    run = Live(tmp_path, f"tcp port {hp} or tcp port {fp} or tcp port {wp}", "--duration", 45, "-o", out,
               "--interval", 0.5, "-w", tmp_path / "run.pcap")
    live_runs.append(run)
    expected = http_traffic(hp) + ftp_traffic(fp) + ws_traffic(wp)
    assert run.stop(signal.SIGINT) == 130, run.stderr  # 128 + SIGINT, after every report

    rows = read_events(out)
    assert Counter(observed(rows)) == Counter(expected), run.stderr
    assert len(rows) == len(expected)
    # No duplicates: one row per message, even though lo shows every packet twice.
    assert len({(r["connection"], r["frame"], r["code"], r["direction"]) for r in rows}) == len(rows)
    http_rows = [r for r in rows if r["protocol"] == "http"]
    assert all(r["server_port"] in (str(hp), str(wp)) and r["latency_ms"] != "" for r in http_rows)
    assert {r["server_port"] for r in rows if r["protocol"] == "ftp"} == {str(fp)}

    summary = assert_reports_parse(out)
    live, read = summary["coverage"]["live"], summary["coverage"]["packets_read"]
    # Each packet reached the socket twice (outgoing + incoming on lo) and was analysed once.
    assert live["packets_not_analysed"] == 0
    assert live["kernel_packets_received"] == 2 * read
    assert live["loopback_duplicates_ignored"] == read > 0
    assert live["kernel_packets_dropped"] == 0
    assert summary["protocols"]["ftp"]["failed_logins"] == 1
    assert summary["protocols"]["ftp"]["successful_logins"] == 1
    assert "0 packets dropped by kernel" in run.stderr and "interrupted (SIGINT)" in run.stderr
    assert live["stopped_by"] == "SIGINT" and summary["partial"] is False  # all it captured is in

    # -w saved every packet: analysing the pcap gives the same per-code counts.
    again = analyzer("analyze", tmp_path / "run.pcap", "-o", tmp_path / "again", "-q")
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "again" / "codes.csv").read_text() == (out / "codes.csv").read_text()
    assert Counter(observed(read_events(tmp_path / "again"))) == Counter(expected)


@needs_capture
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_capture_finalises_open_connections_and_writes_every_report(
        sig, tmp_path, live_runs, http_server, ws_server):
    pytest.importorskip("websockets")
    from websockets.sync.client import connect

    hp, wp = port_of(http_server), port_of(ws_server)
    out = tmp_path / "out"
    run = Live(tmp_path, f"tcp port {hp} or tcp port {wp}", "-o", out, "--interval", 0.3)
    live_runs.append(run)
    expected = http_traffic(hp, (("GET", 200), ("GET", 404)))
    with connect(f"ws://127.0.0.1:{wp}/open", open_timeout=10) as ws:   # stays open across the stop
        ws.send("ping")
        assert ws.recv(timeout=10) == "ping"
        pending = http.client.HTTPConnection("127.0.0.1", hp, timeout=20)
        pending.request("GET", "/slow")                             # answered only after the stop
        try:
            # No pause before the signal: what the kernel already holds must still be analysed.
            assert run.stop(sig, settle=0) == 128 + sig, run.stderr
        finally:
            http_server.release.set()
            pending.close()

    summary = assert_reports_parse(out)
    got = observed(read_events(out))
    assert Counter(got) == Counter(expected + [("http", 101, "GET /open")]), run.stderr
    assert not [e for e in got if e[0] == "websocket"], "an open WebSocket is open, not closed (no 1006)"
    assert summary["protocols"]["websocket"]["open_connections"] == 1
    assert summary["protocols"]["http"]["unanswered_requests"] == 1
    with open(out / "connections.csv", newline="", encoding="utf-8") as fh:
        states = Counter(r["state"] for r in csv.DictReader(fh))
    assert states["open"] == 2, states
    assert ("interrupted (SIGINT)" if sig == signal.SIGINT else "terminated (SIGTERM)") in run.stderr


@needs_capture
@pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
def test_tshark_engine_reports_the_same_events(tmp_path, live_runs, http_server):
    pytest.importorskip("pyshark")
    hp = port_of(http_server)
    out = tmp_path / "out"
    run = Live(tmp_path, f"tcp port {hp}", "--engine", "tshark", "-o", out, "--interval", 0.5)
    live_runs.append(run)
    expected = http_traffic(hp)
    assert run.stop(signal.SIGTERM) == 143, run.stderr
    assert Counter(observed(read_events(out))) == Counter(expected), run.stderr
    assert_reports_parse(out)


@needs_capture
def test_duration_and_count_end_the_capture_by_themselves(tmp_path, live_runs, http_server):
    hp = port_of(http_server)
    run = Live(tmp_path, f"tcp port {hp}", "--duration", 1, "-o", tmp_path / "d")
    live_runs.append(run)
    assert run.wait(30) == 0, run.stderr
    assert "--duration reached" in run.stderr
    assert_reports_parse(tmp_path / "d")

    counted = tmp_path / "c"
    counted.mkdir()
    run = Live(counted, f"tcp port {hp}", "--count", 7, "-o", counted / "out")
    live_runs.append(run)
    http_traffic(hp, (("GET", 200), ("GET", 200)))  # ~20 packets: more than 7
    assert run.wait(30) == 0, run.stderr
    assert "--count reached" in run.stderr
    summary = assert_reports_parse(counted / "out")
    assert summary["coverage"]["packets_read"] == 7
    with open(counted / "out" / "events.csv", newline="", encoding="utf-8") as fh:
        assert all(int(r["frame"]) <= 7 for r in csv.DictReader(fh))


@needs_capture
def test_loopback_packets_are_counted_once_by_packet_type():
    from analyzer.capture.interface import LiveSource

    port = free_port()
    with LiveSource("lo", f"udp port {port}") as src, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i in range(25):
            tx.sendto(struct.pack("!I", i), ("127.0.0.1", port))
        packets, end = [], time.monotonic() + 5
        while len(packets) < 25 and time.monotonic() < end:
            packets += src.read_ready()
            time.sleep(0.01)
        time.sleep(0.1)
        packets += src.read_ready()
        received, dropped = src.kernel_stats()
    payloads = [struct.unpack("!I", data[-4:])[0] for _, _, data, _ in packets]
    assert payloads == list(range(25))         # each datagram once, in order
    assert src.duplicates == 25                # the PACKET_OUTGOING copies
    assert (received, dropped) == (50, 0)      # the kernel saw both copies
    assert all(linktype == 1 and data[:12] == bytes(12) and wirelen == len(data)
               for _, linktype, data, wirelen in packets)


@needs_capture
def test_reports_are_replaced_atomically_while_a_reader_reads_them(tmp_path, live_runs, http_server):
    from analyzer.stats.hosts import HOST_COLUMNS

    hp = port_of(http_server)
    out = tmp_path / "out"
    run = Live(tmp_path, f"tcp port {hp}", "-o", out, "--interval", 0.2)
    live_runs.append(run)
    stop = threading.Event()
    seen = {"reads": 0, "inodes": set(), "bad": []}

    def reader() -> None:
        header = ",".join(HOST_COLUMNS)
        while not stop.is_set():
            for name in ("hosts.csv", "summary.json"):
                path = out / name
                try:
                    with open(path, "rb") as fh:
                        inode = os.fstat(fh.fileno()).st_ino
                        data = fh.read()
                except FileNotFoundError:
                    continue
                seen["reads"] += 1
                try:
                    if name == "summary.json":
                        json.loads(data)
                        continue
                    seen["inodes"].add(inode)
                    text = data.decode("utf-8")
                    rows = list(csv.reader(io.StringIO(text, newline="")))
                    assert text.startswith(header + "\r\n") and text.endswith("\r\n")
                    assert all(len(r) == len(HOST_COLUMNS) for r in rows)
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    seen["bad"].append(f"{name}: {exc!r}: {data[-80:]!r}")

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    # At least 2.5 s of traffic, longer on a busy machine until the reports
    # were rewritten three times (interval 0.2 s).
    start = time.monotonic()
    while time.monotonic() < start + 2.5 or (len(seen["inodes"]) < 3 and time.monotonic() < start + 20):
        http_traffic(hp, (("GET", 200), ("GET", 404), ("GET", 500)))
    assert run.stop(signal.SIGTERM) == 143, run.stderr
    stop.set()
    thread.join(5)
    assert not seen["bad"], seen["bad"][:3]
    assert seen["reads"] > 20
    assert len(seen["inodes"]) >= 3, "hosts.csv must be replaced (rename), not rewritten in place"


# -- clear errors ---------------------------------------------------------------------


def test_unknown_interface_lists_the_real_ones():
    proc = analyzer("live", "-i", "no-such-if0", "--duration", 1)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "no such interface: 'no-such-if0'" in line
    for name in os.listdir("/sys/class/net"):
        assert name in line


def test_invalid_filter_shows_the_compiler_message():
    proc = analyzer("live", "-i", "lo", "-f", "tcp port nonsense-port", "--duration", 1)
    assert proc.returncode == 2, proc.stderr
    line = one_line_error(proc)
    assert line.startswith("analyzer: error: invalid capture filter: 'tcp port nonsense-port': ")
    assert "nonsense-port" in line.split(": ", 3)[-1]  # libpcap names what it could not parse
    proc = analyzer("live", "-i", "lo", "-f", "tcp and and", "--duration", 1)
    assert proc.returncode == 2 and "syntax error" in one_line_error(proc)


def _unprivileged_prefix() -> list[str] | None:
    if os.geteuid() != 0:
        return []  # already without privilege (unless python carries capabilities)
    setpriv = shutil.which("setpriv")
    if setpriv:  # root, minus CAP_NET_RAW from the bounding set: capture must fail
        return [setpriv, "--bounding-set=-net_raw,-net_admin", "--inh-caps=-net_raw,-net_admin"]
    return None


def test_no_privilege_says_how_to_grant_it():
    prefix = _unprivileged_prefix()
    if prefix is None:
        pytest.skip("needs setpriv to drop CAP_NET_RAW")
    probe = subprocess.run([*prefix, sys.executable, "-c",
                            "import socket, sys\ntry:\n socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)\n"
                            "except PermissionError:\n sys.exit(42)"], capture_output=True)
    if probe.returncode == 0:
        pytest.skip("this python can capture without root (capabilities set)")
    if probe.returncode != 42:
        pytest.skip(f"cannot drop the capture privilege here: {probe.stderr.decode()[-200:]}")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([*prefix, sys.executable, "-m", "analyzer", "live", "-i", "lo", "--duration", "1"],
                          capture_output=True, cwd=ROOT, env=env, timeout=60)
    assert proc.returncode == 6, proc.stderr
    line = one_line_error(proc)
    assert "needs root or CAP_NET_RAW" in line and "setcap cap_net_raw,cap_net_admin+eip" in line


def test_usage_errors_and_interface_list():
    proc = analyzer("live")
    assert proc.returncode == 2 and "-i IFACE" in one_line_error(proc)
    proc = analyzer("live", "-i", "lo", "--duration", "-3")
    assert proc.returncode == 2 and b"must be positive" in proc.stderr
    proc = analyzer("live", "-i", "lo", "--fail-on", "http.bogus>1")
    assert proc.returncode == 2, proc.stderr
    proc = analyzer("live", "--list-interfaces")
    assert proc.returncode == 0
    names = [line.split()[1] for line in proc.stdout.decode().splitlines()]
    assert sorted(names) == sorted(os.listdir("/sys/class/net"))
    assert any(line.split()[1] == "lo" and "loopback" in line for line in proc.stdout.decode().splitlines())


# -- pieces that need no capture ------------------------------------------------------


def test_pcap_writer_round_trips_through_the_reader(tmp_path):
    from analyzer.capture import open_capture
    from analyzer.capture.interface import PcapWriter

    packets = [(1_700_000_000.123456, b"\x00" * 14 + b"abc", 17), (1_700_000_000.9999996, b"x" * 60, 1500)]
    writer = PcapWriter(tmp_path / "w.pcap", 1)
    for ts, data, wirelen in packets:
        writer.write(ts, data, wirelen)
    writer.close()
    with open_capture(str(tmp_path / "w.pcap")) as cap:
        got = list(cap)
        assert cap.format == "pcap"
    assert [(lt, data, wl) for _, lt, data, wl in got] == [(1, d, w) for _, d, w in packets]
    assert got[0][0] == pytest.approx(1_700_000_000.123456, abs=1e-6)
    assert got[1][0] == pytest.approx(1_700_000_001.0, abs=1e-6)  # µs rounding carries into the second
