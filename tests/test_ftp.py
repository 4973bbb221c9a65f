# FTP control channel: the dissector with plain bytes, property tests, the
# detector, the shared corpus (truth/score) and our own sample captures.
from __future__ import annotations

import dataclasses
import gc
import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analyzer.protocols.ftp import dissector as ftp
from analyzer.protocols.ftp import pairing as ftp_pairing
from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED
from analyzer.protocols.ftp.dissector import FtpDissector, detect
from analyzer.events import Expectation

C, S = 0, 1          # client sent the SYN: direction 0 is the client
SECRET = "s3cret-PASSWORD-xyz"
REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CAPTURES = REPO / "samples" / "captures"


def run(script, server_direction=S, chunk=None, close=True, dissector=None):
    """Feed [(direction, bytes), ...]; message i is packet i+1 at time i+1.

    chunk=n cuts every message into n-byte segments that keep the packet
    number of their message, so the events must not change.
    """
    d = dissector or FtpDissector(server_direction)
    events = []
    for index, (direction, data) in enumerate(script):
        pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
        for piece in pieces:
            events += d.feed(piece, direction, float(index + 1), index + 1)
    if close:
        events += d.close(99.0)
    return events, d


def pairs(events):
    return [(e.code, e.request) for e in events]


def three_ways(script, server_direction=S):
    """Whole, byte by byte, and with a partial line trailing: same events."""
    whole, _ = run(script, server_direction)
    assert run(script, server_direction, chunk=1)[0] == whole
    trailing = script[:-1] + [(script[-1][0], script[-1][1] + b"12")]
    assert run(trailing, server_direction, close=False)[0] == whole[:len(run(script, server_direction, close=False)[0])]
    return whole


SESSION = [
    (S, b"220 (vsFTPd 3.0.5)\r\n"),
    (C, b"USER alice\r\n"),
    (S, b"331 Please specify the password.\r\n"),
    (C, f"PASS {SECRET}\r\n".encode()),
    (S, b"230 Login successful.\r\n"),
    (C, b"FEAT\r\n"),
    (S, b"211-Features:\r\n EPRT\r\n EPSV\r\n PASV\r\n211 End\r\n"),
    (C, b"PASV\r\n"),
    (S, b"227 Entering Passive Mode (127,0,0,1,200,10).\r\n"),
    (C, b"RETR readme.txt\r\n"),
    (S, b"150 Opening BINARY mode data connection for readme.txt (5 bytes).\r\n"),
    (S, b"226 Transfer complete.\r\n"),
    (C, b"QUIT\r\n"),
    (S, b"221 Goodbye.\r\n"),
]


# --- replies (RFC 959 section 4.2) ---------------------------------------------

def test_session_pairs_every_reply_with_its_command():
    events = three_ways(SESSION)
    assert pairs(events) == [
        (220, ""), (331, "USER alice"), (230, "PASS ****"), (211, "FEAT"),
        (227, "PASV"), (150, "RETR readme.txt"), (226, "RETR readme.txt"), (221, "QUIT"),
    ]
    feat = events[3]
    assert (feat.text, feat.lines, feat.frame, feat.epoch, feat.sender) == ("Features:", 5, 7, 7.0, S)
    assert events[0].text == "(vsFTPd 3.0.5)" and events[0].flags == ()
    assert all(e.protocol == "ftp" and e.client_ip == "" and e.connection == "" for e in events)


@pytest.mark.parametrize("segments", [
    [b"211-Features:\r\n EPRT\r\n211 End\r\n"],                     # one segment
    [b"211-Features:\r\n", b" EPRT\r\n", b"211 End\r\n"],          # one line per segment
    [b"211-Feat", b"ures:\r\n EP", b"RT\r\n211", b" End\r\n"],     # split mid-line
])
def test_multiline_reply_is_one_event_however_segmented(segments):
    script = [(S, b"220 ftp ready\r\n"), (C, b"FEAT\r\n")] + [(S, seg) for seg in segments]
    events = three_ways(script)
    assert pairs(events) == [(220, ""), (211, "FEAT")]
    assert (events[1].text, events[1].lines, events[1].frame) == ("Features:", 3, 3)


def test_lines_inside_a_multiline_reply_are_text_whatever_digits_they_start_with():
    body = (b"230-Welcome\r\n220 not a reply\r\n530 still text\r\n230-more\r\n"
            b"230_no_space\r\n2300 four digits\r\n230 done\r\n")
    events = three_ways([(S, b"220 ok\r\n"), (C, b"PASS x\r\n"), (S, body)])
    assert pairs(events) == [(220, ""), (230, "PASS ****")]
    assert events[1].lines == 7 and events[1].text == "Welcome"


def test_empty_text_code_only_and_bare_lf():
    events = three_ways([(S, b"220 \n"), (C, b"NOOP\n"), (S, b"200\n"), (C, b"QUIT\r\n"), (S, b"221 \r\n")])
    assert [(e.code, e.text, e.request) for e in events] == [(220, "", ""), (200, "", "NOOP"), (221, "", "QUIT")]


