"""The C start-line parse and body framing (analyzer/_fast/http_head.pyx)
against the reference's pure functions (protocols/http/dissector.py).

The C start_line replaces two regex matches whose backtracking decides odd
lines (a URI cut by \\v or \\f, runs of spaces, `$` before a final LF), so it
is compared on random bytes, on lines built from the regexes' alphabet and
then mutated, and on the corners written out below.  framing takes decoded
header values: str.strip/isdigit/lower of non-ASCII text and unbounded ints
are what it must follow.  Last, the compiled dissector with its C helpers and
the reference one are fed the same random streams and must give the same
events.  Everything here skips when the extension is not built.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer import _fast
from analyzer.protocols.http import dissector as reference

TWIN = "analyzer._fast.http_dissector"
pytestmark = pytest.mark.skipif(not _fast.available(), reason="the compiled fast path is not built")


def c_helper(name):
    """The C function itself (the probes in analyzer/_fast/__init__.py are checked apart)."""
    from analyzer._fast import http_head

    return {"_start_line": http_head.start_line, "framing": http_head.framing}[name]


@pytest.mark.parametrize("name", ["_start_line", "framing"])
def test_the_probes_choose_the_c_helpers(name):
    helper = _fast.helper_for(TWIN, name)
    assert helper is not None, f"http_head's {name} no longer answers as dissector.{name} on the probes: follow it"
    assert helper is c_helper(name)


# -- start lines --------------------------------------------------------------------------

CORNERS = [
    # status lines
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK\n", b"HTTP/1.1 200 OK\r", b"HTTP/1.1 200",
    b"HTTP/1.1 200\r", b"HTTP/1.1 200\n", b"HTTP/1.1 200\r\n", b"HTTP/1.1 200\n\n", b"HTTP/1.1 200\r\n\n",
    b"HTTP/1.1 200\r\r", b"HTTP/1.1 200\n\r", b"HTTP/1.1 200\r\n\r\n", b"HTTP/1.1 200 \r\n", b"HTTP/1.1 200\t\r\n",
    b"HTTP/1.1 200 OK\n\n", b"HTTP/1.1 200 OK\n\n\n", b"HTTP/1.1 200 OK\nX", b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 404 Not\rFound\r\n", b"HTTP/1.1 404 Not Found\r\r\r\n", b"HTTP/1.1 404 \r\r", b"HTTP/1.1 404  two\r\n",
    b"HTTP/1.1 2000 OK\r\n", b"HTTP/1.1 20 OK\r\n", b"HTTP/1.1 20x OK\r\n", b"HTTP/11.1 200 OK\r\n",
    b"HTTP/1.1  200 OK\r\n", b"HTTP/1,1 200 OK\r\n", b"HTTP/1.1 200x\r\n", b"HTTP/", b"HTTP", b"HTTP/1.1 ",
    b"HTTP/1.1 2\xd9\xa30 OK\r\n",            # ARABIC-INDIC DIGIT THREE: not \d in a bytes pattern
    b"HTTP/\xd9\xa3.1 200 OK\r\n", b"HTTP/1.1 200 \xe9t\xe9\r\n", b"HTTP/1.1 200 caf\xc3\xa9\r\n",
    b"HTTP/1.1 200 \xc3\r\n", b"HTTP/1.1 200 \xc3\r", b"HTTP/1.1 200 \x00\x0b\x0c\r\n", b"HTTP/1.1 999 \t\r\n",
    b"http/1.1 200 OK\r\n",                  # lower case: not "HTTP/", so a request line "http" cut by "/"
    # request lines
    b"GET / HTTP/1.1\r\n", b"GET / HTTP/1.1", b"GET /\r\n", b"GET /", b"GET", b"GET\r\n", b"GET\n\n", b"GET\r\r",
    b"OPTIONS", b"GET ", b"GET   ", b"GET   \r\n", b"GET  /a  HTTP/1.1  \r\n", b"GET /a HTTP/1.1 \r\n",
    b"GET /a\x0bb HTTP/1.1\r\n", b"GET /a\x0cb HTTP/1.1\r\n", b"GET /a\tb HTTP/1.1\r\n", b"GET \x0b/a HTTP/1.1\r\n",
    b"GET \t/a\r\n", b"GET /a\x0b\r\n", b"GET /a\x0b", b"GET /a HTTP/1.1\r\n\r\n", b"GET /a HTTP/1.1\n\n",
    b"GET /a HTTP/1.1\r\n\n", b"GET /a HTTP/1.1\n\r", b"GET /a\rb HTTP/1.1\r\n", b"GET /a b c d\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\n", b"GET /\xe9\xff HTTP/1.1\r\n", b"GET /\xc3 HTTP/1.1\r\n", b"G\xe9T / HTTP/1.1\r\n",
    b"M" * 32 + b" / HTTP/1.1\r\n", b"M" * 33 + b" / HTTP/1.1\r\n", b"M" * 33, b"M" * 32, b"", b"\r\n", b" GET /\r\n",
    b"GET\t/ HTTP/1.1\r\n", b"GET:/ HTTP/1.1\r\n", b"!#$%&'*+.^_`|~-09Az / HTTP/1.1\r\n", b"GET /a\x00 HTTP/1.1\r\n",
    b"GET /a\x1c HTTP/1.1\r\n", b"GET /a\x85b HTTP/1.1\r\n", b"GET /a\xa0b HTTP/1.1\r\n",
]


@pytest.mark.parametrize("line", CORNERS, ids=repr)
def test_start_line_corners(line):
    assert c_helper("_start_line")(line) == reference._start_line(line)


def test_the_corners_are_corners():
    # A few of them answer what a reader might not guess: keep the list honest.
    ref = reference._start_line
    assert ref(b"GET /a\x0bb HTTP/1.1\r\n") == ("GET", "")       # backtracks to "no URI"
    assert ref(b"HTTP/1.1 200\n\n") == (200, "")                  # `$` before the final LF
    assert ref(b"HTTP/1.1 200 OK\n\n\n") is None
    assert ref(b"HTTP/1.1 404 Not\rFound\r\r\r\n") == (404, "Not\rFound")
    assert ref(b"HTTP/1.1 2\xd9\xa30 OK\r\n") is None
    assert ref(b"M" * 33 + b" / HTTP/1.1\r\n") is None
    assert ref(b"GET /\xe9 HTTP/1.1\r\n") == ("GET", "/\\xe9")


@settings(max_examples=4000, deadline=None)
@given(line=st.one_of(st.binary(max_size=40), st.binary(max_size=30).map(lambda b: b"HTTP/" + b)))
def test_start_line_on_random_bytes(line):
    assert c_helper("_start_line")(line) == reference._start_line(line)


STATUS_PIECES = [b"HTTP/", b"1", b"0", b"9", b".", b" ", b"  ", b"\t", b"200", b"404", b"20", b"OK", b"Not Found",
                 b"\r", b"\n", b"\r\n", b"\x0b", b"\x0c", b"\xd9\xa3", b"\xe9", b"\xc3\xa9", b"\xc3", b"\x00"]
REQUEST_PIECES = [b"GET", b"M", b"OPTIONS", b"-", b"!", b"/", b"/a?b=c", b" ", b"  ", b"\t", b"\x0b", b"\x0c",
                  b"\r", b"\n", b"\r\n", b"HTTP/1.1", b"HTTP/1.", b"\xe9", b"\xc3\xa9", b"\xff", b":", b"\x1c", b"\x00"]


def _mutated(draw, line: bytes) -> bytes:
    """Insert, delete or replace a few bytes (the regexes' alphabet or any byte)."""
    out = bytearray(line)
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(out)))
        byte = draw(st.one_of(st.sampled_from(b" \t\r\n\x0b\x0c/0123456789AZaz\xe9\x80"), st.integers(0, 255)))
        action = draw(st.sampled_from(["insert", "delete", "replace"]))
        if action == "insert" or pos == len(out):
            out.insert(pos, byte)
        elif action == "delete":
            del out[pos]
        else:
            out[pos] = byte
    return bytes(out)


