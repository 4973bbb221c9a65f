"""The set of outputs is replaced as a whole, or not at all.

A run writes into a staging folder and swaps it in at the end; a run that
reads nothing, fails to write (a bad -o, a full disk) or is killed leaves the
previous set as it was and nothing behind; SIGINT/SIGTERM stop the reading
of any run (parallel included) and write what was read, marked partial, with
exit 130/143; workers never outlive their parent.  CLI tests assert exact
output and exit codes.
"""
from __future__ import annotations

import contextlib

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conversations import many_http_connections

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "captures"
HTTP = SAMPLES / "http_direct.pcap"
CODES = SAMPLES / "http_nginx_codes.pcap"
SET = {"events.csv", "hosts.csv", "codes.csv", "summary.json", "report.html", "connections.csv", "anomalies.csv"}


def analyzer(*args, stdin=subprocess.DEVNULL, **kwargs):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "analyzer", *map(str, args)], stdin=stdin, capture_output=True,
                          env=env, timeout=300, **kwargs)


def start(*args, reference: bool = False, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if reference:
        # The pure-Python loop: the compiled one may read this capture before
        # these tests' signal arrives.
        env["ANALYZER_NO_EXTENSIONS"] = "1"
    return subprocess.Popen([sys.executable, "-m", "analyzer", *map(str, args)], stdin=stdin,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def leftovers(parent: Path) -> list[str]:
    """Staging, part and temporary entries anywhere below `parent`."""
    return sorted(str(p.relative_to(parent)) for p in parent.rglob("*")
                  if ".analyzer-new-" in p.name or p.name.startswith(".part-") or p.name.endswith(".tmp"))


# --- the set is replaced as a whole --------------------------------------------------------------


def test_files_of_an_earlier_run_do_not_stay_beside_the_new_ones(tmp_path):
    out = tmp_path / "out"
    assert analyzer("analyze", HTTP, "-o", out, "-q", "--jsonl", "--parquet").returncode == 0
    assert set(os.listdir(out)) == SET | {"events.jsonl", "events.parquet"}
    proc = analyzer("analyze", CODES, "-o", out, "-q")
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert set(os.listdir(out)) == SET  # no stale events.jsonl / events.parquet
    summary = json.loads((out / "summary.json").read_text())
    assert summary["outputs"] == sorted(SET) and summary["partial"] is False
    assert leftovers(tmp_path) == []


def test_a_folder_holding_other_files_keeps_them(tmp_path):
    # `-o .` or a folder shared with the captures: only our files change.
    (tmp_path / "notes.txt").write_text("mine")
    capture = tmp_path / "http.pcap"
    capture.write_bytes(HTTP.read_bytes())
    assert analyzer("analyze", capture, "-o", tmp_path, "-q", "--jsonl").returncode == 0
    assert analyzer("analyze", capture, "-o", tmp_path, "-q").returncode == 0
    assert set(os.listdir(tmp_path)) == SET | {"notes.txt", "http.pcap"}
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "summary.json").read_text())["outputs"] == sorted(SET)