def test_missing_space_is_not_a_reply_but_answers_the_command():
    # zeek ftp-missing-space-after-reply-code.pcap: tshark reports 230 "no_space".
    script = [(S, b"220 py.fake ready\r\n"), (C, b"RETR\r\n"), (S, b"230_no_space\r\n"),
              (C, b"QUIT\r\n"), (S, b"221 Bye\r\n")]
    events, d = run(script)
    assert pairs(events) == [(220, ""), (221, "QUIT")]
    assert [a.name for a in d.anomalies] == ["ftp_reply_malformed"]
    assert "RETR" in d.anomalies[0].detail


def test_two_digit_code_is_not_a_reply_but_answers_the_command():
    script = [(S, b"220 ready\r\n"), (C, b"PASV\r\n"), (S, b"99 PASV invalid\r\n"),
              (C, b"QUIT\r\n"), (S, b"221 Bye\r\n")]
    events, d = run(script)
    assert pairs(events) == [(220, ""), (221, "QUIT")]
    assert [a.name for a in d.anomalies] == ["ftp_reply_malformed"]


@pytest.mark.parametrize("size", [100 * 1024, 1024 * 1024])
def test_huge_single_line_reply_keeps_memory_bounded(size):
    d = FtpDissector(S)
    d.feed(b"220 ready\r\n", S, 1.0, 1)
    d.feed(b"PASV\r\n", C, 2.0, 2)
    events = d.feed(b"227 ", S, 3.0, 3)
    block = b"A" * 1460
    gc.collect()
    tracemalloc.start()
    try:
        sent = 0
        while sent < size:
            events += d.feed(block, S, 3.5, 4)
            sent += len(block)
            assert len(d._lines[S].buf) <= ftp.MAX_LINE_BYTES
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * ftp.MAX_LINE_BYTES + 64 * 1024      # not proportional to the line
    events += d.feed(b"\r\n550 Failed to open file.\r\n", S, 5.0, 5)
    d.feed(b"RETR x\r\n", C, 6.0, 6)
    events += d.feed(b"550 Failed to open file.\r\n", S, 7.0, 7)
    assert [(e.code, e.request, e.frame) for e in events] == [
        (227, "PASV", 3), (550, "", 5), (550, "RETR x", 7)]
    assert len(events[0].text) == ftp.MAX_LINE_BYTES - 4
    assert events[0].flags == ("ftp_reply_too_long",)
    assert "ftp_reply_too_long" in [a.name for a in d.anomalies]


def test_telnet_iac_sequences_are_stripped_in_both_directions():
    script = [
        (S, b"220 \xff\xfb\x01ready\r\n"),                       # IAC WILL ECHO
        (C, b"\xff\xfd\x03US\xff\xfa\x18\x01\xff\xf0ER bob\r\n"),  # IAC DO x, IAC SB ... IAC SE
        (S, b"331 need \xff\xffpassword\r\n"),                   # IAC IAC: literal 0xFF
        (C, b"RETR caf\xc3\xa9\xff\xff.txt\r\n"),
        (S, b"550 no\r\n"),
    ]
    events = three_ways(script)
    assert [(e.code, e.text, e.request) for e in events] == [
        (220, "ready", ""), (331, "need \xffpassword", "USER bob"),
        (550, "no", "RETR caf\xc3\xa9\xff.txt".encode("latin-1").decode("latin-1")),
    ]


def test_urgent_abor_during_retr_426_answers_retr_226_answers_abor():
    script = [
        (S, b"220 ready\r\n"), (C, b"RETR big.bin\r\n"), (S, b"150 Opening data connection\r\n"),
        # RFC 959 4.1.3: IAC IP, then IAC DM sent as urgent data, then ABOR.
        (C, b"\xff\xf4\xff"), (C, b"\xf2AB"), (C, b"OR\r\n"),
        (S, b"426 Connection closed; transfer aborted.\r\n"), (S, b"226 Abort successful\r\n"),
        (C, b"QUIT\r\n"), (S, b"221 bye\r\n"),
    ]
    events = three_ways(script)
    assert pairs(events) == [(220, ""), (150, "RETR big.bin"), (426, "RETR big.bin"),
                             (226, "ABOR"), (221, "QUIT")]


def test_abor_answered_once_realigns_on_the_next_command():
    # Some servers fold 426+226 into one 226: the ABOR then gets no reply of its own.
    script = [
        (S, b"220 ready\r\n"), (C, b"RETR big.bin\r\n"), (S, b"150 ok\r\n"), (C, b"ABOR\r\n"),
        (S, b"226 Abort successful\r\n"), (C, b"PASV\r\n"), (S, b"227 Entering (10,0,0,1,4,1)\r\n"),
    ]
    events, d = run(script)
    assert pairs(events) == [(220, ""), (150, "RETR big.bin"), (226, "RETR big.bin"), (227, "PASV")]
    assert [a.detail for a in d.anomalies if a.name == "ftp_command_without_reply"] == ["ABOR"]


def test_abor_225_skips_the_transfer_whose_reply_never_came():
    script = [(S, b"220 ready\r\n"), (C, b"RETR f\r\n"), (S, b"150 ok\r\n"), (C, b"ABOR\r\n"),
              (S, b"225 ABOR command successful.\r\n")]
    events, _ = run(script)
    assert pairs(events) == [(220, ""), (150, "RETR f"), (225, "ABOR")]


