# The connection table: TCP segments in, dissector events out.
#
# Every TCP connection gets two reassembly streams (reassembly.Stream).  Its
# reassembled bytes first go to *detection*: they are kept (bounded) until a
# dissector recognises the content (port numbers are only a hint), then
# replayed into that dissector in arrival order, gaps and FINs included.  A
# connection nobody recognises is ignored: its payload is no longer
# reassembled, only counted.  Connections announced by a dissector (FTP data
# channels) are marked as such and never dissected.
#
# Roles: direction 0 is the side that sent the SYN (a SYN+ACK seen first makes
# its receiver direction 0); without a handshake, the side seen first, and the
# dissector tells which side is the server from content.
#
# Lifetime: a connection is finalised at RST, when both FINs are delivered,
# after IDLE_TIMEOUT of capture time without packets, or at the end of the
# run.  A finalised connection lingers for CLOSE_LINGER so that late
# retransmissions are absorbed instead of starting a bogus connection; a new
# SYN on the same 4-tuple starts a new connection (port reuse).
#
# Which connection is least recently active (eviction when the table is full,
# the idle sweep) comes from a lazy heap, not a scan of the table: each live
# connection is in it keyed by the `last_ts` it had when pushed.  At the top,
# a connection whose last_ts has moved on is pushed back with its new time;
# one whose last_ts has not is the least recently active (every other key is
# at least as old as it and at most its connection's last_ts).  The hot path
# pays nothing beyond the `last_ts` it already stores; each push-back is paid
# for by activity since the previous one, so eviction and sweeping cost
# O(log n) per connection instead of O(table).  Finalised connections wait
# for CLOSE_LINGER in a queue, in the order they closed.
#
# Copies.  A capture may hold the same connection twice (two copies of a
# file concatenated or merged; the copy may even start earlier in time).  A
# connection is known by its first packet: 4-tuple, flags and sequence number
# (the ISN when it starts with a SYN).  The last MAX_SIGNATURES of them are
# remembered, so a second connection that begins with the same packet is the
# copy: its packets are dropped and counted (duplicate_connection), whatever
# the table did with the first one meanwhile.
#
# Resets.  A RST ends its sender's stream at once, but the peer may still
# have bytes in flight (a server answering the request a browser just
# aborted): the other direction keeps being dissected for RESET_LINGER of
# capture time (or until it ends itself), while its bytes fit its stream.
# A RST whose sequence number lies far outside its sender's stream would be
# dropped by the receiver (RFC 5961 section 3): it ends nothing.
from __future__ import annotations

import base64
import hashlib
import json
import heapq
from collections import Counter, deque
from dataclasses import replace
from functools import partial

from analyzer.decode.packets import addr_to_str
from analyzer.events import Anomaly
from analyzer.meaning.anomalies import sample
from analyzer.protocols.base import DETECTED, NEED_MORE, REJECTED
from analyzer.tcp.stream import DATA, END, GAP, MAX_HELD_BYTES_TOTAL, HeldBudget, Stream, seq_diff

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# Zeek's tcp_inactivity_timeout is 5 min; Suricata's established timeout 1 h.
IDLE_TIMEOUT = 300.0
# Zeek's tcp_close_delay / tcp_reset_delay are 5 s.
CLOSE_LINGER = 5.0
# Bytes per direction kept while no dissector has recognised the content:
# enough for the longest request head we accept (64 KiB, see http.py).
DETECT_MAX_BYTES = 64 * 1024
# Memory kept for the replay while detection waits (payload plus
# REPLAY_ENTRY_OVERHEAD per delivery, as tcp/stream.py counts held segments):
# past it detection decides with what it has, so a head trickling in one
# byte per segment cannot keep ~200 bytes per byte (issue 17: 2.4 GB from an
# 8 MB capture) nor re-run detection over a growing head for ever.
DETECT_MAX_REPLAY_BYTES = 4 * DETECT_MAX_BYTES
REPLAY_ENTRY_OVERHEAD = 158    # the 6-tuple 88, bytes header 33, int and float 52, ACK offset (cached int) 0
# Connections tracked at once: ntopng's default max_num_flows (131072).
# Suricata's flow.memcap 128 MiB is ~500k of its flows, but ours cost ~1.1 KB
# even when only a SYN was seen (2.3 KB before streams were made lazily), so
# 500k would take ~550 MB in a SYN flood; 131072 keeps one under 300 MB RSS.
# Beyond it the least recently active one is finalised early and counted in
# limits["connections"].  Since connections are charged their memory (below),
# the memory budget is reached first even in a SYN flood; the count stays as
# a second bound, for cheaper connections on other interpreters.
MAX_CONNECTIONS = 131_072
# Connection state is also bounded by memory (issue 17: 200,000 connections
# stopped half-way through a response header took 865 MB at the count limit,
# ~4.5 KB each).  Each connection is charged what its state costs (measured
# with tracemalloc on HTTP connections, CPython 3.11, table entries
# included): the record itself, then its two reassembly streams, then its
# dissector, plus the bytes its buffers hold as they grow and shrink --
# detection's replay and heads, then the dissector's own (Dissector.buffered:
# partial HTTP heads and FTP lines, held upgrade bytes, TLS hellos).  Past
# the budget the least recently active connection is finalised early, as at
# the count limit, and counted in limits["connection_memory"].  The budget
# is what keeps a run under 300 MB of peak RSS: the interpreter, pandas and
# the event pipeline take ~110 MB, the copy signatures and the event
# re-ordering window ~30 MB more, the allocators' overhead and fragmentation
# from short-lived objects the rest.  Peak RSS on the 200,000 half-open
# connections: 394 MB with a 160 MiB budget, 292 MB with 64 MiB, 280 MB with
# 48 MiB: ~13,000 HTTP connections of ~3.7 KB (~40,000 that only sent a SYN).
CONNECTION_COST = 1_200
STREAMS_COST = 1_450
DISSECTOR_COST = 1_100
MAX_CONNECTION_MEMORY = 48 * 1024 * 1024
# Announced connections (FTP data) remembered at once; Zeek expires them after
# 5 minutes, we also bound their number.
MAX_EXPECTATIONS = 10_000
# How often (capture seconds) idle connections are looked for.
SWEEP_INTERVAL = 10.0
# First packets of connections remembered to recognise a copy of one (a
# hash each, ~100 bytes with the set and queue entries: 13 MB at most).
MAX_SIGNATURES = MAX_CONNECTIONS
# Server endpoints remembered with the protocol their content proved.
MAX_SERVERS = 65_536
# After a RST, how long (capture seconds) the peer's late bytes are still
# dissected; Zeek's tcp_reset_delay is 5 s.
RESET_LINGER = 5.0
# A RST more than this far from its sender's next sequence number is outside
# any window the receiver would accept (RFC 7323 allows 1 GiB windows, real
# ones are a few MiB).
RST_WINDOW = 1 << 24

