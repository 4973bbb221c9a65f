# All cores on one machine: the same pipeline in N processes, each owning a
# share of the connections.
#
# Strategy: every worker reads every packet (reading is the cheap part), skips
# the plain Ethernet/IPv4/TCP frames of other shares from their raw bytes, and
# decodes, reassembles and dissects only the connections of its share.  The
# share key is symmetric in the two directions and keeps one host pair in one
# share, so an FTP data connection meets its control connection; when both
# ends are one host (loopback) the ports decide.
# Workers write sorted events into their own part directory and keep their
# share's statistics; the parent merges the events by time (streamed, so
# memory stays flat), merges the statistics exactly and sums the counters.  Small inputs are not worth the processes: they run in one.
from __future__ import annotations

import csv
import multiprocessing
import os
import shutil
import signal
import threading
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from analyzer import interrupt
from analyzer.engines.native import RunResult, Session, _size
from analyzer.engines.sink import ANOMALY_COLUMNS, EventOutputs, StatsFeed, open_consumers
from analyzer.outputs.connections import ConnectionRows
from analyzer.events import CONNECTION_COLUMNS
from analyzer.outputs.csvfile import CsvWriter, rendered_rows
from analyzer.outputs.events import CSV_LINE, without_lines

# Below this much input one process finishes before N could start.
PARALLEL_MIN_BYTES = 32 * 1024 * 1024
PART_EVENTS = "events.arrows"
PARENT_POLL_SECONDS = 0.5  # how soon a worker notices that its parent is gone


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def worth_it(paths: list[str], jobs: int) -> bool:
    return jobs > 1 and "-" not in paths and sum(_size(p) for p in paths) >= PARALLEL_MIN_BYTES


_progress_value = None


def _init(value, parent: int) -> None:
    global _progress_value
    _progress_value = value
    # A worker never outlives its parent: the kernel kills it when the parent
    # dies, even by SIGKILL (Linux prctl PR_SET_PDEATHSIG).
    _die_with_parent(parent)
    # Stop signals end this worker's reading only (the parent forwards its
    # stop; a terminal's Ctrl-C reaches the worker too: never escalate).
    interrupt.install(escalate=False)


def _die_with_parent(parent: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        pass
    # PDEATHSIG is not delivered everywhere (measured: one worker of two
    # survived a SIGKILLed parent on this kernel), so a watchdog thread also
    # checks twice a second whether the worker has been re-parented.
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # nothing of ours may outlive the run; its staging folder is the parent's to remove


def _report_progress(done: int, total: int) -> None:
    _progress_value.value = done


def worker_outputs(outputs: EventOutputs, part: Path) -> EventOutputs:
    """What a worker does with its share's events: a part file for the parent
    to merge and write, and the share's own statistics (merged exactly by the
    parent, StatsAccumulator.merge), so the statistics run on every core.
    When the parent writes no event file but events.csv, the part holds only
    what its merge and events.csv need (the sort keys and each row's line)."""
    lines_only = not (outputs.jsonl or outputs.parquet or outputs.keep or outputs.also)
    return EventOutputs(csv=False, part=str(part / PART_EVENTS), part_lines_only=lines_only, stats=outputs.stats,
                        policy=outputs.policy, uri_grouping=outputs.uri_grouping, selection=outputs.selection)


def _work(paths: list[str], outdir: str, lang: str, share: int, shares: int, outputs: EventOutputs) -> RunResult:
    # Ctrl-C reaches the whole process group: each worker finishes what it read.
    part = Path(outdir)
    part.mkdir(parents=True, exist_ok=True)
    session = Session(outdir, lang=lang, outputs=worker_outputs(outputs, part))
    progress = _report_progress if share == 0 and _progress_value is not None else None
    done = 0
    try:
        with interrupt.reading():
            for path in paths:
                session.read_file(path, progress, done, 0, partition=(share, shares))
                done += _size(path)
    except KeyboardInterrupt:
        session.result.interrupted = True
    result = session.finish()
    result.interrupted = result.interrupted or interrupt.stop_requested()
    result.outdir = Path(outdir)
    return result


def run_parallel(paths: list[str], outdir, *, lang: str = "en", jobs: int = 2, progress=None,
                 outputs: EventOutputs | None = None) -> RunResult:
    started = time.perf_counter()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    parts = [out / f".part-{k}" for k in range(jobs)]
    total = sum(_size(p) for p in paths)
    ctx = multiprocessing.get_context("fork")
    if outputs is None or outputs.stats or outputs.accumulator is not None:
        # Imported once here, before the fork, not by every worker after it
        # (and by this process again for the reports): pandas alone costs
        # ~0.2 s of CPU per process, which made -j 2 slower than -j 1 on web.
        import analyzer.stats.hosts  # noqa: F401
    value = ctx.Value("q", 0)
    interrupted = False
    pool = ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init, initargs=(value, os.getpid()))
    finished = False
    try:
        outputs = outputs or EventOutputs()
        futures = [pool.submit(_work, paths, str(parts[k]), lang, k, jobs, outputs) for k in range(jobs)]
        results = []
        try:
            with interrupt.reading():
                for future in futures:
                    results.append(_wait(future, progress, value, total))
        except KeyboardInterrupt:
            # Stop every worker's reading (a `kill -INT` reached this process
            # only); each finishes what it read, and the parts are merged.
            interrupted = True
            _signal_workers(pool, signal.SIGINT)
            for future in futures[len(results):]:
                results.append(_wait(future, None, value, total))
        pool.shutdown(wait=True)
        finished = True
        merged = _merge(results, out, lang, outputs)
    finally:
        if not finished:  # an error or a second signal: no worker may go on without us
            _abandon(pool)
        for part in parts:
            shutil.rmtree(part, ignore_errors=True)
    merged.interrupted = interrupted or any(r.interrupted for r in results) or interrupt.stop_requested()
    merged.seconds = time.perf_counter() - started
    return merged


