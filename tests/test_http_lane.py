# The compiled HTTP lane (analyzer/_fast/http_conn.pyx) against the
# reference dissector, call by call: the same random conversations, cut into
# the same random segments, with gaps, FINs and a close, must give the same
# events, anomalies, buffered bytes and outcome.  Plain traffic stays in the
# lane; the odd messages mixed in (interim responses, upgrades, bare LFs,
# bad chunks, bodies to the close, non-ASCII text, answers without a
# request) make it hand over to the reference mid-conversation, which is
# where a wrong state would show.
from __future__ import annotations

import dataclasses
import math
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import _fast
from analyzer.protocols.http.dissector import HttpDissector

lane = pytest.importorskip("analyzer._fast.http_conn") if _fast.available() else None
pytestmark = pytest.mark.skipif(lane is None, reason="the compiled fast path is not built")

CLIENT, SERVER = 0, 1

PLAIN_REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n",
    b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"GET /c?q=1 HTTP/1.0\r\n\r\n",
    b"PUT /x HTTP/1.1\r\nhost :  spaced  \r\ncontent-length: 0\r\n\r\n",
]
ODD_REQUESTS = [
    b"\r\nGET /after-crlf HTTP/1.1\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"GET /lf HTTP/1.1\nHost: h\n\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /two HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"OPTIONS\r\n\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n\r\n",
]
IIS = b"<html><head><title>IIS 10.0 Detailed Error - 404.3 - Not Found</title></head></html>"
# Pages the lane's first test (an "iis" or "http" in any case) must pass to
# find_substatus, and ones it may skip: a heading marker in odd case, one
# only at the page's end, nginx's page (no marker), a marker cut by the end.
ERROR_PAGES = [
    (403, b"<h3>hTTp Error 403.14 - Forbidden</h3>"),
    (404, b"x" * 3000 + b"<H1>HTTP Error 404.0 - Not Found</H1>"),
    (404, b"<html><head><title>404 Not Found</title></head><center>nginx/1.22.1</center></html>"),
    (404, b"<title>Iis 8.5 Detailed Error - 404.3 - Not Found</title>"),
    (500, b"error ht"),
]


def _response(code: int, reason: bytes, body: bytes, chunked: bool = False, extra: bytes = b"") -> bytes:
    head = b"HTTP/1.1 %d %s\r\n" % (code, reason) + extra
    if chunked:
        mid = len(body) // 2
        parts = [body[:mid], body[mid:]]
        framed = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in parts if p) + b"0\r\nX-Trailer: 1\r\n\r\n"
        return head + b"Transfer-Encoding: chunked\r\n\r\n" + framed
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


PLAIN_RESPONSES = [
    _response(200, b"OK", b"0123456789" * 30),
    _response(200, b"OK", b"{}", chunked=True),
    _response(404, b"Not Found", IIS),
    _response(404, b"Not Found", IIS, chunked=True),
    _response(500, b"Internal Server Error", b"x" * 9000),
    _response(301, b"Moved Permanently", b"", extra=b"Location: /\r\n"),
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: \"1\"\r\n\r\n",
    b"HTTP/1.0 200\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK \r\ncontent-length:\t3\r\n\r\nabc",
    *(_response(code, b"E", page) for code, page in ERROR_PAGES),
]
ODD_RESPONSES = [
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nuntil the close",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 Gr\xc3\xbc\xc3\x9fe\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 4x4 Bad\r\n\r\n",
    b"garbage from the server\r\n\r\n",
]


NAMES = ["host", "Host", "HOST", "content-length", "Content-Encoding", "upgrade", "connection", "X-Host", "Hostname",
         "transfer-encoding", "content-lengthx", "Cookie", "h", "C"]