MODE_DETECT, MODE_DISSECT, MODE_IGNORE, MODE_DATA, MODE_CLOSED = range(5)
_LIVE = object()   # _deliver(): the bytes come from their stream now
_NO_HEADS = (b"", b"")
_NO_REPLAY = ()


class _NoStream:
    """What row() reads from a connection that never needed its streams."""
    pos = missed = gaps = 0


_NO_STREAM = _NoStream()


def _detectors():
    """The protocol specs in detection order (the registry decides it)."""
    from analyzer.protocols import all_protocols

    return all_protocols()


def connection_id(orig_ip: str, orig_port: int, resp_ip: str, resp_port: int, first_ts: float) -> str:
    """A stable id: the same connection gets the same id in every run and engine."""
    key = f"{orig_ip}:{orig_port}>{resp_ip}:{resp_port}@{first_ts:.6f}"
    digest = hashlib.blake2b(key.encode(), digest_size=10).digest()
    return "C" + base64.b32encode(digest).decode().rstrip("=").lower()[:15]


def _signature(src: bytes, sport: int, dst: bytes, dport: int, seq: int, flags: int) -> int:
    """What identifies a connection by its first packet (see Copies above)."""
    return hash((src, sport, dst, dport, seq, flags & (SYN | ACK | FIN | RST)))


def _peer_ack(other: Stream, ack: int, seglen: int, ts: float, frame: int) -> None:
    """What an ACK tells about the other direction's stream."""
    if not other.synced:
        if seglen:  # a mid-stream start: the peer proves where the stream stood
            other.expect_start(ack)
    elif (seglen or other.held) and other.lacks_before(ack):
        # The peer had bytes we never saw; while it sends data (or we hold
        # later segments) waiting longer cannot bring them back.
        other.ack_beyond(ack, ts, frame)


