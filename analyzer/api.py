# The library entry point behind `analyzer analyze`: run an engine with the
# statistics fed from its event batches, write every report, and hand back
# the tables.  Nothing here prints (the CLI, analyzer/cli/analyze.py, does);
# `analyze()` returns the same tables as DataFrames, built from the same
# batches the files were written from, never by reading a file back.
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from analyzer.engines.native import RunResult, expand_inputs
from analyzer.engines.sink import EventOutputs
from analyzer.errors import CaptureError, InputError, UsageError
from analyzer.meaning.severity import make_policy


@dataclass
class Analysis:
    """What `analyzer.analyze()` returns: the numbers of the written files."""

    outdir: Path | None    # None when the reports went to a temporary directory, now removed
    run: RunResult
    events: "object"       # pandas.DataFrame: events.csv's rows, wire strings exactly as captured
    hosts: "object"        # pandas.DataFrame, as hosts.csv
    codes: "object"        # pandas.DataFrame, as codes.csv
    stats: "object"        # the StatsResult every report was made from
    failing: "object" = None  # pandas.DataFrame: failing server endpoints, most errors first (stats.FAILING_COLUMNS)


def resolve_lang(lang: str | None) -> str:
    if lang:
        return lang
    from analyzer.meaning.catalog import default_lang

    return default_lang()


def run_analysis(paths: list[str], outdir, *, lang: str, policy=None, expect=(), jsonl: bool = False,
                 parquet: bool = False, keep: bool = False, jobs: int = 1, engine: str = "native",
                 keylog=None, decode_as=None, progress=None, also=(), selection=None,
                 uri_grouping: str = "path", on_phase=None, bpf: str | None = None, counters=None,
                 cluster=None, cluster_ports=None, cluster_timeout=None, notify=None):
    """Run `engine` and write every report; returns (RunResult, StatsResult).

    The files are written into a staging folder and replace `outdir`'s set
    as a whole at the end (outputs/publish.py).  When no input could be read
    at all nothing is written, `outdir` stays as it was and the StatsResult
    is None.  Writing failures (disk full, no permission) raise OutputError,
    with `outdir` unchanged.  `also`: further consumers of the event batches
    (e.g. outputs.metrics.EventMetrics).

    `on_phase(name)` is told when reading ends and the statistics ("statistics")
    and reports ("reports") are being made, so a progress display is never silent.
    """
    from analyzer.engines import run as engine_run
    from analyzer.outputs.publish import Staging, output_error

    if jobs < 0:
        raise UsageError("--jobs takes a number of processes (0 = all cores)")
    if "-" in paths and (sys.stdin is None or sys.stdin.closed):
        raise InputError("standard input is closed: nothing to read for '-'")
    outputs = EventOutputs(jsonl=jsonl, parquet=parquet, keep=keep, policy=make_policy(policy, expect),
                           also=tuple(also), selection=selection, uri_grouping=uri_grouping)
    packet_filter = None
    if bpf:
        from analyzer.engines.bpf import PacketFilter

        packet_filter = PacketFilter(bpf)  # a bad expression fails here, before any output
    stage = Staging(outdir)
    try:
        try:
            if cluster is not None:
                from analyzer.engines.cluster import run_cluster

                if engine != "native" or packet_filter is not None:
                    raise UsageError("--cluster runs the native engine without -f")
                result = run_cluster(paths, stage.path, cluster=cluster, lang=lang, progress=progress,
                                     outputs=outputs, notify=notify, ports=cluster_ports, timeout=cluster_timeout)
            else:
                result = engine_run(engine, paths, stage.path, lang=lang, jobs=jobs, keylog=keylog,
                                    decode_as=decode_as, progress=progress, outputs=outputs,
                                    packet_filter=packet_filter, counters=counters)
        finally:
            if packet_filter is not None:
                packet_filter.close()
        if nothing_read(result):
            stage.discard()
            result.outdir = Path(outdir)
            return result, None
        # pandas comes in only now: during the run it would sit beside the connection table.
        from analyzer.engines.sink import return_free_memory
        from analyzer.outputs.reports import build_and_write

        return_free_memory()  # what the run freed, before the statistics read the connections back

        if on_phase is not None:
            on_phase("statistics")
        stats = build_and_write(result, lang=lang, selection=selection)
        stage.publish()
    except OSError as exc:
        stage.discard()
        error = output_error(exc, Path(outdir), stage.path)
        if error is None:
            raise
        raise error from None
    except BaseException:
        stage.discard()
        raise
    result.outdir = Path(outdir)
    return result, stats


def nothing_read(result: RunResult) -> bool:
    """True when every input failed before a packet (missing, unreadable, not a capture)."""
    return bool(result.files) and all(f.error and not f.packets for f in result.files) \
        and not any(isinstance(e, CaptureError) for e in result.errors)


