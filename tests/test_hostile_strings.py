"""Strings from the wire and from file names cannot act on the reader, and secrets are never written.

Control and bidi characters are shown as \\xNN / \\uNNNN in CSV, HTML and the
terminal and JSON-escaped in JSON files (outputs/visible.py); Host is UTF-8
with \\xNN for bytes that are not.  Passwords cut by a capture gap,
Authorization / Cookie / Proxy-Authorization fields and form bodies appear
in no output and on no terminal line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer.outputs.visible import has_unsafe, json_text, visible, visible_html
from conversations import conversation, write_pcap

ROOT = Path(__file__).resolve().parents[1]
RAW = ("\x1b", "\x07", "\x00", "\x9b", "\u202e", "\u2066")

REQUEST = "GET /r\u202eevil?\x1b[2J HTTP/1.1\r\nHost: b\u00fccher.example\x07\r\n\r\n".encode()
REASON = b"Not\x1b]52;c;SGVsbG8=\x07 Found\x00"


def analyzer(*args, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "analyzer", *map(str, args)], capture_output=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    frames = conversation([("c", REQUEST), ("s", b"HTTP/1.1 404 " + REASON + b"\r\nContent-Length: 0\r\n\r\n"),
                           ("c", b"GET /latin HTTP/1.1\r\nHost: caf\xe9\r\n\r\n"),
                           ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")])
    capture = tmp / "hostile.pcap"
    write_pcap(capture, frames)
    proc = analyzer("analyze", capture, "-o", tmp / "out", "--jsonl", "--parquet")
    assert proc.returncode == 0, proc.stderr
    return tmp / "out", proc


def test_csv_shows_control_and_bidi_characters_visibly(hostile):
    out, _ = hostile
    import csv

    with open(out / "events.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["text"] for r in rows] == ["Not\\x1b]52;c;SGVsbG8=\\x07 Found\\x00", "OK"]
    assert rows[0]["request"] == "GET /r\\u202eevil?\\x1b[2J"
    assert [r["host"] for r in rows] == ["b\u00fccher.example\\x07", "caf\\xe9"]  # UTF-8, else \xNN
    for name in ("events.csv", "hosts.csv", "codes.csv", "connections.csv", "anomalies.csv"):
        text = (out / name).read_text(encoding="utf-8")
        assert not any(c in text for c in RAW), name


def test_json_files_escape_them_and_keep_the_exact_value(hostile):
    out, _ = hostile
    raw = (out / "events.jsonl").read_text(encoding="utf-8")
    assert not any(c in raw for c in RAW) and "\\u202e" in raw and "\\u001b" in raw
    records = [json.loads(line) for line in raw.splitlines()]
    assert records[0]["text"] == REASON.decode()
    assert records[0]["request"] == "GET /r\u202eevil?\x1b[2J"
    assert [r["host"] for r in records] == ["b\u00fccher.example\x07", "caf\\xe9"]
    assert not any(c in (out / "summary.json").read_text(encoding="utf-8") for c in RAW)
    assert pq.read_table(out / "events.parquet").column("text").to_pylist()[0] == REASON.decode()  # exact


def test_html_neutralises_bidi_overrides(hostile):
    out, _ = hostile
    page = (out / "report.html").read_text(encoding="utf-8")
    assert not any(c in page for c in RAW)
    assert "/r\\u202eevil" in page  # the failing path (grouped without its query), shown


def test_terminal_lines_hold_no_raw_control(hostile):
    _, proc = hostile
    for stream in (proc.stdout.decode(), proc.stderr.decode()):
        assert not any(c in stream for c in RAW)


def test_a_file_name_with_terminal_escapes_is_shown_escaped(tmp_path):
    name = tmp_path / "evil\x1b]52;c;SGVsbG8=\x07\x1b[2J\u202e.pcap"
    name.write_bytes(b"hello junk")
    proc = analyzer("analyze", name, "-o", tmp_path / "out", "-q")
    assert proc.returncode == 3
    shown = f"{tmp_path}/evil\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J\\u202e.pcap"
    assert proc.stderr.decode() == (
        f"analyzer: error: {shown}: not a pcap or pcapng capture (looks like text (starts with 'hello junk'))\n"
        f"analyzer: no input could be read; nothing written to {tmp_path}/out/\n")


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")
def test_in_a_real_terminal_the_screen_and_clipboard_are_untouched(tmp_path):
    """tmux honours OSC 52 (clipboard) and ESC [2J (clear): neither may happen."""
    name = tmp_path / "x\x1b]52;c;SGVsbG8=\x07\x1b[2J.pcap"
    name.write_bytes(b"hello junk")
    socket = f"analyzer-test-{os.getpid()}"
    tmux = ["tmux", "-L", socket, "-f", "/dev/null"]
    env = f"PYTHONPATH={ROOT}"
    command = f"echo MARKER; {env} {sys.executable} -m analyzer analyze {tmp_path}/x* -o {tmp_path}/out -q; " \
              f"echo DONE; sleep 30"
    subprocess.run(tmux + ["new-session", "-d", "-x", "200", "-y", "20", "sh", "-c", command], check=True)
    try:
        subprocess.run(tmux + ["set-option", "-g", "set-clipboard", "on"], check=True)
        deadline = time.monotonic() + 60
        screen = ""
        while "DONE" not in screen and time.monotonic() < deadline:
            time.sleep(0.2)
            screen = subprocess.run(tmux + ["capture-pane", "-p"], capture_output=True, text=True).stdout
        assert "DONE" in screen
        assert "MARKER" in screen  # not cleared
        assert "x\\x1b]52;c;SGVsbG8=\\x07\\x1b[2J.pcap" in screen
        buffers = subprocess.run(tmux + ["list-buffers"], capture_output=True, text=True).stdout
        assert "Hello" not in buffers and "SGVsbG8" not in buffers
    finally:
        subprocess.run(tmux + ["kill-server"], capture_output=True)


@given(st.text())
def test_visible_forms_hold_no_unsafe_character(text):
    assert not has_unsafe(visible(text))
    assert not has_unsafe(visible_html(text).replace("\t", "").replace("\n", ""))
    shown = json_text({"v": text})
    assert json.loads(shown) == {"v": text}
    assert not has_unsafe(shown)


@given(st.text(alphabet=st.characters(max_codepoint=0x7f)) | st.text())
def test_visible_changes_only_unsafe_characters(text):
    # Printable ASCII is returned as it is without a regex search: the
    # answer must still be the escaping of exactly the unsafe characters.
    expected = "".join((f"\\x{ord(c):02x}" if ord(c) <= 0xFF else f"\\u{ord(c):04x}") if has_unsafe(c) else c
                       for c in text)
    assert visible(text) == expected


@given(st.lists(st.one_of(st.none(), st.text(max_size=6),
                          st.sampled_from(["=1+1", "+x", "-2", "@SUM(A1)", "\tx", "\rx", "é=", " =x", "'=x"])),
                max_size=30), st.integers(0, 5))
def test_batch_neutralisation_is_the_per_cell_one(cells, cut):
    # events.csv neutralises a batch at a time (the formula test reads each
    # cell's first byte): every cell, of a sliced array too, must come out
    # as the per-cell neutralise() writes it, nulls staying empty.
    import pyarrow as pa

    from analyzer.outputs.csvfile import neutralise
    from analyzer.outputs.events import EVENT_SCHEMA, neutralise_batch

    column = pa.array(["pad"] * cut + cells, pa.string()).slice(cut)
    columns = [column if name == "text" else pa.nulls(len(cells), field.type)
               for name, field in zip(EVENT_SCHEMA.names, EVENT_SCHEMA)]
    batch = neutralise_batch(pa.RecordBatch.from_arrays(columns, schema=EVENT_SCHEMA))
    assert batch.column("text").to_pylist() == [None if c is None else neutralise(c) for c in cells]


# --- secrets ----------------------------------------------------------------------------------------

SECRETS = (b"GAPSECRET", b"CUTSECRET", b"c2VjcmV0QmFzaWM", b"SECRETCOOKIE", b"UFJPWFlTRUNSRVQ", b"hunter2",
           b"SRVSECRET")


def _secret_capture(path: Path) -> None:
    t0 = 1_700_000_000.0
    ftp_gap = conversation([  # "PASS V" lost: the rest must not become a command
        ("s", b"220 ready\r\n"), ("c", b"USER bob\r\n"), ("s", b"331 Password required\r\n"),
        ("c-", b"PASS V"), ("c", b"ERY GAPSECRET staple\r\n"), ("s", b"230 Logged in\r\n"),
        ("c", b"QUIT\r\n"), ("s", b"221 Bye\r\n")], server=("10.0.0.2", 21), client=("10.0.0.1", 40000), t0=t0)
    ftp_cut = conversation([  # a PASS line cut by a gap: its tail starts like a verb
        ("s", b"220 ready\r\n"), ("c", b"USER amy\r\n"), ("s", b"331 Password required\r\n"),
        ("c", b"PASS top"), ("c-", b"-"), ("c", b"LIST CUTSECRET\r\n"), ("s", b"530 Login incorrect\r\n")],
        server=("10.0.0.2", 21), client=("10.0.0.1", 40001), t0=t0 + 1)
    headers = (b"Authorization: Basic c2VjcmV0QmFzaWM=\r\nCookie: sid=SECRETCOOKIE\r\n"
               b"Proxy-Authorization: Basic UFJPWFlTRUNSRVQ=\r\nContent-Length: 25\r\n\r\n")
    http_gap = conversation([  # the request line lost: the rest is headers and a form body
        ("c", b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"), ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ("c-", b"POST /login HTTP/1.1\r\nHost: x\r\n"), ("c", headers), ("c", b"user=bob&password=hunter2"),
        ("s", b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n")], client=("10.0.0.1", 40002), t0=t0 + 2)
    http_bad = conversation([  # lines that are no start line, on both sides
        ("c", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        ("c", b"Authorization: Basic c2VjcmV0QmFzaWM=\r\n\r\n"), ("s", b"HTTP/1.1 400 Bad\r\nContent-Length: 0\r\n\r\n"),
        ("c", b"user=bob&password=hunter2 HTTP/1.1\r\n\r\n"), ("s", b"Set-Cookie: sid=SRVSECRET\r\n\r\n")],
        client=("10.0.0.1", 40003), t0=t0 + 3)
    midstream = conversation([("c", b"Cookie: sid=SECRETCOOKIE\r\n\r\n"), ("c", b"password=hunter2\r\n"),
                              ("s", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")],
                             client=("10.0.0.1", 40004), t0=t0 + 4, handshake=False)
    write_pcap(path, ftp_gap + ftp_cut + http_gap + http_bad + midstream)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_no_secret_in_any_output_or_terminal_line(tmp_path, jobs):
    capture = tmp_path / "secrets.pcap"
    _secret_capture(capture)
    out = tmp_path / "out"
    proc = analyzer("analyze", capture, "-o", out, "--jsonl", "--parquet", "-j", jobs)
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(out)) == ["anomalies.csv", "codes.csv", "connections.csv", "events.csv",
                                       "events.jsonl", "events.parquet", "hosts.csv", "report.html",
                                       "summary.json"]
    for path in out.iterdir():
        data = path.read_bytes()
        if path.suffix == ".parquet":
            data = json.dumps(pq.read_table(path).to_pylist()).encode()
        assert not [s for s in SECRETS if s in data], path.name
    assert not [s for s in SECRETS if s in proc.stdout + proc.stderr]
    anomalies = (out / "anomalies.csv").read_text(encoding="utf-8")
    assert "20-byte command fragment after a gap dropped" in anomalies
    assert "37-byte client line (not recorded)" in anomalies
    assert "14-byte command fragment after a gap dropped" in anomalies  # the PASS line cut
    assert "Set-Cookie: …" in anomalies
    events = [json.loads(line) for line in (out / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [e["request"] for e in events if e["protocol"] == "ftp"] == [
        "", "USER bob", "", "QUIT", "", "USER amy", ""]



# --- the same, at the dissectors (sans-IO) ----------------------------------------------------------

C, S = 0, 1


@pytest.mark.parametrize("lost, after", [
    (b"PASS V", b"ERY GAPSECRET staple\r\n"),    # the verb lost: the rest looks like a command
    (b"-", b"LIST GAPSECRET\r\n"),               # the gap cut a PASS line; its tail starts like a verb
])
def test_ftp_line_after_a_gap_is_never_recorded_verbatim(lost, after):
    from analyzer.protocols.ftp.dissector import FtpDissector

    d = FtpDissector(S)
    events = d.feed(b"220 ready\r\n", S, 1, 1) + d.feed(b"USER bob\r\n", C, 2, 2)
    events += d.feed(b"331 Password required\r\n", S, 3, 3)
    if lost == b"-":
        d.feed(b"PASS top", C, 4, 4)
    events += d.gap(len(lost), C, 5, 5) + d.feed(after, C, 5, 5) + d.feed(b"230 Logged in\r\n", S, 6, 6)
    events += d.feed(b"LIST\r\n", C, 7, 7) + d.feed(b"150 Here\r\n", S, 8, 8)  # in step again
    assert not [e for e in events if "GAPSECRET" in e.request]
    assert not [a for a in d.anomalies if "GAPSECRET" in a.detail]
    assert (events[-1].code, events[-1].request) == (150, "LIST")
    assert f"{len(after) - 2}-byte command fragment after a gap dropped" in [a.detail for a in d.anomalies]


def test_ftp_whole_command_after_a_gap_is_kept():
    from analyzer.protocols.ftp.dissector import FtpDissector

    d = FtpDissector(S)
    events = d.feed(b"220 ready\r\n", S, 1, 1) + d.gap(8, C, 2, 2) + d.feed(b"RETR f.gz\r\n", C, 3, 3)
    events += d.feed(b"150 Opening\r\n", S, 4, 4)
    assert (events[-1].code, events[-1].request) == (150, "RETR f.gz")


def test_http_unparsable_lines_are_described_not_quoted():
    from analyzer.protocols.http.dissector import HttpDissector

    d = HttpDissector(server_direction=S)
    d.feed(b"Authorization: Basic c2VjcmV0QmFzaWM=\r\n\r\n", C, 1.0, 1)
    d.feed(b"Set-Cookie: sid=SRVSECRET\r\n\r\n", S, 1.1, 2)
    details = [a.detail for a in d.anomalies]
    assert "37-byte client line (not recorded)" in details and "Set-Cookie: …" in details
    assert not [x for x in details if "SECRET" in x or "c2VjcmV0" in x]