def test_o_dot_and_a_symlink_stay_where_they_are(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    inode = work.stat().st_ino
    for _ in range(2):  # the second run finds a folder of outputs: still not swapped from under the shell
        assert analyzer("analyze", HTTP, "-o", ".", "-q", cwd=work).returncode == 0
    assert work.stat().st_ino == inode and set(os.listdir(work)) == SET
    link = tmp_path / "link"
    link.symlink_to(work)
    assert analyzer("analyze", HTTP, "-o", link, "-q", "--jsonl").returncode == 0
    assert link.is_symlink() and set(os.listdir(work)) == SET | {"events.jsonl"}
    assert leftovers(tmp_path) == []


def test_a_reader_holding_the_folder_sees_one_run(tmp_path):
    """summary.json and events.csv read through one folder handle always agree."""
    out = tmp_path / "out"
    assert analyzer("analyze", HTTP, "-o", out, "-q").returncode == 0
    mixes, reads, done = [], [0], threading.Event()

    def reader() -> None:
        while not done.is_set():
            try:
                fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            except FileNotFoundError:
                continue
            try:
                def opener(name, flags):
                    return os.open(name, flags, dir_fd=fd)
                with open("summary.json", encoding="utf-8", opener=opener) as handle:
                    events = json.load(handle)["events"]
                with open("events.csv", encoding="utf-8", newline="", opener=opener) as handle:
                    rows = handle.read().count("\r\n") - 1
            except FileNotFoundError:
                continue  # the handle is on a set that was just deleted
            finally:
                os.close(fd)
            reads[0] += 1
            if events != rows:
                mixes.append((events, rows))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for capture in (CODES, HTTP):
            assert analyzer("analyze", capture, "-o", out, "-q").returncode == 0
    finally:
        done.set()
        thread.join()
    assert reads[0] > 10 and mixes == []


# --- nothing written when nothing could be read --------------------------------------------------


def test_a_missing_input_leaves_the_previous_report(tmp_path):
    out = tmp_path / "out"
    assert analyzer("analyze", HTTP, "-o", out, "-q").returncode == 0
    before = snapshot(out)
    missing = tmp_path / "missing.pcap"
    proc = analyzer("analyze", missing, "-o", out)
    assert proc.returncode == 3
    assert proc.stderr.decode() == (f"analyzer: error: {missing}: no such file\n"
                                    f"analyzer: no input could be read; nothing written to {out}/\n")
    assert proc.stdout == b""  # no summary of an empty run
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_closed_stdin_is_an_input_error(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(f'exec {sys.executable} -m analyzer analyze - -o {out} -q <&-', shell=True,
                          capture_output=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert proc.returncode == 3
    assert proc.stderr.decode() == "analyzer: error: standard input is closed: nothing to read for '-'\n"
    assert not out.exists()


# --- outputs that cannot be written --------------------------------------------------------------


def test_o_naming_a_file_or_a_path_below_one_exits_8(tmp_path):
    file = tmp_path / "report.txt"
    file.write_text("x")
    proc = analyzer("analyze", HTTP, "-o", file, "-q")
    assert (proc.returncode, proc.stderr.decode()) == (
        8, f"analyzer: error: {file}: is a file, not a folder; choose another -o\n")
    proc = analyzer("analyze", HTTP, "-o", file / "sub", "-q")
    assert (proc.returncode, proc.stderr.decode()) == (
        8, f"analyzer: error: {file / 'sub'}: is below {file}, which is a file; choose another -o\n")
    assert file.read_text() == "x" and sorted(os.listdir(tmp_path)) == ["report.txt"]


def test_unwritable_o_exits_8(tmp_path, mounted):
    if os.geteuid() == 0:  # root writes through permissions: a read-only file system it is
        parent, reason = mounted("ro"), "Read-only file system"
    else:
        parent, reason = tmp_path / "ro", "Permission denied"
        parent.mkdir(mode=0o555)
    proc = analyzer("analyze", HTTP, "-o", parent / "out", "-q")
    assert proc.returncode == 8
    assert proc.stderr.decode() == f"analyzer: error: {parent / 'out'}: cannot create the output folder ({reason})\n"


@pytest.fixture
def mounted(tmp_path):
    """mounted(options) -> a tmpfs mounted for the test (root only), unmounted after."""
    mounts = []

    def mount(options: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        point = tmp_path / f"mnt{len(mounts)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)]).returncode:
            pytest.skip("cannot mount a tmpfs here")
        mounts.append(point)
        return point

    yield mount
    for point in reversed(mounts):
        subprocess.run(["umount", str(point)], check=True)


@pytest.fixture
def small_disk(mounted):
    """A 400 KiB file system."""
    return mounted("size=400k")


@pytest.mark.parametrize("where", ["below", "mount point"])
def test_a_full_disk_exits_8_and_leaves_the_previous_set(small_disk, tmp_path, where):
    big = tmp_path / "big.pcap"
    many_http_connections(big, 3000, body=10)  # ~1 MB of events.csv: more than the disk holds
    out = small_disk / "out" if where == "below" else small_disk
    assert analyzer("analyze", HTTP, "-o", out, "-q").returncode == 0
    before = snapshot(out)
    proc = analyzer("analyze", big, "-o", out, "-q", "--jsonl")
    assert proc.returncode == 8
    assert proc.stderr.decode() == (f"analyzer: error: {out}: cannot write the outputs (No space left on "
                                    f"device); the previous outputs are unchanged\n")
    assert snapshot(out) == before
    assert leftovers(small_disk) == []


# --- interrupted runs ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def large_capture(tmp_path_factory):
    """Just over the 32 MiB at which -j 2 splits the work (parallel.PARALLEL_MIN_BYTES)."""
    path = tmp_path_factory.mktemp("large") / "large.pcap"
    many_http_connections(path, 15000, body=1700)
    assert path.stat().st_size > 32 * 1024 * 1024
    return path


def _children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    if int(handle.read().rsplit(b")", 1)[1].split()[1]) == pid:
                        found.add(int(entry))
            except (OSError, IndexError, ValueError):
                pass
    return found


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


def _reading(proc: subprocess.Popen, parent: Path, workers: int = 0) -> set[int]:
    """Wait until the run is reading (staging folder made, workers up); returns the worker pids."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        kids = _children(proc.pid)
        if any(".analyzer-new-" in name for name in os.listdir(parent)) and len(kids) >= workers:
            time.sleep(0.3)  # inside the read loop (the whole read takes a few seconds)
            return kids
        time.sleep(0.1)
    raise AssertionError("the run did not start")


def _assert_partial(out: Path, proc: subprocess.Popen, name: str, status: int, connections: int) -> None:
    assert proc.returncode == status, proc.stderr.read()
    err = proc.stderr.read().decode()
    assert err == f"analyzer: interrupted ({name}); what was read is written to {out}/, marked partial\n"
    assert set(os.listdir(out)) == SET
    summary = json.loads((out / "summary.json").read_text())
    assert summary["partial"] is True
    assert 0 < summary["events"] < connections  # stopped early, kept what it read
    assert (out / "events.csv").read_bytes().count(b"\r\n") - 1 == summary["events"]
    assert 'id="partial"' in (out / "report.html").read_text(encoding="utf-8")
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("sig, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_parent_stops_a_parallel_run_and_every_worker(large_capture, tmp_path, sig, status):
    # `kill PID` / `kill -INT PID` (not a terminal's Ctrl-C to the whole
    # group): the parent passes the stop on, it does not wait for the
    # workers to read everything, and no worker goes on after it.
    out = tmp_path / "out"
    proc = start("analyze", large_capture, "-o", out, "-q", "-j", "2", reference=True)
    workers = _reading(proc, tmp_path, workers=2)
    os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    _assert_partial(out, proc, sig.name, status, 15000)
    assert not any(_running(w) for w in workers)


def test_sigint_stops_a_single_process_run(large_capture, tmp_path):
    out = tmp_path / "out"
    proc = start("analyze", large_capture, "-o", out, "-q", "-j", "1", reference=True)
    _reading(proc, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    _assert_partial(out, proc, "SIGINT", 130, 15000)


def test_sigint_stops_the_compiled_loop(large_capture, tmp_path):
    # Standard input fed by the test: half the capture, the signal, the rest.
    # The compiled loop checks for a stop every 1024 packets.
    from analyzer import _fast

    if not _fast.available():
        pytest.skip("the compiled fast path is not built")
    data = large_capture.read_bytes()
    out = tmp_path / "out"
    proc = start("analyze", "-", "-o", out, "-q", "-j", "1", stdin=subprocess.PIPE)
    half = len(data) // 2
    proc.stdin.write(data[:half])
    proc.stdin.flush()
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(BrokenPipeError):
        proc.stdin.write(data[half:])
        proc.stdin.close()
    proc.wait(timeout=120)
    _assert_partial(out, proc, "SIGINT", 130, 15000)


def test_workers_die_with_a_killed_parent_and_the_next_run_sweeps_up(large_capture, tmp_path):
    out = tmp_path / "out"
    assert analyzer("analyze", HTTP, "-o", out, "-q").returncode == 0
    before = snapshot(out)
    proc = start("analyze", large_capture, "-o", out, "-q", "-j", "2", reference=True)
    workers = _reading(proc, tmp_path, workers=2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while any(_running(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_running(w) for w in workers)
    assert snapshot(out) == before  # the killed run never got to swap
    assert leftovers(tmp_path) != []  # its staging folder, which the next run removes
    assert analyzer("analyze", HTTP, "-o", out, "-q").returncode == 0
    assert leftovers(tmp_path) == []


# --- documented ------------------------------------------------------------------------------------


def test_readme_lists_every_exit_status():
    import re

    from analyzer.errors import ExitStatus

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table = readme.split("## Exit codes", 1)[1].split("\n\n", 2)[1]
    assert [int(n) for n in re.findall(r"^\| (\d+) \|", table, re.M)] == sorted(int(s) for s in ExitStatus)


def test_pyarrow_is_a_dependency_so_parquet_needs_no_extra(tmp_path):
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert any(dep.replace(" ", "").startswith("pyarrow>=") for dep in project["dependencies"])
    proc = analyzer("analyze", HTTP, "-o", tmp_path / "out", "-q", "--parquet")
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert (tmp_path / "out" / "events.parquet").stat().st_size > 0


def test_the_api_raises_for_no_readable_input_and_writes_nothing(tmp_path):
    import analyzer
    from analyzer.errors import InputError

    with pytest.raises(InputError, match="no such file"):
        analyzer.analyze(tmp_path / "missing.pcap", tmp_path / "out")
    assert os.listdir(tmp_path) == []


def test_a_second_signal_while_finishing_abandons_the_run(large_capture, tmp_path):
    out = tmp_path / "out"
    assert analyzer("analyze", HTTP, "-o", out, "-q").returncode == 0
    before = snapshot(out)
    proc = start("analyze", large_capture, "-o", out, "-q", "-j", "2", reference=True)
    workers = _reading(proc, tmp_path, workers=2)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # finishing a partial run of this size takes seconds
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert (proc.returncode, proc.stderr.read()) == (143, b"analyzer: interrupted; nothing written\n")
    assert snapshot(out) == before and leftovers(tmp_path) == []
    assert not any(_running(w) for w in workers)