def _wait(future, progress, value, total: int) -> RunResult:
    while True:
        try:
            return future.result(timeout=0.2)
        except TimeoutError:
            if progress is not None:
                progress(value.value, total)


def _abandon(pool: ProcessPoolExecutor) -> None:
    """Kill the workers and let the pool's manager thread end.

    A worker killed while it sends its result leaves half a message in the
    result pipe; the manager thread then waits for the rest, which never
    comes while this process holds the pipe's write end too, and the
    interpreter's exit joins that thread: the run hung after "interrupted"
    (seen under load).  With our write end closed the dead workers' ends are
    the last: the wait ends in EOF, a broken pool, and the thread exits.
    """
    results = getattr(pool, "_result_queue", None)  # shutdown() forgets it
    _signal_workers(pool, signal.SIGKILL)
    pool.shutdown(wait=False, cancel_futures=True)
    writer = getattr(results, "_writer", None)
    if writer is not None:
        writer.close()  # nothing in this process writes results


def _signal_workers(pool: ProcessPoolExecutor, signum: int) -> None:
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        try:
            os.kill(process.pid, signum)
        except (ProcessLookupError, TypeError):
            pass


def _batches(path: Path):
    if not path.exists():
        return
    with pa.OSFile(str(path), "rb") as source:
        reader = pa.ipc.open_stream(source)
        for batch in reader:
            if batch.num_rows:
                yield batch


def merge_in_time_order(streams):
    """Batches from streams each in (epoch, frame) order, as one stream in that order.

    Vectorised k-way merge: the rows every stream has provided up to the
    smallest "last key so far" among the streams still running can no longer
    be preceded by anything, so they are sorted and released together (a
    stable sort: rows of one stream with equal keys keep their order; two
    streams never hold the same packet).  The keys are read as numpy arrays
    once per batch: each round is a few binary searches and one lexsort,
    and the rows move only in the final take.
    Memory: about one batch per stream.
    """
    iters = [iter(s) for s in streams]
    # Per stream: [batch, epoch, frame] of the batches it holds, unreleased rows only.
    held: list[list[list]] = [[] for _ in iters]

    def pull(k: int) -> bool:
        batch = next(iters[k], None)
        if batch is None:
            return False
        held[k].append([batch, batch.column("epoch").to_numpy(zero_copy_only=False),
                        batch.column("frame").to_numpy(zero_copy_only=False)])
        return True

    def last_key(k: int) -> tuple:
        _, epoch, frame = held[k][-1]
        return (epoch[-1], frame[-1])

    alive = [k for k in range(len(iters)) if pull(k)]
    while alive:
        epoch_bound, frame_bound = min(last_key(k) for k in alive)
        ready, epochs, frames = [], [], []
        for k in alive:
            kept = []
            for item in held[k]:
                batch, epoch, frame = item
                # Sorted rows: those up to the bound are a prefix, ended in the run of equal epochs.
                low = int(np.searchsorted(epoch, epoch_bound, side="left"))
                high = int(np.searchsorted(epoch, epoch_bound, side="right"))
                n = low + int(np.searchsorted(frame[low:high], frame_bound, side="right"))
                if n:
                    ready.append(batch.slice(0, n))
                    epochs.append(epoch[:n])
                    frames.append(frame[:n])
                if n < len(epoch):
                    kept.append([batch.slice(n), epoch[n:], frame[n:]])
            held[k] = kept
        if len(ready) == 1:
            yield ready[0]
        elif ready:
            order = np.lexsort((np.concatenate(frames), np.concatenate(epochs)))
            yield pa.Table.from_batches(ready).take(order).combine_chunks().to_batches()[0]
        # The stream that set the bound has released everything it held: it pulls next.
        alive = [k for k in alive if held[k] or pull(k)]


