# benchmarks/fastpath.py --startup: the start-up figures of issue 12 are
# measured by running the real commands; they must run and succeed (what
# the times are is the benchmark's to print, not a test's to assert).
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _fastpath():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("fastpath", REPO / "benchmarks" / "fastpath.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    return module


def test_startup_runs_both_commands_against_their_targets(tmp_path, monkeypatch, capsys):
    fastpath = _fastpath()
    monkeypatch.setattr(fastpath, "STARTUP_RUNS", 1)
    results = fastpath.measure_startup(tmp_path)
    assert set(results) == {"explain 404", "analyze 10 packets"}
    assert all(run["exit"] == 0 and run["wall_s"] > 0 for run in results.values())
    assert (tmp_path / "ten" / "events.csv").exists()   # the analyze run really ran
    fastpath.print_startup(results)
    out = capsys.readouterr().out
    assert "target 0.3 s" in out and "target 0.8 s" in out
