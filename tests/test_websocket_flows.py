"""WebSocket through the whole pipeline: roles and close codes at flow level,
and one answer for a clean close across connections.csv, hosts.csv and --fail-on."""
from __future__ import annotations

import csv
import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.tcp.table import ACK, FIN, SYN, FlowTable
from tests.captures_builder import conversation

ROOT = Path(__file__).resolve().parent.parent
CLIENT, SERVER = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
CPORT, SPORT = 40000, 8080
PSH = 0x08
MASK = b"\x37\xfa\x21\x3d"
UPGRADE = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")


def ws_frame(opcode: int, payload: bytes, masked: bool) -> bytes:
    head = bytes([0x80 | opcode, (0x80 if masked else 0) | len(payload)])
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def close_frame(code: int | None, masked: bool) -> bytes:
    return ws_frame(0x8, b"" if code is None else struct.pack("!H", code), masked)


def script(*, tcp_handshake: bool, upgrade: bool, server_first: bool, frames: int,
           closer: str, codes: tuple[int | None, int | None]) -> list[tuple[str, int, bytes]]:
    """(sender, flags, payload) of one connection, as the capture shows it."""
    out: list[tuple[str, int, bytes]] = []
    if tcp_handshake:
        out += [("c", SYN, b""), ("s", SYN | ACK, b""), ("c", ACK, b"")]
    if upgrade:
        out += [("c", ACK | PSH, UPGRADE), ("s", ACK | PSH, SWITCH)]
    order = ("s", "c") if server_first else ("c", "s")
    for side in order:
        for i in range(frames):
            out.append((side, ACK | PSH, ws_frame(0x1, b"msg %d" % i, side == "c")))
    other = "s" if closer == "c" else "c"
    out.append((closer, ACK | PSH, close_frame(codes[0], closer == "c")))
    out.append((other, ACK | PSH, close_frame(codes[1], other == "c")))
    out += [("s", FIN | ACK, b""), ("c", FIN | ACK, b""), ("s", ACK, b"")]
    return out


def run_flow(packets):
    events, rows = [], []
    table = FlowTable(lambda ev, ends: events.append((ev, ends)), lambda a: None, rows.append)
    seq = {"c": 1000, "s": 5000}
    for frame, (side, flags, payload) in enumerate(packets, 1):
        peer = "s" if side == "c" else "c"
        src, sport, dst, dport = (CLIENT, CPORT, SERVER, SPORT) if side == "c" else (SERVER, SPORT, CLIENT, CPORT)
        table.packet((src, dst, sport, dport, seq[side], seq[peer], flags, payload, len(payload)),
                     float(frame), frame)
        seq[side] += len(payload) + bool(flags & (SYN | FIN))
    table.finish()
    return events, rows


@settings(max_examples=60, deadline=None)
@given(tcp_handshake=st.booleans(), upgrade=st.booleans(), server_first=st.booleans(),
       frames=st.integers(3, 5), closer=st.sampled_from("cs"),
       codes=st.tuples(st.sampled_from([1000, 1001, 1008, 4000, None]),
                       st.sampled_from([1000, 1001, 1011, None])))
def test_roles_and_close_codes_do_not_depend_on_where_the_capture_starts(
        tcp_handshake, upgrade, server_first, frames, closer, codes):
    events, rows = run_flow(script(tcp_handshake=tcp_handshake, upgrade=upgrade, server_first=server_first,
                                   frames=frames, closer=closer, codes=codes))
    closes = [(ev.code, ev.direction, ends[0], ends[2]) for ev, ends in events if ev.protocol == "websocket"]
    want = [1005 if c is None else c for c in codes]
    first_dir = "client->server" if closer == "c" else "server->client"
    second_dir = "server->client" if closer == "c" else "client->server"
    assert closes == [(want[0], first_dir, "10.0.0.1", "10.0.0.2"), (want[1], second_dir, "10.0.0.1", "10.0.0.2")]
    assert not any("websocket_protocol_violation" in ev.flags for ev, _ in events)
    (row,) = rows
    assert (row["client_ip"], row["client_port"], row["server_ip"], row["server_port"]) == \
        ("10.0.0.1", CPORT, "10.0.0.2", SPORT)
    outcome = json.loads(row["outcome"])
    ws = outcome.get("websocket", outcome)
    assert ws["closed_first_by"] == ("client" if closer == "c" else "server")
    assert ws["close_code"] == want[0]


