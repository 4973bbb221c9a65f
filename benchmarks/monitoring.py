#!/usr/bin/env python3
# What live monitoring costs per event: the Prometheus metrics consumer
# (outputs/metrics.py) and the live view's RecentActivity (stats/recent.py),
# each timed over the batches of a real run, against the run's own CPU time.
#
#   python3 benchmarks/monitoring.py benchmarks/data/tiny_1000000.pcap
#
# Both are fed batch by batch (Arrow group-bys, no Python call per event), so
# their cost should be a small fraction of the packet loop's.  CPU time
# (process_time), best of --repeat, so that other load on the machine does not
# distort the figures; one process, -j 1.
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="per-event cost of the metrics and live-view consumers")
    parser.add_argument("capture")
    parser.add_argument("--repeat", type=int, default=3, help="timings per consumer; the fastest is kept")
    args = parser.parse_args(argv)
    from analyzer.engines.native import run
    from analyzer.engines.sink import EventOutputs
    from analyzer.meaning.severity import Policy
    from analyzer.outputs.metrics import EventMetrics
    from analyzer.stats.recent import RecentActivity

    with tempfile.TemporaryDirectory() as out:
        cpu = time.process_time()
        result = run([args.capture], out, lang="en", outputs=EventOutputs(csv=False, stats=False, keep=True))
        cpu = time.process_time() - cpu
    batches = result.kept.batches
    events = sum(b.num_rows for b in batches)
    print(f"{result.packets:,} packets, {events:,} events in {len(batches)} batches; "
          f"engine {cpu:.2f} s CPU ({cpu / max(events, 1) * 1e6:.1f} µs/event)")
    for kind in (EventMetrics, RecentActivity):
        best = float("inf")
        for _ in range(args.repeat):
            consumer = kind(Policy.default())
            start = time.process_time()
            for batch in batches:
                consumer.write(batch)
            best = min(best, time.process_time() - start)
        print(f"  {kind.__name__:<15} {best:.3f} s CPU, {best / max(events, 1) * 1e6:.2f} µs/event, "
              f"{best / cpu:.2%} of the engine")
    return 0


if __name__ == "__main__":
    sys.exit(main())
