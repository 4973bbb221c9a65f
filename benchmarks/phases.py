#!/usr/bin/env python3
# Where a run's time goes: the packet loop (reading, reassembly, dissection,
# and now the event files and statistics fed from the batches) against what
# comes after it (statistics finished, hosts/codes/summary/report written).
#
#   python3 benchmarks/phases.py benchmarks/data/tiny_1000000.pcap
#
# One process, -j 1, in this interpreter; peak RSS is this process's.
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="time the packet loop and the reports of one run")
    parser.add_argument("capture")
    args = parser.parse_args(argv)
    from analyzer.engines.native import run

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        result = run([args.capture], out, lang="en")
        t1 = time.perf_counter()
        from analyzer.outputs.reports import build_and_write

        build_and_write(result, lang="en")
        t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{result.packets:,} packets, {result.events:,} events: loop {t1 - t0:.2f} s, "
          f"after the loop {t2 - t1:.2f} s, total {t2 - t0:.2f} s, peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
