"""Cluster mode (--cluster, engines/cluster.py) on a real Dask cluster.

A real `dask scheduler` and two `dask worker` processes on 127.0.0.1 (ports
43800-43899 for the shared one, 43900-43949 for the one whose worker is
killed), started here and stopped by PID.  Every output of a cluster run is
compared with a single-process run of the same inputs, under both packet
loops: the bundled samples, a corpus capture rotated into >= 10 files with
`editcap -c` (connections cross the cuts), and one file cut into byte
ranges.  Then a worker killed mid-run, an unreachable scheduler, and local:N.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask.dataframe")

import analyzer  # noqa: E402
from analyzer.api import run_analysis  # noqa: E402
from analyzer.capture import split  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples" / "captures"
SAMPLE_FILES = sorted(str(p) for p in SAMPLES.iterdir() if p.suffix in (".pcap", ".pcapng"))
CORPUS = ROOT.parent / "shared" / "corpus" / "captures"
# Real browsing: keep-alive connections, chunked bodies, drops; 2.7 MB, 1985 packets.
ROTATED_SOURCE = CORPUS / "ppp_http_packets.pcap"
DASK = Path(sys.executable).with_name("dask")

pytestmark = pytest.mark.skipif(not DASK.exists(), reason="the dask command is not installed (analyzer[cluster])")


class DaskCluster:
    """A scheduler and workers as separate processes (no LocalCluster)."""

    def __init__(self, port: int, workers: int = 2) -> None:
        self.address = f"tcp://127.0.0.1:{port}"
        self.processes: list[subprocess.Popen] = []
        env = dict(os.environ, PYTHONPATH=str(ROOT), DASK_DISTRIBUTED__LOGGING__DISTRIBUTED="error")
        self.processes.append(subprocess.Popen(
            [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        self.workers = []
        for k in range(workers):
            worker = subprocess.Popen(
                [str(DASK), "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                 "--worker-port", str(port + 10 + k), "--no-dashboard", "--memory-limit", "1GiB"],
                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.processes.append(worker)
            self.workers.append(worker)
        with distributed.Client(self.address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def dask_cluster():
    cluster = DaskCluster(43800)
    try:
        yield cluster
    finally:
        cluster.stop()


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return sorted(csv.reader(handle))


def outputs(outdir: Path) -> dict:
    """Every output, order-free where the order is not part of the contract."""
    summary = json.loads((outdir / "summary.json").read_text(encoding="utf-8"))
    summary["coverage"].pop("seconds")
    summary["coverage"].pop("engine", None)
    got = {name: _rows(outdir / name) for name in ("events.csv", "hosts.csv", "codes.csv", "anomalies.csv",
                                                   "connections.csv")}
    got["summary"] = summary
    return got


def assert_same(single: Path, cluster: Path) -> None:
    a, b = outputs(single), outputs(cluster)
    for name in a:
        assert a[name] == b[name], name
    assert a["events.csv"], "no events: the comparison would prove nothing"


def run_both(paths, tmp_path: Path, cluster, **kwargs):
    single, clustered = tmp_path / "single", tmp_path / "cluster"
    run_analysis(paths, single, lang="en")
    result, _ = run_analysis(paths, clustered, lang="en", cluster=cluster, **kwargs)
    return single, clustered, result


def test_samples_equal_a_single_run(dask_cluster, implementation, tmp_path, monkeypatch):
    # Small partitions: the samples' connections spread over many (loopback FTP
    # data channels must still meet their control connections).
    monkeypatch.setenv("ANALYZER_CLUSTER_PARTITION_BYTES", "200000")
    single, clustered, result = run_both(SAMPLE_FILES, tmp_path, dask_cluster.address)
    assert_same(single, clustered)
    assert split.plan(SAMPLE_FILES) and result.packets > 0


@pytest.fixture(scope="module")
def rotated(tmp_path_factory):
    if not ROTATED_SOURCE.exists():
        pytest.skip("the corpus (../shared/corpus) is absent")
    if shutil.which("editcap") is None:
        pytest.skip("editcap (Wireshark) is not installed")
    folder = tmp_path_factory.mktemp("rotated")
    subprocess.run(["editcap", "-c", "150", str(ROTATED_SOURCE), str(folder / "ring.pcap")], check=True)
    files = sorted(str(p) for p in folder.iterdir())
    assert len(files) >= 10
    return files


@pytest.mark.corpus
def test_rotated_files_equal_a_single_run(dask_cluster, implementation, rotated, tmp_path, monkeypatch):
    monkeypatch.setenv("ANALYZER_CLUSTER_PARTITION_BYTES", "300000")
    single, clustered, _ = run_both(rotated, tmp_path, dask_cluster.address)
    assert_same(single, clustered)
    # Connections did cross the cuts: some connection began in one file and ended in a later one.
    with open(single / "connections.csv", newline="", encoding="utf-8") as handle:
        spans = [(float(r["first_epoch"]), float(r["last_epoch"])) for r in csv.DictReader(handle)]
    starts = [split.read_piece(split.Piece(0, 0, f))[1].first_ts for f in rotated]
    assert any(first < cut <= last for first, last in spans for cut in starts[1:])


@pytest.mark.corpus
def test_one_file_cut_into_byte_ranges_equals_a_single_run(dask_cluster, implementation, tmp_path, monkeypatch):
    if not ROTATED_SOURCE.exists():
        pytest.skip("the corpus (../shared/corpus) is absent")
    monkeypatch.setenv("ANALYZER_CLUSTER_PIECE_BYTES", "100000")
    monkeypatch.setenv("ANALYZER_CLUSTER_PARTITION_BYTES", "300000")
    assert len(split.plan([str(ROTATED_SOURCE)], 100000)) >= 10
    single, clustered, _ = run_both([str(ROTATED_SOURCE)], tmp_path, dask_cluster.address)
    assert_same(single, clustered)


@pytest.mark.corpus
def test_a_worker_killed_mid_run_loses_and_doubles_nothing(tmp_path, monkeypatch):
    if not ROTATED_SOURCE.exists():
        pytest.skip("the corpus (../shared/corpus) is absent")
    monkeypatch.setenv("ANALYZER_CLUSTER_PIECE_BYTES", "60000")
    monkeypatch.setenv("ANALYZER_CLUSTER_PARTITION_BYTES", "100000")
    paths = [str(ROTATED_SOURCE), str(CORPUS / "ppp_many_protocols.pcap")]
    cluster = DaskCluster(43900)
    killed = threading.Event()
    victim = cluster.workers[1]

    def notify(text: str) -> None:
        # The first progress line with work done (and work left): kill one worker, by PID.
        if not killed.is_set() and " tasks done" in text and not text.startswith("cluster: 0/"):
            done, total = text.split()[1].split("/")
            if int(done) < int(total):
                os.kill(victim.pid, signal.SIGKILL)
                killed.set()

    try:
        single, clustered = tmp_path / "single", tmp_path / "cluster"
        run_analysis(paths, single, lang="en")
        run_analysis(paths, clustered, lang="en", cluster=cluster.address, notify=notify)
        assert killed.is_set(), "the run ended before a worker could be killed"
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        cluster.stop()
    assert_same(single, clustered)


def cli(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "analyzer", *map(str, args)], capture_output=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_an_unreachable_scheduler_is_one_line_and_exit_9(tmp_path):
    started = time.monotonic()
    proc = cli("analyze", SAMPLES / "http_direct.pcap", "--cluster", "tcp://127.0.0.1:43999",
               "--cluster-timeout", "2", "-o", tmp_path / "out")
    err = proc.stderr.decode()
    assert proc.returncode == 9, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("analyzer: error: cannot reach the Dask scheduler at "
                                                   "tcp://127.0.0.1:43999 within 2 s"), err
    assert time.monotonic() - started < 60
    assert not (tmp_path / "out").exists()


def test_a_bad_cluster_address_is_a_usage_error(tmp_path):
    proc = cli("analyze", SAMPLES / "http_direct.pcap", "--cluster", "local:zero", "-o", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == ("analyzer: error: --cluster local:zero: local:N takes a number of "
                                            "worker processes, N >= 1")


def test_local_cluster_from_the_command_line(tmp_path):
    sample = SAMPLES / "http_nginx_codes.pcap"
    single = cli("analyze", sample, "-o", tmp_path / "single", "-q")
    assert single.returncode == 0, single.stderr
    proc = cli("analyze", sample, "--cluster", "local:2", "--cluster-ports", "43950-43989", "-o",
               tmp_path / "cluster", timeout=180)
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert "analyzer: cluster: tcp://127.0.0.1:43950, dashboard http://127.0.0.1:43951/status" in err
    assert " tasks done, " in err and "packets/s)" in err
    assert_same(tmp_path / "single", tmp_path / "cluster")


def test_the_readme_example_uses_options_that_exist():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Cluster mode", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
    assert any(c.startswith("dask scheduler") for c in commands) and any(c.startswith("dask worker") for c in commands)
    assert any("--cluster tcp://" in c for c in commands) and any("--cluster local:" in c for c in commands)
    for command in commands:
        words = command.split()
        if words[0] == "dask":
            helptext = subprocess.run([str(DASK), words[1], "--help"], capture_output=True, text=True).stdout
        else:
            helptext = cli(*words[1:2], "--help").stdout.decode()
        for word in words:
            if word.startswith("--"):
                assert word in helptext, (command, word)
