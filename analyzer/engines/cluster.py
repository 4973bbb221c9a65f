# Cluster mode: the same analysis on a Dask cluster (`--cluster ADDRESS`).
#
# The work is spread by Dask, not by networking of our own:
#   1. decode tasks, one per piece (capture/split.py: a byte range of a
#      classic pcap starting at a verified record boundary, or a whole
#      pcapng/compressed/small file), read their records into Arrow-backed
#      rows: file, piece, index in the piece, timestamp, link type, captured
#      bytes, wire length and the share key (engines/native.py _share_key:
#      the host pair, or the ports when both ends are one host);
#      (Loopback FTP data connections get their control connection's key:
#      a light pre-pass over the pieces collects the data ports announced,
#      capture/split.py.)
#   2. Dask's own P2P shuffle (dask.dataframe, spilling to disk) moves the
#      rows on the key into P partitions, so every connection's packets --
#      and an FTP data connection's with its control connection, between two
#      hosts -- meet in one partition, whichever file or piece they came from;
#   3. one task per partition orders its rows by (file, frame), numbers the
#      frames per file (offsets from the pieces' record counts, computed by a
#      small layout task once every piece is read) and runs the ordinary
#      Session over them (Session.feed_records, compiled or Python loop as on
#      the driver), so a connection crossing files is reassembled whole, as in
#      a single run over the files in order.  It returns data, not paths
#      (workers may be other machines): events as Arrow IPC bytes, its
#      StatsFeed, anomaly rows, connection rows and counters;
#   4. the driver merges them with the parallel runner's merge
#      (parallel.merge_shares: events by time, statistics exactly) and the
#      caller writes every report as after a single run.
#
# The clock check (a packet more than a second older than the newest before
# it is named `capture_time_went_backwards`) is a walk over each file's
# timestamps in order; pieces walk their own from -inf and the layout task
# chains them, re-reading a piece only when its first packet falls within
# the second before the state it inherits (the one case the chain cannot
# decide).  A piece whose reader did not end where the next piece starts
# (a cut on bytes that only looked like records) makes the driver read that
# file again as one piece; damage in a piece ends its file there, as in a
# single run.
#
# Retries: tasks are deterministic, and each partition's result is taken
# once (by its index), so a task Dask runs again after a worker died is
# neither lost nor counted twice.
#
# Memory per worker thread: one piece's rows (PIECE_BYTES of capture, about
# 1.3x that in Arrow buffers; a pcapng or compressed file is one piece: its
# decompressed packets) plus one partition's rows (about PARTITION_BYTES of
# packets, 2-3x that while they are sorted and fed) plus the engine's own
# bounded state; Dask's worker memory limit and spilling cover the shuffle.
# Limits: a partition holds whole host pairs (and loopback connections), so
# one host pair carrying most of an archive makes one large partition;
# idle expiry and the connection-table budget act per partition; anomaly
# rows are sampled per partition (counts stay exact); a stop signal cancels
# the run (nothing is written).
from __future__ import annotations

import logging
import marshal
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer import interrupt
from analyzer.capture import split
from analyzer.engines.native import FileReport, RunResult, Session, _size
from analyzer.engines.parallel import PART_EVENTS, Share, _batches, _rows, merge_shares, worker_outputs
from analyzer.engines.sink import EventOutputs
from analyzer.errors import CaptureError, ClusterError, InputError, MissingTool, UsageError
from analyzer.outputs.csvfile import rendered_rows

# Packets (bytes of capture) per shuffle partition: P = input bytes / this.
PARTITION_BYTES = 128 * 1024 * 1024
# How long to wait for a scheduler before saying it cannot be reached.
CONNECT_SECONDS = 10.0
# Seconds between progress lines.
PROGRESS_SECONDS = 2.0
# Environment overrides (tuning and tests): bytes per partition, per piece.
PARTITION_ENV, PIECE_ENV = "ANALYZER_CLUSTER_PARTITION_BYTES", "ANALYZER_CLUSTER_PIECE_BYTES"
NOTE = "capture_time_went_backwards"


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{name} takes a number of bytes, not {value!r}") from None
    if n < 1:
        raise UsageError(f"{name} takes a positive number of bytes")
    return n