@st.composite
def status_lines(draw):
    """HTTP/d.d ddd[ reason][CR][LF]..., then from pieces, then mutated."""
    major, minor = draw(st.sampled_from(b"0123456789x")), draw(st.sampled_from(b"0123456789"))
    code = draw(st.sampled_from([b"200", b"404", b"101", b"999", b"000", b"20", b"2000", b"2\xd9\xa3"]))
    sep = draw(st.sampled_from([b" ", b"\t", b"", b"  ", b"\r"]))
    reason = b"".join(draw(st.lists(st.sampled_from(STATUS_PIECES), max_size=6)))
    end = draw(st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"\n\n", b"\r\n\n", b"\r\r\n", b"\n\r", b"\r\n\r\n"]))
    line = b"HTTP/%c.%c %s" % (major, minor, code) + sep + reason + end
    return _mutated(draw, line)


@st.composite
def request_lines(draw):
    """method[ spaces URI][ spaces version][CR][LF]..., then mutated."""
    method = draw(st.sampled_from([b"GET", b"OPTIONS", b"M" * 32, b"M" * 33, b"", b"G\xe9T", b"GET:", b"a-b_c"]))
    parts = [method]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(st.sampled_from([b" ", b"  ", b"\t", b" \x0b", b" \t"])))
        parts.append(b"".join(draw(st.lists(st.sampled_from(REQUEST_PIECES), min_size=0, max_size=4))))
    end = draw(st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"\n\n", b"\r\n\n", b" \r\n", b"\r\r\n", b"\r\n\r\n"]))
    return _mutated(draw, b"".join(parts) + end)