@st.composite
def fields(draw) -> bytes:
    """Header lines a scan for the wanted names can get wrong: case, blanks around
    the colon, odd bytes in values (a value that decides framing stays valid)."""
    lines = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(NAMES)).encode()
        value = draw(st.binary(max_size=12).map(lambda b: bytes(c for c in b if c not in (10, 13))))
        if name.lower() in (b"content-length", b"transfer-encoding"):
            value = b"0" if name.lower() == b"content-length" else b"identity"
        lines.append(name + draw(st.sampled_from([b"", b" ", b"\t"])) + b":" + draw(st.sampled_from([b"", b" ", b"\t "]))
                     + value + b"\r\n")
    return b"".join(lines)


def _with_fields(message: bytes, extra: bytes) -> bytes:
    line_end = message.index(b"\n") + 1
    return message[:line_end] + extra + message[line_end:]


@st.composite
def conversations(draw):
    """[(direction, kind, value)] as the flow table delivers them."""
    odd = draw(st.floats(0, 0.3))
    calls = []
    for _ in range(draw(st.integers(1, 8))):
        # A flight of requests (pipelined when more than one), then their answers.
        n = draw(st.integers(1, 3))
        requests = [_with_fields(draw(st.sampled_from(ODD_REQUESTS if draw(st.floats(0, 1)) < odd else PLAIN_REQUESTS)),
                                 draw(fields()))
                    for _ in range(n)]
        answers = [_with_fields(draw(st.sampled_from(ODD_RESPONSES if draw(st.floats(0, 1)) < odd else PLAIN_RESPONSES)),
                                draw(fields()))
                   for _ in range(draw(st.integers(0, n + 1)))]
        for direction, stream in ((CLIENT, b"".join(requests)), (SERVER, b"".join(answers))):
            pos = 0
            while pos < len(stream):
                size = draw(st.one_of(st.integers(1, 16), st.integers(1, 2000)))
                calls.append((direction, "data", stream[pos:pos + size]))
                pos += size
                if draw(st.floats(0, 1)) < 0.02:
                    calls.append((direction, "gap", draw(st.integers(1, 400))))
    if draw(st.booleans()):
        calls.append((SERVER, "end", draw(st.booleans())))
    calls.append((None, "close", None))
    return calls


def _events(events) -> list:
    return [dataclasses.asdict(ev) for ev in events]


def _state(d) -> tuple:
    anomalies = [(a.name, a.epoch, a.frame, a.detail) for a in d.anomalies]
    d.anomalies.clear()   # as the flow table's drain()
    return anomalies, d.buffered, d.wants_acks, d.server_direction, d.handover is not None


@settings(max_examples=300, deadline=None)
@given(calls=conversations())
def test_lane_answers_as_the_reference(calls):
    fast = lane.dissector_for(server_direction=SERVER, midstream=False)
    ref = HttpDissector(server_direction=SERVER)
    assert type(fast) is lane.FastHttp
    for frame, (direction, kind, value) in enumerate(calls, start=1):
        ts = 1000.0 + frame * 0.001
        for d in (fast, ref):
            if d.wants_acks and kind == "data":
                d.acked(direction, None)
        if kind == "data":
            got, want = fast.feed(value, direction, ts, frame), ref.feed(value, direction, ts, frame)
        elif kind == "gap":
            got, want = fast.gap(value, direction, ts, frame), ref.gap(value, direction, ts, frame)
        elif kind == "end":
            got, want = fast.end(direction, ts, frame, value), ref.end(direction, ts, frame, value)
        else:
            got, want = fast.close(ts), ref.close(ts)
        assert _events(got) == _events(want), (frame, kind)
        assert _state(fast) == _state(ref), (frame, kind)
    assert fast.outcome() == ref.outcome()


def test_plain_traffic_stays_in_the_lane():
    fast = lane.dissector_for(server_direction=SERVER, midstream=False)
    # (a HEAD's answer has no body: the one after it, 304, goes to it)
    pairs = zip(PLAIN_REQUESTS, [PLAIN_RESPONSES[0], PLAIN_RESPONSES[7], *PLAIN_RESPONSES[2:5]])
    for i, (request, response) in enumerate(pairs):
        fast.feed(request, CLIENT, 1.0 + i, 2 * i + 1)
        events = fast.feed(response, SERVER, 1.5 + i, 2 * i + 2)
        assert fast.upgraded is None
    assert fast.outcome() == {"requests": 5, "responses": 5, "unanswered": 0}
    assert fast.sides[0].__class__.__name__ == "Side"   # still the lane's own state


