# IP fragment reassembly (IPv4 RFC 791, IPv6 RFC 8200 section 4.5), shared
# by both versions: fragments are kept per datagram key until the pieces
# cover [0, end of the last fragment), then joined.
#
# Policy:
#   * overlaps: the bytes that arrived first win (what Windows and the BSDs
#     do, and what RFC 5722 makes moot for IPv6 by forbidding overlaps); a
#     later copy only fills holes.
#   * the first "last fragment" (MF=0) seen fixes the datagram's length;
#     bytes past it are dropped.
#   * bounded: a datagram is dropped when it is older than `timeout` capture
#     seconds, and the oldest datagrams are dropped while more than
#     MAX_PENDING_DATAGRAMS are pending or they hold more than
#     MAX_PENDING_BYTES of memory (payload plus PIECE_OVERHEAD per stored
#     piece: 8-byte fragments cost far more than 8 bytes each).  Capture time
#     going backwards never expires anything.
#   * time: pieces are kept sorted and disjoint; a fragment finds its place by
#     bisection and looks only at the pieces it overlaps, so a datagram of
#     8,190 fragments (the most 65,535 bytes allow) costs O(n log n), not
#     O(n^2) (`scanned` counts the pieces looked at, for the tests).
#
# Accounting (the caller's Counter of packet skip reasons): the caller counts
# every fragment it hands in and that is kept as "<prefix>-fragment-held";
# when a datagram is dropped, its fragments are moved from that reason to
# "<prefix>-fragment-expired" / "-evicted" / "-incomplete" (flush), so that
# the Counter keeps counting each packet exactly once.
#
# Limits: a fragment cut short by the snaplen cannot be used (the caller
# refuses it before it gets here); no per-source quotas.
from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter

# Linux: net.ipv4.ipfrag_time = 30 s; net.ipv6.ip6frag_time = 60 s, the
# value RFC 8200 section 4.5 asks for.
IPV4_TIMEOUT = 30.0
IPV6_TIMEOUT = 60.0
# Linux net.ipv4.ipfrag_high_thresh defaults to 4 MiB of fragment memory.
MAX_PENDING_BYTES = 4 * 1024 * 1024
# No standard; at 4 MiB this still leaves ~1 KiB per datagram.
MAX_PENDING_DATAGRAMS = 4096
# A datagram cannot exceed 65535 bytes (16-bit lengths in both versions;
# IPv6 jumbograms are never fragmented).
MAX_DATAGRAM_BYTES = 65535
# Memory of one stored piece besides its payload (CPython 3.11, sys.getsizeof):
# the (start, stop, bytes) tuple 64, the bytes header 33, two ints 56, a list slot 8.
PIECE_OVERHEAD = 161


class _Datagram:
    __slots__ = ("first_ts", "pieces", "end", "covered", "cost", "fragments", "info")

    def __init__(self, ts: float) -> None:
        self.first_ts = ts
        self.pieces: list[tuple[int, int, bytes]] = []   # sorted, disjoint
        self.end: int | None = None
        self.covered = 0
        self.cost = 0            # memory of the pieces (PIECE_OVERHEAD each)
        self.fragments = 0
        self.info = None


class FragmentTable:
    """Pending datagrams of one IP version, keyed by the caller."""

    def __init__(self, skipped: Counter, prefix: str, timeout: float,
                 max_datagrams: int = MAX_PENDING_DATAGRAMS,
                 max_bytes: int = MAX_PENDING_BYTES) -> None:
        self._skipped = skipped
        self._held = f"{prefix}-fragment-held"
        self._prefix = prefix
        self.timeout = timeout
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self._pending: dict = {}
        self.pending_bytes = 0     # memory held by pending datagrams
        self.scanned = 0           # pieces looked at while inserting (complexity tests)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, key, offset: int, more: bool, data: bytes, ts: float, info=None):
        """Add one fragment.

        Returns the skip reason to count for this packet (a str: held, or why
        the fragment was refused), or (payload, info) when this fragment
        completes its datagram; `info` is what the offset-0 fragment passed.
        """
        if self._pending:
            self._expire(ts)
        stop = offset + len(data)
        if stop > MAX_DATAGRAM_BYTES:
            return f"{self._prefix}-fragment-too-big"
        dg = self._pending.get(key)
        if dg is None:
            dg = self._pending[key] = _Datagram(ts)
        if offset == 0 and dg.info is None:
            dg.info = info
        if not more and dg.end is None:
            dg.end = stop
            self._trim(dg, stop)
        if dg.end is not None and stop > dg.end:
            stop = dg.end
        before = dg.cost
        self._insert(dg, offset, stop, data)
        dg.fragments += 1
        self.pending_bytes += dg.cost - before
        if dg.end is not None and dg.covered == dg.end:
            del self._pending[key]
            self.pending_bytes -= dg.cost
            # The other fragments stay counted as held: they are in this
            # datagram; this packet is the one that carries it.
            dg.fragments -= 1
            return b"".join(piece for _s, _e, piece in dg.pieces), dg.info
        while self._pending and (len(self._pending) > self.max_datagrams
                                 or self.pending_bytes > self.max_bytes):
            self._drop(next(iter(self._pending)), "evicted")
        return self._held

    def flush(self) -> None:
        """End of input: every pending datagram is incomplete."""
        for key in list(self._pending):
            self._drop(key, "incomplete")

    # -- internals ---------------------------------------------------------

    def _insert(self, dg: _Datagram, start: int, stop: int, data: bytes) -> int:
        """Store the parts of [start, stop) not covered yet; bytes added."""
        base = start
        cur = start
        holes = []
        pieces = dg.pieces
        # The first piece that can overlap: the one before the first starting at or after `start`.
        i = bisect_left(pieces, (start,))
        if i:
            i -= 1
        n = len(pieces)
        scanned = 0
        while i < n:
            a, b, _piece = pieces[i]
            i += 1
            scanned += 1
            if b <= cur:
                continue
            if a >= stop:
                break
            if a > cur:
                holes.append((cur, a))
            cur = b
            if cur >= stop:
                break
        self.scanned += scanned
        if cur < stop:
            holes.append((cur, stop))
        added = 0
        for a, b in holes:
            insort(pieces, (a, b, data[a - base:b - base]))
            added += b - a
        dg.covered += added
        dg.cost += added + PIECE_OVERHEAD * len(holes)
        return added

    def _trim(self, dg: _Datagram, end: int) -> None:
        kept = []
        removed = 0
        dropped = 0
        for a, b, piece in dg.pieces:
            if a >= end:
                removed += b - a
                dropped += 1
            elif b > end:
                kept.append((a, end, piece[:end - a]))
                removed += b - end
            else:
                kept.append((a, b, piece))
        dg.pieces = kept
        dg.covered -= removed
        cost = removed + PIECE_OVERHEAD * dropped
        dg.cost -= cost
        self.pending_bytes -= cost

    def _expire(self, now: float) -> None:
        # Insertion order is first-seen order, so the scan stops at the first
        # datagram still young (out-of-order capture times: approximate).
        limit = now - self.timeout
        old = []
        for key, dg in self._pending.items():
            if dg.first_ts >= limit:
                break
            old.append(key)
        for key in old:
            self._drop(key, "expired")

    def _drop(self, key, why: str) -> None:
        dg = self._pending.pop(key)
        self.pending_bytes -= dg.cost
        if dg.fragments:
            self._skipped[self._held] -= dg.fragments
            self._skipped[f"{self._prefix}-fragment-{why}"] += dg.fragments
