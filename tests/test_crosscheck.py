"""`analyzer crosscheck`: both engines over one capture, every disagreement classified.

The alignment is tested on hand-made events.csv files (a test that can
fail); the end-to-end runs use our samples and, when present, a subset of
../shared/corpus chosen to exercise every documented tshark fault.
"""
from __future__ import annotations

import shutil
from types import SimpleNamespace
from pathlib import Path

import pyarrow as pa
import pytest

from analyzer.cli.crosscheck import CrossCheck, Disagreement, compare, crosscheck, format_report
from analyzer.outputs.events import EVENT_SCHEMA, EventsKept

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT / "samples" / "captures"
CORPUS = ROOT.parent / "shared" / "corpus" / "captures"
KNOWN = ROOT / "tests" / "data" / "corpus_known_differences.csv"


@pytest.fixture(scope="module")
def tshark():
    if shutil.which("tshark") is None:
        pytest.skip("tshark is not installed")
    pytest.importorskip("pyshark")


def _write(path: Path, rows: list[tuple]):
    """A stand-in for an engine's RunResult whose events were kept in memory."""
    kept = EventsKept()
    kept.write(pa.RecordBatch.from_pylist([
        {"epoch": float(i), "frame": i, "protocol": "http", "client_ip": "10.0.0.1", "client_port": 1000,
         "server_ip": "10.0.0.2", "server_port": 80, "code": code, "request": request, "capture": "x.pcap"}
        for i, (code, request) in enumerate(rows, 1)], schema=EVENT_SCHEMA))
    return SimpleNamespace(kept=kept)


def test_alignment_costs_one_line_per_missed_event(tmp_path):
    native = _write(tmp_path / "n.csv", [(200, "GET /1"), (404, "GET /2 HTTP/1.1"), (200, "GET /3"), (500, "GET /4")])
    theirs = _write(tmp_path / "t.csv", [(200, "GET /1"), (200, "GET /3"), (500, "GET /5")])
    agree, n, t, rows = compare(native, theirs)
    assert (agree["http"], n["http"], t["http"]) == (2, 4, 3)
    kinds = sorted((d.kind, d.code, d.request, d.other) for d in rows)
    assert kinds == [("native-only", "404", "GET /2 HTTP/1.1", ""),
                     ("request-differs", "500", "GET /4", "GET /5")]


def test_same_request_after_a_missed_response_is_not_a_pairing_difference(tmp_path):
    # tshark misses /2 (body never completed): /3 must still agree with /3.
    native = _write(tmp_path / "n.csv", [(200, "GET /1"), (200, "GET /2"), (200, "GET /3")])
    theirs = _write(tmp_path / "t.csv", [(200, "GET /1"), (200, "GET /3")])
    agree, _, _, rows = compare(native, theirs)
    assert agree["http"] == 2
    assert [(d.kind, d.request) for d in rows] == [("native-only", "GET /2")]


def test_report_says_unexplained_and_known():
    cc = CrossCheck(captures=["x.pcap"], tshark_version="4.0.17")
    cc.native["http"], cc.tshark["http"], cc.agree["http"] = 3, 2, 1
    cc.disagreements = [
        Disagreement("http", "native-only", "x.pcap", "7", "404", "GET /a", known="tshark_http_body_incomplete"),
        Disagreement("http", "tshark-only", "x.pcap", "9", "200", "GET /b"),
    ]
    text = format_report(cc)
    assert "x.pcap frame 9: http tshark-only: 200 'GET /b'" in text
    assert "[tshark_http_body_incomplete]" in text
    assert text.endswith("1 unexplained disagreement(s)")
    assert not cc.ok


def test_samples_agree_or_differ_only_where_tshark_is_known_wrong(tshark, tmp_path):
    caps = [str(CAPTURES / n) for n in ("http_nginx_raw.pcap", "ws_closes.pcap", "tls_h2c.pcap")]
    cc = crosscheck(caps, outdir=tmp_path)
    assert cc.ok, format_report(cc)
    assert cc.agree["websocket"] == cc.native["websocket"] > 0
    # tshark misses a pipelined response whose body it never completes
    # (http.desegment_body): proven by the second tshark run.
    assert {d.known for d in cc.disagreements} <= {"tshark_http_body_incomplete", "native_engine_does_not_decode_h2"}
    assert sum(d.known == "native_engine_does_not_decode_h2" for d in cc.disagreements) == 5
    assert (tmp_path / "crosscheck.csv").exists()


def test_disagreement_beyond_the_known_ones_exits_5(tshark, tmp_path, capsys):
    from analyzer.cli.crosscheck import register
    import argparse

    # Force tshark to read the HTTP server port as FTP: its events vanish,
    # and no documented fault explains that.
    port = None
    with open(CAPTURES / "http_nginx_codes.expected.json", encoding="utf-8") as fh:
        import json

        port = json.load(fh)["server_port"]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["crosscheck", str(CAPTURES / "http_nginx_codes.pcap"),
                              "--decode-as", f"tcp.port=={port},ftp"])
    assert args.func(args) == 5
    assert "unexplained disagreement(s)" in capsys.readouterr().out


CORPUS_SUBSET = {
    # capture: the known classes its disagreements must fall in
    "ppp_650_http_responses": {"tshark_http_body_incomplete", "tshark_connection_not_dissected"},
    "sv_tls_subjectaltname": {"tshark_http_body_incomplete", "tshark_out_of_order_not_reassembled"},
    "arkime_wireshark_retrans": set(),          # retransmitted copies dissected twice: dropped by the engine
    "zeek_ftp_ipv4": set(),                     # multi-line replies split over segments: collapsed
    "zeek_ftp_invalid_reply_code": set(),
    "zeek_http_body_match": set(),              # 100-continue: the request reported after the 100
    "sv_http1_noint_status": set(),             # "2XX": tshark says 2, the engine drops it
    "zeek_http_pipelined": set(),
    "zeek_ws_jupyter": set(),
    "ndpi_fuzz_2006_09_29_be": {"listed", "tshark_out_of_order_not_reassembled", "tshark_connection_not_dissected",
                                "tshark_http_body_incomplete"},
}


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason="../shared/corpus is absent")
def test_corpus_disagreements_are_the_documented_tshark_faults(tshark, tmp_path):
    paths = [str(next(CORPUS.glob(name + ".*"))) for name in CORPUS_SUBSET]
    cc = crosscheck(paths, outdir=tmp_path, known_files=[KNOWN])
    assert cc.ok, format_report(cc)
    for name, allowed in CORPUS_SUBSET.items():
        found = {d.known for d in cc.disagreements if d.capture.startswith(name + ".")}
        assert found <= allowed, (name, found)
    assert cc.agree["ftp"] == cc.native["ftp"] > 0
    assert cc.agree["websocket"] == cc.native["websocket"] > 0
    body = [d for d in cc.disagreements if d.known == "tshark_http_body_incomplete"]
    assert len(body) > 100 and all(d.kind != "tshark-only" for d in body)
