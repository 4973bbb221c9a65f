"""Traffic real captures hold and clean lab captures do not: the same packets
twice, responses after the client's RST, data in the SYN (TCP Fast Open).
Hand-built flows pin the rule; real stacks on loopback or in a network
namespace show the rule meets what kernels actually send."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from analyzer.capture import open_capture
from analyzer.tcp import table as flows
from analyzer.tcp.table import ACK, FIN, RST, SYN, FlowTable
from tests.captures_builder import conversation, pcap

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "captures"
CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
PSH = 0x08
REQ = b"GET /index.php HTTP/1.1\r\nHost: h\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def analyse(capture: Path, out: Path, *args: str) -> tuple[subprocess.CompletedProcess, list[dict], dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(capture), "-o", str(out), "-q", *args],
                          capture_output=True, env=env, timeout=300)
    with open(out / "events.csv", newline="", encoding="utf-8") as handle:
        events = list(csv.DictReader(handle))
    return proc, events, json.loads((out / "summary.json").read_text(encoding="utf-8"))


def anomalies(summary: dict) -> dict:
    found = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "anomalies" and isinstance(value, dict):
                    found.update(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
    walk(summary)
    return found


class Flows:
    """A FlowTable driven by (sender, seq, ack, flags, payload) packets."""

    def __init__(self):
        self.events, self.notes, self.rows = [], [], []
        self.table = FlowTable(lambda ev, ends: self.events.append(ev), self.notes.append, self.rows.append)
        self.frame = 0

    def send(self, side: str, seq: int, ack: int, flags: int, payload: bytes = b"", ts: float | None = None,
             cport: int = 40000):
        self.frame += 1
        src, sport, dst, dport = (CLIENT, cport, SERVER, 80) if side == "c" else (SERVER, 80, CLIENT, cport)
        self.table.packet((src, dst, sport, dport, seq, ack, flags, payload, len(payload)),
                          float(self.frame) if ts is None else ts, self.frame)

    def codes(self):
        return [(e.code, e.request) for e in self.events]


# -- 1. the same packets twice ----------------------------------------------------

def _records(path: Path) -> list[tuple[float, bytes]]:
    with open_capture(str(path)) as reader:
        return [(ts, data) for ts, _, data, _ in reader]


def _twice(src: Path, dst: Path, shift: float) -> None:
    """`src`'s packets, then all of them again `shift` seconds later (or earlier)."""
    records = _records(src)
    out = []
    for offset in (0.0, shift):
        for ts, data in records:
            t = ts + offset
            out.append(((int(t), int(round((t - int(t)) * 1e6)) % 1_000_000), data))
    dst.write_bytes(pcap(out))


@pytest.mark.parametrize("shift", [-44.0, 0.0, 3600.0], ids=["copy-earlier", "same-times", "copy-an-hour-later"])
def test_a_capture_holding_its_packets_twice_counts_them_once(tmp_path, shift):
    # What `cat a.pcap a.pcap`-style merges give: every connection twice, same
    # 4-tuples, ISNs and bytes.  Before, which copies were counted twice
    # depended on when the table had forgotten the first (linger, sweep).
    sample = SAMPLES / "ftp_vsftpd_lftp.pcap"
    _, once, _ = analyse(sample, tmp_path / "once")
    doubled = tmp_path / "twice.pcap"
    _twice(sample, doubled, shift)
    proc, twice, summary = analyse(doubled, tmp_path / "twice")
    assert proc.returncode == 0, proc.stderr.decode()
    key = lambda e: (e["protocol"], e["code"], e["request"], e["frame"])  # noqa: E731
    assert sorted(map(key, twice)) == sorted(map(key, once))
    named = anomalies(summary)
    assert named.get("duplicate_connection", 0) >= 1
    if shift < 0:
        assert named.get("capture_time_went_backwards") == 1


