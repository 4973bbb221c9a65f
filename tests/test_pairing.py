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
from hypothesis import given, settings
from hypothesis import strategies as st

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


# -- realignment after a loss (answer_after_gap) ---------------------------------------------

def _queued(http: HttpPairing, *requests: tuple[str, int, int | None]) -> None:
    for uri, start, ack in requests:
        http.request(Request("GET", uri, "h", 0.0, 0, start=start, ack=ack))


def _one_at_a_time(http: HttpPairing, *starts: int) -> None:
    """Requests /0, /1, ... at client offsets `starts`, each answered before the
    next is sent: the client is seen asking one at a time."""
    for n, start in enumerate(starts):
        _queued(http, (f"/{n}", start, None))
        http.answer(200, float(n), n)


def test_a_response_cannot_answer_a_request_the_server_had_not_received():
    notes = []
    http = HttpPairing(lambda *a: notes.append(a[0]))
    _one_at_a_time(http, 0, 50)
    http.client_loss(100, 160)                 # a client gap the server's ACKs went beyond
    _queued(http, ("/4", 160, 900))
    # Acknowledges client bytes up to 160 only: /4 (from 160) was not there yet.
    req = http.answer_after_gap(200, 1.0, 1, start=900, ack=160)
    assert req is not None and req.lost and not http.uncertain
    assert [r.uri for r in http.pending] == ["/4"]
    assert http.answer_after_gap(200, 2.0, 2, start=1000, ack=200).uri == "/4"
    # With no client bytes lost before what the server had, nothing can be its request.
    assert http.answer_after_gap(200, 3.0, 3, start=1100, ack=200) is None
    assert notes.count("http_request_lost") == 1 and notes.count("http_response_without_request") == 1


def test_nor_one_the_client_sent_after_it_had_the_response():
    http = HttpPairing(lambda *a: None)
    http.server_loss()
    _queued(http, ("/2", 0, 500))
    # The client had server bytes up to 500 when it sent /2; this response starts at 400.
    assert http.answer_after_gap(200, 1.0, 1, start=400, ack=40) is None
    assert [r.uri for r in http.pending] == ["/2"]


def test_one_request_at_a_time_lost_responses_took_the_older_requests():
    notes = []
    http = HttpPairing(lambda *a: notes.append(a[0]))
    _one_at_a_time(http, 0, 20)
    assert http.waited and not http.pipelining
    http.server_loss()                         # answers of /2 and /3 lost
    _queued(http, ("/2", 40, 100), ("/3", 80, 200), ("/4", 120, 300))
    req = http.answer_after_gap(200, 2.0, 2, start=400, ack=160)   # the server had /4, not more
    assert req.uri == "/4" and not http.uncertain and not http.pending
    assert http.unanswered == 2 and notes.count("http_response_lost") == 2


def test_a_client_not_seen_asking_leaves_the_pair_unsure():
    http = HttpPairing(lambda *a: None)
    http.server_loss()
    _queued(http, ("/2", 40, 100), ("/3", 80, 200))
    assert http.answer_after_gap(200, 2.0, 2, start=400, ack=160).uri == "/2" and http.uncertain


def test_a_pipelining_client_leaves_the_pair_unsure():
    notes = []
    http = HttpPairing(lambda *a: notes.append(a[0]))
    _queued(http, ("/1", 0, 0), ("/2", 40, 0))   # two out at once, nothing lost: pipelining
    assert http.pipelining
    http.answer(200, 1.0, 1)
    http.server_loss()
    _queued(http, ("/3", 80, 0))
    req = http.answer_after_gap(200, 2.0, 2, start=400, ack=120)   # /2 or /3: the ACKs cannot say
    assert req.uri == "/2" and http.uncertain and notes == ["http_pairing_uncertain"]
    # Once a pair was unsure, later ones say so too, even where the ACKs
    # leave one candidate: in general they cannot show that the unsure pair
    # took the right request (it may still wait).
    _queued(http, ("/4", 120, 400))
    req = http.answer_after_gap(200, 3.0, 3, start=600, ack=120)
    assert req.uri == "/3" and http.uncertain and notes.count("http_pairing_uncertain") == 2