def partitions_for(total_bytes: int, partition_bytes: int | None = None) -> int:
    """P: the input's bytes over PARTITION_BYTES, at least 1."""
    per = partition_bytes or _env_bytes(PARTITION_ENV, PARTITION_BYTES)
    return max(1, math.ceil(total_bytes / per))


# -- connecting ------------------------------------------------------------------

def parse_ports(text: str | None) -> tuple[int, int] | None:
    """--cluster-ports LOW-HIGH: the ports a local:N cluster may listen on."""
    if text is None:
        return None
    try:
        low, high = (int(p) for p in text.split("-", 1))
    except ValueError:
        raise UsageError(f"--cluster-ports takes LOW-HIGH (e.g. 43500-43599), not {text!r}") from None
    if not 0 < low < high < 65536 or high - low < 3:
        raise UsageError(f"--cluster-ports {text}: need 0 < LOW < HIGH < 65536 and at least 4 ports")
    return low, high


def check_address(cluster) -> None:
    """A usage error for an ADDRESS that is neither tcp://host:port nor local:N (before any work)."""
    if cluster is None or not isinstance(cluster, str):
        return
    if cluster.startswith("local:"):
        n = cluster[len("local:"):]
        if not n.isdigit() or int(n) < 1:
            raise UsageError(f"--cluster {cluster}: local:N takes a number of worker processes, N >= 1")
        return
    if "://" not in cluster and ":" not in cluster:
        raise UsageError(f"--cluster {cluster}: give a scheduler address (tcp://host:8786) or local:N")


def connect(cluster, ports=None, timeout: float | None = None):
    """(client, what to close): a running scheduler, a `distributed.Client`, or local:N."""
    try:
        import distributed
        import dask.dataframe  # noqa: F401 - the shuffle needs it (dask[dataframe])
    except ImportError as exc:
        raise MissingTool(f"cluster mode needs dask and distributed ({exc.name or exc} is missing): "
                          "pip install 'analyzer[cluster]'") from None
    if isinstance(cluster, distributed.Client):
        return cluster, ()
    check_address(cluster)
    timeout = CONNECT_SECONDS if timeout is None else timeout
    if cluster.startswith("local:"):
        n = int(cluster[len("local:"):])
        kwargs = dict(scheduler_port=0, dashboard_address=":0")
        if ports is not None:
            low, high = ports
            kwargs = dict(scheduler_port=low, dashboard_address=f"127.0.0.1:{low + 1}",
                          worker_port=f"{low + 2}:{high}", port=f"{low + 2}:{high}")
        local = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                         worker_dashboard_address=None, silence_logs=logging.ERROR, **kwargs)
        client = distributed.Client(local)
        return client, (client, local)
    address = cluster if "://" in cluster else f"tcp://{cluster}"
    logging.getLogger("distributed").setLevel(logging.CRITICAL)  # its retries are not the user's business
    try:
        client = distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
                           f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no answer'})") from None
    return client, (client,)


# -- tasks (run on the workers) ------------------------------------------------------

def _use(implementation: str):
    """The driver's packet loop on this worker; the Python one where the compiled is not
    built here (the two give the same outputs, tests/test_fast_path.py)."""
    from analyzer import _fast

    try:
        _fast.use(implementation)
    except ValueError:
        _fast.use("python")


def announce_piece(piece: split.Piece, implementation: str) -> list:
    """Task: the pre-pass over a piece for the loopback FTP routes (capture/split.py)."""
    _use(implementation)
    return split.announce_piece(piece)