def test_greeting_120_then_220_and_pipelined_commands_before_it():
    # zeek fake-server-delays-all.pcap: all commands precede every reply.
    script = [(C, b"USER anonymous\r\nPASS a@b\r\nSYST\r\n"), (S, b"120 wait\r\n"),
              (S, b"220 ready\r\n230 ok\r\n230 ok\r\n215 UNIX\r\n")]
    events = three_ways(script)
    assert pairs(events) == [(120, ""), (220, ""), (230, "USER anonymous"), (230, "PASS ****"), (215, "SYST")]
    assert all(e.flags == () for e in events)


def test_unsolicited_421_and_221_have_no_request_and_no_flag_other_orphans_are_flagged():
    events, d = run([(S, b"220 ready\r\n"), (S, b"421 Timeout.\r\n"), (S, b"250 what\r\n"),
                     (S, b"221 You could at least say goodbye.\r\n")])
    assert [(e.code, e.request, e.flags) for e in events] == [
        (220, "", ()), (421, "", ()), (250, "", ("ftp_reply_without_command",)), (221, "", ())]
    assert [a.name for a in d.anomalies] == ["ftp_reply_without_command"]


def test_lowercase_and_split_commands_are_upper_cased():
    script = [(S, b"220 ready\r\n"), (C, b"re"), (C, b"tr Mixed"), (C, b"Case.TXT\r"), (C, b"\n"),
              (S, b"550 nope\r\n"), (C, b"cwd /\r\n"), (S, b"250 ok\r\n")]
    events = three_ways(script)
    assert pairs(events) == [(220, ""), (550, "RETR MixedCase.TXT"), (250, "CWD /")]


def test_unknown_command_500_pairs_and_is_noted():
    events, d = run([(S, b"220 ready\r\n"), (C, b"XYZZY plugh\r\n"), (S, b"500 Unknown command.\r\n")])
    assert pairs(events) == [(220, ""), (500, "XYZZY plugh")]
    assert [a.name for a in d.anomalies] == ["ftp_command_unknown"]


# --- secrets ------------------------------------------------------------------------

