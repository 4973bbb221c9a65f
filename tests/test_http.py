"""HTTP/1.x dissector: every status line is an event, paired FIFO with its request.

Each scripted conversation runs three ways (whole segments, byte by byte,
random splits) and must give the same events; random bytes never raise.
"""
from __future__ import annotations

import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED
from analyzer.protocols.http.dissector import HttpDissector, detect

C, S = 0, 1  # client and server directions, as the flow table numbers them


def run(script, split=None, server=1, midstream=False):
    """Feed [(direction, bytes)] (or ('gap', dir, n) / ('end', dir)) and close."""
    d = HttpDissector(server_direction=server, midstream=midstream)
    events = []
    for i, step in enumerate(script):
        ts = 100.0 + i
        if step[0] == "gap":
            events += d.gap(step[2], step[1], ts, i + 1)
            continue
        if step[0] == "end":
            events += d.end(step[1], ts, i + 1, False)
            continue
        direction, data = step
        pieces = split(data) if split else [data]
        for piece in pieces:
            events += d.feed(piece, direction, ts, i + 1)
    events += d.close(200.0)
    return events, d


def summary(events):
    return [(e.code, e.request, e.text, e.host, e.frame) for e in events]


def three_ways(script, **kw):
    whole, _ = run(script, **kw)
    bytewise, _ = run(script, split=lambda b: [b[i:i + 1] for i in range(len(b))], **kw)
    assert summary(whole) == summary(bytewise)
    return whole


REQ = b"GET /a HTTP/1.1\r\nHost: example.org\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


def test_simple_exchange_pairs_and_measures_latency():
    events = three_ways([(C, REQ), (S, OK)])
    assert summary(events) == [(200, "GET /a", "OK", "example.org", 2)]
    assert events[0].latency_ms == pytest.approx(1000.0)
    assert events[0].sender == S