def _lossy_tap(exchanges: int, depth: int, bodies: list[int], lost: list[bool]):
    """Segments of one keep-alive connection, as its endpoints sent them:
    the client sends `depth` requests at a time and reads their answers;
    every packet acknowledges all the peer had sent (each end reads all it
    gets).  `lost[i]`: the tap missed the i-th data or pure ACK packet."""
    seq = {"c": 1000, "s": 5000}
    out: list[tuple[str, int, bytes]] = [("c", SYN, b""), ("s", SYN | ACK, b""), ("c", ACK, b"")]
    out = [(side, flags, payload, False) for side, flags, payload in out]
    index = 0

    def send(side, flags, payload):
        nonlocal index
        drop = lost[index % len(lost)] if payload or flags == ACK else False
        index += 1
        out.append((side, flags, payload, drop))

    clean = None   # how many packets went out before the first the tap lost
    n = 1
    while n <= exchanges:
        batch = list(range(n, min(n + depth, exchanges + 1)))
        for k in batch:
            send("c", ACK | PSH, b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % k)
        for k in batch:
            body = b"x" * bodies[k % len(bodies)]
            message = b"HTTP/1.1 200 r%d\r\nContent-Length: %d\r\n\r\n" % (k, len(body)) + body
            for i in range(0, len(message), 1460):
                send("s", ACK | PSH, message[i:i + 1460])
            send("c", ACK, b"")
        n += len(batch)
    out += [("c", FIN | ACK, b"", False), ("s", FIN | ACK, b"", False), ("c", ACK, b"", False)]
    clean = next((i for i, p in enumerate(out) if p[3]), len(out))
    packets = []
    for side, flags, payload, drop in out:
        peer = "s" if side == "c" else "c"
        if not drop:
            packets.append((side, seq[side], seq[peer] if flags & ACK else 0, flags, payload))
        seq[side] += len(payload) + bool(flags & (SYN | FIN))
    return packets, [p[2] for p in out[:clean]]


@settings(max_examples=300, deadline=None)
@given(exchanges=st.integers(2, 10), depth=st.integers(1, 3),
       bodies=st.lists(st.integers(0, 5000), min_size=1, max_size=5),
       lost=st.lists(st.booleans(), min_size=1, max_size=40))
def test_after_any_tap_loss_a_pair_is_right_or_says_it_is_not(exchanges, depth, bodies, lost):
    # The invariant of issue 16 item 6: never a silent shift.  A client that
    # sends one request at a time is realigned exactly: each answer pairs with
    # its request, or is "request lost" when the tap lost that request.
    from analyzer.tcp.table import FlowTable

    events = []
    table = FlowTable(lambda ev, ends: events.append(ev), lambda a: None)
    packets, before_loss = _lossy_tap(exchanges, depth, bodies, lost)
    seen = {int(p[-1].split(b" ")[1][1:]) for p in packets if p[0] == "c" and p[-1].startswith(b"GET")}
    for frame, (side, seq, ack, flags, payload) in enumerate(packets, 1):
        src, sport, dst, dport = (CLIENT, 40000, SERVER, 80) if side == "c" else (SERVER, 80, CLIENT, 40000)
        table.packet((src, dst, sport, dport, seq, ack, flags, payload, len(payload)), float(frame), frame)
    table.finish()
    # Seen asking for /2 only once /1 was answered, before any loss.
    waited = depth == 1 and any(p.startswith(b"GET /2 ") for p in before_loss)
    for ev in events:
        k = int(ev.text[1:])
        unsure = "http_pairing_uncertain" in ev.flags
        if waited:
            assert (ev.request, unsure) == ((f"GET /{k}" if k in seen else ""), False), (ev.text, ev.flags)
        elif ev.request != f"GET /{k}" and not unsure:
            # Not its request: said to answer a lost one, and its own was lost.
            assert ev.request == "" and k not in seen, (ev.request, ev.text, ev.flags)
