# The time axis of the statistics and of the report's charts: which bucket
# size, over which range, and which event times are outliers left off it.
#
# Bounded by design: whatever the timestamps (a fuzzed capture can put one
# packet in 1970 and the next 600,000 years later), the axis has at most
# MAX_BUCKETS buckets, because the steps go on growing tenfold past a year
# until one fits, and the state kept while streaming is at most
# 2 * MAX_BUCKETS distinct buckets (TimeHistogram coarsens past that).
#
# Outliers (issue 17): a corrupted timestamp far from the rest of the
# capture used to stretch the axis over centuries, squeezing every real
# event into one bucket.  At the end of a run the *bulk* is found in the
# histogram: the shortest run of buckets holding all but at most
# OUTLIER_MAX_SHARE of the events; the events outside it are outliers when
# they lie further from it than OUTLIER_MIN_GAP and OUTLIER_FACTOR times its
# span (so two real bursts a day apart stay one axis), or beyond the years a
# calendar can show while some event is within them.  Outliers are counted
# (`timestamp_outlier`, summary.json) and left off the axis, not stretched
# over; they stay in the events and the totals.
#
# Steps divide each other, so coarsening while streaming gives exactly the
# counts one pass at the final step would.
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_BUCKETS = 120             # time-series buckets over the axis
# 1 s .. 1 week as before, then 4 weeks, 52 weeks, and tenfold from there:
# 3.1e7 * 10**12 s covers any span a float of capture time can hold here
# (pcapng: 64-bit ticks of at least 1 s plus a 64-bit offset, < 3e19 s).
BUCKET_STEPS = (1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 21600, 43200, 86400, 604800,
                2419200) + tuple(31449600 * 10 ** k for k in range(13))
# A timestamp is an outlier only when it is this far from the bulk ...
OUTLIER_MIN_GAP = 7 * 86400.0
# ... and this many times the bulk's own span away from it ...
OUTLIER_FACTOR = 10.0
# ... and the outliers are at most this share of the events (at least one
# when there are three or more).
OUTLIER_MAX_SHARE = 0.1
# What datetime can show: 0001-01-01 .. 9999-12-31 (UTC).
CALENDAR = (-62135596800.0, 253402300800.0)


def choose_step(first: float, last: float, max_buckets: int = MAX_BUCKETS) -> int:
    """The smallest step of BUCKET_STEPS giving at most `max_buckets` buckets over [first, last]."""
    for step in BUCKET_STEPS:
        if math.floor(last / step) - math.floor(first / step) + 1 <= max_buckets:
            return step
    return BUCKET_STEPS[-1]


@dataclass(frozen=True, slots=True)
class Axis:
    first: float        # earliest time on the axis (events of the bulk, capture start when near)
    last: float
    step: int           # bucket seconds
    outliers: int       # events left off the axis

    @property
    def start(self) -> float:
        return math.floor(self.first / self.step) * self.step

    @property
    def buckets(self) -> int:
        return int(math.floor(self.last / self.step) - math.floor(self.first / self.step)) + 1


def _fold(rows: dict, key: float, n: int, lo: float, hi: float) -> None:
    """Add n events between lo and hi to the bucket `key`."""
    row = rows.get(key)
    if row is None:
        rows[key] = [n, lo, hi]
    else:
        row[0] += n
        row[1] = min(row[1], lo)
        row[2] = max(row[2], hi)