def decode_piece(piece: split.Piece, implementation: str, routes: split.Routes):
    """Task: a piece's rows as an Arrow-backed DataFrame, keyed for the shuffle, and
    what reading it found."""
    import pandas as pd

    _use(implementation)
    table, info = split.read_piece(piece)
    return split.rekey(table.to_pandas(types_mapper=pd.ArrowDtype), routes), info


@dataclass
class Layout:
    """What the pieces say together: frame offsets, the pieces to use, clock notes,
    each file's report and error, and files whose cuts did not hold."""

    offsets: dict = field(default_factory=dict)      # (file, piece) -> frames of the file before it
    notes: list = field(default_factory=list)        # (file, frame, ts, newest before)
    files: list = field(default_factory=list)        # FileReport per input
    errors: list = field(default_factory=list)       # (kind, message, packets_read), in file order
    records_cut: int = 0
    miscut: set = field(default_factory=set)         # files to read again as one piece
    first_epoch: float | None = None
    last_epoch: float | None = None
    packets: int = 0


def layout(infos: list, pieces: list, implementation: str) -> Layout:
    """Task: chain the pieces of every file (see the module comment)."""
    from analyzer.capture.pcap import _packets
    from analyzer.engines.native import BACKWARDS_SECONDS

    out = Layout()
    by_file: dict[int, list] = {}
    for piece, info in zip(pieces, infos):
        by_file.setdefault(piece.file, []).append((piece, info))
    for f in sorted(by_file):
        entries = by_file[f]
        path = entries[0][0].path
        report = FileReport(name=path)
        count, newest, last_ts = 0, float("-inf"), None
        for k, (piece, info) in enumerate(entries):
            if not piece.whole and info.end != piece.stop and not info.error:
                out.miscut.add(f)
            out.offsets[(f, piece.piece)] = count
            report.format, report.compression = info.format, info.compression
            if info.count:
                ts0 = info.first_ts
                if newest == float("-inf") or ts0 >= newest:
                    jumps, after = info.jumps, info.newest
                elif ts0 < newest - BACKWARDS_SECONDS:
                    jumps, after = [(0, ts0, newest)] + info.jumps, info.newest
                else:  # within the second before the inherited state: walk it again from there
                    _use(implementation)
                    table, _ = split.read_piece(piece)
                    after, jumps = split.clock_from(table.column("ts").to_pylist(), newest)
                out.notes.extend((f, count + i + 1, t, before) for i, t, before in jumps)
                newest = after
                if out.first_epoch is None:
                    out.first_epoch = info.first_ts
                last_ts = info.last_ts
            count += info.count
            out.records_cut += info.records_cut
            if info.error:
                message = info.error.format(packets=_packets(count))
                report.error = message
                if info.error_kind == "input":
                    out.errors.append(("input", message, 0))
                else:
                    out.errors.append(("capture", message, count))
                break  # damage ends the file, as in a single run
        report.packets = count
        out.packets += count
        if last_ts is not None:
            out.last_epoch = last_ts if out.last_epoch is None else max(out.last_epoch, last_ts)
        out.files.append(report)
    return out


@dataclass
class PartitionOutput:
    """What a partition task returns (data only: it may come from another machine)."""

    index: int
    result: RunResult        # counters and the StatsFeed; connections and kept left out
    events: bytes            # Arrow IPC stream of its events, in (epoch, frame) order
    anomalies: list          # anomalies.csv rows
    connections: bytes       # marshal of its connection rows (tuples), in the order they ended
    packets: int
    connections_csv: bytes = b""  # its connections.csv (rendered in the task), header included


