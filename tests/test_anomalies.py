"""One anomaly policy: every name the code emits is described, counts are exact,
example rows are sampled in one place."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from analyzer.meaning import anomalies

ROOT = Path(__file__).resolve().parent.parent / "analyzer"
# Calls that emit an anomaly, and which positional argument is its name.
EMITTERS = {"anomaly": 0, "_note": 0, "_anomaly": 1, "_salvage_head": 1, "_close_reply": 2}
NAME = re.compile(r"^[a-z][a-z0-9]*_[a-z0-9_]+$")


def _literals(node) -> set[str]:
    return {n.value for n in ast.walk(node)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and NAME.match(n.value)}


def emitted_names() -> dict[str, str]:
    """name -> where: literals passed to an emitter; when the name is a variable,
    the candidate literals of the function that computes it (an assignment in
    the same function, or the method a `for name in self.method(...)` walks)."""
    found: dict[str, str] = {}
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        methods = {f.name: f for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for func in methods.values():
            for call in ast.walk(func):
                if not isinstance(call, ast.Call):
                    continue
                fname = getattr(call.func, "attr", getattr(call.func, "id", ""))
                if fname not in EMITTERS:
                    continue
                args = list(call.args) + [k.value for k in call.keywords if k.arg in ("name", "anomaly", "reason")]
                pos = EMITTERS[fname]
                cands = args[pos:pos + 1] + [k.value for k in call.keywords if k.arg in ("name", "anomaly", "reason")]
                for arg in cands:
                    where = f"{path.relative_to(ROOT.parent)}:{call.lineno}"
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                        if arg.value:
                            found[arg.value] = where
                    elif isinstance(arg, ast.Name):
                        for node in ast.walk(func):
                            if isinstance(node, ast.Assign) and any(
                                    isinstance(t, ast.Name) and t.id == arg.id for t in node.targets):
                                found.update(dict.fromkeys(_literals(node.value), where))
                                if isinstance(node.value, ast.Call):
                                    callee = getattr(node.value.func, "attr", "")
                                    if callee in methods:
                                        found.update(dict.fromkeys(_literals(methods[callee]), where))
                            if isinstance(node, ast.For) and isinstance(node.target, ast.Name) \
                                    and node.target.id == arg.id and isinstance(node.iter, ast.Call):
                                callee = getattr(node.iter.func, "attr", "")
                                if callee in methods:
                                    found.update(dict.fromkeys(_literals(methods[callee]), where))
    return found




def test_every_emitted_name_is_in_the_policy_table():
    found = emitted_names()
    assert len(found) > 30, "the walk found too few emitters; has an emitter been renamed?"
    missing = {name: where for name, where in found.items() if name not in anomalies.NAMES}
    assert not missing, f"anomaly names without a policy row: {missing}"


def test_every_policy_row_is_used_somewhere():
    text = "\n".join(p.read_text() for p in ROOT.rglob("*.py") if p.name != "anomalies.py")
    unused = sorted(n for n in anomalies.NAMES if f'"{n}"' not in text)
    assert not unused


def test_rows_are_described_in_both_languages():
    for name in anomalies.NAMES:
        p = anomalies.policy(name)
        assert p.severity in (anomalies.INFO, anomalies.WARNING, anomalies.ERROR)
        assert anomalies.describe(name) and anomalies.describe(name, "zh") != anomalies.describe(name)
    assert anomalies.describe("no_such_anomaly")  # lookups never fail


def test_sampling_keeps_the_first_rows_then_one_in_rate():
    name = "websocket_unmasked_client_frame"
    kept = [n for n in range(1, 5001) if anomalies.sample(name, n)]
    assert kept[: anomalies.KEEP_FIRST] == list(range(1, anomalies.KEEP_FIRST + 1))
    assert kept[anomalies.KEEP_FIRST:] == list(range(2000, 5001, anomalies.SAMPLE_RATE))


def _unmasked_websocket(n_frames: int):
    from tests.test_flows import CLIENT, SERVER, PSH, Recorder, handshake
    from analyzer.tcp.table import ACK

    r = Recorder()
    handshake(r, sport=80)
    req = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    resp = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    c, s = 101, 901
    r.send(CLIENT, 40000, SERVER, 80, c, s, ACK | PSH, req)
    c += len(req)
    r.send(SERVER, 80, CLIENT, 40000, s, c, ACK | PSH, resp)
    s += len(resp)
    unmasked = b"\x82\x01a"   # FIN + binary, no mask bit: RFC 6455 5.1 violation
    for _ in range(n_frames):
        r.send(CLIENT, 40000, SERVER, 80, c, s, ACK | PSH, unmasked)
        c += len(unmasked)
    r.table.finish()
    return r


def test_repeated_anomaly_is_counted_exactly():
    # Before the policy the WebSocket dissector recorded one per connection
    # and the table counted what reached it: 500 frames were reported as 1.
    r = _unmasked_websocket(500)
    assert r.table.anomaly_counts["websocket_unmasked_client_frame"] == 500
    assert sum(a.name == "websocket_unmasked_client_frame" for a in r.anomalies) == 500


def test_rows_past_the_threshold_are_sampled_counts_stay_exact():
    r = _unmasked_websocket(2500)
    assert r.table.anomaly_counts["websocket_unmasked_client_frame"] == 2500
    rows = sum(a.name == "websocket_unmasked_client_frame" for a in r.anomalies)
    assert rows == anomalies.KEEP_FIRST + 1    # occurrences 1..1000, then the 2000th