# Column names of the API's events DataFrame that differ from events.csv:
# `class` is a Python keyword (no `df.class`) and `flags` hides
# DataFrame.flags, so attribute access would silently give pandas' own object.
API_RENAMES = {"class": "code_class", "flags": "anomaly_flags"}


def analyze(paths, outdir=None, *, lang: str | None = None, policy=None, expect=(), jsonl: bool = False,
            parquet: bool = False, engine: str = "native", jobs: int = 1, errors: str = "raise",
            protocols=(), servers=(), since=None, until=None, uri_grouping: str = "path",
            bpf: str | None = None, cluster=None) -> Analysis:
    """Analyse captures and return the tables the files hold, as DataFrames.

    `paths` is a path or a list of them (files, directories, "-").  Reports
    are written to `outdir`; with None they are written to a temporary
    directory that is removed before returning (the DataFrames are all
    that is kept, `Analysis.outdir` is None).

    Errors are the CLI's: a bad option raises UsageError, an input that
    cannot be read raises InputError, a damaged capture CaptureError --
    after every readable input was analysed, with the partial Analysis on
    the exception as `.analysis`.  `errors="keep"` returns instead, the
    errors listed in `Analysis.run.errors`.

    `events` has the events.csv columns with `time` as datetime64[ns, UTC],
    `method`, `uri` and `path` (grouped as in the failing-paths table) split
    from `request`, a boolean `is_error` under the active policy, and
    `class`/`flags` renamed `code_class`/`anomaly_flags` (API_RENAMES).
    The selection arguments are `--protocol`, `--server`, `--since`/`--until`
    and `-f` (`bpf`, a libpcap capture filter on the packets).
    `cluster` runs on Dask as `--cluster` does: an address ("tcp://host:8786",
    "local:N") or a `distributed.Client` (left open).
    When no input could be read at all the InputError is raised and nothing
    is written; OutputError when the reports cannot be written.
    """
    import os
    import shutil
    import tempfile

    from analyzer.engines.selection import make_selection
    from analyzer.outputs.events import events_frame

    if errors not in ("raise", "keep"):
        raise UsageError('errors must be "raise" or "keep"')
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    temporary = outdir is None
    out = Path(tempfile.mkdtemp(prefix="analyzer-")) if temporary else Path(outdir)
    try:
        lang = resolve_lang(lang)
        selection = make_selection(tuple(protocols), tuple(servers), since, until)
        policy = make_policy(policy, expect)
        result, stats = run_analysis(expand_inputs([str(p) for p in paths]), out, lang=lang, policy=policy,
                                     jsonl=jsonl, parquet=parquet, keep=True, engine=engine, jobs=jobs,
                                     selection=selection, uri_grouping=uri_grouping, bpf=bpf, cluster=cluster)
        if stats is None:  # no input could be read: nothing was written
            raise result.errors[0]
        events = _api_events(events_frame(result.kept.table()), policy, uri_grouping)
        result.kept = None  # the DataFrame holds them now
    finally:
        if temporary:
            shutil.rmtree(out, ignore_errors=True)
    analysis = Analysis(outdir=None if temporary else out, run=result, events=events, hosts=stats.hosts,
                        codes=stats.codes, stats=stats, failing=stats.failing)
    if errors == "raise" and result.errors:
        exc = result.errors[0]
        exc.analysis = analysis
        raise exc
    return analysis


def _api_events(frame, policy, uri_grouping: str):
    """events.csv's columns made convenient for pandas users (see `analyze`)."""
    import pandas as pd

    from analyzer.stats.paths import group_paths, split_requests

    frame = frame.rename(columns=API_RENAMES)
    # From the µs text rather than the float epoch, which is not exact to the µs; empty -> NaT.
    frame["time"] = pd.to_datetime(frame["time"], format="ISO8601", utc=True, errors="coerce").astype(
        "datetime64[ns, UTC]")
    method, uri = split_requests(frame["request"].to_numpy(dtype=object))
    http = (frame["protocol"] == "http").to_numpy()
    position = frame.columns.get_loc("request") + 1
    frame.insert(position, "method", pd.Series(method.where(http, "").to_numpy(), index=frame.index, dtype="str"))
    frame.insert(position + 1, "uri", pd.Series(uri.where(http, "").to_numpy(), index=frame.index, dtype="str"))
    paths = group_paths(uri) if uri_grouping == "path" else uri
    frame.insert(position + 2, "path", pd.Series(paths.where(http, "").to_numpy(), index=frame.index, dtype="str"))
    frame["is_error"] = policy.error_mask(frame["protocol"], frame["code"])
    return frame