def dissect_partition(frame, plan: Layout, index: int, paths: list, lang: str, outputs: EventOutputs,
                      implementation: str) -> PartitionOutput:
    """Task: one partition's connections, through the ordinary Session."""
    from analyzer.events import CONNECTION_COLUMNS

    _use(implementation)
    table = pa.Table.from_pandas(frame, preserve_index=False) if len(frame) else split.ROW_SCHEMA.empty_table()
    table = table.select(split.ROW_SCHEMA.names)
    # Only pieces the layout kept (damage ends a file), numbered as the file counts.
    kept = sorted(plan.offsets)
    kept_ids = pa.array([(f << 32) + p for f, p in kept], pa.int64())
    base = pa.array([plan.offsets[k] for k in kept], pa.int64())

    def piece_ids(t):
        return pc.add(pc.multiply(pc.cast(t.column("file"), pa.int64()), 1 << 32), pc.cast(t.column("piece"), pa.int64()))

    where = pc.index_in(piece_ids(table), value_set=kept_ids)
    if where.null_count:
        table = table.filter(pc.is_valid(where))
        where = pc.index_in(piece_ids(table), value_set=kept_ids)
    frames = pc.add(pc.add(pc.take(base, where), table.column("index")), 1).to_numpy()
    files = table.column("file").to_numpy()
    # Sorted by (file, frame) through indices: the rows are copied a chunk at a
    # time, never all at once (memory: the partition once, plus a chunk).
    order = np.lexsort((frames, files))
    work = Path(tempfile.mkdtemp(prefix="analyzer-partition-"))
    try:
        session = Session(work, lang=lang, outputs=worker_outputs(outputs, work))
        in_order = files[order]
        starts = [0] + [int(i) + 1 for i in (in_order[1:] != in_order[:-1]).nonzero()[0]] if len(order) else []
        for a, b in zip(starts, starts[1:] + [len(order)]):
            session.feed_records(paths[int(in_order[a])], _records(table, frames, order[a:b]))
        if index == 0:  # the clock notes are the driver's walk over every file; one partition names them
            for f, frame_no, ts, newest in plan.notes:
                session.begin(paths[f])
                session.table.note(None, NOTE, ts, frame_no, f"{newest - ts:.6f} s before frame time seen")
        # What the end of the run finalises is named after the run's last file, as in a single run.
        session.begin(paths[-1])
        result = session.finish()
        events = (work / PART_EVENTS).read_bytes() if (work / PART_EVENTS).exists() else b""
        anomalies = list(_rows(work / "anomalies.csv"))
        rows = []
        if result.connections is not None:
            for chunk in result.connections.chunks():
                rows.extend(tuple(row[c] for c in CONNECTION_COLUMNS) for row in chunk)
            result.connections.close()
        result.connections = None
        result.kept = None
        result.files = []
        connections_csv = (work / "connections.csv").read_bytes() if (work / "connections.csv").exists() else b""
        return PartitionOutput(index, result, events, anomalies, marshal.dumps(rows), table.num_rows, connections_csv)
    finally:
        shutil.rmtree(work, ignore_errors=True)


FEED_ROWS = 65_536  # rows of a partition turned into Python records at a time


def _records(table: pa.Table, frames, order):
    """(frame, ts, linktype, data, wirelen) of `table`'s rows in `order`, a chunk at a time."""
    for i in range(0, len(order), FEED_ROWS):
        take = order[i:i + FEED_ROWS]
        part = table.take(pa.array(take))
        yield from zip(frames[take].tolist(), part.column("ts").to_pylist(), part.column("linktype").to_pylist(),
                       part.column("data").to_pylist(), part.column("wirelen").to_pylist())


# -- the driver ------------------------------------------------------------------

