# The fuzz harness: mutated captures through the whole `analyzer analyze`
# pipeline, each under a time and a memory limit.
#
# The invariant (after h11's fuzz harness): every input ends in success or
# one of README's exit codes with one clear error line, in time linear in its
# size, in bounded memory.  Anything else is a failure, classified as
#   internal-error     exit 1, or a traceback on stderr
#   undocumented-exit  an exit status outside README's table
#   unclear-error      a non-zero exit without one "analyzer: error:" line
#   hang               past the time limit (BASE_SECONDS + size / BYTES_PER_SECOND)
#   blowup             past the memory limit (peak RSS)
#
# Strategy: starting a Python that imports pandas and pyarrow costs ~0.7 s,
# more than analysing a small capture, so the harness imports the analyzer
# once and forks a child per case (copy-on-write; the child runs the real CLI
# entry point, `analyzer.cli.main`).  The parent watches the child's RSS in
# /proc and the clock, kills it past a limit, and reads ru_maxrss from wait4.
# The parent runs one sample first (compiled template, catalogue);
# Arrow re-creates its thread pools in a forked child.
#
# Cases are a pure function of (seed, index): the seed capture, the
# operators (tests/fuzz/mutate.py) and their arguments all come from
# random.Random(f"{seed}:{index}"), so a failure is named by its pair and
# reproduced by `python benchmarks/fuzz.py --seed S --case I`.
# Failures are minimised (shortest failing prefix, then ddmin over records)
# and written to tests/data/fuzz/, where test_fuzz.py replays them forever.
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fuzz import attacks, mutate

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "samples" / "captures"
FIXTURES = REPO / "tests" / "data" / "fuzz"

DOCUMENTED = frozenset((0, 3, 4))   # README "Exit codes" reachable by `analyze FILE -o DIR`
BASE_SECONDS = 20.0                 # a generous constant (a shared 2-core machine) ...
BYTES_PER_SECOND = 2 * 1024 * 1024  # ... plus 1 s per 2 MiB: linear in the size
MEMORY_MB = 300.0                   # issue 17: peak RSS under 300 MB for every case
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Result:
    verdict: str            # "ok" or a failure class (module comment)
    status: int | None      # exit status, None when killed
    seconds: float
    peak_rss_mb: float
    stderr: str

    @property
    def failed(self) -> bool:
        return self.verdict != "ok"


@dataclass
class Case:
    seed: int
    index: int
    source: str
    operators: list[str]
    data: bytes = field(repr=False)


def time_limit(size: int) -> float:
    return BASE_SECONDS + size / BYTES_PER_SECOND


# -- seeds -----------------------------------------------------------------------

# Generated attacks small enough to be seeds (the big ones are in benchmarks/attacks.py).
_ATTACK_SEEDS = {
    "time_span_pcapng": lambda: attacks.time_span_pcapng(),
    "corrupted_timestamps": lambda: attacks.corrupted_timestamps_pcap(),
    "timestamp_near_1e19": lambda: attacks.timestamp_near_1e19(),
    "llc_snap_nesting": lambda: attacks.llc_snap_nesting(300),
    "ah_chain": lambda: attacks.ah_chain(300),
    "fragments_512": lambda: attacks.fragmented_datagram(512),
    "zstd_frames": lambda: attacks.zstd_frames()[0],
}


def seeds() -> list[tuple[str, bytes]]:
    """Our own sample captures (samples/captures/) and the small generated attacks."""
    out = [(p.name, p.read_bytes()) for p in sorted(SAMPLES.iterdir())
           if p.suffix in (".pcap", ".pcapng")]
    out += [(f"attack:{name}", make()) for name, make in _ATTACK_SEEDS.items()]
    return out


def make_case(pool: list[tuple[str, bytes]], seed: int, index: int) -> Case:
    rng = random.Random(f"{seed}:{index}")
    name, data = pool[rng.randrange(len(pool))]
    _other_name, other = pool[rng.randrange(len(pool))]
    data, ops = mutate.mutate(rng, data, other)
    return Case(seed, index, name, ops, data)


# -- running one input -------------------------------------------------------------

_WARM = []


