#!/usr/bin/env python3
# Figures for issue 17's resource attacks: each generated capture of
# tests/fuzz/attacks.py is analysed by the CLI in a child process under a
# time and memory limit; wall time, peak RSS, exit status and the limits
# summary.json says were hit are printed, one line per attack.
#
#   python benchmarks/attacks.py [--only NAME]... [--seconds 120] [--memory-mb 3000]
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fuzz.attacks import ATTACKS  # noqa: E402
from tests.fuzz.limits import analyzer_command, run_limited  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", action="append", default=[], help="attack name (repeatable)")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--memory-mb", type=float, default=3000.0)
    args = ap.parse_args()
    names = args.only or list(ATTACKS)
    print(f"{'attack':28} {'size':>10} {'exit':>5} {'verdict':>16} {'wall s':>8} {'peak MB':>8}  limits hit")
    with tempfile.TemporaryDirectory(prefix="attacks-") as tmp:
        for name in names:
            path = Path(tmp) / f"{name}.cap"
            # Built in a process of its own: a child forked from one holding
            # the capture would count its pages in its peak RSS.
            subprocess.run([sys.executable, "-c", "import sys; from tests.fuzz.attacks import ATTACKS; "
                            "open(sys.argv[2], 'wb').write(ATTACKS[sys.argv[1]]())", name, str(path)],
                           cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
            size = path.stat().st_size
            out = Path(tmp) / f"{name}.out"
            res = run_limited(analyzer_command(path, out), seconds=args.seconds, memory_mb=args.memory_mb)
            limits = ""
            try:
                summary = json.loads((out / "summary.json").read_text())
                cov = summary.get("coverage", summary)
                limits = json.dumps(cov.get("limits_hit", {}))
            except (OSError, ValueError):
                pass
            print(f"{name:28} {size:>10} {str(res.status):>5} {res.verdict:>16} {res.seconds:>8.1f} "
                  f"{res.peak_rss_mb:>8.0f}  {limits}", flush=True)
            if res.verdict != "ok":
                print("    " + res.stderr.strip().splitlines()[-1][:200] if res.stderr.strip() else "    (no stderr)")
            path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
