# The --fail-on gate (analyzer/meaning/gate.py): parsing, every protocol, every
# operator, counts and % rates, and one-line errors for bad expressions.
from __future__ import annotations

import pytest

from analyzer.errors import ExitStatus, UsageError
from analyzer.meaning.gate import evaluate, measure, parse
from analyzer.meaning.severity import Policy
from analyzer.stats.hosts import compute, events_frame

SRV, CLI = "192.0.2.1", "198.51.100.2"


def make(codes: dict[tuple[str, int], int], substatus: dict[int, str] | None = None, policy=None):
    rows = []
    t = 1_700_000_000.0
    for (proto, code), n in codes.items():
        for _ in range(n):
            t += 1
            rows.append(dict(epoch=t, protocol=proto, client_ip=CLI, server_ip=SRV, code=code,
                             inferred=proto == "websocket" and code in (1005, 1006),
                             substatus=(substatus or {}).get(code, "")))
    return compute(events_frame(rows), policy=policy)


# 200 HTTP events: 180 x 200, 10 x 404, 6 x 503, 4 x 500 -> 5xx = 5 %, errors = 10 %
HTTP = {("http", 200): 180, ("http", 404): 10, ("http", 503): 6, ("http", 500): 4}
# 40 FTP replies: 25 x 230, 12 x 530, 3 x 421
FTP = {("ftp", 230): 25, ("ftp", 530): 12, ("ftp", 421): 3}
# 10 WebSocket closes: 6 x 1000, 3 x 1006, 1 x 1011
WS = {("websocket", 1000): 6, ("websocket", 1006): 3, ("websocket", 1011): 1}


@pytest.fixture(scope="module")
def result():
    return make({**HTTP, **FTP, **WS})


def fired(expr, result) -> bool:
    return bool(evaluate([parse(expr)], result))


def test_examples_from_the_issue(result):
    assert fired("http.5xx>1%", result)
    assert fired("websocket.1006>0", result)
    assert fired("ftp.530>=10", result)
    assert not fired("ftp.530>=13", result)
    reasons = evaluate([parse("http.5xx>1%"), parse("ftp.530>=13"), parse("websocket.1006>0")], result)
    assert reasons == [
        "--fail-on http.5xx>1%: 5.00% (10 5xx of 200 http events)",
        "--fail-on websocket.1006>0: 3 (3 1006 of 10 websocket events)",
    ]


@pytest.mark.parametrize("expr, expected", [
    ("http.5xx>5%", False), ("http.5xx>=5%", True), ("http.5xx<5.01%", True), ("http.5xx<=4.99%", False),
    ("http.5xx==5%", True), ("http.5xx!=5%", False),
    ("http.5xx>9", True), ("http.5xx>=11", False), ("http.5xx==10", True), ("http.5xx!=10", False),
    ("http.5xx<10", False), ("http.5xx<=10", True),
    ("http.errors>=10%", True), ("http.errors>10%", False), ("http.errors==20", True),
    ("http.4xx==10", True), ("http.2xx<90%", False), ("http.404>=10", True), ("http.418>0", False),
    ("ftp.5yz==12", True), ("ftp.5xx==12", True), ("ftp.4yz==3", True), ("ftp.errors>=37.5%", True),
    ("ftp.errors>37.5%", False), ("ftp.530>25%", True), ("ftp.2yz<50%", False),
    ("websocket.1006>=30%", True), ("websocket.errors==4", True), ("websocket.1000==6", True),
    ("ws.1011>0", True), ("websocket.1001>0", False),
    (" http . 5xx >= 1 % ", True),
])
def test_operators_and_rates(result, expr, expected):
    assert fired(expr, result) is expected


def test_protocol_without_events_never_fires_a_rate():
    only_http = make(HTTP)
    assert measure(parse("ftp.530>0%"), only_http) == (0, 0)
    assert not fired("ftp.errors>0%", only_http)
    assert not fired("websocket.1006>0", only_http)
    assert fired("websocket.errors==0", only_http)


def test_errors_follow_the_severity_policy():
    lenient = make({**HTTP, **WS}, policy=Policy.from_options(expect=["http:404", "websocket:1006"]))
    assert measure(parse("http.errors>0"), lenient) == (10, 200)
    assert measure(parse("websocket.errors>0"), lenient) == (1, 10)
    assert measure(parse("http.404>0"), lenient) == (10, 200)        # exact codes ignore the policy


def test_substatus_selector():
    result = make({("http", 403): 4, ("http", 200): 4}, substatus={403: "403.14"})
    assert measure(parse("http.403.14>0"), result) == (4, 8)
    assert fired("http.403.14>=50%", result)
    assert not fired("http.403.7>0", result)


@pytest.mark.parametrize("expr", [
    "", "http", "http.5xx", "http.5xx>", "5xx>1%", "http.5xx>>1", "http.5xx=1", "http.5xx>1%%",
    "http.5xx>-1", "http.5xx>abc", "smtp.5xx>1", "http.7xx>1", "http.6xx>1", "http.99>1", "http.1000>1",
    "ftp.700>1", "ftp.7yz>1", "websocket.4xx>0", "websocket.70000>0", "http.foo>1", "http.5xx>101%",
    "http.5xx>1% extra", "http.403.14.1>0", "ftp.530.1>0",
])
def test_bad_expressions(expr):
    with pytest.raises(UsageError) as info:
        parse(expr)
    message = str(info.value)
    assert "\n" not in message and message.startswith("bad --fail-on")
    assert info.value.exit_status == ExitStatus.USAGE