def test_a_new_connection_on_the_same_ports_is_not_a_copy():
    # Port reuse: same 4-tuple, new ISN, later in time: a connection of its own.
    f = Flows()
    for isn in (100, 5000):
        f.send("c", isn, 0, SYN)
        f.send("s", 900, isn + 1, SYN | ACK)
        f.send("c", isn + 1, 901, ACK | PSH, REQ)
        f.send("s", 901, isn + 1 + len(REQ), ACK | PSH, RESP)
        f.send("c", isn + 1 + len(REQ), 901 + len(RESP), FIN | ACK)
        f.send("s", 901 + len(RESP), isn + 2 + len(REQ), FIN | ACK)
    f.table.finish()
    assert f.codes() == [(200, "GET /index.php")] * 2
    assert "duplicate_connection" not in f.table.anomaly_counts


# -- 3. a response after the client's RST ------------------------------------------

def test_response_after_the_clients_reset_is_still_dissected():
    # Browsers abort image/XHR loads with a RST; the response already in flight
    # still crosses the tap (Zeek and tshark report it).
    f = Flows()
    f.send("c", 100, 0, SYN)
    f.send("s", 900, 101, SYN | ACK)
    f.send("c", 101, 901, ACK)
    f.send("c", 101, 901, ACK | PSH, REQ)
    f.send("c", 101 + len(REQ), 901, RST | ACK)
    f.send("s", 901, 101 + len(REQ), ACK | PSH, RESP)
    f.send("s", 901 + len(RESP), 101 + len(REQ), RST)
    assert f.codes() == [(200, "GET /index.php")]
    (row,) = f.rows
    assert row["state"] == "reset" and json.loads(row["outcome"])["unanswered"] == 0


def test_late_bytes_are_taken_only_for_a_while():
    f = Flows()
    f.send("c", 100, 0, SYN)
    f.send("s", 900, 101, SYN | ACK)
    f.send("c", 101, 901, ACK | PSH, REQ)
    f.send("c", 101 + len(REQ), 901, RST | ACK, ts=10.0)
    # Long after the reset, with a sweep in between: the connection is over.
    f.send("c", 7, 0, SYN, ts=10.0 + flows.RESET_LINGER + flows.SWEEP_INTERVAL + 1, cport=41000)
    f.send("s", 901, 101 + len(REQ), ACK | PSH, RESP, ts=40.0)
    f.table.finish()
    assert f.codes() == []
    assert f.rows[0]["state"] == "reset" and json.loads(f.rows[0]["outcome"])["unanswered"] == 1


def test_a_reset_far_outside_the_stream_ends_nothing():
    # RFC 5961 section 3: the receiver drops it (a blind reset, a stale one).
    f = Flows()
    f.send("c", 100, 0, SYN)
    f.send("s", 900, 101, SYN | ACK)
    f.send("c", 101, 901, ACK | PSH, REQ)
    f.send("c", (101 + len(REQ) + (1 << 30)) & 0xFFFFFFFF, 901, RST)
    f.send("s", 901, 101 + len(REQ), ACK | PSH, RESP)
    f.table.finish()
    assert f.codes() == [(200, "GET /index.php")]
    assert f.table.anomaly_counts["tcp_rst_out_of_window"] == 1 and f.rows[0]["state"] == "open"


# -- 5. data in the SYN (TCP Fast Open) ----------------------------------------------

@pytest.mark.parametrize("split", [None, 10], ids=["request-in-syn", "syn-data-then-more"])
def test_syn_payload_is_stream_data_at_isn_plus_one(split):
    f = Flows()
    first, rest = (REQ, b"") if split is None else (REQ[:split], REQ[split:])
    f.send("c", 100, 0, SYN, first)
    f.send("s", 900, 101 + len(first), SYN | ACK)
    if rest:
        f.send("c", 101 + len(first), 901, ACK | PSH, rest)
    f.send("s", 901, 101 + len(REQ), ACK | PSH, RESP)
    f.table.finish()
    assert f.codes() == [(200, "GET /index.php")]
    assert f.rows[0]["gaps"] == 0 and f.rows[0]["bytes_c2s"] == len(REQ)


# -- the same, from real kernels ---------------------------------------------------------

