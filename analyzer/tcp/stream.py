# TCP reassembly of one direction of one connection.
#
# Strategy: keep `next_seq`, the first sequence number not yet delivered.
# Segments are compared with it modulo 2**32 (RFC 793 arithmetic), so
# wrap-around needs no special case.  In-order bytes are delivered at once
# (no copy into a stream buffer); segments from the future are held, keyed by
# their offset from `next_seq`, and released when the hole before them fills.
# Bytes already delivered are dropped, so retransmissions, overlaps and the
# exact duplicates of loopback captures disappear; on overlap the first copy
# wins, as in Wireshark's default and most IDSs (Suricata policy "first").
#
# A hole becomes a reported gap when waiting longer cannot help:
#   * the peer acknowledged beyond it while sending data or while we hold
#     later segments (the receiver had the bytes; the capture missed them),
#   * the held bytes exceed the per-stream or global limit,
#   * FIN/RST/close: the connection is over.
# The gap is handed to the consumer with its size, so that a dissector can
# skip it inside a body of known length or re-synchronise otherwise.
#
# Delivery goes through one callback, `sink(kind, value, ts, frame)`, with kind
# DATA (value = bytes), GAP (value = byte count) or END (value = True for RST).
# During a DATA call, `ack` is the acknowledgement number of the packet that
# carried those bytes (None: no ACK flag), held segments keep theirs: a
# dissector realigning after a loss asks what the sender had received.
from __future__ import annotations

import heapq

SEQ_MOD = 1 << 32
HALF = 1 << 31

DATA, GAP, END = 0, 1, 2

# Held segments are counted by the memory they take, not by their payload:
# each costs its payload plus HELD_SEGMENT_OVERHEAD, the Python objects that
# hold it (measured with sys.getsizeof on CPython 3.11: the 7-tuple heap
# entry 96, the bytes header 33, three ints 84, the ACK number 32, a list
# slot 8).  A million one-byte segments are ~250 MB, not 1 MB (issue 17).
HELD_SEGMENT_OVERHEAD = 253
# Out-of-order memory held for one direction before we give up on the hole.
# Suricata's stream.reassembly.depth default is 1 MiB; Zeek bounds the data
# above a hole at 16 KiB before an ACK (tcp_max_above_hole_without_any_acks).
MAX_HELD_BYTES_PER_STREAM = 1024 * 1024
# Held memory across all streams.  Suricata's stream.reassembly.memcap is
# 256 MiB of payload; ours counts the objects too and must leave room for the
# rest of the run under a 300 MB peak, so half of that.
MAX_HELD_BYTES_TOTAL = 128 * 1024 * 1024
# A segment claiming to start further ahead than this is not kept (a window
# larger than the RFC 7323 maximum of 1 GiB is impossible).
MAX_AHEAD = 1 << 30
# How far before its first captured segment a stream may be said to start
# because the peer acknowledged that point (a larger lead means the ACK is
# not about this stream: corrupt or from an earlier connection).
MAX_INFERRED_LEAD = 1024 * 1024


class HeldBudget:
    """Global account of held out-of-order memory (one per flow table).

    `limit` is MAX_HELD_BYTES_TOTAL, or its share in one process of a
    parallel run (the total is for the run, not per process)."""

    __slots__ = ("held", "limit_hits", "limit")

    def __init__(self, limit: int | None = None) -> None:
        self.held = 0
        self.limit_hits = 0
        self.limit = MAX_HELD_BYTES_TOTAL if limit is None else limit


def seq_diff(a: int, b: int) -> int:
    """a - b as a signed distance in sequence space."""
    d = (a - b) & 0xFFFFFFFF
    return d - SEQ_MOD if d >= HALF else d


