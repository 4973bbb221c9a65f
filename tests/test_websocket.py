# WebSocket dissector: frames, close events both ways, inferred 1005/1006,
# gaps, mid-stream detection, bounded memory, and the public captures.
from __future__ import annotations

import json
import struct
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED
from analyzer.protocols.websocket.dissector import (
    MAX_CLOSE_KEPT, CloseReason, FrameDecoder, Opcode, WebSocketDissector, close_code_ok,
    detect, maybe_parse_header, rsv1_policy, server_direction_from_heads, unmask,
)

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
SAMPLES = REPO / "samples" / "captures"

CLIENT, SERVER = 0, 1
MASK = b"\x37\xfa\x21\x3d"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = MASK, length: int | None = None, width: int | None = None) -> bytes:
    """One frame by hand.  `length` overrides the claimed length (the payload
    is not padded); `width` forces the 7/16/64-bit length encoding."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    mbit = 0x80 if mask else 0
    if width is None:
        width = 7 if n < 126 else 16 if n <= 0xFFFF else 64
    if width == 7:
        head = bytes([b0, mbit | n])
    elif width == 16:
        head = bytes([b0, mbit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, mbit | 127]) + struct.pack("!Q", n)
    if mask:
        return head + mask + unmask(payload, mask)
    return head + payload


def close_payload(code: int, reason: str | bytes = b"") -> bytes:
    raw = reason.encode() if isinstance(reason, str) else reason
    return struct.pack("!H", code) + raw


def cframe(code: int | None, reason: str | bytes = b"", **kw) -> bytes:
    """A client (masked) close frame; code None = empty payload."""
    return frame(Opcode.CLOSE, b"" if code is None else close_payload(code, reason), **kw)


def sframe(code: int | None, reason: str | bytes = b"", **kw) -> bytes:
    return cframe(code, reason, mask=None, **kw)


def run(script, *, server_direction=SERVER, close_ts=100.0, **kw):
    """Play a script of (direction, bytes) / ("gap", dir, n) / ("end", dir, rst)
    steps, one packet each (frame = 1-based step number, ts = step)."""
    d = WebSocketDissector(server_direction, request="GET /chat", **kw)
    events = []
    for i, step in enumerate(script, start=1):
        if step[0] == "gap":
            events += d.gap(step[2], step[1], float(i), i)
        elif step[0] == "end":
            events += d.end(step[1], float(i), i, step[2])
        else:
            events += d.feed(step[1], step[0], float(i), i)
    events += d.close(close_ts)
    return events, d


def key(e):
    return (e.code, e.text, e.direction, e.inferred, e.frame, e.epoch, e.flags, e.sender)


# ------------------------------------------------------------------ headers --

@pytest.mark.parametrize("n,width,size", [(0, 7, 2), (125, 7, 2), (126, 16, 4), (65535, 16, 4),
                                          (65536, 64, 10), (2**63 - 1, 64, 10)])
def test_header_lengths(n, width, size):
    raw = frame(Opcode.BINARY, length=n, mask=None)
    h = maybe_parse_header(raw)
    assert (h.length, h.size, h.masked, h.minimal) == (n, size, False, True)
    hm = maybe_parse_header(frame(Opcode.BINARY, length=n))
    assert (hm.length, hm.size, hm.mask) == (n, size + 4, MASK)
    for cut in range(size):
        assert maybe_parse_header(raw[:cut]) is None


def test_header_non_minimal_and_bits():
    h = maybe_parse_header(frame(Opcode.TEXT, b"hi", width=64, fin=False, rsv=5))
    assert (h.minimal, h.fin, h.rsv, h.opcode, h.length) == (False, False, 5, 1, 2)


def test_unmask_offset_roundtrip():
    data = bytes(range(37))
    masked = unmask(data, MASK)
    assert unmask(masked, MASK) == data
    assert unmask(masked[5:], MASK, 5) == data[5:]
    assert unmask(b"", MASK) == b""


def test_frame_decoder_alone():
    dec = FrameDecoder(expect_masked=True)
    raw = frame(Opcode.TEXT, b"abc") + cframe(1000, "x")
    out = dec.feed(raw[:3], 1.0, 1) + dec.feed(raw[3:12], 2.0, 2)
    assert dec.partial_bytes == 3
    out += dec.feed(raw[12:], 3.0, 3)
    assert [(f.header.opcode, f.ts, f.frame, f.payload, f.cut) for f in out] == [
        (Opcode.TEXT, 1.0, 1, b"", ""), (Opcode.CLOSE, 2.0, 2, close_payload(1000, "x"), "")]
    assert dec.frames == 2 and dec.partial_bytes == 0 and dec.synced


def test_constants_follow_rfc():
    assert [int(o) for o in Opcode] == [0, 1, 2, 8, 9, 10]
    assert (CloseReason.NORMAL_CLOSURE, CloseReason.NO_STATUS_RCVD, CloseReason.ABNORMAL_CLOSURE,
            CloseReason.MESSAGE_TOO_BIG, CloseReason.TLS_HANDSHAKE) == (1000, 1005, 1006, 1009, 1015)


def test_rsv1_policy():
    assert rsv1_policy("") == "none"
    assert rsv1_policy("permessage-deflate; client_max_window_bits=15") == "message"
    assert rsv1_policy("x-webkit-deflate-frame") == "frame"
    assert rsv1_policy("permessage-foo") == "any"


def test_close_code_ok_table():
    for code in (1000, 1001, 1003, 1007, 1011, 1012, 1014, 3000, 4999):
        assert close_code_ok(code)
    for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535):
        assert not close_code_ok(code)


# ------------------------------------------------------------- close events --

def test_close_handshake_both_directions():
    events, d = run([
        (CLIENT, frame(Opcode.TEXT, b"hello")),
        (SERVER, frame(Opcode.TEXT, b"world", mask=None)),
        (CLIENT, cframe(1000, "bye")),
        (SERVER, sframe(1000)),
        ("end", SERVER, False), ("end", CLIENT, False),
    ], opened_ts=0.5)
    assert [(e.code, e.text, e.direction, e.inferred, e.frame, e.epoch, e.sender, e.flags)
            for e in events] == [
        (1000, "bye", "client->server", False, 3, 3.0, CLIENT, ()),
        (1000, "", "server->client", False, 4, 4.0, SERVER, ()),
    ]
    assert all(e.protocol == "websocket" and e.request == "GET /chat" for e in events)
    out = d.outcome()
    assert out["state"] == "closed" and out["clean"] is True
    assert out["closed_first_by"] == "client" and out["close_code"] == 1000 and out["reply_code"] == 1000
    assert out["duration_s"] == pytest.approx(2.5)
    assert out["frames"] == {"client": 2, "server": 2}
    assert out["messages"] == {"client": 1, "server": 1}
    assert out["ended_by"] == "fin_by_server"
    assert d.anomaly_counts == {}


def test_server_direction_zero():
    events, d = run([(1, cframe(1001, "away")), (0, sframe(1001))], server_direction=0)
    assert [(e.direction, e.sender) for e in events] == [("client->server", 1), ("server->client", 0)]
    assert d.outcome()["closed_first_by"] == "client"


def test_server_initiated_not_clean_with_error_code():
    events, d = run([(SERVER, sframe(1011, "boom")), (CLIENT, cframe(1011, "boom"))])
    out = d.outcome()
    assert out["closed_first_by"] == "server" and out["close_code"] == 1011
    assert out["clean"] is False and out["state"] == "closed"


def test_close_split_across_segments_stamped_at_first_byte():
    raw = cframe(4001, "频道已关闭")
    events, _ = run([(CLIENT, raw[:1]), (CLIENT, raw[1:7]), (CLIENT, raw[7:])])
    assert [(e.code, e.text, e.frame) for e in events] == [(4001, "频道已关闭", 1)]


def test_several_frames_in_one_segment():
    blob = (frame(Opcode.PING, b"p", mask=None) + frame(Opcode.TEXT, b"a" * 300, mask=None)
            + sframe(1001, "going"))
    events, d = run([(SERVER, frame(Opcode.TEXT, b"x", mask=None)), (SERVER, blob)])
    assert [(e.code, e.text, e.frame) for e in events] == [(1001, "going", 2)]
    assert d.outcome()["frames"]["server"] == 4
    assert d.outcome()["pings"]["server"] == 1


def test_empty_close_is_1005_inferred():
    events, d = run([(CLIENT, cframe(None)), (SERVER, sframe(None))])
    assert [(e.code, e.inferred, e.text, e.flags) for e in events] == [(1005, True, "", ())] * 2
    assert d.outcome()["clean"] is True


def test_one_byte_close_is_violation():
    events, _ = run([(SERVER, frame(Opcode.CLOSE, b"\x03", mask=None))])
    (e,) = events
    assert (e.code, e.inferred) == (1005, True)
    assert "websocket_protocol_violation" in e.flags and "websocket_close_payload_1_byte" in e.flags


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_reserved_codes_reported_as_sent(code):
    (e,), _ = run([(SERVER, sframe(code, "x"))])
    assert (e.code, e.inferred, e.text) == (code, False, "x")
    assert e.flags[:1] == ("websocket_protocol_violation",)
    assert "websocket_reserved_close_code" in e.flags


@pytest.mark.parametrize("code", [1000, 1003, 1007, 1008, 1009, 1011, 1012, 3000, 4999])
def test_valid_codes_not_flagged(code):
    (e,), _ = run([(CLIENT, cframe(code, "reason"))])
    assert (e.code, e.flags) == (code, ())


def test_invalid_utf8_reason_escaped():
    (e,), _ = run([(SERVER, sframe(1000, b"ok\xff\xfe"))])
    assert e.text == "ok\\xff\\xfe"
    assert "websocket_invalid_utf8_reason" in e.flags and "websocket_protocol_violation" in e.flags


def test_oversized_close_keeps_reason():
    # zeek's oversized-close-frame: 258-byte payload, 64-bit length.
    payload = close_payload(1000, "C" * 256)
    (e,), d = run([(SERVER, frame(Opcode.CLOSE, payload, mask=None, width=64))])
    assert (e.code, e.text) == (1000, "C" * 256)
    assert {"websocket_oversized_close", "websocket_protocol_violation",
            "websocket_non_minimal_length", "websocket_control_frame_too_long"} <= set(e.flags)


def test_huge_close_reason_cut_at_bound():
    payload = close_payload(1000, "é" * 5000)   # 10002 bytes, cut mid-character
    (e,), _ = run([(SERVER, frame(Opcode.CLOSE, payload, mask=None))])
    assert e.text == "é" * ((MAX_CLOSE_KEPT - 2) // 2)
    assert "websocket_close_reason_truncated" in e.flags
    assert "websocket_invalid_utf8_reason" not in e.flags


def test_close_frame_violations_flagged_on_event():
    events, d = run([(CLIENT, cframe(1000, mask=None)), (SERVER, sframe(1000, fin=False, rsv=4))])
    assert "websocket_unmasked_client_frame" in events[0].flags
    assert {"websocket_fragmented_control_frame", "websocket_reserved_bits"} <= set(events[1].flags)
    assert all(e.flags[0] == "websocket_protocol_violation" for e in events)
    assert d.outcome()["clean"] is False


def test_duplicate_close_and_frames_after_close():
    events, d = run([(SERVER, sframe(1000)), (SERVER, frame(Opcode.TEXT, b"late", mask=None)),
                     (SERVER, sframe(1001))])
    assert [e.code for e in events] == [1000, 1001]
    assert "websocket_duplicate_close" in events[1].flags
    assert d.anomaly_counts["websocket_frame_after_close"] == 1


def test_websockets_library_frames_decode():
    wsframes = pytest.importorskip("websockets.frames")
    c = wsframes.Frame(wsframes.Opcode.CLOSE, wsframes.Close(4321, "自定义").serialize())
    t = wsframes.Frame(wsframes.Opcode.TEXT, b"x" * 70000)
    client = t.serialize(mask=True) + c.serialize(mask=True)
    server = c.serialize(mask=False)
    events, d = run([(CLIENT, client), (SERVER, server)])
    assert [(e.code, e.text, e.direction) for e in events] == [
        (4321, "自定义", "client->server"), (4321, "自定义", "server->client")]
    assert d.anomaly_counts == {}


# -------------------------------------------------------------- frame rules --

def test_fragmentation_with_interleaved_control_frames():
    events, d = run([
        (CLIENT, frame(Opcode.TEXT, b"frag", fin=False)),
        (CLIENT, frame(Opcode.PING, b"p")),
        (CLIENT, frame(Opcode.CONTINUATION, b"ment", fin=False)),
        (CLIENT, frame(Opcode.PONG, b"")),
        (CLIENT, frame(Opcode.CONTINUATION, b"ed")),
        (SERVER, frame(Opcode.PONG, b"p", mask=None)),
    ])
    assert d.anomaly_counts == {}
    out = d.outcome()
    assert out["messages"]["client"] == 1 and out["frames"]["client"] == 5
    assert out["pings"] == {"client": 1, "server": 0}


def test_fragmentation_violations():
    _, d = run([(CLIENT, frame(Opcode.CONTINUATION, b"x")),
                (CLIENT, frame(Opcode.TEXT, b"a", fin=False)),
                (CLIENT, frame(Opcode.BINARY, b"b"))])
    assert d.anomaly_counts == {"websocket_unexpected_continuation": 1,
                                "websocket_data_frame_inside_fragmented_message": 1}


def test_masking_and_opcode_violations():
    _, d = run([(CLIENT, frame(Opcode.TEXT, b"a", mask=None)),
                (SERVER, frame(Opcode.TEXT, b"b")),
                (SERVER, frame(0x3, b"c", mask=None)),
                (SERVER, frame(Opcode.PING, b"x" * 126, mask=None))])
    assert d.anomaly_counts == {"websocket_unmasked_client_frame": 1, "websocket_masked_server_frame": 1,
                                "websocket_reserved_opcode": 1, "websocket_control_frame_too_long": 1}
    assert {a.name for a in d.anomalies} == set(d.anomaly_counts)


def test_rsv1_with_permessage_deflate():
    ok = [(CLIENT, frame(Opcode.TEXT, b"z", rsv=4, fin=False)), (CLIENT, frame(Opcode.CONTINUATION, b"z")),
          (SERVER, frame(Opcode.BINARY, b"z", rsv=4, mask=None))]
    _, d = run(ok, extensions="permessage-deflate")
    assert d.anomaly_counts == {}
    _, d = run(ok)
    assert d.anomaly_counts == {"websocket_reserved_bits": 2}
    _, d = run([(CLIENT, frame(Opcode.TEXT, b"z", fin=False)),
                (CLIENT, frame(Opcode.CONTINUATION, b"z", rsv=4)),
                (CLIENT, frame(Opcode.PING, b"", rsv=4)),
                (CLIENT, frame(Opcode.TEXT, b"z", rsv=2))], extensions="permessage-deflate")
    assert d.anomaly_counts == {"websocket_reserved_bits": 3}


def test_every_anomaly_is_emitted_and_counted():
    # The dissector does not throttle: sampling is the anomaly policy's
    # (the flow table drains d.anomalies after each feed).
    blob = frame(Opcode.BINARY, b"a", mask=None) * 10000
    _, d = run([(CLIENT, blob)])
    assert d.anomaly_counts == {"websocket_unmasked_client_frame": 10000}
    assert len(d.anomalies) == 10000


# ---------------------------------------------------------------- inference --

def test_fin_without_close_infers_1006_at_first_fin():
    events, d = run([
        (CLIENT, frame(Opcode.TEXT, b"hi")),
        (SERVER, frame(Opcode.TEXT, b"partial message", mask=None)[:6]),
        ("end", SERVER, False),
        ("end", CLIENT, True),
    ])
    (e,) = events
    assert (e.code, e.inferred, e.text, e.frame, e.epoch, e.sender, e.direction) == (
        1006, True, "", 3, 3.0, SERVER, "server->client")
    assert e.flags == ("websocket_no_close_frame", "fin_by_server", "bytes_after_last_frame=6",
                       "then_rst_by_client")
    out = d.outcome()
    assert out["state"] == "aborted" and out["closed_first_by"] == "server"
    assert out["close_code"] == 1006 and out["clean"] is False and out["ended_by"] == "fin_by_server"


def test_rst_by_client_infers_1006():
    (e,), d = run([(CLIENT, frame(Opcode.TEXT, b"hi")), ("end", CLIENT, True)])
    assert e.flags[:3] == ("websocket_no_close_frame", "rst_by_client", "bytes_after_last_frame=0")
    assert e.direction == "client->server"


def test_fin_without_any_data_still_1006():
    (e,), _ = run([("end", CLIENT, False), ("end", SERVER, False)])
    assert e.code == 1006 and e.frame == 1


def test_no_1006_when_one_side_sent_close():
    events, d = run([(SERVER, sframe(1001)), ("end", SERVER, False), ("end", CLIENT, False)])
    assert [e.code for e in events] == [1001]
    assert d.outcome()["state"] == "closed" and d.outcome()["clean"] is False


def test_close_after_half_close_is_not_1006():
    events, _ = run([("end", CLIENT, False), (SERVER, sframe(1000)), ("end", SERVER, False)])
    assert [(e.code, e.inferred) for e in events] == [(1000, False)]


def test_still_open_no_event():
    events, d = run([(CLIENT, frame(Opcode.TEXT, b"hi")), (SERVER, frame(Opcode.TEXT, b"yo", mask=None))])
    assert events == []
    out = d.outcome()
    assert out["state"] == "open" and out["close_code"] is None and out["duration_s"] is None


def test_truncated_close_at_end():
    raw = sframe(1008, "policy")
    events, _ = run([(SERVER, raw[:6]), ("end", SERVER, False)])
    (e,) = events
    assert (e.code, e.text) == (1008, "po")
    assert "websocket_truncated_close" in e.flags


# --------------------------------------------------------------------- gaps --

def test_gap_inside_payload_keeps_framing():
    big = frame(Opcode.BINARY, b"q" * 5000, mask=None)
    events, d = run([(SERVER, big[:1000]), ("gap", SERVER, 3000), (SERVER, big[4000:] + sframe(1000))])
    assert [(e.code, e.flags) for e in events] == [(1000, ())]
    assert d.outcome()["gap"] is False


def test_gap_at_boundary_loses_sync_then_resyncs():
    events, d = run([
        (SERVER, frame(Opcode.TEXT, b"one", mask=None)),
        ("gap", SERVER, 50),
        (SERVER, b"\x99garbage that is not a frame"),
        (SERVER, frame(Opcode.TEXT, b"two", mask=None) + sframe(1001, "bye")),
    ])
    assert [(e.code, e.text, e.frame) for e in events] == [(1001, "bye", 4)]
    assert "websocket_after_gap" in events[0].flags
    assert d.anomaly_counts["websocket_gap_lost_framing"] == 1


def test_resync_rejects_wrong_mask_and_partial_frames():
    events, d = run([
        ("gap", SERVER, 10),
        (SERVER, cframe(1000)),                                   # masked: not a server frame
        (SERVER, frame(Opcode.BINARY, b"x" * 100, mask=None)[:50]),  # does not end in the segment
        ("end", SERVER, False),
    ])
    (e,) = events
    assert e.code == 1006 and "websocket_gap_before_end" in e.flags
    assert d.outcome()["state"] == "unknown"


def test_gap_inside_close_before_code_is_unknown():
    raw = sframe(1000, "reason")
    events, d = run([(SERVER, raw[:2]), ("gap", SERVER, 4), (SERVER, raw[6:]), ("end", SERVER, False)])
    assert events == []
    assert d.outcome()["state"] == "unknown"


def test_gap_inside_close_reason_keeps_code():
    raw = sframe(1000, "reason")
    for tail in ([(SERVER, raw[8:])], []):   # the frame completes, or the stream ends in it
        events, d = run([(SERVER, raw[:5]), ("gap", SERVER, 3)] + tail)
        assert [(e.code, e.text, e.frame) for e in events] == [(1000, "r", 1)]
        assert "websocket_close_damaged_by_gap" in events[0].flags
        assert d.outcome()["state"] == "closed" and d.outcome()["gap"] is False


# ---------------------------------------------------------------- mid-stream --

def _heads():
    client = frame(Opcode.TEXT, b"hello") + frame(Opcode.PING, b"") + frame(Opcode.BINARY, b"\x00" * 300)
    server = (frame(Opcode.TEXT, b"hi", mask=None) + frame(Opcode.PONG, b"", mask=None)
              + frame(Opcode.BINARY, b"\x01" * 70000, mask=None))
    return client, server


def test_detect_midstream():
    client, server = _heads()
    assert detect(client, server, 443) == DETECTED
    assert detect(server, client, None) == DETECTED
    assert server_direction_from_heads(client, server) == 1
    assert server_direction_from_heads(server, client) == 0
    assert detect(client[:-3], server, 80) == NEED_MORE
    assert detect(client, b"", 80) == NEED_MORE
    assert detect(client, client, 80) == REJECTED          # both masked
    assert detect(b"GET / HTTP/1.1\r\n\r\n", server, 80) == REJECTED
    assert detect(b"\x16\x03\x01\x02\x00\x01", server, 443) == REJECTED  # TLS
    assert detect(b"220 FTP ready\r\n", b"USER a\r\n", 21) == REJECTED
    assert detect(client + frame(Opcode.TEXT, b"\xff\xfe"), server, 80) == REJECTED  # bad UTF-8


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.binary(min_size=0, max_size=400))
def test_detect_random_bytes(a, b):
    assert detect(a, b, None) in (DETECTED, REJECTED, NEED_MORE)


def test_detect_random_data_rarely_accepted():
    import random
    rng = random.Random(7)
    hits = sum(detect(rng.randbytes(600), rng.randbytes(600), None) == DETECTED for _ in range(3000))
    assert hits == 0


def test_midstream_events_flagged():
    client, server = _heads()
    d = WebSocketDissector(server_direction_from_heads(client, server), midstream=True)
    d.feed(client + cframe(1000), 0, 1.0, 1)
    events = d.feed(server + sframe(1000), 1, 2.0, 2)
    assert [e.code for e in events] == [1000]
    assert "websocket_midstream" in events[0].flags
    assert d.outcome()["midstream"] is True


# -------------------------------------------------------- property tests --

SCRIPT = [
    (CLIENT, frame(Opcode.TEXT, "数据".encode(), fin=False) + frame(Opcode.PING, b"1")),
    (SERVER, frame(Opcode.PONG, b"1", mask=None) + frame(Opcode.BINARY, b"b" * 200, mask=None)),
    (CLIENT, frame(Opcode.CONTINUATION, b"x" * 130)),
    (SERVER, frame(Opcode.TEXT, b"y" * 70000, mask=None)),
    (CLIENT, cframe(4000, "再见")),
    (SERVER, sframe(1000, b"\xff")),
    (SERVER, frame(Opcode.TEXT, b"after", mask=None)),
]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_splits_same_events(data):
    expected, d0 = run(SCRIPT)
    split_script = []
    for step in SCRIPT:
        direction, blob = step
        cuts = sorted(data.draw(st.sets(st.integers(1, len(blob) - 1), max_size=6)))
        pieces = [blob[a:b] for a, b in zip([0] + cuts, cuts + [len(blob)])]
        split_script.append((direction, pieces))
    # Pieces of one packet keep its frame number and time.
    d = WebSocketDissector(SERVER, request="GET /chat")
    got = []
    for i, (direction, pieces) in enumerate(split_script, start=1):
        for piece in pieces:
            got += d.feed(piece, direction, float(i), i)
    got += d.close(100.0)
    assert [key(e) for e in got] == [key(e) for e in expected]
    assert d.outcome() == d0.outcome()


def test_byte_by_byte_same_events():
    expected, _ = run(SCRIPT)
    d = WebSocketDissector(SERVER, request="GET /chat")
    got = []
    for i, (direction, blob) in enumerate(SCRIPT, start=1):
        for k in range(len(blob)):
            got += d.feed(blob[k:k + 1], direction, float(i), i)
    got += d.close(100.0)
    assert [key(e) for e in got] == [key(e) for e in expected]


_ops = st.one_of(
    st.tuples(st.sampled_from([0, 1]), st.binary(max_size=64)),
    st.tuples(st.just("gap"), st.sampled_from([0, 1]), st.integers(0, 2**64)),
    st.tuples(st.just("end"), st.sampled_from([0, 1]), st.booleans()),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(_ops, max_size=30), st.sampled_from(["", "permessage-deflate", "foo"]),
       st.booleans())
def test_random_input_never_raises(ops, extensions, midstream):
    events, d = run(ops, extensions=extensions, midstream=midstream)
    out = d.outcome()
    json.dumps(out)
    assert out["state"] in ("closed", "open", "aborted", "unknown")
    assert all(e.protocol == "websocket" and e.direction in ("client->server", "server->client")
               for e in events)
    assert d.close(200.0) == []          # close() acts once


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.booleans(), st.integers(0, 7), st.booleans(),
                          st.binary(max_size=140)), max_size=12),
       st.sets(st.integers(1, 2000), max_size=8))
def test_random_frames_one_event_per_close_any_split(frames, cuts):
    """Random header bits, whole framing: one event per close frame, and
    the same events however the bytes are cut into packets."""
    blob = b"".join(frame(op, p, fin=fin, rsv=rsv, mask=MASK if m else None)
                    for op, fin, rsv, m, p in frames)
    events, d = run([(SERVER, blob)])
    closes = [f for f in frames if f[0] == Opcode.CLOSE]
    assert len(events) == len(closes)
    assert d.outcome()["frames"]["server"] == len(frames)
    edges = [0] + sorted(c for c in cuts if c < len(blob)) + [len(blob)]
    split, d2 = run([(SERVER, blob[a:b]) for a, b in zip(edges, edges[1:]) if b > a])
    assert [(e.code, e.text, e.flags, e.inferred) for e in split] == \
        [(e.code, e.text, e.flags, e.inferred) for e in events]
    assert d2.anomaly_counts == d.anomaly_counts


# ------------------------------------------------------------------- memory --

def test_huge_claimed_lengths_keep_memory_bounded():
    chunk = b"\x00" * (64 * 1024)
    d = WebSocketDissector(SERVER)
    tracemalloc.start()
    try:
        d.feed(frame(Opcode.BINARY, length=2**63, mask=None), SERVER, 1.0, 1)
        d.feed(cframe(None, length=2**30), CLIENT, 1.0, 2)       # a 1 GB close claim
        for i in range(160):                                      # 10 MB each way
            d.feed(chunk, SERVER, 2.0, 3 + i)
            d.feed(chunk, CLIENT, 2.0, 3 + i)
        events = d.end(CLIENT, 3.0, 500, False) + d.close(4.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 512 * 1024
    assert d.anomaly_counts == {"websocket_length_msb_set": 1,
                                "websocket_control_frame_too_long": 1}
    (e,) = events                                  # the cut 1 GB close frame
    assert e.code == 0x37FA and len(e.text) < 4 * MAX_CLOSE_KEPT
    assert {"websocket_truncated_close", "websocket_oversized_close"} <= set(e.flags)


# ------------------------------------------------------------------ corpus --

def _tcp_streams(path: Path):
    """In-order payload per direction of each TCP connection (clean captures:
    duplicates and retransmissions dropped by sequence number)."""
    scapy_all = pytest.importorskip("scapy.all")
    conns: dict = {}
    for number, pkt in enumerate(scapy_all.rdpcap(str(path)), start=1):
        if not pkt.haslayer(scapy_all.TCP):
            continue
        ip = pkt.getlayer(scapy_all.IP) or pkt.getlayer(scapy_all.IPv6)
        tcp = pkt[scapy_all.TCP]
        a, b = (ip.src, tcp.sport), (ip.dst, tcp.dport)
        conn = conns.setdefault(frozenset((a, b)), {"first": a, "second": b, "steps": [], "next": {}})
        direction = 0 if a == conn["first"] else 1
        flags = int(tcp.flags)
        ts = float(pkt.time)
        payload = bytes(tcp.payload)
        if flags & 0x02:
            conn["next"][direction] = tcp.seq + 1
            continue
        expected = conn["next"].get(direction, tcp.seq)
        skip = (expected - tcp.seq) % 2**32
        if payload and skip < len(payload):
            conn["steps"].append(("data", direction, payload[skip:], ts, number))
            conn["next"][direction] = (tcp.seq + len(payload)) % 2**32
        if flags & 0x05:
            conn["steps"].append(("end", direction, bool(flags & 0x04), ts, number))
    return conns.values()


def _dissect_capture(path: Path):
    """Split each connection at the end of the 101 head and feed the rest."""
    out = []
    for conn in _tcp_streams(path):
        head = {0: b"", 1: b""}
        dissector = None
        events = []
        pending = []
        for kind, direction, value, ts, number in conn["steps"]:
            if dissector is None:
                if kind != "data":
                    continue
                head[direction] += value
                for d in (0, 1):
                    text = head[d]
                    if text.startswith(b"HTTP/1.1 101") and b"\r\n\r\n" in text:
                        end = text.index(b"\r\n\r\n") + 4
                        response = text[:end].decode("latin-1").lower()
                        req_line = head[1 - d].split(b"\r\n", 1)[0].decode("latin-1")
                        req_end = head[1 - d].index(b"\r\n\r\n") + 4
                        ext = ""
                        for line in response.split("\r\n"):
                            if line.startswith("sec-websocket-extensions:"):
                                ext = line.split(":", 1)[1].strip()
                        dissector = WebSocketDissector(d, " ".join(req_line.split(" ")[:2]), ext, ts)
                        pending = [(text[end:], d), (head[1 - d][req_end:], 1 - d)]
                        break
                if dissector is not None:
                    for rest, d in pending:
                        if rest:
                            events += dissector.feed(rest, d, ts, number)
                continue
            if kind == "data":
                events += dissector.feed(value, direction, ts, number)
            else:
                events += dissector.end(direction, ts, number, value)
        if dissector is not None:
            events += dissector.close(1e10)
            ends = (conn["first"], conn["second"])
            server = ends[dissector.server_direction]
            client = ends[1 - dissector.server_direction]
            out.append((dissector, events, client, server))
    return out


WS_CAPTURES = ["sv_ws_compressed", "sv_ws_control_frag", "sv_ws_ping_sll", "zeek_ws_fragmented_http_reply",
               "zeek_ws_jupyter", "zeek_ws_message_too_big", "zeek_ws_oversized_close",
               "zeek_ws_reply_ping_coalesced", "zeek_ws_two_binary_fragments", "zeek_ws_wstunnel_ssh"]


@pytest.mark.parametrize("name", WS_CAPTURES)
def test_corpus_close_frames_match_tshark(name):
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent")
    pd = pytest.importorskip("pandas")
    (capture,) = CORPUS.glob(f"captures/{name}.*")
    truth = pd.read_csv(CORPUS / "truth" / "score" / f"{name}.csv", keep_default_na=False, dtype=str)
    truth = truth[truth.protocol == "websocket"]
    want = sorted((int(r.code or 1005), r.text, round(float(r.epoch), 6), int(r.first_frame), r.request)
                  for r in truth.itertuples())
    results = _dissect_capture(capture)
    got = sorted((e.code, e.text, round(e.epoch, 6), e.frame, e.request)
                 for _, events, _, _ in results for e in events if "websocket_no_close_frame" not in e.flags)
    assert got == want
    for dissector, events, _, _ in results:
        assert all(e.inferred == (e.code in (1005, 1006)) for e in events)
        if name in ("sv_ws_compressed",):
            assert dissector.anomaly_counts == {}
            assert dissector.outcome()["state"] == "open"


def test_corpus_inferences():
    if not CORPUS.is_dir():
        pytest.skip("../shared/corpus is absent")
    # The client FINs after an (unmasked) ping without any close frame.
    ((d, events, _, _),) = _dissect_capture(CORPUS / "captures" / "sv_ws_ping_sll.pcap")
    assert [(e.code, e.frame, e.inferred, e.direction) for e in events] == [(1006, 10, True, "client->server")]
    assert "fin_by_client" in events[0].flags
    assert d.anomaly_counts.get("websocket_unmasked_client_frame") == 1
    assert d.outcome()["state"] == "aborted"
    ((d, events, _, _),) = _dissect_capture(CORPUS / "captures" / "zeek_ws_jupyter.pcap")
    assert [(e.code, e.inferred) for e in events] == [(1005, True)] * 2
    assert d.outcome()["clean"] is True
    # Both wstunnel connections: the first closes by handshake then RST.
    results = _dissect_capture(CORPUS / "captures" / "zeek_ws_wstunnel_ssh.pcap")
    assert [r[0].outcome()["state"] for r in results] == ["closed", "closed"]
    assert [r[0].outcome()["closed_first_by"] for r in results] == ["client", "client"]


# ------------------------------------------------------------------ samples --

def test_samples_match_generating_script():
    """Every close the sample script logged (peers' own view) is an event."""
    expected_files = sorted(SAMPLES.glob("ws_*.expected.json"))
    if not expected_files:
        pytest.skip("no WebSocket samples (run samples/make_websocket.py as root)")
    for path in expected_files:
        spec = json.loads(path.read_text(encoding="utf-8"))
        results = {(client[1], server[1]): (d, events)
                   for d, events, client, server in _dissect_capture(SAMPLES / spec["capture"])}
        for scenario in spec["scenarios"]:
            dissector, events = results[(scenario["client_port"], scenario["server_port"])]
            got = [{"code": e.code, "text": e.text, "direction": e.direction, "inferred": e.inferred}
                   for e in events]
            assert got == scenario["events"], (path.name, scenario["name"])
            out = dissector.outcome()
            assert out["state"] == scenario["state"], (path.name, scenario["name"])
            assert out["closed_first_by"] == scenario["closed_first_by"], (path.name, scenario["name"])
            assert dissector.request == scenario["request"]
            if "ended_by" in scenario:
                assert out["ended_by"] == scenario["ended_by"], (path.name, scenario["name"])
                assert scenario["ended_by"] in events[-1].flags
            assert dissector.anomaly_counts == {}, (path.name, scenario["name"])