def prepare() -> None:
    """Import what a run needs, and run it once on a sample, before forking:
    children inherit the imports, the compiled report template and the
    loaded catalogue (0.8 s -> 0.5 s a case).  Arrow's thread pools survive
    fork (it re-creates them in the child)."""
    if _WARM:
        return
    _WARM.append(True)
    import analyzer.cli  # noqa: F401
    import analyzer.cli.analyze  # noqa: F401
    import analyzer.engines.native  # noqa: F401
    import analyzer.outputs.html  # noqa: F401
    import analyzer.outputs.reports  # noqa: F401
    import analyzer.stats.hosts  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401
    import contextlib
    import io

    tmp = Path(tempfile.mkdtemp(prefix="fuzz-warm-"))
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            analyzer.cli.main(["analyze", str(SAMPLES / "http_direct.pcap"), "-o", str(tmp / "out"), "-q", "-j", "1"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


class Child:
    """One forked analysis of one input file, under its limits."""

    def __init__(self, data: bytes, *, seconds: float | None = None, memory_mb: float = MEMORY_MB,
                 workdir: Path | None = None, extra: tuple[str, ...] = (), tag=None,
                 outdir: Path | None = None) -> None:
        prepare()
        self.tag = tag
        self.tmp = Path(tempfile.mkdtemp(prefix="fuzz-", dir=workdir))
        capture = self.tmp / "case.cap"
        capture.write_bytes(data)
        self.seconds = seconds if seconds is not None else time_limit(len(data))
        self.limit = memory_mb * 1024 * 1024
        self.memory_mb = memory_mb
        self.errfile = self.tmp / "stderr.txt"
        self.killed = None
        self.result: Result | None = None
        # `outdir` (kept) lets a test read the reports; by default they go with the case.
        argv = ["analyze", str(capture), "-o", str(outdir or self.tmp / "out"), "-q", "-j", "1", *extra]
        sys.stdout.flush()
        sys.stderr.flush()
        self.start = time.monotonic()
        self.pid = os.fork()
        if self.pid == 0:
            _child(argv, self.errfile)

    def poll(self) -> Result | None:
        """The result once the child is gone (killed past a limit, or ended)."""
        if self.result is not None:
            return self.result
        got, raw, usage = os.wait4(self.pid, os.WNOHANG)
        if not got:
            if self.killed is None:
                if _rss(self.pid) > self.limit:
                    self.killed = "blowup"
                elif time.monotonic() - self.start > self.seconds:
                    self.killed = "hang"
                if self.killed:
                    os.kill(self.pid, 9)
            return None
        elapsed = time.monotonic() - self.start
        try:
            stderr = self.errfile.read_text("utf-8", "replace")
        except OSError:
            stderr = ""
        shutil.rmtree(self.tmp, ignore_errors=True)
        peak = usage.ru_maxrss / 1024.0
        if self.killed:
            self.result = Result(self.killed, None, elapsed, peak, stderr)
        else:
            status = os.waitstatus_to_exitcode(raw)
            self.result = Result(classify(status, stderr, peak, self.memory_mb), status, elapsed, peak, stderr)
        return self.result

    def wait(self) -> Result:
        while True:
            got = self.poll()
            if got is not None:
                return got
            time.sleep(0.01)


def _child(argv: list[str], errfile: Path) -> None:
    """In the forked child: the real CLI, then out without the parent's cleanups."""
    status = 70
    try:
        fd = os.open(os.devnull, os.O_RDWR)
        os.dup2(fd, 0)
        os.dup2(fd, 1)
        err = os.open(errfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(err, 2)
        # Under pytest sys.stdout/stderr are capture objects, not fds 1 and 2.
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        os.environ.pop("ANALYZER_DEBUG", None)
        from analyzer.cli import main

        status = main(argv)
    except BaseException:  # noqa: BLE001 - whatever escapes the CLI is the finding
        traceback.print_exc()
    finally:
        try:
            sys.stderr.flush()
        finally:
            os._exit(status if isinstance(status, int) and 0 <= status < 256 else 70)


def run_bytes(data: bytes, **limits) -> Result:
    """Analyse `data` as a capture file in a forked child; classify the outcome."""
    return Child(data, **limits).wait()


def classify(status: int, stderr: str, peak_mb: float, memory_mb: float) -> str:
    if status == 1 or "Traceback (most recent call last)" in stderr or "internal error" in stderr:
        return "internal-error"
    if status not in DOCUMENTED:
        return "undocumented-exit"
    if status != 0:
        lines = [line for line in stderr.splitlines() if line.startswith("analyzer: error: ")]
        if len(lines) != 1:
            return "unclear-error"
    if peak_mb > memory_mb:
        return "blowup"
    return "ok"


# -- minimising a failure ---------------------------------------------------------------

def minimise(data: bytes, verdict: str, budget: int = 40, **limits) -> bytes:
    """A smaller input with the same verdict: shortest failing prefix, then
    ddmin over records/blocks; at most `budget` runs."""
    runs = [0]

    def fails(candidate: bytes) -> bool:
        if runs[0] >= budget or not candidate:
            return False
        runs[0] += 1
        return run_bytes(candidate, **limits).verdict == verdict

    lo, hi = 0, len(data)           # data[:hi] fails; find a shorter prefix that does
    while hi - lo > 64 and runs[0] < budget // 2:
        mid = (lo + hi) // 2
        if fails(data[:mid]):
            hi = mid
        else:
            lo = mid
    data = data[:hi]
    kind, _order, recs = mutate._records(data)
    if kind is None or len(recs) < 2:
        return data
    head = data[:recs[0][0]] if kind == "pcap" else b""
    pieces = [data[p:p + n] for p, n in recs]
    if kind == "pcapng":            # keep the section header and interfaces in front
        keep = [p for p in pieces[:2]]
        pieces = pieces[2:]
        head = b"".join(keep)
    tail = data[recs[-1][0] + recs[-1][1]:]
    chunk = max(1, len(pieces) // 2)
    while chunk >= 1 and runs[0] < budget:
        i, changed = 0, False
        while i < len(pieces) and runs[0] < budget:
            trial = pieces[:i] + pieces[i + chunk:]
            if trial and fails(head + b"".join(trial) + tail):
                pieces, changed = trial, True
            else:
                i += chunk
        if not changed:
            chunk //= 2
    return head + b"".join(pieces) + tail


def save_fixture(data: bytes, case: Case, result: Result, into: Path = FIXTURES) -> Path:
    """Keep a minimised failure as a regression fixture (+ a JSON note of its origin)."""
    into.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(data).hexdigest()[:12]
    path = into / f"{result.verdict}-{digest}.cap"
    path.write_bytes(data)
    note = {"seed": case.seed, "case": case.index, "source": case.source, "operators": case.operators,
            "verdict": result.verdict, "status": result.status, "seconds": round(result.seconds, 2),
            "peak_rss_mb": round(result.peak_rss_mb, 1), "stderr": result.stderr.strip()[-500:]}
    path.with_suffix(".json").write_text(json.dumps(note, indent=1) + "\n")
    return path


# -- a campaign -------------------------------------------------------------------------

@dataclass
class Campaign:
    seed: int
    cases: int = 0
    verdicts: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    operators: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)
    max_seconds: float = 0.0
    max_seconds_per_mb: float = 0.0
    max_rss_mb: float = 0.0
    total_bytes: int = 0
    wall: float = 0.0
    interrupted: bool = False

    def figures(self) -> dict:
        d = asdict(self)
        d["verdicts"], d["statuses"], d["operators"] = dict(self.verdicts), {str(k): v for k, v in self.statuses.items()}, dict(self.operators)
        return d


def campaign(seed: int, cases: int, *, start: int = 0, minimise_into: Path | None = None,
             on_case=None, pool=None, jobs: int = 1) -> Campaign:
    """Run cases start..start+cases-1 of `seed`, `jobs` children at a time;
    failures are minimised into `minimise_into` when given."""
    prepare()
    pool = pool or seeds()
    out = Campaign(seed)
    began = time.monotonic()
    pending = iter(range(start, start + cases))
    running: list[tuple[Case, Child]] = []
    try:
        _drive(out, pool, seed, pending, running, jobs, minimise_into, on_case)
    except KeyboardInterrupt:      # a long run stopped by hand: the figures so far
        out.interrupted = True
        for _case, child in running:
            os.kill(child.pid, 9)
            child.wait()
    out.wall = time.monotonic() - began
    return out


def _drive(out, pool, seed, pending, running, jobs, minimise_into, on_case) -> None:
    while True:
        while len(running) < max(1, jobs):
            index = next(pending, None)
            if index is None:
                break
            case = make_case(pool, seed, index)
            running.append((case, Child(case.data)))
        if not running:
            break
        time.sleep(0.01)
        still = []
        for case, child in running:
            result = child.poll()
            if result is None:
                still.append((case, child))
            else:
                _record(out, case, result, minimise_into)
                if on_case is not None:
                    on_case(case, result)
        running[:] = still


def _record(out: Campaign, case: Case, result: Result, minimise_into: Path | None) -> None:
    out.cases += 1
    out.total_bytes += len(case.data)
    out.verdicts[result.verdict] += 1
    out.statuses[result.status] += 1
    out.operators.update(case.operators)
    out.max_seconds = max(out.max_seconds, result.seconds)
    out.max_rss_mb = max(out.max_rss_mb, result.peak_rss_mb)
    if len(case.data) >= 64 * 1024:
        out.max_seconds_per_mb = max(out.max_seconds_per_mb, result.seconds / (len(case.data) / 2 ** 20))
    if result.failed:
        entry = {"case": case.index, "source": case.source, "operators": case.operators,
                 "verdict": result.verdict, "status": result.status,
                 "stderr": result.stderr.strip()[-300:]}
        if minimise_into is not None:
            small = minimise(case.data, result.verdict)
            entry["fixture"] = str(save_fixture(small, case, result, minimise_into))
        out.failures.append(entry)