def _merged_stats(feeds: list, outputs: EventOutputs) -> StatsFeed | None:
    """The workers' statistics as one (in share order; the merge is exact
    where one pass is, see StatsAccumulator.merge)."""
    if not outputs.stats and outputs.accumulator is None:
        return None
    merged = StatsFeed(outputs.accumulator, outputs.policy, outputs.uri_grouping)
    for feed in feeds:
        if feed is not None:
            merged.absorb(feed)
    return merged


def _rows(path: Path):
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            yield from reader
    except FileNotFoundError:
        return


@dataclass
class Share:
    """One share's outputs, for `merge_shares`: its counters and statistics (a
    RunResult) and where its rows are.  The parallel runner's come from part
    files, the cluster's (engines/cluster.py) from what its tasks returned."""

    result: RunResult
    events: object           # () -> record batches in (epoch, frame) order, each row with its CSV_LINE
    anomalies: object        # () -> anomalies.csv rows (ANOMALY_COLUMNS)
    connections: object      # () -> chunks of connection rows (lists of dicts), in the order they ended
    connections_csv: object  # () -> the share's connections.csv after its header, as bytes, in that order


def merge_shares(shares: list[Share], merged: RunResult, outputs: EventOutputs) -> RunResult:
    """The shares as one run, written into merged.outdir: events by time, statistics
    exactly, anomaly and connection rows, and the counters each share kept of its
    own connections.  What depends on how the packets were read (files, packets,
    skipped, epochs, errors, TCP segments) is the caller's, already in `merged`."""
    out = merged.outdir
    # Events: each share is in time order; merged by (epoch, frame) as one run would order them.
    # The shares selected their events already (the selection wraps their part file).
    consumers, _, merged.kept = open_consumers(out, replace(outputs, part=None, stats=False, accumulator=None,
                                                            selection=None))
    merged.stats = _merged_stats([share.result.stats for share in shares], outputs)
    # The shares' batches carry each row's events.csv bytes (sink.PartFile):
    # events.csv writes them, every other consumer gets the batch without them.
    # When events.csv is the only consumer (the CLI's default), only the sort
    # keys and the lines are merged (and the shares shipped only those,
    # worker_outputs).
    with_lines = [c for c in consumers if getattr(c, "takes_lines", False)]
    plain = [c for c in consumers if not getattr(c, "takes_lines", False)]
    streams = [share.events() for share in shares]
    if not plain:
        streams = [(batch.select(["epoch", "frame", CSV_LINE]) for batch in stream) for stream in streams]
    try:
        for batch in merge_in_time_order(streams):
            for consumer in with_lines:
                consumer.write(batch)
            if plain:
                batch = without_lines(batch)
                for consumer in plain:
                    consumer.write(batch)
        for consumer in consumers:
            consumer.commit()
    except BaseException:
        for consumer in consumers:
            consumer.abort()
        raise
    anomalies = CsvWriter(out / "anomalies.csv", ANOMALY_COLUMNS)
    for share in shares:
        anomalies.write_trusted_rows(share.anomalies())
    anomalies.commit()
    merged.events_by_protocol = Counter()
    merged.anomalies, merged.limits = Counter(), Counter(merged.limits)
    for share in shares:
        r = share.result
        merged.events += r.events
        merged.events_by_protocol.update(r.events_by_protocol)
        merged.anomalies.update(r.anomalies)
        merged.limits.update(r.limits)
        merged.connections_total += r.connections_total
        merged.connections_with_gaps += r.connections_with_gaps
        merged.missed_bytes += r.missed_bytes
    # Connections: each share's rows in turn, streamed, never all in memory;
    # connections.csv is the shares' own files end to end (the same rows a
    # CsvWriter of the merged rows would write, rendered on every core).
    merged.connections = ConnectionRows(out, csv=False)
    table = CsvWriter(out / "connections.csv", CONNECTION_COLUMNS)
    try:
        for share in shares:
            for chunk in share.connections():
                for row in chunk:
                    merged.connections.add(row)
            table.write_rendered(share.connections_csv())
        table.commit()
    except BaseException:
        table.abort()
        raise
    merged.connections.commit()
    return merged


def _connection_chunks(result: RunResult):
    if result.connections is None:
        return
    try:
        yield from result.connections.chunks()
    finally:
        result.connections.close()


def _merge(results: list[RunResult], out: Path, lang: str, outputs: EventOutputs) -> RunResult:
    first = results[0]
    merged = RunResult(outdir=out, files=first.files, packets=first.packets, skipped=first.skipped,
                       first_epoch=first.first_epoch, last_epoch=first.last_epoch, errors=first.errors,
                       tcp_segments=first.tcp_segments)  # every worker reads every packet
    shares = [Share(r, lambda r=r: _batches(r.outdir / PART_EVENTS), lambda r=r: _rows(r.outdir / "anomalies.csv"),
                    lambda r=r: _connection_chunks(r), lambda r=r: rendered_rows(r.outdir / "connections.csv"))
              for r in results]
    return merge_shares(shares, merged, outputs)
