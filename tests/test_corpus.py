"""Conformance with Wireshark on the public corpus (../shared/corpus), when present.

The truth is tshark-derived (truth/score/); where the analyzer differs, the
difference is listed in tests/data/corpus_known_differences.csv and each one
is proven from the capture bytes below.  Inferred WebSocket 1006 events are
not frames on the wire, so they are left out of the comparison; tshark's
empty close code is RFC 6455's 1005.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

from analyzer.decode.packets import Decoder
from analyzer.engines.native import run
from analyzer.capture import open_capture

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus"
KNOWN = ROOT / "tests" / "data" / "corpus_known_differences.csv"

pytestmark = [
    pytest.mark.corpus,
    pytest.mark.skipif(not (CORPUS / "truth" / "score").is_dir(), reason="../shared/corpus is absent"),
]


def _score_module():
    sys.path.insert(0, str(SHARED / "tools"))
    try:
        import score
    finally:
        sys.path.pop(0)
    return score


def _known():
    with open(KNOWN, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _capture(name: str) -> Path:
    return next((CORPUS / "captures").glob(name + ".*"))


@pytest.fixture(scope="module")
def corpus_results(tmp_path_factory):
    score = _score_module()
    known = _known()
    results = {}
    for truth_path in sorted((CORPUS / "truth" / "score").glob("*.csv")):
        name = truth_path.stem
        out = tmp_path_factory.mktemp(name)
        run([str(_capture(name))], out)
        ours = score.load(str(out / "events.csv"))
        truth = score.load(str(truth_path))
        drop_truth = {(k["protocol"], k["frame"], k["code"]) for k in known
                      if k["capture"] == name and k["side"] == "truth"}
        drop_ours = {(k["protocol"], k["frame"], k["code"]) for k in known
                     if k["capture"] == name and k["side"] == "ours"}
        for row in truth:
            if row["protocol"] == "websocket" and row["code"] == "":
                row["code"] = "1005"
        truth = [r for r in truth if (r["protocol"], r["first_frame"], r["code"]) not in drop_truth]
        wrong_request = {(k["protocol"], k["frame"], k["code"]) for k in known
                         if k["capture"] == name and k["side"] == "request"}
        for row in truth:
            if (row["protocol"], row["first_frame"], row["code"]) in wrong_request:
                row["request"] = ""  # the command it answers is not in the capture
        ours = [r for r in ours if (r["protocol"], r["frame"], r["code"]) not in drop_ours
                and not (r["protocol"] == "websocket" and r["inferred"] == "true" and r["code"] == "1006")]
        results[name] = score.score(ours, truth, {"http", "ftp", "websocket"})
    return results


def _totals(results, protocol):
    total = dict(truth=0, ours=0, matched=0, paired=0, pair_ok=0)
    for result in results.values():
        for key, value in result["stats"][protocol].items():
            total[key] += value
    return total


@pytest.mark.parametrize("protocol", ["http", "ftp", "websocket"])
def test_recall_precision_and_pairing(corpus_results, protocol):
    if protocol == "ftp":
        pytest.importorskip("analyzer.protocols.ftp.dissector")
    t = _totals(corpus_results, protocol)
    assert t["truth"] > 0
    recall, precision = t["matched"] / t["truth"], t["matched"] / max(t["ours"], 1)
    print(f"{protocol}: recall {recall:.4f} precision {precision:.4f} pairing {t['pair_ok']}/{t['paired']}")
    assert recall >= 0.999, [r["misses"][:5] for r in corpus_results.values() if r["misses"]]
    assert precision >= 0.999, [r["extras"][:5] for r in corpus_results.values() if r["extras"]]
    assert t["pair_ok"] == t["paired"], [r["mispairs"][:3] for r in corpus_results.values() if r["mispairs"]]


def _payload(name: str, frame: int) -> bytes:
    decoder = Decoder()
    with open_capture(str(_capture(name))) as reader:
        for number, (ts, linktype, data, wirelen) in enumerate(reader, 1):
            if number == frame:
                seg = decoder.decode(linktype, data, ts, wirelen)
                return seg[7] if seg else b""
    raise AssertionError(f"{name} has no frame {frame}")


@pytest.mark.parametrize("frame", [1906, 1962])
def test_tshark_nobody_mode_invents_responses_in_body_text(frame):
    payload = _payload("ppp_http_packets", frame)
    assert payload and not payload.startswith(b"HTTP/")
    assert b"HTTP/1." not in payload  # no status line anywhere in that segment


def test_non_numeric_status_code_is_not_a_response():
    payload = _payload("sv_http1_noint_status", 7)
    assert payload.startswith(b"HTTP/1.0 2XX OK")


def test_fuzzed_connection_carries_a_real_status_line():
    # The rest of that head went to the real connection; the status line is whole.
    assert _payload("ndpi_fuzz_2006_09_29_be", 103) == b"HTTP/1.1 200 OK\r\nSe"


def _ftp_commands(name: str) -> list[tuple[int, str]]:
    """(frame, command line) of every client FTP command in a capture."""
    decoder, out = Decoder(), []
    with open_capture(str(_capture(name))) as reader:
        for number, (ts, linktype, data, wirelen) in enumerate(reader, 1):
            seg = decoder.decode(linktype, data, ts, wirelen)
            if seg and seg[3] == 21 and seg[7]:
                out += [(number, line.decode("latin-1").strip()) for line in seg[7].split(b"\r\n") if line]
    return out


@pytest.mark.parametrize("frame, code, verb", [(831, 227, "PASV"), (3204, 200, "TYPE")])
def test_fifo_pairing_of_replies_to_lost_commands_is_wrong(frame, code, verb):
    from analyzer.protocols.ftp.pairing import fits

    commands = _ftp_commands("zeek_ftp_cwd_navigation")
    before = [c for f, c in commands if f < frame]
    fifo_guess = {831: "TYPE", 3204: "CWD"}[frame]
    assert not fits(fifo_guess, code)  # the truth's FIFO-derived command cannot get this reply
    assert fits(verb, code)
    reply = _payload("zeek_ftp_cwd_navigation", frame)
    assert reply.startswith(str(code).encode())
    assert before  # commands were captured before it, just not the one it answers


def test_reply_code_without_separator_is_not_a_reply():
    assert _payload("zeek_ftp_missing_space", 16).startswith(b"230_no_space")


def test_every_known_difference_is_still_a_difference(corpus_results):
    # A listed difference that disappeared must be removed from the list.
    score = _score_module()
    for k in _known():
        truth = score.load(str(CORPUS / "truth" / "score" / f"{k['capture']}.csv"))
        if k["side"] == "truth":
            assert any(r["first_frame"] == k["frame"] and r["code"] == k["code"] for r in truth), k
