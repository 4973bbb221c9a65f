# One run of the native engine: capture files -> packets -> TCP segments ->
# connections -> events -> events.csv (+ connection and coverage records for
# the statistics).
#
# Memory stays flat in the number of packets and of connections: packets
# are streamed, bodies are skipped by counting, events are written as they
# come (through a bounded re-ordering window so the file is in time order
# whenever the disorder fits the window), and each finished connection's row
# goes to connections.csv and a spill file at once (outputs/connections.py).
# A damaged file stops that file, not the run: everything read before the
# damage is still dissected and written, and the error is reported at the end.
from __future__ import annotations

import gc
import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from analyzer import _fast, community_id, interrupt
from analyzer._version import __version__
from analyzer.capture import open_capture
from analyzer.decode.packets import Decoder
from analyzer.engines.sink import AnomalySink, EventOutputs, EventSink, open_consumers
from analyzer.errors import AnalyzerError, CaptureError, InputError
from analyzer.events import Event, with_endpoints
from analyzer.outputs.connections import ConnectionRows
from analyzer.tcp.table import FlowTable

# A packet this much older than the newest one before it is a step back in
# time, not the reordering of a merged multi-interface capture.
BACKWARDS_SECONDS = 1.0

# Young objects between two runs of the cyclic collector while a file is
# read (Python's default: 700); see fewer_collections().
LOOP_GC_THRESHOLD = 50_000

# A parallel worker's connection rows, in its part folder (engines/parallel.py).
PART_CONNECTIONS = "connections.spill"

CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap", ".ntar", ".gz", ".bz2", ".xz", ".zst", ".dmp")


def expand_inputs(paths: list[str]) -> list[str]:
    """Directories stand for the capture files below them (by suffix, sorted)."""
    out: list[str] = []
    for p in paths:
        if p != "-" and os.path.isdir(p):
            found = sorted(str(f) for f in Path(p).rglob("*")
                           if f.is_file() and f.name.lower().endswith(CAPTURE_SUFFIXES))
            if not found:
                raise InputError(f"{p}: directory holds no capture files ({', '.join(CAPTURE_SUFFIXES)})")
            out.extend(found)
        else:
            out.append(p)
    return out


@dataclass
class FileReport:
    name: str
    format: str = ""
    compression: str | None = None
    packets: int = 0
    error: str = ""


@dataclass
class RunResult:
    outdir: Path
    events: int = 0
    events_by_protocol: Counter = field(default_factory=Counter)
    files: list[FileReport] = field(default_factory=list)
    packets: int = 0
    skipped: Counter = field(default_factory=Counter)
    connections: object = None   # outputs.connections.ConnectionRows: the finished connections' rows
    anomalies: Counter = field(default_factory=Counter)
    limits: Counter = field(default_factory=Counter)
    tcp_segments: int = 0
    connections_total: int = 0
    connections_with_gaps: int = 0
    missed_bytes: int = 0
    first_epoch: float | None = None
    last_epoch: float | None = None
    seconds: float = 0.0
    errors: list[AnalyzerError] = field(default_factory=list)
    interrupted: bool = False
    stats: object = None   # the engines.sink.StatsFeed the events went to (a parallel worker's: its share's)
    kept: object = None    # outputs.events.EventsKept when the events were kept in memory

    def coverage(self) -> dict:
        return {
            "files": [vars(f) for f in self.files],
            "packets_read": self.packets,
            "packets_skipped": dict(self.skipped),
            "tcp_segments": self.tcp_segments,
            "connections": self.connections_total,
            "connections_dissected": self.connections.count if self.connections is not None else 0,
            "connections_with_gaps": self.connections_with_gaps,
            # Encrypted connections the native engine recognised but cannot
            # read: status unknown (--engine tshark --tls-keylog decodes them).
            "tls_connections": self.connections.tls if self.connections is not None else 0,
            "missed_bytes": self.missed_bytes,
            "anomalies": dict(self.anomalies),
            "limits_hit": dict(self.limits),
            "first_epoch": self.first_epoch,
            "last_epoch": self.last_epoch,
            "engine": "native",
            "version": __version__,
            "seconds": round(self.seconds, 3),
        }