class Connection:
    __slots__ = (
        "table", "addr", "ports", "streams", "mode", "syn_seen", "dissector", "replay",
        "heads", "first_ts", "last_ts", "bytes", "owner", "fin", "rst", "closed_at", "cid",
        "capture", "name", "rejected", "state", "ends", "queued", "serial", "syn_seq", "reset_at",
        "tunnel", "replay_cost", "cost", "held",
    )

    def __init__(self, table: "FlowTable", src: bytes, sport: int, dst: bytes, dport: int, ts: float,
                 capture: str) -> None:
        self.table = table
        self.addr = (src, dst)          # direction 0 sender, direction 1 sender
        self.ports = (sport, dport)
        # A connection that has only seen a SYN (most of a SYN flood) has no
        # streams yet: they cost ~1 KB; open_streams() makes them.
        self.streams = None
        self.syn_seq = None
        self.mode = MODE_DETECT
        self.syn_seen = False
        self.dissector = None
        self.replay: list | tuple = _NO_REPLAY   # a list while detection waits (open_streams)
        self.replay_cost = 0            # memory of `replay` (DETECT_MAX_REPLAY_BYTES)
        self.heads = _NO_HEADS          # a list once data can arrive (open_streams)
        self.first_ts = ts
        self.last_ts = ts
        self.bytes = [0, 0]
        self.owner = None
        self.fin = [False, False]
        self.rst = False
        self.closed_at = None
        self.cid = ""
        self.capture = capture
        self.name = ""
        self.rejected: set | None = None   # a set once data can arrive (open_streams)
        self.state = "open"
        self.ends = None
        self.queued = ts                # last_ts when put in FlowTable.order
        self.serial = table.count       # creation order
        self.reset_at = None            # (ts, direction) of a RST whose peer may still send
        self.tunnel = None              # what the connection became a tunnel of (Handover.info + outcome)
        self.cost = CONNECTION_COST     # memory charged to table.memory
        self.held = 0                   # of which buffers: detection's, then the dissector's (buffered())

    def open_streams(self) -> tuple:
        """The two reassembly streams, made at the first packet that is not a bare SYN."""
        table = self.table
        budget = table.budget
        s0, s1 = self.streams = (Stream(partial(self._deliver, 0), budget), Stream(partial(self._deliver, 1), budget))
        self.cost += STREAMS_COST
        table.memory += STREAMS_COST
        if table.memory > table.max_memory:
            table.make_room(self.last_ts, keep=self)
        if self.syn_seq is not None:
            s0.syn(self.syn_seq)
        if self.mode == MODE_DETECT:
            self.heads = [b"", b""]
            self.rejected = set()
            self.replay = []
        (a, b), (pa, pb) = self.addr, self.ports
        table = self.table.table
        table[(a, pa, b, pb)] = (self, 0, s0, s1)
        table[(b, pb, a, pa)] = (self, 1, s1, s0)
        return self.streams

    # -- identity ----------------------------------------------------------------
    def ident(self) -> str:
        if not self.cid:
            a, b = self.addr
            self.cid = connection_id(addr_to_str(a), self.ports[0], addr_to_str(b), self.ports[1], self.first_ts)
        return self.cid

    def endpoints(self) -> tuple:
        """(client_ip, client_port, server_ip, server_port, connection, capture), cached."""
        sd = self.server_direction()
        if self.ends is None or self.ends[0] != sd:
            a, b = self.addr
            if sd == 1:
                ends = (addr_to_str(a), self.ports[0], addr_to_str(b), self.ports[1])
            else:
                ends = (addr_to_str(b), self.ports[1], addr_to_str(a), self.ports[0])
            self.ends = (sd, ends + (self.ident(), self.table.capture))
            if self.name:
                # Its first event proves what this endpoint serves.
                self.table.known_server(self.addr[sd], self.ports[sd], self.name)
        return self.ends[1]

    def server_direction(self) -> int:
        if self.syn_seen:
            return 1
        if self.dissector is not None and self.dissector.server_direction is not None:
            return self.dissector.server_direction
        return 1

    # -- reassembled data -------------------------------------------------------------
    def _ahead(self, direction: int) -> int | None:
        """What the packet whose bytes `direction`'s stream delivers now
        acknowledged, relative to what was delivered of the other stream."""
        stream = self.streams[direction]
        if stream.ack is None:
            return None
        return seq_diff(stream.ack, self.streams[1 - direction].next_seq)

    def _deliver(self, direction: int, kind: int, value, ts: float, frame: int, ahead=_LIVE) -> None:
        """A stream's sink; the replays pass `ahead` as it was when the bytes came."""
        mode = self.mode
        if mode == MODE_DISSECT:
            d = self.dissector
            if kind == DATA:
                if d.wants_acks:
                    d.acked(direction, self._ahead(direction) if ahead is _LIVE else ahead)
                events = d.feed(value, direction, ts, frame)
            elif kind == GAP:
                events = d.gap(value, direction, ts, frame)
            else:
                events = d.end(direction, ts, frame, value)
            if d.buffered != self.held:
                self.table.charge(self, d.buffered)
            if events or d.anomalies or d.expectations:
                self.table.drain(self, events)
        elif mode == MODE_DETECT:
            self.replay.append((direction, kind, value, ts, frame, self._ahead(direction) if kind == DATA else None))
            if kind == DATA:
                self.replay_cost += len(value) + REPLAY_ENTRY_OVERHEAD
                head = self.heads[direction]
                if len(head) < DETECT_MAX_BYTES:
                    self.heads[direction] = head + value[: DETECT_MAX_BYTES - len(head)]
                if self.replay_cost > DETECT_MAX_REPLAY_BYTES:
                    self.table.limits["detect_replay_bytes"] += 1
                    self.detect(final=True)
                else:
                    self.detect()
            else:
                self.replay_cost += REPLAY_ENTRY_OVERHEAD
            now = self.buffered()
            if now != self.held:
                self.table.charge(self, now)

    def buffered(self) -> int:
        """Memory held in buffers: detection's replay and heads, then the dissector's."""
        mode = self.mode
        if mode == MODE_DETECT:
            return self.replay_cost + len(self.heads[0]) + len(self.heads[1])
        if mode == MODE_DISSECT:
            return self.dissector.buffered
        return 0


    def detect(self, final: bool = False) -> None:
        table = self.table
        midstream = not self.syn_seen
        hint = self.ports
        verdicts = []
        hints = table.port_hints(hint)
        if table.servers:
            a, b = self.addr
            hints = hints | {table.servers.get((a, hint[0]), ""), table.servers.get((b, hint[1]), "")}
        for spec in table.detectors:
            name = spec.name
            if name in self.rejected:
                continue
            verdict = spec.detect(self.heads[0], self.heads[1], name in hints, midstream)
            if verdict == DETECTED:
                self._start(spec, midstream)
                return
            if verdict == REJECTED:
                self.rejected.add(name)
            verdicts.append(verdict)
        full = all(len(h) >= DETECT_MAX_BYTES for h in self.heads if h)
        if NEED_MORE not in verdicts or final or full:
            self.mode = MODE_IGNORE
            self._detected()
            table.ignored += 1

    def _detected(self) -> None:
        """Detection is over: its buffers go (shared empty ones instead, a
        few hundred bytes less per connection held in the table)."""
        self.replay, self.heads, self.rejected = _NO_REPLAY, _NO_HEADS, None
        self.replay_cost = 0

    def _start(self, spec, midstream: bool) -> None:
        # Roles: the SYN decides; without it the spec may tell from content
        # (WebSocket: the unmasked side is the server), else the dissector.
        server = 1 if self.syn_seen else spec.roles(self.heads[0], self.heads[1])
        self.dissector = spec.dissector(server_direction=server, midstream=midstream)
        attach = getattr(self.dissector, "attach", None)
        if attach is not None:
            # A compiled lane (analyzer/_fast/http_conn.pyx) puts the reference
            # dissector in its place when the traffic stops being plain.
            attach(self)
        name = spec.name
        self.name = name
        self.mode = MODE_DISSECT
        self.table.dissected += 1
        # Charged now, enforced when the packet is done (FlowTable.packet;
        # not here: this runs inside a stream's delivery).
        self.cost += DISSECTOR_COST
        self.table.memory += DISSECTOR_COST
        replay = self.replay
        self._detected()
        for direction, kind, value, ts, frame, ahead in replay:
            self._deliver(direction, kind, value, ts, frame, ahead)
            if self.mode != MODE_DISSECT:
                break

    def row(self) -> dict:
        a, b = self.addr
        sd = self.server_direction()
        client, server = (a, b) if sd == 1 else (b, a)
        cport, sport = (self.ports[0], self.ports[1]) if sd == 1 else (self.ports[1], self.ports[0])
        # Reassembled stream positions count each byte once (retransmissions
        # excluded, gaps included); bytes[] holds what came outside reassembly
        # (after the connection was ignored, or on an FTP data channel).
        s0, s1 = self.streams or (_NO_STREAM, _NO_STREAM)
        sent = [self.bytes[0] + s0.pos, self.bytes[1] + s1.pos]
        c2s, s2c = (sent[0], sent[1]) if sd == 1 else (sent[1], sent[0])
        outcome = self.dissector.outcome() if self.dissector is not None else {}
        name = self.name or ("ftp-data" if self.mode == MODE_DATA else "")
        if self.tunnel is not None:
            outcome = {**outcome, "tunnel": self.tunnel}
            name = name or self.tunnel["protocol"]
        return {
            "connection": self.ident(), "protocol": name,
            "client_ip": addr_to_str(client), "client_port": cport,
            "server_ip": addr_to_str(server), "server_port": sport,
            "first_epoch": self.first_ts, "last_epoch": self.last_ts,
            "bytes_c2s": c2s, "bytes_s2c": s2c,
            "missed_bytes": s0.missed + s1.missed, "gaps": s0.gaps + s1.gaps,
            "state": self.state, "outcome": json.dumps(outcome, sort_keys=True, default=str),
            "capture": self.capture,
        }