@contextlib.contextmanager
def _sysctl(name: str, value: str):
    path = Path("/proc/sys") / name.replace(".", "/")
    old = path.read_text().strip()
    path.write_text(value)
    try:
        yield
    finally:
        path.write_text(old)


def _http_server(sock: socket.socket, delay: float = 0.0) -> threading.Thread:
    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                with contextlib.suppress(OSError):
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    time.sleep(delay)
                    conn.sendall(RESP)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


@pytest.mark.skipif(not IS_ROOT or not shutil.which("tcpdump") or not shutil.which("curl"),
                    reason="needs root, tcpdump and curl")
def test_tcp_fast_open_from_real_curl(tmp_path):
    from samples.capture import tcpdump

    port = 19901
    capture = tmp_path / "tfo.pcap"
    with _sysctl("net.ipv4.tcp_fastopen", "3"):
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_FASTOPEN, 16)
        server.bind(("127.0.0.1", port))
        server.listen(16)
        _http_server(server)
        try:
            with tcpdump(capture, f"tcp port {port}"):
                for _ in range(3):   # the first gets the cookie, the later ones send data in the SYN
                    subprocess.run(["curl", "-s", "-o", "/dev/null", "--tcp-fastopen",
                                    f"http://127.0.0.1:{port}/index.php"], check=True, timeout=30)
        finally:
            server.close()
    syn_data = [data for _, data in _records(capture) if data[47] & SYN and len(data) > 14 + 20 + (data[46] >> 4) * 4
                and not data[47] & ACK]
    if not syn_data:
        pytest.skip("this kernel sent no data in the SYN (TFO disabled or cookie refused)")
    _, events, _ = analyse(capture, tmp_path / "out")
    assert [(e["code"], e["request"]) for e in events] == [("200", "GET /index.php")] * 3


NS = "anatest16"


@pytest.mark.skipif(not IS_ROOT or not shutil.which("ip") or not shutil.which("tc") or not shutil.which("tcpdump"),
                    reason="needs root, iproute2 (ip, tc) and tcpdump")
def test_response_after_a_real_reset_across_a_slow_link(tmp_path):
    # A client that sends its request and resets soon after (SO_LINGER 0),
    # over a slow link: the server's response is already on its way and
    # reaches the client's side after the RST left it.
    from samples.capture import tcpdump

    def ip(*args, check=True):
        return subprocess.run(["ip", *args], check=check, capture_output=True, timeout=30)

    ip("netns", "del", NS, check=False)
    ip("netns", "add", NS)
    try:
        ip("link", "add", "veth16a", "type", "veth", "peer", "name", "veth16b")
        ip("link", "set", "veth16b", "netns", NS)
        ip("addr", "add", "10.216.0.1/24", "dev", "veth16a")
        ip("link", "set", "veth16a", "up")
        ip("-n", NS, "addr", "add", "10.216.0.2/24", "dev", "veth16b")
        ip("-n", NS, "link", "set", "veth16b", "up")
        ip("-n", NS, "link", "set", "lo", "up")
        # A slow link out of the server (token bucket, 64 kbit/s; netem is not
        # in every kernel): 12 KB of other traffic queued just before the
        # response hold it back about 1.3 s.
        subprocess.run(["ip", "netns", "exec", NS, "tc", "qdisc", "add", "dev", "veth16b", "root", "tbf",
                        "rate", "64kbit", "burst", "1600", "latency", "5s"], check=True, capture_output=True,
                       timeout=30)
        script = ("import socket\n"
                  "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                  "s.bind(('10.216.0.2', 19902)); s.listen(4)\n"
                  "c,_=s.accept(); d=b''\n"
                  "while b'\\r\\n\\r\\n' not in d: d+=c.recv(4096)\n"
                  "u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                  "[u.sendto(b'x' * 1000, ('10.216.0.1', 9)) for _ in range(12)]\n"
                  f"c.sendall({RESP!r}); c.close()\n")
        server = subprocess.Popen(["ip", "netns", "exec", NS, sys.executable, "-c", script])
        try:
            deadline = time.monotonic() + 10
            capture = tmp_path / "rst.pcap"
            with tcpdump(capture, "tcp port 19902", interface="veth16a"):
                while True:
                    try:
                        client = socket.create_connection(("10.216.0.2", 19902), timeout=5)
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.1)
                client.sendall(REQ)
                time.sleep(0.3)    # the request has arrived; the answer is queued behind 12 KB
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()     # RST
                time.sleep(2.5)
            server.wait(timeout=10)
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    finally:
        ip("link", "del", "veth16a", check=False)
        ip("netns", "del", NS, check=False)
    order = []
    for _, data in _records(capture):
        flags, payload = data[47], len(data) - 14 - 20 - (data[46] >> 4) * 4
        order.append(("rst" if flags & RST else "data" if payload else "ctl", data[26:30] == bytes([10, 216, 0, 2])))
    assert ("rst", False) in order and order.index(("data", True)) > order.index(("rst", False)), order
    _, events, _ = analyse(capture, tmp_path / "out")
    assert [(e["code"], e["request"]) for e in events] == [("200", "GET /index.php")]