class Session:
    """One analysis: decoder, connection table and sinks, fed packet by packet.

    Files go through `read_file` (the hot loop); live capture calls `packet`
    for each packet and `interim()` at every report interval.  `finish()`
    finalises every connection and writes events.csv, anomalies.csv and
    connections.csv.
    """

    def __init__(self, outdir: str | os.PathLike, *, lang: str = "en", on_event=None,
                 stream_events: bool = False, on_connection=None, outputs: EventOutputs | None = None,
                 packet_filter=None, counters=None) -> None:
        self.started = time.perf_counter()
        self.counters = counters  # an object with .packets/.events the progress display reads, or None
        self.packet_filter = packet_filter  # engines.bpf.PacketFilter (-f on files), or None
        self.out = Path(outdir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.result = RunResult(outdir=self.out)
        consumers, self.result.stats, self.result.kept = open_consumers(
            self.out, outputs or EventOutputs(), stream=stream_events)
        self.events = EventSink(lang, consumers)
        self.anomalies = AnomalySink(self.out)
        events = self.events
        callback = on_event

        def emit_and_call(ev: Event, ends: tuple) -> None:
            events.add(ev, ends)
            callback(with_endpoints(ev, ends))

        emit = events.add if callback is None else emit_and_call  # one call less per event

        # Each finished connection's row goes to connections.csv and the
        # spill the statistics read at the end (a parallel worker's both to
        # its part folder, for the parent to copy and read); with
        # `on_connection` (live capture) to the caller instead, which writes
        # connections.csv itself.
        self.on_connection = on_connection
        if on_connection is None:
            worker = (outputs or EventOutputs()).part is not None
            self.result.connections = ConnectionRows(
                self.out, spill=self.out / PART_CONNECTIONS if worker else None)
        keep_row = on_connection or self.result.connections.add

        def connection_row(row: dict) -> None:
            row["community_id"] = community_id.for_row(row)  # once per connection, off the packet path
            keep_row(row)

        self.table = FlowTable(emit, self.anomalies.add, connection_row)
        self.table.detectors = _fast.protocols(self.table.detectors)  # compiled twins, when selected
        self.decoder = Decoder()
        self.frame = 0
        self.elsewhere = 0  # TCP packets left to another process (parallel runs)
        self.report: FileReport | None = None

    def begin(self, name: str, display: str | None = None) -> FileReport:
        """Start a new capture: frame numbers count from 1 again (as in Wireshark)."""
        report = FileReport(name=name)
        self.result.files.append(report)
        self.report = report
        self.frame = 0
        self.table.capture = self.anomalies.capture = display or os.path.basename(name)
        return report

    def packet(self, ts: float, linktype: int, data: bytes, wirelen: int) -> None:
        self.frame += 1
        self.report.packets = self.frame
        self.result.packets += 1
        if self.result.first_epoch is None:
            self.result.first_epoch = ts
        self.result.last_epoch = ts
        seg = self.decoder.decode(linktype, data, ts, wirelen)
        if seg is not None:
            self.table.packet(seg, ts, self.frame)

    def read_file(self, path: str, progress=None, done_before: int = 0, total: int = 0,
                  partition: tuple[int, int] | None = None) -> None:
        """Read one capture file; an error is recorded and ends this file only.

        With `partition=(k, n)` only the connections of share k of n are
        dissected (parallel runs; see analyzer/engines/parallel.py for the key).
        """
        with fewer_collections():
            self._read_file(path, progress, done_before, total, partition)

    def _read_file(self, path: str, progress, done_before: int, total: int,
                   partition: tuple[int, int] | None) -> None:
        """read_file's work: the compiled loop when it is built, else the reference loop.

        The compiled loop (analyzer/_fast) does the same when it is built;
        the code below is the reference it is tested against.
        """
        # -f (a libpcap filter on each record) is the reference loop's alone.
        compiled = _fast.compiled("read_file") if self.packet_filter is None else None
        if compiled is not None:
            return compiled(self, path, progress, done_before, total, partition)
        report = self.begin(path, "<stdin>" if path == "-" else None)
        result, decode, packet = self.result, self.decoder.decode, self.table.packet
        others = None
        if partition is not None:
            self.table.share(partition[1])      # the run's limits, split between the processes
            packet = _share_filter(packet, *partition)
            others = _other_share(*partition)
        frame = 0
        ts = None
        newest = float("-inf")
        keep = self.packet_filter.keep if self.packet_filter is not None else None
        opened = None
        try:
            with open_capture(path) as reader:
                opened = reader
                report.format, report.compression = reader.format, reader.compression
                next_tick = 1
                for ts, linktype, data, wirelen in reader:
                    frame += 1
                    if ts > newest:
                        newest = ts
                    elif ts < newest - BACKWARDS_SECONDS:
                        newest = self._went_backwards(ts, newest, frame)
                    if keep is not None and not keep(linktype, data, wirelen):
                        continue  # -f: left out, but still a frame (numbers stay Wireshark's)
                    if others is not None and linktype == 1 and others(data):
                        self.elsewhere += 1  # another process dissects it
                        continue
                    seg = decode(linktype, data, ts, wirelen)
                    if seg is not None:
                        packet(seg, ts, frame)
                    if frame >= next_tick:  # now and then, not per packet: the hot loop
                        next_tick = frame + 20000
                        if result.first_epoch is None:
                            result.first_epoch = ts
                        if self.counters is not None:
                            self.counters.packets = result.packets + frame
                            self.counters.events = self.events.count
                        if progress is not None:
                            progress(done_before + (reader.bytes_read or 0), total)
        except AnalyzerError as exc:
            report.error = str(exc)
            result.errors.append(exc)
        finally:
            # Every process of a parallel run reads every record: share 0 counts.
            if opened is not None and opened.records_cut and (partition is None or partition[0] == 0):
                self.table.limits["record_bytes"] += opened.records_cut
            if ts is not None:
                result.last_epoch = ts if result.last_epoch is None else max(result.last_epoch, ts)
            report.packets = frame
            result.packets += frame
            self.frame = frame

    def feed_records(self, name: str, records, display: str | None = None) -> None:
        """Records of one file with their frame numbers given, (frame, ts, linktype,
        data, wirelen), in frame order: a cluster partition's connections of that
        file (engines/cluster.py), so that frame numbers are the file's own.

        No clock check here (a partition holds only some of the file's
        records; the cluster driver checks the clock over all of them) and
        no progress.  The compiled loop does the same when it is selected.
        """
        self.begin(name, display)
        with fewer_collections():
            self._feed_records(records)

    def _feed_records(self, records) -> None:
        compiled = _fast.compiled("feed_records")
        if compiled is not None:
            return compiled(self, records)
        decode, packet = self.decoder.decode, self.table.packet
        ts = None
        for frame, ts, linktype, data, wirelen in records:
            seg = decode(linktype, data, ts, wirelen)
            if seg is not None:
                packet(seg, ts, frame)
        if ts is not None:
            result = self.result
            result.last_epoch = ts if result.last_epoch is None else max(result.last_epoch, ts)

    def _went_backwards(self, ts: float, newest: float, frame: int) -> float:
        """A packet much older than the newest so far: two captures pasted
        together, or a clock step.  Named once per jump; the jump's start is
        the new reference."""
        self.table.note(None, "capture_time_went_backwards", ts, frame, f"{newest - ts:.6f} s before frame time seen")
        return ts

    def interim(self) -> None:
        """Every event so far into events.csv and the statistics (live capture)."""
        self.events.flush()

    def snapshot(self) -> dict:
        """Coverage so far, as `finish()` would report it (live capture, mid-run)."""
        self._collect()
        return self.result.coverage()

    def _collect(self) -> None:
        result, table = self.result, self.table
        result.events = self.events.count
        result.events_by_protocol = self.events.by_protocol
        result.skipped = self.decoder.skipped
        result.anomalies = table.anomaly_counts
        result.limits = table.limits
        result.tcp_segments = self.decoder.decoded + self.elsewhere
        result.connections_total = table.count - table.duplicates
        result.connections_with_gaps = table.connections_with_gaps
        result.missed_bytes = table.missed_bytes
        result.seconds = time.perf_counter() - self.started

    def finish(self) -> RunResult:
        self.decoder.finish()
        self.table.finish()
        self.events.commit()
        self.anomalies.commit()
        self._collect()
        if self.result.connections is not None:
            self.result.connections.commit()
        return self.result


def _share_filter(packet, share: int, shares: int):
    """`packet` for the connections of one share only (parallel runs)."""

    def filtered(seg, ts, frame):
        if _mix(_share_key(seg)) % shares == share:
            packet(seg, ts, frame)

    return filtered


def _share_key(seg) -> int:
    """A segment's share key: symmetric in the two directions; one host pair
    has one key (FTP data channels meet their control connection), unless
    both ends are one host (loopback), where the ports decide."""
    src, dst = seg[0], seg[1]
    return src[-2] + src[-1] + dst[-2] + dst[-1] if src != dst else seg[2] + seg[3]


def _other_share(share: int, shares: int):
    """A test on raw Ethernet/IPv4/TCP frames: True when another share owns it.

    The same key as _share_filter, read before decoding so that a process does
    not decode the packets of the others.  Anything unusual (options, VLANs,
    fragments, IPv6) answers False and goes through the decoder.
    """

    def other(data) -> bool:
        if len(data) < 38 or data[12] != 8 or data[13] != 0 or data[14] != 0x45 or data[23] != 6 \
                or data[20] & 0x3F or data[21]:
            return False
        if data[26:30] != data[30:34]:
            key = data[28] + data[29] + data[32] + data[33]
        else:
            key = ((data[34] << 8) | data[35]) + ((data[36] << 8) | data[37])
        return _mix(key) % shares != share

    return other


def _mix(key: int) -> int:
    """Spread a share key: Linux hands out ephemeral ports of one parity, so
    a plain `key % shares` would put every connection in one share."""
    return (key * 0x9E3779B1 >> 16) & 0xFFFF


def run(paths: list[str], outdir: str | os.PathLike, *, lang: str = "en", progress=None,
        on_event=None, outputs: EventOutputs | None = None, packet_filter=None, counters=None) -> RunResult:
    """Analyse `paths` into `outdir` in this process; returns what the reports need.

    Errors in one file are collected in `result.errors` (the run goes on);
    the caller decides the exit status.  `progress(done_bytes, total_bytes)`
    is called now and then when given.  Ctrl-C stops reading; what was read
    is still finalised and written (`result.interrupted`).  Several
    processes: analyzer.engines.run(..., jobs=N).
    """
    session = Session(outdir, lang=lang, on_event=on_event, outputs=outputs, packet_filter=packet_filter,
                      counters=counters)
    return read_all(session, paths, progress)


@contextmanager
def fewer_collections():
    """The read loop with the cyclic collector woken less often.

    The loop makes and drops small objects by the million (segments, heads,
    events); with the default threshold (700) the collector runs thousands
    of times a second and each run walks the young objects, ~5-10 % of the
    loop (measured on the tiny and api benchmark slices).  What the imports
    made is frozen (never walked again until the loop ends); the loop's own
    garbage is mostly acyclic and freed by reference counting, and what is
    cyclic (a connection's dissector and its pairing's bound method) is
    still collected, in fewer, larger passes.
    """
    old = gc.get_threshold()
    # A caller that froze objects itself (the Python API's user) keeps them
    # frozen: unfreeze() cannot tell theirs from ours, so we freeze nothing.
    ours = gc.get_freeze_count() == 0
    if ours:
        gc.freeze()
    gc.set_threshold(LOOP_GC_THRESHOLD, *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        if ours:
            gc.unfreeze()


def read_all(session, paths: list[str], progress=None) -> RunResult:
    """Feed every path to a session (native or tshark) and finish it.

    Ctrl-C stops reading; what was read is still finalised and written.
    """
    total = sum(_size(p) for p in paths)
    done = 0
    try:
        with interrupt.reading():
            for path in paths:
                session.read_file(path, progress, done, total)
                done += _size(path)
    except KeyboardInterrupt:
        session.result.interrupted = True
    result = session.finish()
    result.interrupted = result.interrupted or interrupt.stop_requested()  # a stop while finishing
    return result


def _size(path: str) -> int:
    try:
        return os.path.getsize(path) if path != "-" else 0
    except OSError:
        return 0


def damaged(result: RunResult) -> list[AnalyzerError]:
    return [e for e in result.errors if isinstance(e, CaptureError)]