def run_cluster(paths: list[str], outdir, *, cluster, lang: str = "en", progress=None,
                outputs: EventOutputs | None = None, notify=None, ports=None, timeout: float | None = None,
                partition_bytes: int | None = None, piece_bytes: int | None = None) -> RunResult:
    """Analyse `paths` on a Dask cluster into `outdir`; the same RunResult as a single run.

    `cluster`: "tcp://host:port", "local:N" or a distributed.Client.
    `notify(text)` is told the dashboard address and, now and then, progress.
    """
    from analyzer import _fast

    started = time.perf_counter()
    if "-" in paths:
        raise UsageError("--cluster reads files (workers open them by path), not standard input")
    check_address(cluster)
    outputs = outputs or EventOutputs()
    names, paths = list(paths), [os.path.abspath(p) for p in paths]  # workers open them by absolute path
    piece_bytes = piece_bytes or _env_bytes(PIECE_ENV, split.PIECE_BYTES)
    client, owned = connect(cluster, ports, timeout)
    say = notify or (lambda text: None)
    try:
        link = getattr(client, "dashboard_link", None)
        say(f"cluster: {client.scheduler.address if client.scheduler else cluster}"
            f"{', dashboard ' + link if link else ''}")
        unsplit: set = set()
        while True:
            attempt = _attempt(client, paths, names, split.plan(paths, piece_bytes, frozenset(unsplit)), outdir, lang,
                               outputs, _fast.selected(), partition_bytes, say, progress)
            if isinstance(attempt, set):  # cuts that did not hold: those files again, each as one piece
                unsplit |= attempt
                say(f"cluster: re-reading {len(attempt)} file(s) unsplit (a cut fell on record-like bytes)")
                continue
            break
    finally:
        for thing in reversed(owned):
            try:
                thing.close()
            except Exception:  # noqa: BLE001 - closing a cluster that is already going away
                pass
    attempt.seconds = time.perf_counter() - started
    return attempt


def _attempt(client, paths, names, pieces, outdir, lang, outputs, implementation, partition_bytes, say, progress):
    import dask.dataframe as dd
    import pandas as pd
    from dask import delayed
    from distributed import KilledWorker

    total = sum(_size(p) for p in paths)
    n_parts = partitions_for(total, partition_bytes)
    # The routes first (a light walk of every piece), so that decode tasks, which
    # need them, start only when they can hand their rows to the shuffle at once.
    routes = delayed(split.routes, pure=False)([delayed(announce_piece, pure=False)(piece, implementation)
                                                for piece in pieces])
    decoded = [delayed(decode_piece, nout=2, pure=False)(piece, implementation, routes) for piece in pieces]
    frames, infos = [d[0] for d in decoded], [d[1] for d in decoded]
    plan = delayed(layout, pure=False)(infos, pieces, implementation)
    meta = split.ROW_SCHEMA.empty_table().to_pandas(types_mapper=pd.ArrowDtype)
    rows = dd.from_delayed(frames, meta=meta, verify_meta=False)
    shuffled = rows.shuffle(on="key", npartitions=n_parts, shuffle_method="p2p")
    parts = shuffled.to_delayed()
    tasks = [delayed(dissect_partition, pure=False)(part, plan, k, paths, lang, outputs, implementation)
             for k, part in enumerate(parts)]
    futures = client.compute(infos + [plan] + tasks)
    info_futures, plan_future, task_futures = futures[:len(infos)], futures[len(infos)], futures[len(infos) + 1:]
    out = Path(outdir)
    spill = out / ".cluster-parts"
    spill.mkdir(parents=True, exist_ok=True)
    try:
        with interrupt.reading():
            try:
                got = _collect(info_futures, plan_future, task_futures, spill, say, progress, total, len(pieces))
            except KilledWorker as exc:
                raise ClusterError(f"the workers died running one task, on every retry ({_first_line(exc)}); "
                                   f"out of memory? Give the workers more (dask worker --memory-limit) or "
                                   f"smaller partitions ({PARTITION_ENV}, now {partition_bytes or _env_bytes(PARTITION_ENV, PARTITION_BYTES)} bytes)") from None
            except OSError as exc:
                raise ClusterError(f"lost the Dask scheduler mid-run ({_first_line(exc)})") from None
        if isinstance(got, set):
            return got
        plan_result, outputs_by_index = got
        return _merge(plan_result, outputs_by_index, spill, out, outputs, paths, names)
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        del futures, info_futures, task_futures
        shutil.rmtree(spill, ignore_errors=True)