@settings(max_examples=4000, deadline=None)
@given(line=st.one_of(status_lines(), request_lines()))
def test_start_line_on_structured_lines(line):
    assert c_helper("_start_line")(line) == reference._start_line(line)


# -- framing ------------------------------------------------------------------------------

VALUE_PIECES = ["0", "7", "12", "9" * 25, ",", ", ", " ", "  ", "\t", "chunked", "Chunked", "CHUNKED", "chun", "ked",
                "gzip", "identity", "\u212a", "\u0130", "\xb3", "\u0663", "\x1c", "\x1f", "\x85", "\xa0", "\u3000",
                "\\xe9", "-1", "+1", "0x10", "1_0", "\u00bd", "\x0b"]


@st.composite
def framing_questions(draw):
    headers = {}
    for name in ("transfer-encoding", "content-length"):
        if draw(st.booleans()):
            headers[name] = "".join(draw(st.lists(st.sampled_from(VALUE_PIECES), max_size=5)))
    if draw(st.booleans()):
        headers["host"] = "x"
    method = draw(st.sampled_from(["GET", "HEAD", "CONNECT", "POST", "", "head"]))
    code = draw(st.one_of(st.sampled_from([0, 99, 100, 101, 199, 200, 204, 299, 300, 304, 404, 500, 999]),
                          st.integers(0, 999)))
    return draw(st.booleans()), method, code, headers


@settings(max_examples=4000, deadline=None)
@given(question=framing_questions())
def test_framing_equals_the_reference(question):
    assert c_helper("framing")(*question) == reference.framing(*question)


@pytest.mark.parametrize("value", ["chun\u212aed", "gzip,chunked", "chunked,gzip", "chunked ,", " c h u n k e d ",
                                   "chunked\t", "x,CHUNKED", ",chunked", "", ",", "chunkedchunked"])
def test_framing_transfer_encoding_corners(value):
    for is_response in (True, False):
        question = (is_response, "GET", 200, {"transfer-encoding": value, "content-length": "5"})
        assert c_helper("framing")(*question) == reference.framing(*question)


@pytest.mark.parametrize("value", ["9" * 19, "9" * 18, "0" * 40 + "1", "1" * 200, "\x1c12\x1f", "\u300012", "12\xa0",
                                   "\xb3", "\u0663", " 5 , 6", "5,", ",5", "", " ", "00", "+5", "-5", "5 5", "\u00bd"])
def test_framing_content_length_corners(value):
    for is_response in (True, False):
        question = (is_response, "POST", 200, {"content-length": value})
        assert c_helper("framing")(*question) == reference.framing(*question)


# -- the dissector, both ways ---------------------------------------------------------------

MESSAGES = [
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", b"GET /a\x0bb HTTP/1.0\r\n\r\n", b"OPTIONS\r\n\r\n",
    b"GET /c\xc3\xa9 HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 404 Not\rFound\r\nContent-Length: 0\r\n\r\n", b"HTTP/1.1 200 \xe9\r\nContent-Length: 1, 1\r\n\r\nx",
    b"HTTP/1.1 500 X\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nz\r\n0\r\n\r\n", b"HTTP/1.1 200\n\n",
    b"HTTP/1.1 301 Moved\r\nContent-Length: \xd9\xa3\r\n\r\n", b"HTTP/1.1 2x0 Bad\r\n\r\n", b"\r\n",
]


@st.composite
def streams(draw):
    """Two directions of messages from the list above, cut at random, some bytes flipped."""
    chunks = []
    for _ in range(draw(st.integers(1, 8))):
        message = bytearray(draw(st.sampled_from(MESSAGES)))
        if message and draw(st.integers(0, 4)) == 0:
            message[draw(st.integers(0, len(message) - 1))] = draw(st.integers(0, 255))
        direction = 1 if message.startswith(b"HTTP/") else 0
        cut = draw(st.integers(0, len(message)))
        chunks += [(direction, bytes(message[:cut])), (direction, bytes(message[cut:]))]
    return [(d, data) for d, data in chunks if data]


def _events(module, chunks):
    dissector = module.HttpDissector()
    out = []
    for frame, (direction, data) in enumerate(chunks, 1):
        out += dissector.feed(data, direction, float(frame), frame)
    out += dissector.close(float(len(chunks) + 1))
    return out, list(dissector.anomalies)


@settings(max_examples=1500, deadline=None)
@given(chunks=streams())
def test_compiled_dissector_with_c_helpers_gives_the_reference_events(chunks):
    from importlib import import_module

    twin = import_module(TWIN)
    for name in ("_start_line", "framing"):
        setattr(twin, name, c_helper(name))   # what _fast._with_helpers does once the probes agree
    assert _events(twin, chunks) == _events(reference, chunks)