# ------------------------------------------------- a close without a code --

def _write_capture(path: Path, packets) -> None:
    path.write_bytes(conversation(packets, CLIENT, CPORT, SERVER, SPORT))


def test_close_without_status_code_after_handshake_is_clean_everywhere(tmp_path):
    capture = tmp_path / "ws_1005.pcap"
    _write_capture(capture, script(tcp_handshake=True, upgrade=True, server_first=False, frames=1,
                                   closer="c", codes=(None, None)))
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(capture), "-o", str(out), "-q",
                           "--fail-on", "websocket.errors>0"], capture_output=True, env=env, timeout=120)
    with open(out / "connections.csv", newline="", encoding="utf-8") as handle:
        (conn,) = list(csv.DictReader(handle))
    outcome = json.loads(conn["outcome"])
    ws = outcome.get("websocket", outcome)
    assert (ws["close_code"], ws["reply_code"], ws["clean"]) == (1005, 1005, True)
    with open(out / "hosts.csv", newline="", encoding="utf-8") as handle:
        hosts = [r for r in csv.DictReader(handle) if r["protocol"] == "websocket"]
    assert hosts and all(r["error_count"] == "0" for r in hosts)
    assert all(r["ws_normal"] == "2" and r["ws_inferred"] == "0" for r in hosts)
    assert proc.returncode == 0, proc.stderr.decode()


# ------------------------------- a capture that begins between GET and 101 --

def _events_csv(out: Path) -> list[dict]:
    with open(out / "events.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_capture_starting_at_the_101_keeps_roles_in_both_engines(tmp_path):
    # The client's upgrade request is not in the capture: the 101 answers
    # nothing (flagged), yet it is the server that sent it, so the masked
    # frames are the client's and neither close is a protocol violation.
    # tshark does not switch to WebSocket without the request (it shows the
    # frames as bare TCP), so its engine must not invent a 1006: it says the
    # closes are unknown.  The native engine reads them from the bytes.
    capture = tmp_path / "ws_from_101.pcap"
    packets = [("s", ACK | PSH, SWITCH)] + script(tcp_handshake=False, upgrade=False, server_first=True,
                                                  frames=2, closer="s", codes=(1001, 1000))
    _write_capture(capture, packets)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    want = {
        "native": [("http", "101", "server->client", False), ("websocket", "1001", "server->client", False),
                   ("websocket", "1000", "client->server", False)],
        "tshark": [("http", "101", "server->client", False)],
    }
    for engine in ["native"] + (["tshark"] if shutil.which("tshark") else []):
        out = tmp_path / engine
        proc = subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(capture), "-o", str(out), "-q",
                               "--engine", engine], capture_output=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        rows = _events_csv(out)
        got = [(r["protocol"], r["code"], r["direction"] or "server->client",
                "websocket_protocol_violation" in r["flags"]) for r in rows]
        assert got == want[engine], engine
        assert {(r["client_ip"], r["server_ip"]) for r in rows} == {("10.0.0.1", "10.0.0.2")}
        assert [r["request"] for r in rows if r["protocol"] == "http"] == [""]
        assert "http_response_without_request" in rows[0]["flags"]
        with open(out / "connections.csv", newline="", encoding="utf-8") as handle:
            (conn,) = list(csv.DictReader(handle))
        outcome = json.loads(conn["outcome"])
        ws = outcome.get("websocket", outcome)
        if engine == "native":
            assert (ws["state"], ws["closed_first_by"], ws["clean"]) == ("closed", "server", True)
        else:
            assert (ws["state"], ws["close_code"]) == ("unknown", None)
            summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
            assert "tshark_websocket_not_dissected" in json.dumps(summary)
