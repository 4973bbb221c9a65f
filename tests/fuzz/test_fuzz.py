# The fuzz harness in CI: every minimised failure kept in tests/data/fuzz/
# holds the invariant now, and a deterministic short campaign (fixed seed,
# 300 cases, two at a time, about a minute) finds nothing new.  The long run
# is `python benchmarks/fuzz.py --cases 10000` (benchmarks/README.md).
#
# The invariant (harness.py): success or one of README's exit codes with one
# "analyzer: error:" line, within BASE_SECONDS + size / BYTES_PER_SECOND and
# MEMORY_MB of peak RSS.
from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from tests.fuzz import harness, mutate

FIXTURES = sorted(harness.FIXTURES.glob("*.cap"))
CI_SEED = 17
CI_CASES = 300


def _fuzz_cli(tmp_path, *args) -> tuple[int, dict]:
    """benchmarks/fuzz.py in a fresh process: its forked children then carry
    the analyzer's memory only, not this test runner's (peak RSS is judged)."""
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(harness.REPO / "benchmarks" / "fuzz.py"), *args, "--json", str(out)],
                          cwd=harness.REPO, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(harness.REPO)})
    return proc.returncode, (json.loads(out.read_text()) if out.exists() else {"stdout": proc.stdout + proc.stderr})


def test_kept_failures_hold_the_invariant(tmp_path):
    assert FIXTURES
    status, results = _fuzz_cli(tmp_path, "--replay", str(harness.FIXTURES))
    assert status == 0, results
    assert set(results) == {p.name for p in FIXTURES}


def test_cases_are_a_function_of_seed_and_index():
    pool = harness.seeds()
    a = harness.make_case(pool, CI_SEED, 42)
    b = harness.make_case(pool, CI_SEED, 42)
    assert (a.source, a.operators, a.data) == (b.source, b.operators, b.data)
    assert harness.make_case(pool, CI_SEED, 43).data != a.data


def test_every_operator_returns_bytes_and_never_raises():
    pool = harness.seeds()
    rng = random.Random(1)
    for name, data in pool:
        for op_name, op in mutate.OPERATORS.items():
            for _ in range(3):
                out = op(rng, data)
                assert isinstance(out, bytes), (name, op_name)
        assert mutate.cut_compressed(rng, data) != data


def test_the_harness_sees_a_failure():
    """A limit that cannot hold is reported as such (the harness can fail)."""
    data = (harness.SAMPLES / "http_direct.pcap").read_bytes()
    assert harness.run_bytes(data, memory_mb=10).verdict == "blowup"
    assert harness.run_bytes(data, seconds=0.0).verdict == "hang"
    assert harness.classify(1, "analyzer: internal error: X", 50, 300) == "internal-error"
    assert harness.classify(4, "", 50, 300) == "unclear-error"
    assert harness.classify(4, "analyzer: error: x: cut short\n", 50, 300) == "ok"


@pytest.mark.slow
def test_short_campaign_finds_nothing(tmp_path):
    status, run = _fuzz_cli(tmp_path, "--seed", str(CI_SEED), "--cases", str(CI_CASES), "-j", "2")
    assert status == 0 and not run["failures"], run.get("failures", run)[:5]
    assert run["cases"] == CI_CASES
    assert run["max_rss_mb"] < harness.MEMORY_MB
    # The operators all ran, so the run is not trivially green.
    assert set(run["operators"]) >= set(mutate.OPERATORS) | set(mutate.FINAL_OPERATORS)