def test_pipelined_requests_in_one_segment_pair_in_order():
    reqs = b"".join(b"GET /%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5))
    resps = b"".join(b"HTTP/1.1 %d X\r\nContent-Length: 1\r\n\r\nx" % (200 + i) for i in range(5))
    events = three_ways([(C, reqs), (S, resps)])
    assert [(e.code, e.request) for e in events] == [(200 + i, f"GET /{i}") for i in range(5)]


def test_head_response_has_no_body_even_with_content_length():
    # Pipelined HEAD then GET: the HEAD response announces 1000 bytes it never sends.
    script = [
        (C, b"HEAD /big HTTP/1.1\r\nHost: h\r\n\r\nGET /small HTTP/1.1\r\nHost: h\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"),
    ]
    events = three_ways(script)
    assert [(e.code, e.request) for e in events] == [(200, "HEAD /big"), (404, "GET /small")]


def test_204_and_304_have_no_body():
    script = [
        (C, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n"),
        (S, b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
    assert [e.code for e in three_ways(script)] == [204, 304, 200]


def test_expect_100_continue_pairs_before_the_body_arrives():
    script = [
        (C, b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"),
        (S, b"HTTP/1.1 100 Continue\r\n\r\n"),
        (C, b"data"),
        (S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    ]
    events = three_ways(script)
    assert [(e.code, e.request) for e in events] == [(100, "POST /up"), (201, "POST /up")]


def test_early_final_status_before_body_then_next_request():
    script = [
        (C, b"POST /up HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"),
        (S, b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n"),
        (C, b"dataGET /next HTTP/1.1\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
    assert [(e.code, e.request) for e in three_ways(script)] == [(417, "POST /up"), (200, "GET /next")]


def test_two_interim_responses_do_not_consume_the_request():
    script = [
        (C, b"POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"),
        (S, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 102 Processing\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
    assert [(e.code, e.request) for e in three_ways(script)] == [(100, "POST /x")] * 2 + [(102, "POST /x"), (200, "POST /x")]


def test_chunked_body_with_extensions_and_trailers():
    body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nExpires: never\r\nX-T: 1\r\n\r\n"
    script = [
        (C, b"GET /c HTTP/1.1\r\n\r\nGET /d HTTP/1.1\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body +
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
    ]
    assert [(e.code, e.request) for e in three_ways(script)] == [(200, "GET /c"), (404, "GET /d")]


def test_close_delimited_http10_body_ends_at_fin():
    script = [
        (C, b"GET /old HTTP/1.0\r\n\r\n"),
        (S, b"HTTP/1.0 200 OK\r\n\r\nHTTP/1.1 500 this is body text, not a response\r\n"),
        ("end", S),
    ]
    assert [(e.code, e.request) for e in three_ways(script)] == [(200, "GET /old")]


def test_reason_phrase_kept_exactly_and_may_be_empty():
    script = [(C, REQ + REQ), (S, b"HTTP/1.1 200 Very  Fine \r\nContent-Length: 0\r\n\r\nHTTP/1.1 503\r\n\r\n")]
    events = three_ways(script)
    assert [e.text for e in events] == ["Very  Fine ", ""]


def test_response_without_request_is_still_an_event():
    events, d = run([(S, OK)], server=None)
    assert [(e.code, e.request) for e in events] == [(200, "")]
    assert "http_response_without_request" in events[0].flags
    assert d.server_direction == S


def test_http09_reply_without_status_line_is_no_event():
    events, d = run([(C, b"GET /\r\n\r\n"), (S, b"<html>hello</html>"), ("end", S)])
    assert events == []


def test_invalid_status_code_is_not_an_event():
    # "2XX" is not the 3-digit status-code of RFC 9112 section 4 (tshark reads it as 2).
    events, d = run([(C, REQ), (S, b"HTTP/1.0 2XX OK\n\n")])
    assert events == []
    assert any(a.name == "http_bad_status_line" for a in d.anomalies)


def test_lenient_request_lines_still_pair():
    for line, want in ((b"GET / HTTP/1.", "GET /"), (b"OPTIONS", "OPTIONS"), (b"OPTIONS HTTP/1.1", "OPTIONS HTTP/1.1")):
        events, _ = run([(C, line + b"\r\nHost: h\r\n\r\n"), (S, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")])
        assert [(e.code, e.request) for e in events] == [(400, want)]


def test_websocket_upgrade_hands_over_after_101():
    handshake = (b"GET /chat HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: x\r\nSec-WebSocket-Version: 13\r\n\r\n")
    close_frame = b"\x88\x02\x03\xe8"  # server close 1000, unmasked
    script = [(C, handshake), (S, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                  b"Connection: Upgrade\r\n\r\n" + close_frame)]
    events = three_ways(script)
    assert [(e.protocol, e.code, e.request) for e in events] == [("http", 101, "GET /chat"), ("websocket", 1000, "GET /chat")]


def test_upgrade_to_something_else_becomes_a_tunnel():
    script = [
        (C, b"POST /v1.40/exec/1/start HTTP/1.1\r\nUpgrade: tcp\r\nConnection: Upgrade\r\nContent-Length: 0\r\n\r\n"),
        (S, b"HTTP/1.1 101 UPGRADED\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\nHTTP/1.1 200 raw stream data"),
        (C, b"GET / HTTP/1.1\r\n\r\n"),
    ]
    events = three_ways(script)
    assert [(e.code, e.request) for e in events] == [(101, "POST /v1.40/exec/1/start")]


def test_declined_upgrade_keeps_parsing_http():
    script = [
        (C, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        (S, b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"),
        (C, b"GET /again HTTP/1.1\r\n\r\n"),
        (S, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ]
    assert [(e.code, e.request) for e in three_ways(script)] == [(400, "GET /ws"), (200, "GET /again")]


def test_connect_tunnel_stops_parsing():
    script = [
        (C, b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n"),
        (S, b"HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01\x02\x00"),
        (C, b"\x16\x03\x01\x00\xa5HTTP/1.1 200 OK\r\n\r\n"),
    ]
    assert [(e.code, e.request) for e in three_ways(script)] == [(200, "CONNECT example.org:443")]


def test_gap_inside_body_of_known_length_keeps_sync():
    script = [(C, REQ + REQ), (S, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab"), ("gap", S, 5), (S, b"cde"),
              (S, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")]
    events, _ = run(script)
    assert [(e.code, e.request) for e in events] == [(200, "GET /a"), (201, "GET /a")]


def test_lost_response_start_does_not_shift_pairing():
    # The second response's head falls in a gap past the first body's end.
    script = [(C, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n"),
              (S, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nab"), ("gap", S, 40),
              (S, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")]
    events, d = run(script)
    assert [(e.code, e.request) for e in events] == [(200, "GET /1"), (404, "GET /3")]
    assert any(a.name == "http_response_lost" for a in d.anomalies)


def test_midstream_capture_resynchronises_on_next_message():
    script = [(S, b"tail of an earlier body\r\nmore\r\n"),
              (S, b"HTTP/1.1 304 Not Modified\r\n\r\n")]
    events, _ = run(script, server=None, midstream=True)
    assert [e.code for e in events] == [304]


def test_response_head_split_at_capture_end_still_reports_status():
    events, _ = run([(C, REQ), (S, b"HTTP/1.1 502 Bad Gateway\r\nServer: x")])
    assert [(e.code, e.request) for e in events] == [(502, "GET /a")]


def _iis_page(code: str) -> bytes:
    return (f"<html><head><title>IIS 10.0 Detailed Error - {code} - Forbidden</title></head>"
            f"<body><h3>HTTP Error {code} - Forbidden</h3></body></html>").encode()


def test_iis_substatus_found_in_body_with_provenance():
    body = gzip.compress(_iis_page("403.14"))
    resp = (b"HTTP/1.1 403 Forbidden\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    events = three_ways([(C, REQ), (S, resp)])
    assert (events[0].substatus, events[0].substatus_source) == ("403.14", "body")


def test_no_substatus_for_other_pages():
    body = b"<html><title>404 Not Found</title>HTTP Error 403.14 mentioned in text</html>"
    resp = (b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
    events = three_ways([(C, REQ), (S, resp)])
    assert events[0].substatus == ""


def test_detect_by_content_not_port():
    assert detect(REQ, b"") == DETECTED
    assert detect(b"", b"HTTP/1.1 200 OK\r\n") == DETECTED
    assert detect(b"GE", b"") == NEED_MORE
    tls = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
    assert detect(tls, b"") == NEED_MORE          # a server may still answer "HTTP/1.1 400"
    assert detect(tls, b"\x16\x03\x03\x00\x7a\x02") == REJECTED
    assert detect(b"SSH-2.0-OpenSSH_9.2\r\n", b"SSH-2.0-x\r\n") == REJECTED
    assert detect(b"USER anonymous\r\n", b"220 ready\r\n") == REJECTED
    assert detect(b"R", b"") != DETECTED  # never decided from one byte


CONVERSATION = [
    (C, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"),
    (S, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
    (C, b"HEAD /3 HTTP/1.1\r\n\r\n"),
    (S, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"),
]


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_random_splits_give_the_same_events(data):
    def split(b):
        cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(b) - 1)), max_size=8)))
        out, prev = [], 0
        for c in cuts + [len(b)]:
            if c > prev:
                out.append(b[prev:c])
                prev = c
        return out

    whole, _ = run(CONVERSATION)
    pieces, _ = run(CONVERSATION, split=split)
    assert summary(pieces) == summary(whole)
    assert [e.code for e in whole] == [200, 100, 201, 200]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0, 1]), st.binary(max_size=200)), max_size=12),
       st.booleans())
def test_random_bytes_never_raise(chunks, midstream):
    d = HttpDissector(server_direction=None if midstream else 1, midstream=midstream)
    for i, (direction, blob) in enumerate(chunks):
        d.feed(blob, direction, float(i), i + 1)
        if i % 4 == 3:
            d.gap(i * 7, direction, float(i), i + 1)
    d.end(0, 1.0, 1, True)
    d.close(2.0)
    detect(chunks[0][1] if chunks else b"", b"", False, midstream)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=1, max_size=300))
def test_http_shaped_garbage_never_raises(tail):
    d = HttpDissector(server_direction=1)
    d.feed(b"GET / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + tail, 0, 1.0, 1)
    d.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + tail, 1, 2.0, 2)
    d.close(3.0)
