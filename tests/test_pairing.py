"""Pairing is one layer (protocols/<name>/pairing.py) for both engines: the
native dissectors and the tshark engine give the same pairs, counts and
login outcomes on the cases where the old copies disagreed."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.protocols.ftp.pairing import MAX_FAILED_LOGINS_KEPT, FtpSession
from analyzer.protocols.http.pairing import HttpPairing, Request, requested_upgrade
from analyzer.tcp.table import ACK, FIN, SYN
from tests.captures_builder import conversation

ROOT = Path(__file__).resolve().parent.parent
CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
PSH = 0x08
ENGINES = ["native"] + (["tshark"] if shutil.which("tshark") else [])


def analyse(capture: Path, out: Path, engine: str) -> tuple[list[dict], list[dict], dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(capture), "-o", str(out), "-q",
                           "--engine", engine], capture_output=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()

    def rows(name):
        with open(out / name, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    return rows("events.csv"), rows("connections.csv"), json.loads((out / "summary.json").read_text())


def opened() -> list:
    return [("c", SYN, b""), ("s", SYN | ACK, b""), ("c", ACK, b"")]


def closed() -> list:
    return [("c", FIN | ACK, b""), ("s", FIN | ACK, b""), ("c", ACK, b"")]


@pytest.mark.parametrize("engine", ENGINES)
def test_ftp_brute_force_counts_every_failed_login(tmp_path, engine):
    # The tshark engine used to keep and count only the first 100 failures.
    tries = MAX_FAILED_LOGINS_KEPT + 50
    packets = opened() + [("s", ACK | PSH, b"220 ready\r\n")]
    for i in range(tries):
        packets += [("c", ACK | PSH, b"USER u%d\r\n" % i), ("s", ACK | PSH, b"331 Password required\r\n"),
                    ("c", ACK | PSH, b"PASS hunter%d\r\n" % i), ("s", ACK | PSH, b"530 Login incorrect.\r\n")]
    packets += [("c", ACK | PSH, b"USER ok\r\n"), ("s", ACK | PSH, b"331 Password required\r\n"),
                ("c", ACK | PSH, b"PASS right\r\n"), ("s", ACK | PSH, b"230 Login successful.\r\n")]
    capture = tmp_path / "ftp_brute.pcap"
    capture.write_bytes(conversation(packets + closed(), CLIENT, 40001, SERVER, 21))
    events, conns, _ = analyse(capture, tmp_path / engine, engine)
    ftp = [e for e in events if e["protocol"] == "ftp"]
    assert [(e["code"], e["request"]) for e in ftp[:5]] == [
        ("220", ""), ("331", "USER u0"), ("530", "PASS ****"), ("331", "USER u1"), ("530", "PASS ****")]
    assert not any("hunter" in e["request"] for e in ftp)
    (conn,) = conns
    outcome = json.loads(conn["outcome"])
    assert (outcome["failed_login_count"], len(outcome["failed_logins"]), outcome["logins"], outcome["login"]) == \
        (tries, MAX_FAILED_LOGINS_KEPT, 1, "success")
    assert outcome["failed_logins"][:2] == ["u0", "u1"]
    assert (outcome["commands"], outcome["replies"]) == (2 * tries + 2, 2 * tries + 3)


@pytest.mark.parametrize("engine", ENGINES)
def test_http_pipelining_and_interim_responses_pair_the_same_way(tmp_path, engine):
    post = b"POST /upload HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
    packets = opened() + [
        ("c", ACK | PSH, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\n\r\n"),
        ("s", ACK | PSH, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"),
        ("s", ACK | PSH, b"HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nB"),
        ("c", ACK | PSH, post),
        ("s", ACK | PSH, b"HTTP/1.1 100 Continue\r\n\r\n"),
        ("c", ACK | PSH, b"data"),
        ("s", ACK | PSH, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
        ("c", ACK | PSH, b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"),
    ] + closed()
    capture = tmp_path / "http_pipeline.pcap"
    capture.write_bytes(conversation(packets, CLIENT, 40002, SERVER, 8080))
    events, conns, _ = analyse(capture, tmp_path / engine, engine)
    assert [(e["code"], e["request"], float(e["latency_ms"])) for e in events] == [
        ("200", "GET /a", 1000.0), ("404", "GET /b", 2000.0),
        ("100", "POST /upload", 1000.0), ("201", "POST /upload", 3000.0)]
    (conn,) = conns
    outcome = json.loads(conn["outcome"])
    assert (outcome["requests"], outcome["responses"], outcome["unanswered"]) == (4, 4, 1)


def test_the_queues_are_bounded_and_counted():
    notes = []
    http = HttpPairing(lambda *a: notes.append(a[0]))
    for i in range(1005):
        http.request(Request("GET", f"/{i}", "h", float(i), i))
    assert len(http.pending) == 1000 and http.unanswered == 5
    assert http.answer(200, 2000.0, 2000).uri == "/5"
    http.close()
    assert (http.requests, http.responses, http.unanswered) == (1005, 1, 1004)
    assert notes.count("http_too_many_pending_requests") == 5
    ftp = FtpSession(lambda *a: notes.append(a[0]))
    for i in range(25):
        ftp.command("NOOP", "NOOP", float(i), i)
    assert len(ftp.pending) == 20 and notes.count("ftp_too_many_pending_commands") == 5


def test_what_counts_as_an_upgrade_request():
    assert requested_upgrade("CONNECT", None, None) == "connect"
    assert requested_upgrade("GET", "WebSocket ", "keep-alive, Upgrade") == "websocket"
    assert requested_upgrade("GET", "websocket", None) == "websocket"       # no Connection header at all
    assert requested_upgrade("GET", "websocket", "keep-alive") == ""        # RFC 9110 section 7.8
    assert requested_upgrade("GET", "", "upgrade") == ""