class TimeHistogram:
    """Events per bucket (count, earliest, latest), bounded to 2 * max_buckets buckets."""

    def __init__(self, max_buckets: int = MAX_BUCKETS) -> None:
        self.max_buckets = max_buckets
        self.step = BUCKET_STEPS[0]
        self._rows: dict[float, list] = {}      # bucket start -> [count, min, max]

    def add(self, epochs: np.ndarray) -> None:
        """Finite event times (NaN removed by the caller)."""
        if not len(epochs):
            return
        epochs = epochs[np.isfinite(epochs)]
        if not len(epochs):
            return
        self._merge(epochs)
        while len(self._rows) > 2 * self.max_buckets and self.step < BUCKET_STEPS[-1]:
            self._coarsen(BUCKET_STEPS[BUCKET_STEPS.index(self.step) + 1])

    def _merge(self, epochs: np.ndarray) -> None:
        keys = np.floor(epochs / self.step) * self.step
        order = np.argsort(keys, kind="stable")
        keys, epochs = keys[order], epochs[order]
        uniq, start = np.unique(keys, return_index=True)
        stops = np.append(start[1:], len(keys))
        rows = self._rows
        for key, a, b in zip(uniq.tolist(), start.tolist(), stops.tolist()):
            part = epochs[a:b]
            _fold(rows, key, b - a, float(part.min()), float(part.max()))

    def merge(self, other: "TimeHistogram") -> None:
        """Add another histogram's buckets, at the coarser of the two steps."""
        if other.step > self.step:
            self._coarsen(other.step)
        for key, (n, lo, hi) in other._rows.items():
            _fold(self._rows, math.floor(key / self.step) * self.step, n, lo, hi)
        while len(self._rows) > 2 * self.max_buckets and self.step < BUCKET_STEPS[-1]:
            self._coarsen(BUCKET_STEPS[BUCKET_STEPS.index(self.step) + 1])

    def _coarsen(self, step: int) -> None:
        merged: dict[float, list] = {}
        for key, (n, lo, hi) in self._rows.items():
            _fold(merged, math.floor(key / step) * step, n, lo, hi)
        self._rows = merged
        self.step = step

    def axis(self, bounds: tuple[float | None, float | None] = (None, None)) -> Axis | None:
        """The axis over the bulk, widened to the capture's `bounds` (first
        and last packet) where those are not outliers themselves."""
        if not self._rows:
            return None
        rows = sorted(self._rows.items())
        # Times no calendar can show are outliers whenever some event has a
        # time it can; the bulk is looked for among the others.
        inside = [r for r in rows if CALENDAR[0] <= r[1][1] and r[1][2] < CALENDAR[1]]
        calendar = bool(inside)
        outliers = sum(r[1][0] for r in rows) - sum(r[1][0] for r in inside) if calendar else 0
        rows = inside if calendar else rows
        counts = [r[1][0] for r in rows]
        total = sum(counts)
        allowed = int(total * OUTLIER_MAX_SHARE)
        if total >= 3:
            allowed = max(allowed, 1)
        # Shortest window [i, j] of buckets leaving out at most `allowed` events (two pointers).
        need = total - allowed
        best = None
        j, held = 0, 0
        for i in range(len(rows)):
            while j < len(rows) and held < need:
                held += counts[j]
                j += 1
            if held < need:
                break
            span = rows[j - 1][1][2] - rows[i][1][1]
            if best is None or span < best[0]:
                best = (span, i, j - 1)
            held -= counts[i]
        _span, i, j = best
        lo, hi = rows[i][1][1], rows[j][1][2]
        reach = max(OUTLIER_MIN_GAP, OUTLIER_FACTOR * (hi - lo))
        first, last = lo, hi
        for k, (_key, (n, a, b)) in enumerate(rows):
            if i <= k <= j:
                continue
            if (lo - b <= reach) if k < i else (a - hi <= reach):
                first, last = min(first, a), max(last, b)
            else:
                outliers += n
        # The capture's first and last packet widen the axis when they are near.
        reach = max(OUTLIER_MIN_GAP, OUTLIER_FACTOR * (last - first))
        for bound in bounds:
            if bound is None or not math.isfinite(bound):
                continue
            if first - reach <= bound <= last + reach and (not calendar or CALENDAR[0] <= bound < CALENDAR[1]):
                first, last = min(first, bound), max(last, bound)
        step = max(self.step, choose_step(first, last, self.max_buckets))
        return Axis(first, last, step, outliers)
