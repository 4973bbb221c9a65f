# Running one analyzer invocation under a time and a memory limit, and what
# came of it.  Shared by the fuzz harness (tests/fuzz/, benchmarks/fuzz.py)
# and the resource-attack figures (benchmarks/attacks.py).
#
# The analyzer runs as a child process, exactly as a user runs it
# (`python -m analyzer analyze FILE -o OUT -q -j 1`); a watchdog thread reads
# the child's resident set from /proc every 20 ms and kills it past the
# memory limit, and the wall-clock limit kills it too.  Peak RSS is the
# largest VmHWM (the kernel's high-water mark of the process's own memory)
# the watchdog read; not ru_maxrss from wait4, because Linux carries the
# *parent's* high-water mark into a child across fork+exec, so a test
# runner holding 300 MB would make every child look that big.  A kill by
# the watchdog is a "blowup", by the clock a "hang"; the rest is classified
# as the harness does (harness.classify).
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.fuzz.harness import Result as Outcome, classify

REPO = Path(__file__).resolve().parents[2]
PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _hwm_bytes(pid: int) -> int:
    """VmHWM of `pid` (0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


def analyzer_command(capture: Path, outdir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    return [sys.executable, "-m", "analyzer", "analyze", str(capture), "-o", str(outdir), "-q", "-j", "1", *extra]


def run_limited(argv: list[str], *, seconds: float, memory_mb: float, cwd: Path = REPO,
                env: dict | None = None) -> Outcome:
    """Run `argv`; kill it past `seconds` of wall time or `memory_mb` of RSS."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("ANALYZER_DEBUG", None)
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    killed: list[str] = []
    limit = memory_mb * 1024 * 1024
    done = threading.Event()

    hwm = [0]

    # The watcher never reaps the child (wait4 below does).
    def watch() -> None:
        while not done.is_set():
            hwm[0] = max(hwm[0], _hwm_bytes(proc.pid))
            if _rss_bytes(proc.pid) > limit:
                killed.append("blowup")
                _kill(proc)
                return
            if time.monotonic() - start > seconds:
                killed.append("hang")
                _kill(proc)
                return
            done.wait(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err = proc.stderr.read()
    _pid, raw_status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(raw_status)
    done.set()
    watcher.join()
    elapsed = time.monotonic() - start
    stderr = err.decode("utf-8", "replace")
    peak = (hwm[0] or usage.ru_maxrss * 1024) / 2 ** 20
    if killed:
        return Outcome(killed[0], None, elapsed, peak, stderr)
    status = proc.returncode
    return Outcome(classify(status, stderr, peak, memory_mb), status, elapsed, peak, stderr)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
