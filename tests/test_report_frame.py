"""Both frames of a message: `frame` holds its first byte, `last_frame` its
last (the frame Wireshark reports it in), for every protocol and engine."""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from analyzer.protocols.ftp.dissector import FtpDissector
from analyzer.protocols.http.dissector import HttpDissector
from analyzer.protocols.websocket.dissector import WebSocketDissector

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "samples" / "captures"
C, S = 0, 1


def test_http_response_ends_with_its_body():
    d = HttpDissector(server_direction=S)
    d.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nHEAD /b HTTP/1.1\r\nHost: h\r\n\r\n", C, 1.0, 1)
    events = d.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab", S, 2.0, 2)
    events += d.feed(b"cd", S, 3.0, 3)
    assert events == []                                    # the body goes on
    events += d.feed(b"ef", S, 4.0, 4)
    events += d.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n", S, 5.0, 5)   # HEAD: no body
    assert [(e.request, e.frame, e.last_frame) for e in events] == [("GET /a", 2, 4), ("HEAD /b", 5, 5)]


def test_http_response_that_never_ends_has_no_last_frame():
    d = HttpDissector(server_direction=S)
    d.feed(b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n", C, 1.0, 1)
    events = d.feed(b"HTTP/1.1 500 Oops\r\nContent-Length: 600\r\n\r\nx", S, 2.0, 2) + d.close(3.0)
    assert [(e.code, e.frame, e.last_frame) for e in events] == [(500, 2, None)]


def test_ftp_multi_line_reply_ends_with_its_final_line():
    d = FtpDissector(server_direction=S)
    events = d.feed(b"220 ready\r\n", S, 1.0, 1)
    d.feed(b"HELP\r\n", C, 2.0, 2)
    events += d.feed(b"214-The following commands\r\n ABOR\r\n", S, 3.0, 3)
    events += d.feed(b"214 Help OK.\r\n", S, 4.0, 4)
    assert [(e.code, e.frame, e.last_frame) for e in events] == [(220, 1, 1), (214, 3, 4)]


def test_websocket_close_split_over_two_segments_ends_in_the_second():
    ws = WebSocketDissector(server_direction=S)
    events = ws.feed(b"\x88\x05\x03", S, 1.0, 7) + ws.feed(b"\xe8bye", S, 2.0, 8)
    assert [(e.code, e.frame, e.last_frame) for e in events] == [(1000, 7, 8)]


def _events(capture: Path, out: Path, engine: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-m", "analyzer", "analyze", str(capture), "-o", str(out), "-q",
                    "--engine", engine], check=True, capture_output=True, env=env, timeout=300)
    with open(out / "events.csv", newline="", encoding="utf-8") as handle:
        return {(r["protocol"], r["code"], r["frame"]): r["last_frame"] for r in csv.DictReader(handle)}


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("name", ["http_nginx_codes.pcap", "ws_closes.pcap"])
def test_last_frame_is_where_tshark_reports_the_message(tmp_path, name):
    native = _events(SAMPLES / name, tmp_path / "native", "native")
    tshark = _events(SAMPLES / name, tmp_path / "tshark", "tshark")
    common = set(native) & set(tshark)
    assert len(common) >= 20 and all(native[k] for k in common)
    assert {k: native[k] for k in common} == {k: tshark[k] for k in common}