class Stream:
    """One direction of a TCP connection."""

    __slots__ = (
        "sink", "budget", "synced", "next_seq", "pos", "held", "held_bytes", "fin_seq",
        "ended", "delivered", "missed", "gaps", "dup_bytes", "ooo_segments",
        "limit_hits", "isn", "_order", "expected", "ack",
    )

    def __init__(self, sink, budget: HeldBudget) -> None:
        self.sink = sink
        self.budget = budget
        self.synced = False       # next_seq is known
        self.next_seq = 0
        self.pos = 0              # unwrapped stream offset of next_seq
        self.isn = None           # from the SYN, when seen
        self.held: list = []      # heap of (pos, order, payload, seglen, ts, frame, ack)
        self.held_bytes = 0       # memory of the held segments (HELD_SEGMENT_OVERHEAD)
        self.fin_seq = None       # sequence number of the FIN, once seen
        self.ended = False        # END delivered
        self.delivered = 0
        self.missed = 0
        self.gaps = 0
        self.dup_bytes = 0
        self.ooo_segments = 0
        self.limit_hits = 0
        self._order = 0
        self.expected = None      # stream start implied by the peer's ACK
        self.ack = None           # ACK number of the packet whose bytes are being delivered

    # -- input ---------------------------------------------------------------
    def syn(self, seq: int) -> None:
        if not self.synced or (self.pos == 0 and not self.held):
            self.isn = seq
            self.next_seq = (seq + 1) & 0xFFFFFFFF
            self.synced = True

    def expect_start(self, ack: int) -> None:
        """The peer, while sending data, acknowledged `ack`: our stream was there.

        Used when the capture starts mid-stream: bytes between this point and
        the first segment we see become a gap instead of passing unnoticed.
        """
        if not self.synced:
            self.expected = ack

    def take_next(self, seq: int, payload: bytes, seglen: int) -> bool:
        """Hot path: account for `payload` if it is the next in-order segment,
        whole, with nothing held; the caller then delivers it itself."""
        if seq == self.next_seq and self.synced and not self.held and not self.ended and len(payload) == seglen:
            self.next_seq = (seq + seglen) & 0xFFFFFFFF
            self.pos += seglen
            self.delivered += seglen
            return True
        return False

    def segment(self, seq: int, payload: bytes, seglen: int, fin: bool, ts: float, frame: int,
                ack: int | None = None) -> None:
        if not fin and self.take_next(seq, payload, seglen):
            self.ack = ack
            self.sink(DATA, payload, ts, frame)
            return
        if self.ended:
            if seglen:
                self.dup_bytes += seglen
            return
        if not self.synced:
            # Mid-stream start: the first byte we see is where the stream
            # begins, unless the peer proved it began a little earlier.
            self.next_seq = seq
            if self.expected is not None and 0 < seq_diff(seq, self.expected) <= MAX_INFERRED_LEAD:
                self.next_seq = self.expected
            self.synced = True
        if fin and self.fin_seq is None:
            self.fin_seq = (seq + seglen) & 0xFFFFFFFF
        if seglen:
            off = seq_diff(seq, self.next_seq)
            if off <= 0:
                self._deliver_at(off, payload, seglen, ts, frame, ack)
                if self.held:
                    self._release()
            elif off < MAX_AHEAD:
                self._hold(off, payload, seglen, ts, frame, ack)
            else:
                self.dup_bytes += seglen
        if self.fin_seq is not None:
            self._maybe_end(ts, frame)

    def lacks_before(self, ack: int) -> bool:
        """True when `ack` acknowledges bytes this stream has not delivered."""
        if not self.synced or self.ended:
            return False
        limit = ack
        if self.fin_seq is not None and seq_diff(ack, self.fin_seq) > 0:
            limit = self.fin_seq  # the FIN's own sequence number is not data
        d = seq_diff(limit, self.next_seq)
        return 0 < d < MAX_AHEAD

    def ack_beyond(self, ack: int, ts: float, frame: int) -> None:
        """The peer acknowledged `ack`: anything before it that we lack is lost."""
        if not self.lacks_before(ack):
            return
        limit = ack
        if self.fin_seq is not None and seq_diff(ack, self.fin_seq) > 0:
            limit = self.fin_seq
        target = self.pos + seq_diff(limit, self.next_seq)
        while self.pos < target:
            if self.held and self.held[0][0] <= target:
                first = self.held[0][0]
                if first > self.pos:
                    self._gap(first - self.pos, ts, frame)
                self._release()
            else:
                self._gap(target - self.pos, ts, frame)
        if self.fin_seq is not None:
            self._maybe_end(ts, frame)

    def finish(self, ts: float, frame: int, rst: bool = False) -> None:
        """Connection over: deliver everything held, with gaps, then END."""
        if self.ended:
            return
        while self.held:
            first = self.held[0][0]
            if first > self.pos:
                self._gap(first - self.pos, ts, frame)
            self._release()
        self.ended = True
        if self.fin_seq is not None or rst:
            self.sink(END, rst, ts, frame)

    # -- internals -----------------------------------------------------------
    def _deliver_at(self, off: int, payload: bytes, seglen: int, ts: float, frame: int, ack: int | None) -> None:
        # off <= 0: the segment starts at or before next_seq.
        if off + seglen <= 0:
            self.dup_bytes += seglen
            return
        skip = -off
        if skip:
            self.dup_bytes += skip
        captured = len(payload)
        new = seglen - skip
        self.next_seq = (self.next_seq + new) & 0xFFFFFFFF
        self.pos += new
        if skip < captured:
            chunk = payload[skip:] if skip else payload
            self.delivered += len(chunk)
            self.ack = ack
            self.sink(DATA, chunk, ts, frame)
        if captured < seglen:
            # The snapshot length cut the packet: the tail is a gap.
            missing = seglen - max(captured, skip)
            self.missed += missing
            self.gaps += 1
            self.sink(GAP, missing, ts, frame)

    def _hold(self, off: int, payload: bytes, seglen: int, ts: float, frame: int, ack: int | None) -> None:
        self.ooo_segments += 1
        cost = len(payload) + HELD_SEGMENT_OVERHEAD
        if self.held_bytes + cost > MAX_HELD_BYTES_PER_STREAM or \
                self.budget.held + cost > self.budget.limit:
            # Give up on the oldest hole rather than grow without bound.
            self.limit_hits += 1
            self.budget.limit_hits += 1
            target = self.pos + off
            while self.held and (self.held_bytes + cost > MAX_HELD_BYTES_PER_STREAM // 2
                                 or self.budget.held + cost > self.budget.limit):
                first = self.held[0][0]
                if first > self.pos:
                    self._gap(first - self.pos, ts, frame)
                self._release()
            off = target - self.pos
            if off <= 0:
                self._deliver_at(off, payload, seglen, ts, frame, ack)
                if self.held:
                    self._release()
                return
            if not self.held:
                # Nothing left to wait for: this segment becomes the new edge.
                self._gap(off, ts, frame)
                self._deliver_at(0, payload, seglen, ts, frame, ack)
                return
        self._order += 1
        heapq.heappush(self.held, (self.pos + off, self._order, payload, seglen, ts, frame, ack))
        self.held_bytes += cost
        self.budget.held += cost

    def _release(self) -> None:
        held = self.held
        while held and held[0][0] <= self.pos:
            start, _, payload, seglen, ts, frame, ack = heapq.heappop(held)
            cost = len(payload) + HELD_SEGMENT_OVERHEAD
            self.held_bytes -= cost
            self.budget.held -= cost
            self._deliver_at(start - self.pos, payload, seglen, ts, frame, ack)

    def _gap(self, n: int, ts: float, frame: int) -> None:
        if n <= 0:
            return
        self.missed += n
        self.gaps += 1
        self.next_seq = (self.next_seq + n) & 0xFFFFFFFF
        self.pos += n
        self.sink(GAP, n, ts, frame)

    def _maybe_end(self, ts: float, frame: int) -> None:
        if not self.ended and self.next_seq == self.fin_seq and not self.held:
            self.ended = True
            self.sink(END, False, ts, frame)