# -- 7. a lone FTP reply ------------------------------------------------------------------

def _ftp_flow(f: Flows, cport: int, sport_packets, server_port: int):
    """Packets of one connection to SERVER:server_port, without a handshake."""
    seq = {"c": 1000 + cport, "s": 7000 + cport}
    for side, payload in sport_packets:
        peer = "s" if side == "c" else "c"
        f.frame += 1
        src, sp, dst, dp = (CLIENT, cport, SERVER, server_port) if side == "c" else \
            (SERVER, server_port, CLIENT, cport)
        f.table.packet((src, dst, sp, dp, seq[side], seq[peer], ACK | PSH, payload, len(payload)),
                       float(f.frame), f.frame)
        seq[side] += len(payload)


def test_a_lone_reply_on_port_21_is_ftp():
    # The capture began after the client's PASS: one reply, then the end.
    f = Flows()
    _ftp_flow(f, 40100, [("s", b"530 Login incorrect.\r\n")], 21)
    f.table.finish()
    assert [(e.protocol, e.code, e.request) for e in f.events] == [("ftp", 530, "")]


def test_a_lone_greeting_from_a_server_known_to_be_ftp_is_ftp():
    # On a non-standard port, a "421 Too many users" greeting alone proves
    # nothing; the same server endpoint's earlier FTP session does.
    f = Flows()
    _ftp_flow(f, 40200, [("s", b"220 (vsFTPd 3.0.3)\r\n"), ("c", b"USER anonymous\r\n"),
                         ("s", b"331 Please specify the password.\r\n"), ("c", b"PASS x\r\n"),
                         ("s", b"230 Login successful.\r\n")], 2121)
    _ftp_flow(f, 40201, [("s", b"421 There are too many connected users, please try later.\r\n")], 2121)
    _ftp_flow(f, 40202, [("s", b"421 Service not available.\r\n")], 2122)   # another endpoint: unknown
    f.table.finish()
    assert [(e.protocol, e.code) for e in f.events] == [("ftp", 220), ("ftp", 331), ("ftp", 230), ("ftp", 421)]


# -- 4. line protocols that look like FTP ---------------------------------------------------

