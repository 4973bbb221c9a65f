#!/usr/bin/env python3
# The fuzz harness on demand (tests/fuzz/harness.py): mutated captures
# through `analyzer analyze`, each under a time and memory limit.
#
#   python benchmarks/fuzz.py --cases 10000 --seed 17          # a long run
#   python benchmarks/fuzz.py --seed 17 --case 1234            # replay one case
#   python benchmarks/fuzz.py --cases 2000 --minimise-into tests/data/fuzz
#
# Prints one line per failure and, at the end, the figures: cases, verdicts,
# exit statuses, slowest case, worst seconds per MB, peak RSS; `--json FILE`
# writes them too.  Exit 0 when every case held the invariant, 1 otherwise.
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.fuzz import harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=17)
    ap.add_argument("--cases", type=int, default=300)
    ap.add_argument("--start", type=int, default=0, help="first case index")
    ap.add_argument("--case", type=int, default=None, help="run this one case and show its result")
    ap.add_argument("--minimise-into", type=Path, default=None, help="keep minimised failures here")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--save-case", type=Path, default=None, help="with --case: write the input here")
    ap.add_argument("-j", "--jobs", type=int, default=1, help="cases analysed at once (default 1)")
    ap.add_argument("--replay", type=Path, default=None,
                    help="run every *.cap in this folder (e.g. tests/data/fuzz) instead of a campaign")
    args = ap.parse_args()
    harness.prepare()
    if args.replay is not None:
        results = {}
        for path in sorted(args.replay.glob("*.cap")):
            r = harness.run_bytes(path.read_bytes())
            results[path.name] = {"verdict": r.verdict, "status": r.status, "seconds": round(r.seconds, 2),
                                  "peak_rss_mb": round(r.peak_rss_mb, 1), "stderr": r.stderr.strip()[-300:]}
            print(f"{path.name}: {r.verdict} exit {r.status} {r.seconds:.2f} s {r.peak_rss_mb:.0f} MB")
        if args.json:
            args.json.write_text(json.dumps(results, indent=1) + "\n")
        return 0 if all(v["verdict"] == "ok" for v in results.values()) else 1
    pool = harness.seeds()
    if args.case is not None:
        case = harness.make_case(pool, args.seed, args.case)
        if args.save_case:
            args.save_case.write_bytes(case.data)
        r = harness.run_bytes(case.data)
        print(f"case {args.case}: {case.source} {'+'.join(case.operators)} {len(case.data)} bytes -> "
              f"{r.verdict} exit {r.status} {r.seconds:.2f} s {r.peak_rss_mb:.0f} MB")
        print(r.stderr.strip())
        return 0 if not r.failed else 1
    last = [time.monotonic()]
    seen = [0, Counter(), 0.0, 0.0]

    def progress(case, result):
        if result.failed:
            print(f"FAIL case {case.index}: {case.source} {'+'.join(case.operators)} -> {result.verdict} "
                  f"exit {result.status} {result.seconds:.1f} s {result.peak_rss_mb:.0f} MB: "
                  f"{result.stderr.strip()[-160:]}", flush=True)
        seen[0] += 1
        seen[1][result.verdict] += 1
        seen[2] = max(seen[2], result.peak_rss_mb)
        seen[3] = max(seen[3], result.seconds)
        if time.monotonic() - last[0] > 60:
            last[0] = time.monotonic()
            print(f"... {seen[0]} cases, verdicts {dict(seen[1])}, peak RSS {seen[2]:.0f} MB, "
                  f"slowest {seen[3]:.2f} s", flush=True)

    c = harness.campaign(args.seed, args.cases, start=args.start, minimise_into=args.minimise_into,
                         on_case=progress, pool=pool, jobs=args.jobs)
    figures = c.figures()
    if c.interrupted:
        print("interrupted: the figures below are for the cases that finished")
    print(f"seed {c.seed}: {c.cases} cases ({c.total_bytes / 2**20:.1f} MiB) in {c.wall:.0f} s; "
          f"verdicts {dict(c.verdicts)}; exit statuses {figures['statuses']}")
    print(f"slowest case {c.max_seconds:.2f} s; worst {c.max_seconds_per_mb:.2f} s/MiB (cases >= 64 KiB); "
          f"peak RSS {c.max_rss_mb:.0f} MB (limit {harness.MEMORY_MB:.0f})")
    print(f"operators {dict(c.operators)}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")
    return 0 if not c.failures else 1


if __name__ == "__main__":
    sys.exit(main())