def test_the_iis_substatus_is_found_in_the_lane():
    fast = lane.dissector_for(server_direction=SERVER, midstream=False)
    fast.feed(PLAIN_REQUESTS[0], CLIENT, 1.0, 1)
    events = fast.feed(_response(404, b"Not Found", IIS, chunked=True), SERVER, 1.25, 2)
    assert [(e.code, e.substatus, e.substatus_source, e.latency_ms, e.last_frame) for e in events] == \
        [(404, "404.3", "body", 250.0, 2)]
    assert fast.sides[1].__class__.__name__ == "Side"


@pytest.mark.parametrize("code, page", ERROR_PAGES)
def test_error_pages_name_the_substatus_the_reference_finds(code, page):
    # Each response whole in one segment: the lane parses its head itself,
    # and its first test on the body decides whether find_substatus runs.
    got = []
    for d in (lane.dissector_for(server_direction=SERVER, midstream=False), HttpDissector(server_direction=SERVER)):
        d.feed(PLAIN_REQUESTS[0], CLIENT, 1.0, 1)
        got.append([(e.code, e.substatus, e.substatus_source) for e in d.feed(_response(code, b"E", page), SERVER,
                                                                               1.5, 2)])
    assert got[0] == got[1]


def test_mid_stream_connections_go_to_the_reference():
    assert type(lane.dissector_for(server_direction=None, midstream=True)) is not lane.FastHttp


def test_a_long_keep_alive_connection_holds_no_answered_requests():
    # 1,000 exchanges, two of every five pipelined, then a hand-over: the lane
    # must forget answered requests as it goes (it kept all of them once: tiny
    # 1 M grew 150 -> 223 MB) and still hand the unanswered ones over.
    fast = lane.dissector_for(server_direction=SERVER, midstream=False)
    ref = HttpDissector(server_direction=SERVER)
    frame, most = 0, 0
    for i in range(1000):
        flight = 2 if i % 5 == 0 else 1
        for d, data in ((CLIENT, PLAIN_REQUESTS[0] * flight), (SERVER, PLAIN_RESPONSES[0] * flight)):
            frame += 1
            assert _events(fast.feed(data, d, 1.0 + frame * 0.001, frame)) == \
                _events(ref.feed(data, d, 1.0 + frame * 0.001, frame))
        most = max(most, fast.held_requests)
    assert most <= 66
    for d, data in ((CLIENT, PLAIN_REQUESTS[0] * 3), (SERVER, PLAIN_RESPONSES[0] + ODD_RESPONSES[0])):
        frame += 1
        assert _events(fast.feed(data, d, 9.0, frame)) == _events(ref.feed(data, d, 9.0, frame))
    assert fast.held_requests is None   # handed over
    assert _events(fast.close(10.0)) == _events(ref.close(10.0))
    assert fast.outcome() == ref.outcome()


def _same_float(a: float, b: float) -> bool:
    return struct.pack("<d", a) == struct.pack("<d", b)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                 st.floats(min_value=-1e7, max_value=1e7),
                 # thousandths and the halves between them, give or take an ulp: where rounding turns
                 st.integers(-10**9, 10**9).map(lambda k: k / 2000.0),
                 st.integers(-10**7, 10**7).map(lambda k: math.nextafter(k / 2000.0, math.inf)),
                 st.integers(-10**7, 10**7).map(lambda k: math.nextafter(k / 2000.0, -math.inf))))
def test_latency_rounding_is_the_builtins(ms):
    # The lane rounds each latency in C; the reference with round(x, 3).
    got, want = lane.round3(ms), round(ms, 3)
    assert (math.isnan(got) and math.isnan(want)) or _same_float(got, want), (ms, got, want)