def _reachable_text(obj, seen=None):
    """Every str/bytes reachable from obj (slots, dicts, containers)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (str, bytes, bytearray)):
        yield bytes(obj) if not isinstance(obj, str) else obj.encode("utf-8", "replace")
        return
    if isinstance(obj, dict):
        items = list(obj.keys()) + list(obj.values())
    elif isinstance(obj, (list, tuple, set, frozenset)) or type(obj).__name__ == "deque":
        items = list(obj)
    elif dataclasses.is_dataclass(obj) or hasattr(obj, "__dict__") or hasattr(type(obj), "__slots__"):
        items = [getattr(obj, name) for name in getattr(obj, "__dict__", {})]
        for klass in type(obj).__mro__:
            items += [getattr(obj, n) for n in getattr(klass, "__slots__", ()) if hasattr(obj, n)]
    else:
        return
    for item in items:
        if isinstance(item, (int, float, bool, type(None))) or callable(item) and not hasattr(item, "__self__"):
            continue
        yield from _reachable_text(item, seen)


def assert_no_secret(d, events):
    blobs = list(_reachable_text(d)) + list(_reachable_text(events)) + list(_reachable_text(d.outcome()))
    blobs += [repr(x).encode() for x in events + d.anomalies + d.expectations] + [repr(d.outcome()).encode()]
    for blob in blobs:
        assert SECRET.encode() not in blob and b"3cret-PASS" not in blob


_SECRET_LINES = [f"PASS {SECRET}\r\n", f"pass {SECRET}\r\n", f"  Pass {SECRET}\n", f"ACCT {SECRET}\r\n"]


@pytest.mark.parametrize("line, chunk", [
    *[(line, chunk) for line in _SECRET_LINES for chunk in (None, 1, 3, 7)],
    (f"PASS {SECRET}" + "x" * 20000 + "\r\n", None),          # longer than MAX_LINE_BYTES
    (f"PASS {SECRET}" + "x" * 20000 + "\r\n", 1000),
], ids=lambda v: repr(v)[:24])
def test_password_never_stored_anywhere(line, chunk):
    d = FtpDissector(S)
    events = []
    script = [(S, b"220 ready\r\n"), (C, b"USER bob\r\n"), (S, b"331 pw\r\n"),
              (C, line.encode()), (S, b"530 Login incorrect.\r\n")]
    for index, (direction, data) in enumerate(script):
        pieces = [data] if chunk is None else [data[i:i + chunk] for i in range(0, len(data), chunk)]
        for piece in pieces:
            events += d.feed(piece, direction, float(index), index)
            assert_no_secret(d, events)      # also between the segments of the PASS line
    events += d.close(9.0)
    assert_no_secret(d, events)
    verb = line.strip().split(" ", 1)[0].upper()
    assert pairs(events)[-1] == (530, f"{verb} ****")


def test_password_masked_in_unterminated_line_and_without_known_roles():
    d = FtpDissector(None)
    events = d.feed(f"PASS {SECRET}".encode(), C, 1.0, 1)
    events += d.end(C, 2.0, 2, False) + d.close(3.0)
    assert_no_secret(d, events)
    assert d.server_direction == S


# --- login outcome -------------------------------------------------------------------

def test_login_outcome_failed_then_success():
    script = [(S, b"220 ready\r\n"),
              (C, b"USER bob\r\n"), (S, b"331 pw\r\n"), (C, b"PASS a\r\n"), (S, b"530 Login incorrect.\r\n"),
              (C, b"USER eve\r\n"), (S, b"331 pw\r\n"), (C, b"PASS b\r\n"), (S, b"530 Login incorrect.\r\n")]
    _, d = run(script)
    assert d.outcome() == {"user": "eve", "login": "failed", "failed_logins": ["bob", "eve"],
                           "failed_login_count": 2, "logins": 0, "tls": False, "commands": 4,
                           "replies": 5, "data_bytes": 0}
    _, d = run(script + [(C, b"USER bob\r\n"), (S, b"230 Anonymous ok\r\n")])
    assert (d.outcome()["login"], d.outcome()["logins"], d.outcome()["user"]) == ("success", 1, "bob")


def test_530_to_other_commands_is_not_a_failed_login():
    _, d = run([(S, b"220 ready\r\n"), (C, b"LIST\r\n"), (S, b"530 Please login with USER and PASS.\r\n")])
    assert (d.outcome()["login"], d.outcome()["failed_logins"]) == ("none", [])


# --- data channels ---------------------------------------------------------------------

def test_data_channel_announcements():
    script = [
        (S, b"220 ready\r\n"),
        (C, b"PASV\r\n"), (S, b"227 Entering Passive Mode (192,168,1,2,19,137).\r\n"),
        (C, b"EPSV\r\n"), (S, b"229 Entering Extended Passive Mode (|||6446|)\r\n"),
        (C, b"PORT 10,0,0,5,4,1\r\n"), (S, b"200 PORT command successful.\r\n"),
        (C, b"EPRT |1|132.235.1.2|6275|\r\n"), (S, b"200 EPRT command successful.\r\n"),
        (C, b"EPRT |2|1080::8:800:200C:417A|5282|\r\n"), (S, b"200 EPRT command successful.\r\n"),
        (C, b"EPSV 2\r\n"), (S, b"229 ok (!!!5000!)\r\n"),
        (C, b"PORT 300,1,1,1,1,1\r\n"), (S, b"501 bad\r\n"),
        (C, b"EPRT |1|::1|80|\r\n"), (S, b"501 bad\r\n"),
    ]
    _, d = run(script)
    assert [(x.kind, x.host, x.port) for x in d.expectations] == [
        ("ftp-data", "192.168.1.2", 5001), ("ftp-data", None, 6446), ("ftp-data", "10.0.0.5", 1025),
        ("ftp-data", "132.235.1.2", 6275), ("ftp-data", "1080::8:800:200c:417a", 5282),
        ("ftp-data", None, 5000),
    ]
    assert all(x.owner is d for x in d.expectations)
    assert [a.name for a in d.anomalies] == ["ftp_data_address_invalid"] * 2


def test_data_bytes_attributed_to_the_transfer_in_progress():
    d = FtpDissector(S)
    events = d.feed(b"220 ready\r\n", S, 1.0, 1)
    d.feed(b"PASV\r\n", C, 2.0, 2)
    events += d.feed(b"227 Entering Passive Mode (127,0,0,1,4,1).\r\n", S, 3.0, 3)
    d.on_data(0, 3.1)                        # data connection opened before LIST: nothing to count
    d.feed(b"LIST\r\n", C, 4.0, 4)
    events += d.feed(b"150 Here comes the directory listing.\r\n", S, 5.0, 5)
    d.on_data(1000, 5.1)
    d.on_data(234, 5.2)
    events += d.feed(b"226 Directory send OK.\r\n", S, 6.0, 6)
    d.feed(b"NLST\r\n", C, 7.0, 7)
    d.on_data(0, 7.1)                        # an empty listing: connection seen, no bytes
    events += d.feed(b"226 ok\r\n", S, 8.0, 8)
    d.feed(b"RETR missing\r\n", C, 9.0, 9)
    events += d.feed(b"550 Failed to open file.\r\n", S, 10.0, 10)
    assert [(e.code, e.request, e.data_bytes) for e in events] == [
        (220, "", None), (227, "PASV", None), (150, "LIST", None), (226, "LIST", 1234),
        (226, "NLST", 0), (550, "RETR missing", None)]
    assert d.outcome()["data_bytes"] == 1234


def test_auth_tls_stops_parsing():
    script = [(S, b"220 ready\r\n"), (C, b"FEAT\r\n"), (S, b"211-Features:\r\n AUTH TLS\r\n211 End\r\n"),
              (C, b"AUTH TLS\r\n"), (S, b"234 Proceed with negotiation.\r\n"),
              (C, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256))),
              (S, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03220 fake\r\n"),
              (C, b"\x17\x03\x03\x00\x20USER x\r\n")]
    events, d = run(script)
    assert pairs(events) == [(220, ""), (211, "FEAT"), (234, "AUTH TLS")]
    assert events[-1].flags == ("ftp_tls_started",)
    assert [a.name for a in d.anomalies] == ["ftp_tls_started"]
    assert d.outcome()["tls"] is True
    assert d.gap(10, S, 10.0, 10) == [] and d.end(C, 11.0, 11, False) == []


def test_auth_tls_without_the_234_in_the_capture():
    events, d = run([(C, b"AUTH TLS\r\n"), (C, b"\x16\x03\x01\x00\x05hello\r\n250 x\r\n")], server_direction=None)
    assert events == [] and d.outcome()["tls"] is True


# --- roles, gaps, ends, limits ------------------------------------------------------------------

def test_server_direction_inferred_from_content():
    events, d = run([(C, b"SYST\r\n"), (S, b"215 UNIX Type: L8\r\n")], server_direction=None)
    assert d.server_direction == S and pairs(events) == [(215, "SYST")]
    events, d = run([(C, b"220 hi\r\n"), (S, b"USER x\r\n"), (C, b"331 pw\r\n")], server_direction=None)
    assert d.server_direction == C and pairs(events) == [(220, ""), (331, "USER x")]
    assert {e.sender for e in events} == {C}


def test_midstream_capture_starting_inside_lines():
    script = [(S, b"ory listing.\r\n"), (S, b"226 Directory send OK.\r\n"), (C, b"T I\r\nTYPE A\r\n"),
              (S, b"500 what\r\n200 Switching to ASCII mode.\r\n")]
    events, d = run(script, server_direction=None)
    assert pairs(events) == [(226, ""), (500, "T I"), (200, "TYPE A")]
    assert d.server_direction == S


def test_gap_that_swallowed_commands_and_replies_realigns():
    # zeek cwd-navigation.pcap frames 830-835: "200 Type set to I" and "PASV"
    # were never captured; tshark's FIFO pairs the 227 with TYPE I.
    d = FtpDissector(S)
    events = d.feed(b"220 ready\r\n", S, 1, 1)
    d.feed(b"TYPE I\r\n", C, 2, 2)
    events += d.gap(19, S, 3, 3) + d.feed(b"227 Entering Passive Mode (1,2,3,4,5,6).\r\n", S, 3, 3)
    events += d.gap(6, C, 4, 4) + d.feed(b"RETR f.gz\r\n", C, 4, 4)
    events += d.feed(b"150 Opening\r\n", S, 5, 5) + d.feed(b"226 Transfer complete\r\n", S, 6, 6)
    d.feed(b"CWD ../\r\n", C, 7, 7)
    events += d.feed(b"250 CWD command successful\r\n", S, 8, 8)
    assert pairs(events) == [(220, ""), (227, ""), (150, "RETR f.gz"), (226, "RETR f.gz"), (250, "CWD ../")]
    assert events[1].flags == ("ftp_reply_without_command",)
    names = [a.name for a in d.anomalies]
    assert names.count("ftp_gap") == 2 and "ftp_command_without_reply" in names


def test_gap_inside_a_line_drops_the_fragment():
    d = FtpDissector(S)
    events = d.feed(b"220 ready\r\n", S, 1, 1) + d.feed(b"SYST\r\n", C, 2, 2)
    events += d.feed(b"215 UNI", S, 3, 3) + d.gap(5, S, 4, 4) + d.feed(b"pe: L8\r\n", S, 4, 4)
    d.feed(b"NOOP\r\n", C, 5, 5)
    events += d.feed(b"200 ok\r\n", S, 6, 6)
    assert pairs(events) == [(220, ""), (200, "NOOP")]
    assert "ftp_gap_fragment" in [a.name for a in d.anomalies]


def test_gap_that_lost_the_final_line_of_a_multiline_reply():
    d = FtpDissector(S)
    d.feed(b"FEAT\r\n", C, 1, 1)
    events = d.feed(b"211-Features:\r\n EPSV\r\n", S, 2, 2) + d.gap(9, S, 3, 3)
    d.feed(b"PWD\r\n", C, 4, 4)
    events += d.feed(b"257 \"/\" is the current directory\r\n", S, 5, 5)
    assert [(e.code, e.request, e.lines, e.flags) for e in events] == [
        (211, "FEAT", 2, ("ftp_gap",)), (257, "PWD", 1, ())]


def test_unterminated_reply_at_fin_and_open_multiline_at_close():
    d = FtpDissector(S)
    d.feed(b"QUIT\r\n", C, 1, 1)
    events = d.feed(b"221 Goodbye.", S, 2, 2) + d.end(S, 3, 3, False)
    assert [(e.code, e.request, e.frame) for e in events] == [(221, "QUIT", 2)]
    d = FtpDissector(S)
    d.feed(b"HELP\r\n", C, 1, 1)
    d.feed(b"LIST\r\n", C, 2, 2)
    events = d.feed(b"214-The following commands\r\n ABOR\r\n", S, 3, 3) + d.close(4)
    assert [(e.code, e.request, e.flags) for e in events] == [(214, "HELP", ("ftp_reply_incomplete",))]
    assert [a.detail for a in d.anomalies if a.name == "ftp_command_without_reply"] == ["LIST"]
    assert d.close(5) == []


def test_pending_commands_are_bounded():
    events, d = run([(C, b"NOOP\r\n" * (ftp_pairing.MAX_PENDING_COMMANDS + 5))])
    assert len(d.session.pending) == 0 and events == []
    names = [a.name for a in d.anomalies]
    assert names.count("ftp_too_many_pending_commands") == 5
    assert names.count("ftp_command_without_reply") == ftp_pairing.MAX_PENDING_COMMANDS


def test_every_anomaly_is_emitted():
    # No throttle in the dissector: the anomaly policy samples rows centrally.
    _, d = run([(S, b"220 ready\r\n")] + [(S, b"250 ok\r\n")] * 1010)
    assert len(d.anomalies) == 1010


def test_parsers_of_addresses():
    assert ftp.parse_host_port(b"Entering Passive Mode 10,1,2,3,0,21") == ("10.1.2.3", 21)
    assert ftp.parse_host_port(b"(10,1,2,3,0,0)") is None
    assert ftp.parse_epsv(b"Entering (|||65536|)") is None
    assert ftp.parse_eprt(b"|2|::1|2121|") == ("::1", 2121)
    assert ftp.parse_eprt(b"|3|::1|2121|") is None
    assert ftp.parse_eprt(b"x") is None


def test_fit_table_is_data_about_known_commands():
    assert set(ftp_pairing.CODE_FITS) <= ftp.FTP_COMMANDS
    assert ftp_pairing.fits("PASV", 227) and not ftp_pairing.fits("PASV", 229) and ftp_pairing.fits("PASV", 530)
    assert ftp_pairing.fits("UNKNOWNVERB", 257)


# --- properties -----------------------------------------------------------------------------

def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


STREAM = SESSION + [
    (C, b"\xff\xf4\xff\xf2ABOR\r\n"), (S, b"225 ok\r\n"),
    (C, b"HELP\n"), (S, b"214-The following commands are recognized.\n ABOR\n214 Help OK.\n"),
    (C, b"EPRT |2|::1|4000|\r\n"), (S, b"200 ok\r\n"), (S, b"421 bye\r\n"),
]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(st.integers(min_value=0, max_value=200), max_size=6),
                min_size=len(STREAM), max_size=len(STREAM)))
def test_random_splits_give_the_same_events(cuts):
    expected, d0 = run(STREAM)
    d = FtpDissector(S)
    events = []
    for index, ((direction, data), message_cuts) in enumerate(zip(STREAM, cuts)):
        for piece in _split(data, message_cuts):
            events += d.feed(piece, direction, float(index + 1), index + 1)
    events += d.close(99.0)
    assert events == expected
    assert [(x.host, x.port) for x in d.expectations] == [(x.host, x.port) for x in d0.expectations]
    assert d.outcome() == d0.outcome()


_ops = st.one_of(
    st.tuples(st.just("feed"), st.integers(0, 1), st.binary(max_size=300)),
    st.tuples(st.just("feed"), st.integers(0, 1), st.lists(st.sampled_from(
        [b"220 ", b"211-", b"211 ", b"\r\n", b"\n", b"\xff", b"\xff\xf4", b"\xfa", b"PASS ", b"USER ",
         b"227 (1,2,3,4,5,6)", b"229 (|||1|)", b"EPRT |2|::1|1|", b"PORT 1,2,3,4,5,6", b"AUTH TLS",
         b"234 ", b"150 ", b"ABOR", b"x" * 50, b"\x16\x03"]), max_size=30).map(b"".join)),
    st.tuples(st.just("gap"), st.integers(0, 1), st.integers(1, 10_000)),
    st.tuples(st.just("end"), st.integers(0, 1), st.booleans()),
    st.tuples(st.just("data"), st.integers(0, 1), st.integers(0, 5000)),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([None, 0, 1]), st.lists(_ops, max_size=25))
def test_random_input_never_raises(server_direction, ops):
    d = FtpDissector(server_direction)
    for frame, (op, direction, arg) in enumerate(ops, 1):
        if op == "feed":
            events = d.feed(arg, direction, float(frame), frame)
        elif op == "gap":
            events = d.gap(arg, direction, float(frame), frame)
        elif op == "end":
            events = d.end(direction, float(frame), frame, arg)
        else:
            d.on_data(arg, float(frame))
            events = []
        assert all(e.protocol == "ftp" and 100 <= e.code <= 699 for e in events)
    d.close(1e9)
    assert isinstance(d.outcome(), dict)
    assert all(isinstance(x, Expectation) for x in d.expectations)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.binary(max_size=600), st.booleans())
def test_detect_random_bytes_never_raise(head0, head1, hint):
    assert detect(head0, head1, hint) in (DETECTED, REJECTED, NEED_MORE)


# --- detection ------------------------------------------------------------------------------

@pytest.mark.parametrize("head0, head1, hint, verdict", [
    (b"", b"220 ProFTPD Server ready.\r\n", False, DETECTED),
    (b"", b"220 (vsFTPd 3.0.5)\r\n", False, DETECTED),
    (b"", b"220 Welcome\r\n", True, DETECTED),                         # port 21
    (b"", b"220 Welcome\r\n", False, NEED_MORE),                       # could be SMTP
    (b"USER bob\r\n", b"220 Welcome\r\n", False, DETECTED),            # an FTP command answered
    (b"USER bob\r\n", b"220 Welcome\r\n331 Password\r\n", False, DETECTED),
    (b"", b"220 Welcome\r\n331 Password required\r\n", False, DETECTED),  # one-sided, FTP-only code
    (b"", b"220-Welcome\r\n220-to the\r\n", False, NEED_MORE),
    (b"", b"220 mail.example.com ESMTP Postfix\r\n", False, REJECTED),
    (b"", b"220 mail.example.com ESMTP Postfix\r\n", True, REJECTED),
    (b"EHLO client\r\n", b"220 mx Welcome\r\n", False, REJECTED),
    (b"HELO client\r\n", b"220 ready\r\n", True, REJECTED),
    (b"", b"+OK POP3 server ready\r\n", False, REJECTED),
    (b"", b"* OK IMAP4rev1\r\n", False, REJECTED),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", False, REJECTED),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"", True, REJECTED),
    (b"GET / HTT", b"", False, REJECTED),
    (b"", b"HTTP/1.1 200 OK\r\n", False, REJECTED),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", b"", True, REJECTED),   # TLS (implicit FTPS)
    (b"SSH-2.0-OpenSSH_8.9\r\n", b"", False, REJECTED),
    (b"\x00\x00\x00h\xfeSMB@\x00", b"", False, REJECTED),
    (b"2", b"", False, NEED_MORE),                                     # never from one byte
    (b"", b"2", True, NEED_MORE),
    (b"", b"220 ftp", True, NEED_MORE),                                # line not complete yet
    (b"SYST\r\n", b"", False, DETECTED),                               # one-sided client
    (b"USER bob\r\n", b"", False, NEED_MORE),                          # POP3 has USER too
    (b"USER bob\r\n", b"", True, DETECTED),
    (b"ory listing.\r\n226 Directory send OK.\r\n", b"", False, NEED_MORE),  # mid-stream, one line
    (b"ory listing.\r\n226 Directory send OK.\r\n227 Entering (1,2,3,4,5,6)\r\n", b"", False, DETECTED),
    (b"ing list\r\n150 people came\r\nand left\r\n", b"", False, NEED_MORE),   # text, not FTP
    (b"RETR x\r\n", b"150 Opening\r\n", False, DETECTED),
    (b"a1 LOGIN x y\r\n", b"", False, NEED_MORE),
    (b"a1 LOGIN\r\n" * 9, b"", False, REJECTED),
    (b"220 ready\r\n", b"220 ready\r\n", True, REJECTED),              # two servers
    (b"220 FTP\r\n" + b"\x16\x03\x01\x00\x05", b"AUTH TLS\r\n", False, DETECTED),
    (b"\xff\xfb\x01220 FTP ready\r\n", b"", False, DETECTED),          # Telnet negotiation first
])
def test_detect(head0, head1, hint, verdict):
    assert detect(head0, head1, hint) == verdict
    assert detect(head1, head0, hint) == verdict        # symmetric in the directions


# --- the shared corpus ------------------------------------------------------------------------

def _tcp_streams(path: Path):
    """Per TCP connection: (saw_syn, [(frame, ts, direction, missing_before, payload)]).

    A tiny in-order extractor for captures without reordering: direction 0
    sent the first packet (the SYN when there is one); retransmitted bytes
    are trimmed; a sequence hole becomes a gap.
    """
    scapy_all = pytest.importorskip("scapy.all")
    TCP, IP, IPv6 = scapy_all.TCP, scapy_all.IP, scapy_all.IPv6
    conns: dict = {}
    for frame, pkt in enumerate(scapy_all.PcapReader(str(path)), 1):
        if TCP not in pkt or (IP not in pkt and IPv6 not in pkt):
            continue
        ip, tcp = (pkt[IP] if IP in pkt else pkt[IPv6]), pkt[TCP]
        a, b = (ip.src, tcp.sport), (ip.dst, tcp.dport)
        key = (a, b) if (a, b) in conns else (b, a) if (b, a) in conns else None
        if key is None:
            key = (a, b)
            conns[key] = {"next": [None, None], "syn": bool(tcp.flags & 0x02), "segs": []}
        conn, direction = conns[key], (0 if (a, b) == key else 1)
        size = (ip.len - ip.ihl * 4 if IP in pkt else ip.plen) - tcp.dataofs * 4
        data = bytes(tcp)[tcp.dataofs * 4:][:max(size, 0)]     # no Ethernet padding
        if tcp.flags & 0x02:
            conn["next"][direction] = (tcp.seq + 1) & 0xFFFFFFFF
        if not data:
            continue
        expected, start = conn["next"][direction], tcp.seq
        missing = 0 if expected is None else (start - expected) & 0xFFFFFFFF
        if missing >= 0x80000000:                              # retransmitted bytes
            overlap = (expected - start) & 0xFFFFFFFF
            if overlap >= len(data):
                continue
            data, start, missing = data[overlap:], expected, 0
        conn["segs"].append((frame, float(pkt.time), direction, missing, data))
        conn["next"][direction] = (start + len(data)) & 0xFFFFFFFF
    return conns


def _dissect(conn, port_hint=False):
    heads, verdict = [b"", b""], NEED_MORE
    for _, _, direction, _, data in conn["segs"]:
        heads[direction] += data
        verdict = detect(heads[0], heads[1], port_hint)
        if verdict != NEED_MORE:
            break
    d = FtpDissector(1 if conn["syn"] else None)
    events = []
    for frame, ts, direction, missing, data in conn["segs"]:
        if missing:
            events += d.gap(missing, direction, ts, frame)
        events += d.feed(data, direction, ts, frame)
    return verdict, events + d.close(1e10), d


def _norm(request: str) -> str:
    words = request.split()
    return "PASS ****" if words[:1] == ["PASS"] else " ".join(words)


# Where the truth (tshark + derived FIFO) is not the RFC 959 answer.
CORPUS_FTP = {
    "zeek_ftp_ipv4": {}, "zeek_ftp_ipv6": {}, "zeek_ftp_ipv6_multiline": {}, "ndpi_ftp": {},
    "sv_ftp_epsv": {}, "sv_ftp_too_long_response": {}, "zeek_ftp_invalid_reply_code": {},
    "zeek_ftp_bruteforce": {}, "zeek_ftp_server_delays_all": {}, "zeek_ftp_bigtransfer": {},
    "zeek_ftp_auth_tls": {}, "arkime_synthetic": {},
    # tshark reads "230_no_space" as a 230 reply; RFC 959 needs a space or hyphen.
    "zeek_ftp_missing_space": {"not_replies": {16}},
    # Segments lost on both sides: the 227 answers a PASV and the 200 a TYPE I
    # that were never captured; FIFO over what was captured pairs them with the
    # previous command instead.
    "zeek_ftp_cwd_navigation": {"requests": {831: "", 3204: ""}},
}


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared is absent")
@pytest.mark.parametrize("name", sorted(CORPUS_FTP))
def test_corpus_replies_and_pairing_match_the_truth(name):
    pd = pytest.importorskip("pandas")
    corpus = SHARED / "corpus"
    truth = pd.read_csv(corpus / "truth" / "score" / f"{name}.csv", keep_default_na=False)
    truth = truth[truth.protocol == "ftp"]
    fixes = CORPUS_FTP[name]
    conns = _tcp_streams(next((corpus / "captures").glob(f"{name}.*")))
    found = 0
    for key, conn in conns.items():
        verdict, events, d = _dissect(conn)
        (ip0, port0), (ip1, port1) = key
        mine = truth[((truth.client_ip == ip0) & (truth.client_port == port0)
                      & (truth.server_ip == ip1) & (truth.server_port == port1))
                     | ((truth.client_ip == ip1) & (truth.client_port == port1)
                        & (truth.server_ip == ip0) & (truth.server_port == port0))]
        if mine.empty:
            assert verdict != DETECTED, f"{key} detected as FTP"
            continue
        found += 1
        assert verdict == DETECTED, key
        rows = [r for r in mine.itertuples() if int(r.first_frame) not in fixes.get("not_replies", ())]
        expected = [(int(r.code), fixes.get("requests", {}).get(int(r.frame), _norm(r.request)))
                    for r in rows]
        assert [(e.code, _norm(e.request)) for e in events] == expected
        # Single-line replies start where tshark says; multi-line ones start earlier.
        assert all(e.frame <= int(r.first_frame) for e, r in zip(events, rows))
        assert d.outcome()["tls"] == (name == "zeek_ftp_auth_tls")
    assert found == len(truth.groupby(["client_ip", "client_port", "server_ip", "server_port"]))


# --- our own sample captures ---------------------------------------------------------------------

SAMPLES = sorted(CAPTURES.glob("ftp_*.expected.json")) if CAPTURES.is_dir() else []


def _dissect_session(conns, control_key):
    """The control connection, with its data connections' payload reported
    through on_data in capture order (what the flow table does)."""
    d = FtpDissector(1 if conns[control_key]["syn"] else None)
    packets = sorted((frame, ts, key, direction, missing, data)
                     for key, conn in conns.items() for frame, ts, direction, missing, data in conn["segs"])
    events = []
    for frame, ts, key, direction, missing, data in packets:
        if key == control_key:
            if missing:
                events += d.gap(missing, direction, ts, frame)
            events += d.feed(data, direction, ts, frame)
        elif {key[0][1], key[1][1]} & {x.port for x in d.expectations}:
            d.on_data(len(data), ts)
    return events + d.close(1e10), d


@pytest.mark.skipif(not SAMPLES, reason="no FTP sample captures (run samples/make_ftp.py)")
@pytest.mark.parametrize("expected_path", SAMPLES, ids=lambda p: p.name.split(".")[0])
def test_sample_captures_match_what_the_client_saw(expected_path):
    expected = json.loads(expected_path.read_text())
    assert expected["password"] == SECRET
    conns = _tcp_streams(expected_path.with_name(expected["capture"]))
    port = expected["server_port"]
    announced = set()
    for want in expected["connections"]:
        key = next(k for k in conns if {k[0][1], k[1][1]} == {want["client_port"], port})
        assert _dissect(conns[key])[0] == DETECTED
        events, d = _dissect_session(conns, key)
        assert_no_secret(d, events)
        got = [(e.code, e.request, e.text, e.lines) for e in events]
        assert got == [(r["code"], r["request"], r["text"], r["lines"]) for r in want["replies"]]
        for event, reply in zip(events, want["replies"]):
            if reply["data_bytes"] is not None:
                assert event.data_bytes == reply["data_bytes"], (event, reply)
        announced |= {x.port for x in d.expectations}
    # Every other connection in the capture is a data connection a control
    # connection announced (decoy.txt, whose lines look like FTP and HTTP,
    # travels on one of them).
    controls = {w["client_port"] for w in expected["connections"]}
    for key in conns:
        ports = {key[0][1], key[1][1]}
        if not ports & controls:
            assert ports & announced, (key, announced)
