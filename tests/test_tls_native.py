"""The native engine counts TLS connections it cannot read, with their server names."""
from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED
from analyzer.protocols.tls.dissector import TlsDissector, detect, server_name
from analyzer.engines.native import run

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "captures"


def test_tls_sessions_are_counted_as_encrypted_with_unknown_status(tmp_path):
    result = run([str(SAMPLES / "tls_nginx.pcap")], tmp_path)
    expected = json.loads((SAMPLES / "tls_nginx.expected.json").read_text())
    rows = [r for r in result.connections.rows() if r["protocol"] == "tls"]
    assert rows and result.events == 0
    assert len(rows) == result.coverage()["tls_connections"]
    outcomes = [json.loads(r["outcome"]) for r in rows]
    assert all(o["status"] == "unknown" and o["sni"] == "tls.example.test" for o in outcomes)
    made = {(c["client_port"], c["server_port"]) for c in expected["connections"]}
    assert {(r["client_port"], r["server_port"]) for r in rows} == made


def test_detect():
    hello = bytes([0x16, 3, 1, 0, 0xA5, 1])
    assert detect(hello, b"") == DETECTED
    assert detect(b"\x16", b"") == NEED_MORE
    assert detect(b"GET / HTTP/1.1\r\n", b"HTTP/1.1 200 OK\r\n") == REJECTED


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_random_bytes_never_raise(a, b):
    detect(a, b)
    server_name(a)
    d = TlsDissector()
    d.feed(a, 0, 1.0, 1)
    d.feed(b, 1, 2.0, 2)
    d.outcome()