class FlowTable:
    """Owns every connection; calls `on_event(Event, endpoints)` and `on_anomaly(Anomaly)`.

    `anomaly_counts` counts every anomaly; `on_anomaly` receives only those
    whose example row the anomaly policy keeps (meaning.anomalies.sample).

    Events leave the dissectors without endpoints; `endpoints` is the
    connection's cached (client_ip, client_port, server_ip, server_port,
    connection, capture), so no record is copied per event.
    """

    def __init__(self, on_event, on_anomaly, on_connection=None) -> None:
        self.on_event = on_event
        self.on_anomaly = on_anomaly
        self.on_connection = on_connection
        self.table: dict = {}
        self.budget = HeldBudget()
        self.detectors = _detectors()
        self.expectations: dict = {}
        self.capture = ""
        self.count = 0
        self.dissected = 0
        self.ignored = 0
        self.connections_with_gaps = 0
        self.missed_bytes = 0
        self.limits = Counter()
        self.anomaly_counts = Counter()
        self.next_sweep = float("-inf")
        self.live = 0
        self.memory = 0                 # what live connections are charged (max_memory)
        self.max_connections = MAX_CONNECTIONS
        self.max_memory = MAX_CONNECTION_MEMORY
        self.order: list = []           # heap of (queued, serial, conn): least recently active first, lazily
        self.lingering: deque = deque() # finalised connections, in the order they closed
        self.resetting: deque = deque() # reset connections whose peer may still send, in reset order
        self.signatures: set = set()    # hashes of recent connections' first packets (copies)
        self.signature_order: deque = deque()
        self.duplicates = 0             # connections that were copies of earlier ones
        self.servers: dict = {}         # (ip, port) -> protocol its content proved, the last MAX_SERVERS

    @staticmethod
    def port_hints(ports: tuple[int, int]) -> frozenset[str]:
        from analyzer.protocols import port_hints

        return port_hints(ports)

    # -- packets -------------------------------------------------------------------
    def packet(self, seg: tuple, ts: float, frame: int) -> None:
        src, dst, sport, dport, seq, ack, flags, payload, seglen = seg
        entry = self.table.get((src, sport, dst, dport))
        if entry is not None and not flags & 0x07:
            conn = entry[0]
            if conn.mode == MODE_DISSECT:
                # Hot path: an established, dissected connection; no SYN/FIN/RST.
                conn.last_ts = ts
                if ts >= self.next_sweep:
                    self._sweep(ts)
                    if conn.mode != MODE_DISSECT:
                        return
                d, stream, other = entry[1], entry[2], entry[3]
                if flags & ACK and ack != other.next_seq:
                    _peer_ack(other, ack, seglen, ts, frame)
                if seglen:
                    if stream.take_next(seq, payload, seglen):
                        dissector = conn.dissector
                        if dissector.wants_acks:
                            dissector.acked(d, seq_diff(ack, other.next_seq) if flags & ACK else None)
                        events = dissector.feed(payload, d, ts, frame)
                        if dissector.buffered != conn.held:
                            self.recharge(conn, ts)
                        if events or dissector.anomalies or dissector.expectations:
                            self.drain(conn, events)
                    else:
                        stream.segment(seq, payload, seglen, False, ts, frame, ack if flags & ACK else None)
                        if self.memory > self.max_memory:
                            self.make_room(ts, keep=conn)
                return
        if entry is None:
            if flags & RST and not seglen:
                return  # a lone reset for a connection we never saw
            conn, d = self._new(src, sport, dst, dport, flags, ts, seq, frame)
        else:
            conn, d = entry[0], entry[1]
            if conn.mode == MODE_CLOSED:
                if flags & SYN and not flags & ACK and (ts - conn.closed_at > 0.0 or
                                                        _signature(src, sport, dst, dport, seq, flags)
                                                        in self.signatures):
                    conn, d = self._new(src, sport, dst, dport, flags, ts, seq, frame)
                else:
                    return  # late retransmission or duplicate after the end
            elif flags & SYN and not flags & ACK and conn.syn_seen and d == 0 and conn.streams is not None and \
                    conn.streams[0].isn is not None and conn.streams[0].isn != seq and \
                    (conn.fin[0] or conn.fin[1] or conn.streams[0].delivered):
                # Same 4-tuple, new initial sequence number: port reuse.
                self._finalise(conn, ts, frame, "closed")
                conn, d = self._new(src, sport, dst, dport, flags, ts, seq, frame)
        conn.last_ts = ts
        if ts >= self.next_sweep:
            self._sweep(ts)
        mode = conn.mode
        if mode == MODE_IGNORE:
            streams = conn.streams
            if streams is not None and (streams[0].held or streams[1].held):
                self._release_held(conn)
            if seglen:
                conn.bytes[d] += seglen
            if flags & (FIN | RST):
                if flags & RST:
                    conn.rst = True
                    self._finalise(conn, ts, frame, "reset")
                else:
                    conn.fin[d] = True
                    if conn.fin[0] and conn.fin[1]:
                        self._finalise(conn, ts, frame, "closed")
            return
        if mode == MODE_DATA:
            self._data_channel(conn, d, seq, seglen, flags, ts, frame)
            return
        streams = conn.streams
        if streams is None:
            if flags & (SYN | ACK | FIN | RST) == SYN and not seglen and d == 0:
                conn.syn_seen = True        # a bare SYN (or its retransmission)
                conn.syn_seq = seq
                return
            streams = conn.open_streams()
        if flags & SYN:
            if not conn.syn_seen:
                conn.syn_seen = True
            streams[d].syn(seq)
        if flags & ACK:
            _peer_ack(streams[1 - d], ack, seglen, ts, frame)
        if seglen or flags & FIN:
            if flags & FIN:
                conn.fin[d] = True
            # Data on a SYN (TCP Fast Open, RFC 7413) starts at ISN + 1.
            streams[d].segment((seq + 1) & 0xFFFFFFFF if flags & SYN else seq, payload, seglen,
                               bool(flags & FIN), ts, frame, ack if flags & ACK else None)
        if flags & RST:
            self._reset(conn, d, seq, ts, frame)
        elif conn.fin[0] and conn.fin[1] and streams[0].ended and streams[1].ended:
            self._finalise(conn, ts, frame, "closed")
        elif conn.reset_at is not None and streams[1 - conn.reset_at[1]].ended:
            self._finalise(conn, ts, frame, "reset")   # the peer of the reset side is done too
        # Buffers grown during the delivery (charged there) are enforced
        # here, outside any stream's callback.
        if self.memory > self.max_memory:
            self.make_room(ts, keep=conn)

    def charge(self, conn: Connection, held: int) -> None:
        """`conn`'s buffers now hold `held` bytes: its charge follows (enforced by the caller)."""
        delta = held - conn.held
        conn.held = held
        conn.cost += delta
        self.memory += delta

    def recharge(self, conn: Connection, ts: float) -> None:
        """After a dissector call outside any stream callback (the hot paths,
        here and in analyzer/_fast/loop.pyx): charge its buffers, and past
        the budget finalise the least recently active connections."""
        self.charge(conn, conn.dissector.buffered)
        if self.memory > self.max_memory:
            self.make_room(ts, keep=conn)

    def _reset(self, conn: Connection, d: int, seq: int, ts: float, frame: int) -> None:
        stream = conn.streams[d]
        if stream.synced and not stream.ended and abs(seq_diff(seq, stream.next_seq)) > RST_WINDOW:
            # Far outside the sender's stream: the receiver drops it (RFC 5961 section 3).
            self.note(conn, "tcp_rst_out_of_window", ts, frame,
                      f"sequence {seq} is {seq_diff(seq, stream.next_seq)} from {stream.next_seq}")
            return
        conn.rst = True
        other = conn.streams[1 - d]
        if conn.reset_at is not None or other.ended or conn.mode != MODE_DISSECT:
            self._finalise(conn, ts, frame, "reset", rst_dir=d)
            return
        # The peer may still have bytes in flight: its direction stays open a while.
        stream.finish(ts, frame, rst=True)
        conn.reset_at = (ts, d)
        self.resetting.append(conn)

    def _new(self, src, sport, dst, dport, flags, ts, seq=0, frame=0):
        signature = _signature(src, sport, dst, dport, seq, flags)
        if flags & SYN and flags & ACK:
            # We missed the SYN: the receiver of this SYN+ACK is the client.
            src, sport, dst, dport = dst, dport, src, sport
            d = 1
        else:
            d = 0
        if self.live >= self.max_connections:
            self._evict(ts)
        if self.memory + CONNECTION_COST > self.max_memory:
            self.make_room(ts)
        self.count += 1
        self.live += 1
        self.memory += CONNECTION_COST
        conn = Connection(self, src, sport, dst, dport, ts, self.capture)
        if flags & SYN:
            conn.syn_seen = True
        if signature in self.signatures:
            # The same first packet as an earlier connection: a copy of it.
            conn.mode = MODE_IGNORE
            self.duplicates += 1
            self.note(conn, "duplicate_connection", ts, frame,
                      f"{addr_to_str(src)}:{sport} > {addr_to_str(dst)}:{dport} seq {seq}")
        else:
            self._remember(signature)
        order = self.order
        heapq.heappush(order, (ts, conn.serial, conn))
        if len(order) > self.live + self.live // 2 + 1024:
            # Finalised connections still in the heap (each keeps its closed
            # record alive, uncharged); dropping them costs O(heap) once per
            # half as many finalisations: amortised O(1).
            order[:] = [e for e in order if e[2].mode != MODE_CLOSED]
            heapq.heapify(order)
        table = self.table
        # (connection, direction, its stream, the other stream): the hot path
        # needs all four and a tuple index is cheaper than attribute lookups;
        # the streams are filled in by open_streams().
        table[(src, sport, dst, dport)] = (conn, 0, None, None)
        table[(dst, dport, src, sport)] = (conn, 1, None, None)
        if self.expectations:
            self._match_expectation(conn)
        return conn, d

    def known_server(self, ip: bytes, port: int, name: str) -> None:
        """An endpoint that served `name`: a hint for its later connections
        (a lone reply on a non-standard port from a known FTP server)."""
        servers = self.servers
        if (ip, port) not in servers and len(servers) >= MAX_SERVERS:
            servers.pop(next(iter(servers)))
        servers[(ip, port)] = name

    def _remember(self, signature: int) -> None:
        self.signatures.add(signature)
        order = self.signature_order
        order.append(signature)
        if len(order) > MAX_SIGNATURES:
            self.signatures.discard(order.popleft())

    def note(self, conn: Connection | None, name: str, ts: float, frame: int, detail: str = "") -> None:
        """An anomaly of the table itself: counted, its row sampled by the policy."""
        n = self.anomaly_counts[name] = self.anomaly_counts[name] + 1
        if sample(name, n):
            self.on_anomaly(Anomaly(name, ts, frame, detail, conn.ident() if conn is not None else ""))

    # -- FTP data channels -------------------------------------------------------------
    def expect(self, conn: Connection, exp) -> None:
        host = exp.host
        if host is None:
            sd = conn.server_direction()
            host = addr_to_str(conn.addr[sd])
        key = (host, exp.port)
        if len(self.expectations) >= MAX_EXPECTATIONS:
            self.expectations.pop(next(iter(self.expectations)))
            self.limits["expectations"] += 1
        self.expectations[key] = exp

    def _match_expectation(self, conn: Connection) -> None:
        for d in (1, 0):
            key = (addr_to_str(conn.addr[d]), conn.ports[d])
            exp = self.expectations.pop(key, None)
            if exp is not None:
                conn.mode = MODE_DATA
                conn.owner = exp.owner
                conn.name = exp.kind
                if conn.owner is not None:
                    conn.owner.on_data(0, conn.first_ts)  # opened: an empty transfer is 0 bytes
                return

    def _data_channel(self, conn, d, seq, seglen, flags, ts, frame) -> None:
        stream = (conn.streams or conn.open_streams())[d]
        if flags & SYN:
            stream.syn(seq)
        elif seglen:
            if not stream.synced:
                stream.next_seq, stream.synced = seq, True
            # Count each byte once: only what extends the highest sequence seen.
            new = seq_diff((seq + seglen) & 0xFFFFFFFF, stream.next_seq)
            if new > 0:
                stream.next_seq = (stream.next_seq + new) & 0xFFFFFFFF
                conn.bytes[d] += new
                if conn.owner is not None:
                    conn.owner.on_data(min(new, seglen), ts)
        if flags & RST:
            self._finalise(conn, ts, frame, "reset")
        elif flags & FIN:
            conn.fin[d] = True
            if conn.fin[0] and conn.fin[1]:
                self._finalise(conn, ts, frame, "closed")

    # -- events --------------------------------------------------------------------
    def _hand_over(self, conn: Connection) -> None:
        """The connection became a tunnel: detect the inner protocol afresh on
        what follows (see protocols/base.py), keeping what the tunnel was."""
        outer = conn.dissector
        hand = outer.handover
        conn.tunnel = {**outer.outcome(), **hand.info}   # e.g. protocol, target, reply
        conn.dissector = None
        conn.cost -= DISSECTOR_COST        # the inner dissector will be charged when it starts
        self.memory -= DISSECTOR_COST
        conn.name = ""
        conn.mode = MODE_DETECT
        conn.heads = [b"", b""]
        conn.replay = []
        conn.rejected = set()
        kinds = {"data": DATA, "gap": GAP, "end": END}
        for direction, kind, value, ts, frame in hand.items:
            conn._deliver(direction, kinds[kind], value, ts, frame, None)   # their packets are gone

    def drain(self, conn: Connection, events) -> None:
        d = conn.dissector
        if d.expectations:
            for exp in d.expectations:
                self.expect(conn, exp)
            d.expectations.clear()
        if d.anomalies:
            # Every anomaly is counted; only those the policy samples go on as rows.
            cid = conn.ident()
            counts = self.anomaly_counts
            for a in d.anomalies:
                n = counts[a.name] = counts[a.name] + 1
                if sample(a.name, n):
                    self.on_anomaly(replace(a, connection=cid))
            d.anomalies.clear()
        if events:
            ends = conn.endpoints()
            for ev in events:
                self.on_event(ev, ends)
        if d.handover is not None and conn.dissector is d:
            self._hand_over(conn)

    # -- lifetime ----------------------------------------------------------------------
    def _finalise(self, conn: Connection, ts: float, frame: int, state: str, rst_dir: int | None = None) -> None:
        if conn.mode == MODE_CLOSED:
            return
        if conn.mode in (MODE_DETECT, MODE_DISSECT) and conn.streams is not None:
            s0, s1 = conn.streams
            if rst_dir is not None:
                # Everything the reset side sent before the RST is all there is.
                conn.streams[rst_dir].finish(ts, frame, rst=True)
                conn.streams[1 - rst_dir].finish(ts, frame)
            else:
                s0.finish(ts, frame)
                s1.finish(ts, frame)
            if conn.mode == MODE_DETECT and (conn.heads[0] or conn.heads[1]):
                conn.detect(final=True)
            if conn.mode == MODE_DISSECT:
                events = conn.dissector.close(ts)
                self.drain(conn, events)
            if s0.limit_hits or s1.limit_hits:
                self.limits["tcp_held_bytes"] += s0.limit_hits + s1.limit_hits
            if s0.gaps or s1.gaps:
                if conn.mode == MODE_DISSECT:
                    self.connections_with_gaps += 1
                self.missed_bytes += s0.missed + s1.missed
        elif conn.streams is not None:
            self._release_held(conn)
            s0, s1 = conn.streams
            if s0.limit_hits or s1.limit_hits:
                self.limits["tcp_held_bytes"] += s0.limit_hits + s1.limit_hits
        if conn.reset_at is not None and state in ("open", "timeout"):
            state = "reset"
        conn.state = state
        if self.on_connection is not None and (conn.dissector is not None or conn.mode == MODE_DATA or
                                               conn.tunnel is not None):
            self.on_connection(conn.row())
        conn.mode = MODE_CLOSED
        conn.closed_at = ts
        conn.replay, conn.heads, conn.rejected = _NO_REPLAY, _NO_HEADS, None
        conn.dissector = None   # free parser state; the row is already out
        conn.streams = conn.ends = conn.tunnel = None
        self._drop_streams(conn)
        self.live -= 1
        self.memory -= conn.cost
        conn.cost = conn.held = 0
        if state in ("closed", "reset"):   # the others are forgotten at once
            self.lingering.append(conn)

    def _drop_streams(self, conn: Connection) -> None:
        """A closed connection's table entries without its streams.

        It stays in the table for CLOSE_LINGER (late retransmissions are
        recognised, not taken for a new connection), and its entries held
        both reassembly streams (with their callbacks and buffers) all that
        time; nothing reads them once the connection is closed (both packet
        paths look at entry[2:] only for a dissected connection).  With
        thousands of short `Connection: close` connections a second, that
        was ~0.6 KB per lingering connection (~8 MB at once on the api
        benchmark) and, worse, long-lived blocks scattered among the
        short-lived ones, which keeps the allocator's pools from emptying.
        """
        (a, b), (pa, pb) = conn.addr, conn.ports
        table = self.table
        for key in ((a, pa, b, pb), (b, pb, a, pa)):
            entry = table.get(key)
            if entry is not None and entry[0] is conn and entry[2] is not None:
                table[key] = (conn, entry[1], None, None)

    def _release_held(self, conn: Connection) -> None:
        """An ignored connection's held segments are never delivered: their
        memory goes back to the global budget at once (called outside any
        stream callback, so no stream is releasing at the time)."""
        for s in conn.streams:
            if s.held:
                self.budget.held -= s.held_bytes
                s.held, s.held_bytes = [], 0

    def _forget(self, conn: Connection) -> None:
        (a, b), (pa, pb) = conn.addr, conn.ports
        for key in ((a, pa, b, pb), (b, pb, a, pa)):
            entry = self.table.get(key)
            if entry is not None and entry[0] is conn:
                del self.table[key]

    def _sweep(self, ts: float) -> None:
        self.next_sweep = ts + SWEEP_INTERVAL
        lingering = self.lingering
        while lingering and ts - lingering[0].closed_at > CLOSE_LINGER:
            self._forget(lingering.popleft())
        resetting = self.resetting
        while resetting and (resetting[0].mode == MODE_CLOSED or ts - resetting[0].reset_at[0] > RESET_LINGER):
            conn = resetting.popleft()
            if conn.mode != MODE_CLOSED:
                self._finalise(conn, conn.last_ts, 0, "reset")
        # Idle connections: only the top of the heap can be idle.
        order, idle = self.order, []
        while order and ts - order[0][0] > IDLE_TIMEOUT:
            _, serial, conn = heapq.heappop(order)
            if conn.mode == MODE_CLOSED:
                continue
            if conn.last_ts != conn.queued:    # active since: back in with its new time
                conn.queued = conn.last_ts
                heapq.heappush(order, (conn.queued, serial, conn))
            else:
                idle.append(conn)
        # Finalised in the order they were created, as the table scan did.
        idle.sort(key=lambda c: c.serial)
        for conn in idle:
            self._finalise(conn, conn.last_ts, 0, "timeout")
        for conn in idle:
            self._forget(conn)

    def _evict(self, ts: float, why: str = "connections", keep: Connection | None = None) -> bool:
        """Finalise the least recently active connection (not `keep`); False when none is left."""
        order = self.order
        kept = None
        while order:
            _, serial, conn = heapq.heappop(order)
            if conn.mode == MODE_CLOSED:
                continue
            if conn.last_ts != conn.queued:    # active since it was pushed
                conn.queued = conn.last_ts
                heapq.heappush(order, (conn.queued, serial, conn))
                continue
            if conn is keep:
                kept = (conn.queued, serial, conn)
                continue
            self.limits[why] += 1
            self._finalise(conn, ts, 0, "evicted")
            self._forget(conn)
            if kept is not None:
                heapq.heappush(order, kept)
            return True
        if kept is not None:
            heapq.heappush(order, kept)
        return False

    def make_room(self, ts: float, keep: Connection | None = None) -> None:
        """Evict least recently active connections (not `keep`) until the state fits max_memory."""
        while self.memory > self.max_memory - CONNECTION_COST:
            if not self._evict(ts, "connection_memory", keep):
                return

    def share(self, processes: int) -> None:
        """This table is one of `processes` in a parallel run: the run's
        limits (connections, their memory, held bytes) are split between them,
        so that `-j N` holds what `-j 1` holds, not N times as much."""
        n = max(1, processes)
        self.max_connections = max(1, MAX_CONNECTIONS // n)
        self.max_memory = MAX_CONNECTION_MEMORY // n
        self.budget.limit = MAX_HELD_BYTES_TOTAL // n

    def finish(self) -> None:
        """End of the run: finalise every open connection (open, not timed out)."""
        for conn, d, *_ in list(self.table.values()):
            if d == 0 and conn.mode != MODE_CLOSED:
                self._finalise(conn, conn.last_ts, 0, "open")
        self.table.clear()
        self.order.clear()
        self.lingering.clear()
        self.resetting.clear()