def _collect(info_futures, plan_future, task_futures, spill: Path, say, progress, total_bytes: int, n_pieces: int):
    """Wait for every task; each partition's result taken once and spilled to disk."""
    started = time.perf_counter()
    pending_infos = dict(enumerate(info_futures))
    pending = dict(enumerate(task_futures))
    taken: dict[int, dict] = {}
    plan_result = None
    packets = 0
    done_bytes = 0
    last_said = 0.0
    total_tasks = n_pieces + len(task_futures)
    while pending or plan_result is None:
        for k, future in list(pending_infos.items()):
            if _finished(future):
                packets += future.result().count
                del pending_infos[k]
        if plan_result is None and _finished(plan_future):
            plan_result = plan_future.result()
            if plan_result.miscut:
                return set(plan_result.miscut)
        for k, future in list(pending.items()):
            if _finished(future):
                if k not in taken:  # once per partition, whatever Dask ran twice
                    taken[k] = _spill(future.result(), spill)
                del pending[k]
        now = time.perf_counter()
        done = (n_pieces - len(pending_infos)) + len(taken)
        if progress is not None:
            done_bytes = total_bytes * (n_pieces - len(pending_infos)) // max(1, n_pieces)
            progress(done_bytes, total_bytes)
        if now - last_said >= PROGRESS_SECONDS or (not pending and plan_result is not None):
            rate = packets / (now - started) if now > started else 0.0
            say(f"cluster: {done}/{total_tasks} tasks done, {packets:,} packets decoded ({rate:,.0f} packets/s)")
            last_said = now
        if pending or plan_result is None:
            time.sleep(0.1)
    return plan_result, taken


def _finished(future) -> bool:
    """True once the task has finished; a failed or cancelled task raises its error here."""
    if future.status in ("error", "cancelled"):
        future.result()
    return future.status == "finished"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _spill(part: PartitionOutput, spill: Path) -> dict:
    events = spill / f"events-{part.index}.arrows"
    events.write_bytes(part.events)
    connections = spill / f"connections-{part.index}.marshal"
    connections.write_bytes(part.connections)
    table = spill / f"connections-{part.index}.csv"
    table.write_bytes(part.connections_csv)
    return {"result": part.result, "events": events, "anomalies": part.anomalies, "connections": connections,
            "connections_csv": table}


def _connection_chunks(path: Path):
    from analyzer.events import CONNECTION_COLUMNS

    rows = marshal.loads(path.read_bytes())
    if rows:
        yield [dict(zip(CONNECTION_COLUMNS, values)) for values in rows]


def _as_given(text: str, paths: list, names: list) -> str:
    """A message or name about an absolute path, with the path as the user gave it."""
    for path, name in zip(paths, names):
        if text.startswith(path) and path != name:
            return name + text[len(path):]
    return text


def _merge(plan: Layout, parts: dict, spill: Path, out: Path, outputs: EventOutputs, paths: list,
           names: list) -> RunResult:
    errors = [CaptureError(_as_given(message, paths, names), n) if kind == "capture"
              else InputError(_as_given(message, paths, names)) for kind, message, n in plan.errors]
    for report in plan.files:
        report.name = _as_given(report.name, paths, names)
        report.error = _as_given(report.error, paths, names)
    merged = RunResult(outdir=out, files=plan.files, packets=plan.packets, first_epoch=plan.first_epoch,
                       last_epoch=plan.last_epoch, errors=errors)
    skipped, segments = Counter(), 0
    for k in sorted(parts):
        r = parts[k]["result"]
        skipped.update(r.skipped)
        segments += r.tcp_segments
    merged.skipped, merged.tcp_segments = skipped, segments
    if plan.records_cut:
        merged.limits = Counter({"record_bytes": plan.records_cut})
    shares = [Share(p["result"], lambda p=p: _batches(p["events"]), lambda p=p: iter(p["anomalies"]),
                    lambda p=p: _connection_chunks(p["connections"]), lambda p=p: rendered_rows(p["connections_csv"]))
              for p in (parts[k] for k in sorted(parts))]
    return merge_shares(shares, merged, outputs)
