# The command line of the status view (issue 14): tshark-style selection
# (-r, --protocol, --server, --since/--until), subcommand usage on a bad
# option, the terminal summary (in a real tmux terminal), the progress
# display's phases and stdin counter, `explain` without doubled labels.
from __future__ import annotations

import csv
import io
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analyzer.cli.terminal import progress
from tests.test_cli import ROOT, SAMPLES, analyzer, events, one_line_error

NGINX = SAMPLES / "http_nginx_codes.pcap"
TMUX = shutil.which("tmux")


def golden(capture: Path) -> list[dict]:
    with open(capture.with_suffix(".events.csv"), newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_r_is_an_alias_for_a_capture_argument(tmp_path):
    a = analyzer("analyze", "-r", NGINX, "-o", tmp_path / "a", "-q", "-j1")
    b = analyzer("analyze", NGINX, "-o", tmp_path / "b", "-q", "-j1")
    assert a.returncode == b.returncode == 0
    assert events(tmp_path / "a") == events(tmp_path / "b") == golden(NGINX)


def test_bad_option_shows_the_subcommand_usage(tmp_path):
    proc = analyzer("analyze", NGINX, "--bogus", "-o", tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 2
    assert err.startswith("usage: analyzer analyze ")
    assert err.rstrip().endswith("analyzer analyze: error: unrecognized arguments: --bogus")


def test_no_capture_is_a_usage_error(tmp_path):
    proc = analyzer("analyze", "-o", tmp_path)
    assert proc.returncode == 2
    assert one_line_error(proc) == "analyzer: error: no capture given: name files, directories, '-' for stdin, or -r FILE"


@pytest.mark.parametrize("args, message", [
    (["--server", "nope"], "--server 'nope': 'nope' is not an IP address"),
    (["--server", "10.0.0.1:99999"], "--server '10.0.0.1:99999': port must be 1-65535"),
    (["--since", "yesterday"], "--since 'yesterday': expected ISO 8601 (2024-05-01T08:00:00Z) or epoch seconds"),
    (["--since", "2024-05-02", "--until", "2024-05-01"], "--until must be later than --since"),
])
def test_bad_selection_is_one_line_and_exit_2(tmp_path, args, message):
    proc = analyzer("analyze", NGINX, "-o", tmp_path, *args)
    assert proc.returncode == 2
    assert one_line_error(proc) == f"analyzer: error: {message}"


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_selection_keeps_exactly_the_matching_events(tmp_path, jobs):
    rows = golden(NGINX)
    port = rows[0]["server_port"]
    since = rows[len(rows) // 2]["time"]
    until = rows[-3]["time"]
    proc = analyzer("analyze", NGINX, "-o", tmp_path, "-q", "-j", jobs, "--server", f"127.0.0.1:{port}",
                    "--protocol", "http", "--since", since, "--until", until)
    assert proc.returncode == 0, proc.stderr
    want = [r for r in rows if r["server_ip"] == "127.0.0.1" and r["server_port"] == port
            and since <= r["time"] < until]
    assert want and len(want) < len(rows)
    assert events(tmp_path) == want
    import json

    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["events"] == len(want)
    chosen = summary["coverage"]["selection"]
    assert (chosen["protocols"], chosen["servers"]) == (["http"], [f"127.0.0.1:{port}"])
    assert chosen["since"].startswith(since[:19]) and chosen["until"].startswith(until[:19])


def test_server_selection_takes_ipv6_in_brackets(tmp_path):
    rows = golden(NGINX)
    port = rows[0]["server_port"]
    proc = analyzer("analyze", NGINX, "-o", tmp_path, "-q", "-j1", "--server", f"[::1]:{port}")
    assert proc.returncode == 0, proc.stderr
    assert events(tmp_path) == [r for r in rows if r["server_ip"] == "::1"]


def test_bpf_filter_on_files_keeps_wireshark_frame_numbers(tmp_path):
    rows = golden(NGINX)
    port = rows[0]["server_port"]
    proc = analyzer("analyze", NGINX, "-o", tmp_path, "-q", "-f", f"ip6 and tcp port {port}")
    assert proc.returncode == 0, proc.stderr
    want = [r for r in rows if r["server_ip"] == "::1"]
    assert want and events(tmp_path) == want                            # same frames as unfiltered


@pytest.mark.parametrize("args, message", [
    (["-f", "tcp prt 80"], "-f 'tcp prt 80': can't parse filter expression: syntax error"),
    (["-f", "tcp", "--engine", "tshark"], "-f on capture files needs --engine native (tshark takes display filters)"),
])
def test_bad_bpf_is_a_usage_error(tmp_path, args, message):
    proc = analyzer("analyze", NGINX, "-o", tmp_path / "out", *args)
    assert proc.returncode == 2
    assert one_line_error(proc) == f"analyzer: error: {message}"
    assert not (tmp_path / "out").exists()                               # nothing written


def test_explain_does_not_repeat_its_labels():
    for lang, label in (("en", "REST APIs: "), ("zh", "REST API 用法: ")):
        out = analyzer("explain", "--lang", lang, "404").stdout.decode()
        line = [l for l in out.splitlines() if l.startswith(label)]
        assert len(line) == 1 and "REST API" not in line[0][len(label):], out


# -- the progress display ---------------------------------------------------------

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_progress_names_what_runs_after_reading():
    tty = FakeTTY()
    with progress(10**9, stream=tty) as bar:
        bar.update(10**9)
        bar.phase("statistics")
    assert "statistics and reports" in tty.getvalue()


def test_progress_counts_packets_and_events():
    tty = FakeTTY()
    with progress(10**9, stream=tty) as bar:
        bar.counters.packets, bar.counters.events = 123_456, 789
        bar.update(5 * 10**8)
    text = tty.getvalue()
    assert "123,456 packets · 789 events ·" in text and "pkt/s" in text


def test_stdin_gets_a_counter():
    tty = FakeTTY()
    with progress(0, stream=tty, stdin=True) as bar:
        bar.update(5 * 1024 * 1024)
    text = tty.getvalue()
    assert "reading" in text and "5.2" in text and "MB" in text  # rich counts decimal megabytes


# -- the terminal summary, in a real terminal ---------------------------------------

def tmux_run(tmp_path: Path, command: str, width: int = 120, height: int = 200) -> str:
    socket = str(tmp_path / "tmux.sock")
    done = tmp_path / "done"
    script = tmp_path / "run.sh"
    script.write_text(f"cd {shlex.quote(str(ROOT))}\nPYTHONPATH={shlex.quote(str(ROOT))} {command}\n"
                      f"echo EXIT=$? ; touch {shlex.quote(str(done))}\nsleep 30\n")
    subprocess.run([TMUX, "-S", socket, "new-session", "-d", "-x", str(width), "-y", str(height),
                    "bash", "--norc", str(script)], check=True)
    try:
        deadline = time.monotonic() + 90
        while not done.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return subprocess.run([TMUX, "-S", socket, "capture-pane", "-p", "-J", "-S", "-", "-E", "-"],
                              capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run([TMUX, "-S", socket, "kill-server"], capture_output=True)


@pytest.mark.skipif(TMUX is None, reason="tmux not installed")
def test_terminal_summary_in_tmux_speaks_the_language_asked(tmp_path):
    py = shlex.quote(sys.executable)
    screen = tmux_run(tmp_path, f"{py} -m analyzer analyze {shlex.quote(str(NGINX))} -o {tmp_path / 'out'} "
                                f"--lang zh -j1")
    assert "EXIT=0" in screen, screen
    rows = golden(NGINX)
    port = rows[0]["server_port"]
    first = min((r for r in rows if r["server_ip"] == "127.0.0.1" and int(r["code"]) >= 400),
                key=lambda r: float(r["epoch"]))
    lines = [l.rstrip() for l in screen.splitlines()]
    start = lines.index("哪里在出错")
    assert lines[start + 1].split()[:2] == [f"127.0.0.1:{port}", "http"]
    assert lines[start + 2].strip().startswith("错误码  ")
    assert lines[start + 3].strip() == (f"首个  {first['time'][:23].replace('T', ' ')} UTC "
                                        f"(帧 {first['frame']}, {NGINX.name})")
    assert lines[start + 5].strip().startswith("路径  /app/status/{id} ×6")
    # Server rows first and alone; labels translated (no English header words left).
    assert "服务器" in lines and "客户端" not in lines
    for english in ("Summary", "What is failing", "Servers", "Codes", "packets read", "connections"):
        assert english not in screen
    assert "输出已写入" in screen


@pytest.mark.skipif(TMUX is None, reason="tmux not installed")
def test_client_rows_on_request(tmp_path):
    py = shlex.quote(sys.executable)
    screen = tmux_run(tmp_path, f"{py} -m analyzer analyze {shlex.quote(str(NGINX))} -o {tmp_path / 'out'} "
                                f"--lang en --clients -j1")
    lines = [l.rstrip() for l in screen.splitlines()]
    assert lines.index("Servers") < lines.index("Clients")


def test_selection_is_the_same_in_a_parallel_run(tmp_path, monkeypatch):
    """The parent applies the selection when it merges the workers' parts."""
    from analyzer.api import run_analysis
    from analyzer.engines import parallel
    from analyzer.engines.selection import make_selection

    rows = golden(NGINX)
    port = rows[0]["server_port"]
    selection = make_selection(["http"], [f"[::1]:{port}"])
    monkeypatch.setattr(parallel, "PARALLEL_MIN_BYTES", 0)              # small file, two processes anyway
    result, stats = run_analysis([str(NGINX)], tmp_path, lang="en", jobs=2, selection=selection)
    assert events(tmp_path) == [r for r in rows if r["server_ip"] == "::1"]
    assert stats.summary["events"] == len([r for r in rows if r["server_ip"] == "::1"])
