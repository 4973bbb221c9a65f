"""The command line: exit codes, one-line errors, partial results kept, stdin, several files."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "captures"
HTTP = SAMPLES / "http_direct.pcap"


def analyzer(*args, stdin=None, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "analyzer", *map(str, args)], input=stdin,
                          capture_output=True, cwd=cwd, env=env, timeout=120)


def events(outdir: Path) -> list[dict]:
    with open(outdir / "events.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def one_line_error(proc) -> str:
    err = proc.stderr.decode()
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("analyzer: error")]
    assert len(lines) == 1, err
    return lines[0]


def test_analyze_writes_every_report(tmp_path):
    proc = analyzer("analyze", HTTP, "-o", tmp_path, "-q")
    assert proc.returncode == 0, proc.stderr
    for name in ("events.csv", "hosts.csv", "codes.csv", "report.html", "summary.json", "anomalies.csv",
                 "connections.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    header = (tmp_path / "events.csv").read_text(encoding="utf-8").splitlines()[0].split(",")
    assert header[:14] == ["time", "epoch", "frame", "protocol", "client_ip", "client_port", "server_ip",
                           "server_port", "code", "text", "request", "host", "latency_ms", "connection"]


def test_stdin_and_compressed_input_give_the_same_events(tmp_path):
    import gzip

    data = HTTP.read_bytes()
    a = analyzer("analyze", HTTP, "-o", tmp_path / "file", "-q")
    b = analyzer("analyze", "-", "-o", tmp_path / "stdin", "-q", stdin=gzip.compress(data))
    assert a.returncode == b.returncode == 0, b.stderr
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("capture", "connection")} for r in rows]
    assert strip(events(tmp_path / "file")) == strip(events(tmp_path / "stdin"))


def test_several_files_count_frames_per_file(tmp_path):
    proc = analyzer("analyze", HTTP, SAMPLES / "http_iis_substatus.pcap", "-o", tmp_path, "-q")
    assert proc.returncode == 0
    rows = events(tmp_path)
    assert {r["capture"] for r in rows} == {"http_direct.pcap", "http_iis_substatus.pcap"}
    firsts = [int(r["frame"]) for r in rows if r["capture"] == "http_iis_substatus.pcap"]
    assert min(firsts) < 20  # numbering restarted for the second file


@pytest.mark.parametrize("name, content, status, words", [
    ("missing.pcap", None, 3, "no such file"),
    ("empty.pcap", b"", 3, "empty"),
    ("notes.pcap", b"hello, this is not a capture\n", 3, "not a pcap"),
])
def test_unreadable_inputs_give_one_line_and_exit_3(tmp_path, name, content, status, words):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    proc = analyzer("analyze", path, "-o", tmp_path / "out", "-q")
    assert proc.returncode == status
    assert words in one_line_error(proc)


def test_truncated_capture_keeps_events_read_before_the_damage(tmp_path):
    assert analyzer("analyze", HTTP, "-o", tmp_path / "full", "-q").returncode == 0
    data = HTTP.read_bytes()
    cut = tmp_path / "cut.pcap"
    cut.write_bytes(data[: len(data) * 2 // 3])
    proc = analyzer("analyze", cut, "-o", tmp_path / "out", "-q")
    assert proc.returncode == 4
    assert "cut short" in one_line_error(proc)
    got, want = events(tmp_path / "out"), events(tmp_path / "full")
    assert 0 < len(got) < len(want)
    assert [r["code"] for r in got] == [r["code"] for r in want[: len(got)]]


def test_garbage_tail_is_reported_and_earlier_events_kept(tmp_path):
    bad = tmp_path / "tail.pcap"
    bad.write_bytes(HTTP.read_bytes() + bytes(range(256)) * 3)
    proc = analyzer("analyze", bad, "-o", tmp_path / "out", "-q")
    assert proc.returncode == 4
    one_line_error(proc)
    assert len(events(tmp_path / "out")) == len(events_of(HTTP, tmp_path / "ref"))


def events_of(path, out):
    analyzer("analyze", path, "-o", out, "-q")
    return events(out)


def test_one_bad_file_does_not_stop_the_others(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes(b"junk")
    proc = analyzer("analyze", bad, HTTP, "-o", tmp_path / "out", "-q")
    assert proc.returncode == 3
    assert len(events(tmp_path / "out")) > 0


def test_usage_errors_exit_2_without_traceback(tmp_path):
    proc = analyzer("analyze", HTTP, "-o", tmp_path, "--fail-on", "http.5xx>>1")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr.decode()
    assert analyzer("nonsense").returncode == 2
    assert analyzer("analyze").returncode == 2


def test_fail_on_threshold_sets_exit_5(tmp_path):
    proc = analyzer("analyze", SAMPLES / "http_nginx_codes.pcap", "-o", tmp_path, "-q", "--fail-on", "http.5xx>0")
    assert proc.returncode == 5
    assert "http.5xx>0" in proc.stderr.decode()
    ok = analyzer("analyze", SAMPLES / "http_nginx_codes.pcap", "-o", tmp_path, "-q", "--fail-on", "http.5xx>99%")
    assert ok.returncode == 0


def test_directory_input_expands_to_its_captures(tmp_path):
    proc = analyzer("analyze", SAMPLES, "-o", tmp_path, "-q")
    assert proc.returncode == 0, proc.stderr
    assert {r["protocol"] for r in events(tmp_path)} >= {"http", "websocket"}


def test_every_command_has_help_with_an_example():
    top = analyzer("--help")
    assert top.returncode == 0
    commands = ["analyze", "explain", "catalog"]
    for name in commands:
        proc = analyzer(name, "--help")
        assert proc.returncode == 0, name
        assert b"usage:" in proc.stdout
    assert b"example" in analyzer("analyze", "--help").stdout


def test_readme_quick_start_has_exactly_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.lstrip().startswith("# ") and "## Quick start" in text
    section = text.split("## Quick start", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    lines = [l for l in block.strip().splitlines() if l.strip()]
    assert len(lines) == 2
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert lines[1].strip() in ci


def test_installed_command_ships_the_catalogue(tmp_path):
    """`pip install .` puts the catalogue in the wheel: explain works outside the repository."""
    script = Path(sys.executable).with_name("analyzer")
    if not script.exists():
        pytest.skip("the analyzer command is not installed next to this Python (run tests/setup-and-run.sh)")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([str(script), "explain", "403.14", "--lang", "zh"], capture_output=True, cwd=tmp_path,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "403.14" in proc.stdout.decode() and "IIS" in proc.stdout.decode()
    proc = subprocess.run([str(script), "catalog", "--protocol", "websocket", "--format", "csv"],
                          capture_output=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == 0 and b"1006" in proc.stdout



def test_timestamps_no_calendar_holds_do_not_break_reports(tmp_path):
    """Corpus capture ppp_pcapng_example has timestamps in the year 586524:
    every report is still written; the time cells are left empty."""
    sys.path.insert(0, str(ROOT / "tests"))
    from captures_builder import epb, idb, shb
    from scapy.all import IP, TCP, Ether

    def frame(sport, dport, flags, seq, ack, payload=b""):
        return bytes(Ether() / IP(src="10.0.0.1" if sport != 80 else "10.0.0.2",
                                  dst="10.0.0.2" if sport != 80 else "10.0.0.1") /
                     TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / payload)

    req, resp = b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    far = 18_446_744_073_204 * 1_000_000  # microseconds since 1970: about the year 586524
    path = tmp_path / "far.pcapng"
    path.write_bytes(shb() + idb() + epb("<", 0, far, frame(40000, 80, "PA", 1, 1, req)) +
                     epb("<", 0, far + 1000, frame(80, 40000, "PA", 1, 1 + len(req), resp)))
    proc = analyzer("analyze", path, "-o", tmp_path / "out", "-q")
    assert proc.returncode == 0, proc.stderr
    rows = events(tmp_path / "out")
    assert [(r["code"], r["time"]) for r in rows] == [("200", "")]
    assert (tmp_path / "out" / "report.html").exists()


def test_explain_imports_no_data_stack():
    # `analyzer explain 404` answers from the catalogue: startup must not pay
    # for numpy/pyarrow/pandas (~0.8 s on a loaded 2-core machine); the
    # commands that need them import them where they are used.
    program = ("import sys\nfrom analyzer.cli import main\n"
               "status = main(['explain', '404'])\n"
               "heavy = sorted(m for m in ('numpy', 'pyarrow', 'pandas', 'scapy') if m in sys.modules)\n"
               "print('HEAVY', heavy)\nsys.exit(status)\n")
    proc = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout, proc.stdout[-300:]