# Transcripts as the servers send them (INN 2.7, Postfix, Dovecot POP3/IMAP/
# LMTP/ManageSieve): three-digit replies and four-letter verbs, not FTP.
LOOK_ALIKES = {
    "nntp-inn": (119, [("s", b"200 news.example.org InterNetNews NNRP server INN 2.7.1 ready (posting ok)\r\n"),
                       ("c", b"MODE READER\r\n"), ("s", b"200 news.example.org InterNetNews NNRP server ready\r\n"),
                       ("c", b"GROUP local.test\r\n"), ("s", b"211 3 1 3 local.test\r\n"),
                       ("c", b"ARTICLE 1\r\n"), ("s", b"220 1 <a@example.org> article\r\nPath: x\r\n\r\nhi\r\n.\r\n"),
                       ("c", b"QUIT\r\n"), ("s", b"205 Bye!\r\n")]),
    "nntp-midstream-list": (119, [("c", b"LIST ACTIVE\r\n"), ("s", b"215 Newsgroups in form \"group high low status\"\r\n"
                                                                  b"local.test 3 1 y\r\n.\r\n"),
                                  ("c", b"LIST NEWSGROUPS\r\n"), ("s", b"215 Descriptions in form \"group description\"\r\n"
                                                                     b"local.test Testing\r\n.\r\n")]),
    "smtp": (2525, [("s", b"220 mail.example.org ESMTP Postfix (Debian/GNU)\r\n"), ("c", b"EHLO client\r\n"),
                    ("s", b"250-mail.example.org\r\n250-PIPELINING\r\n250 8BITMIME\r\n"), ("c", b"QUIT\r\n"),
                    ("s", b"221 2.0.0 Bye\r\n")]),
    "lmtp": (24, [("s", b"220 mail.example.org Dovecot ready.\r\n"), ("c", b"LHLO client\r\n"),
                  ("s", b"250-mail.example.org\r\n250 PIPELINING\r\n")]),
    "pop3": (110, [("s", b"+OK Dovecot (Debian) ready.\r\n"), ("c", b"USER alice\r\n"), ("s", b"+OK\r\n")]),
    "imap": (143, [("s", b"* OK [CAPABILITY IMAP4rev1 LITERAL+] Dovecot (Debian) ready.\r\n"),
                   ("c", b"a1 LOGIN alice secret\r\n"), ("s", b"a1 OK Logged in\r\n")]),
    "managesieve": (4190, [("s", b"\"IMPLEMENTATION\" \"Dovecot Pigeonhole\"\r\n\"SIEVE\" \"fileinto\"\r\nOK \"ready.\"\r\n"),
                           ("c", b"AUTHENTICATE \"PLAIN\" \"AGFsaWNlAHNlY3JldA==\"\r\n"), ("s", b"OK \"Logged in.\"\r\n"),
                           ("c", b"LISTSCRIPTS\r\n"), ("s", b"\"main\" ACTIVE\r\nOK \"Listscripts completed.\"\r\n")]),
}


@pytest.mark.parametrize("name", sorted(LOOK_ALIKES))
@pytest.mark.parametrize("handshake", [True, False], ids=["syn", "midstream"])
def test_line_protocols_that_look_like_ftp_are_not_ftp(name, handshake):
    port, lines = LOOK_ALIKES[name]
    f = Flows()
    if handshake:
        f.send("c", 100, 0, SYN, cport=40300)
        f.table.packet((SERVER, CLIENT, port, 40300, 900, 101, SYN | ACK, b"", 0), 2.0, 2)
        f.table.packet((CLIENT, SERVER, 40300, port, 101, 901, ACK, b"", 0), 3.0, 3)
        cseq, sseq = 101, 901
        for side, payload in lines:
            f.frame += 1
            if side == "c":
                f.table.packet((CLIENT, SERVER, 40300, port, cseq, sseq, ACK | PSH, payload, len(payload)),
                               float(f.frame), f.frame)
                cseq += len(payload)
            else:
                f.table.packet((SERVER, CLIENT, port, 40300, sseq, cseq, ACK | PSH, payload, len(payload)),
                               float(f.frame), f.frame)
                sseq += len(payload)
    else:
        _ftp_flow(f, 40300, lines, port)
    f.table.finish()
    assert [e for e in f.events if e.protocol == "ftp"] == []


def test_ftp_with_the_same_shapes_is_still_ftp():
    # The FTP side of the same rules: a midstream session listing files.
    f = Flows()
    _ftp_flow(f, 40400, [("c", b"TYPE I\r\n"), ("s", b"200 Switching to Binary mode.\r\n"),
                         ("c", b"PASV\r\n"), ("s", b"227 Entering Passive Mode (127,0,0,1,156,64).\r\n"),
                         ("c", b"LIST\r\n"), ("s", b"150 Here comes the directory listing.\r\n"),
                         ("s", b"226 Directory send OK.\r\n")], 2121)
    f.table.finish()
    assert [e.code for e in f.events if e.protocol == "ftp"] == [200, 227, 150, 226]
