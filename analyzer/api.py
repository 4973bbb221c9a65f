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

    outdir: Path
    run: RunResult
    events: "object"       # pandas.DataFrame: events.csv's rows, wire strings exactly as captured
    hosts: "object"        # pandas.DataFrame, as hosts.csv
    codes: "object"        # pandas.DataFrame, as codes.csv
    stats: "object"


def resolve_lang(lang: str | None) -> str:
    if lang:
        return lang
    from analyzer.meaning.catalog import default_lang

    return default_lang()


def run_analysis(paths: list[str], outdir, *, lang: str, policy=None, expect=(), jsonl: bool = False,
                 parquet: bool = False, keep: bool = False, jobs: int = 1, engine: str = "native",
                 keylog=None, decode_as=None, progress=None, also=()):
    """Run `engine` and write every report; returns (RunResult, StatsResult).

    The files are written into a staging folder and replace `outdir`'s set
    as a whole at the end (outputs/publish.py).  When no input could be read
    at all nothing is written, `outdir` stays as it was and the StatsResult
    is None.  Writing failures (disk full, no permission) raise OutputError,
    with `outdir` unchanged.  `also`: further consumers of the event batches
    (e.g. outputs.metrics.EventMetrics).
    """
    from analyzer.engines import run as engine_run
    from analyzer.outputs.publish import Staging, output_error

    if jobs < 0:
        raise UsageError("--jobs takes a number of processes (0 = all cores)")
    if "-" in paths and (sys.stdin is None or sys.stdin.closed):
        raise InputError("standard input is closed: nothing to read for '-'")
    outputs = EventOutputs(jsonl=jsonl, parquet=parquet, keep=keep, policy=make_policy(policy, expect),
                           also=tuple(also))
    stage = Staging(outdir)
    try:
        result = engine_run(engine, paths, stage.path, lang=lang, jobs=jobs, keylog=keylog,
                            decode_as=decode_as, progress=progress, outputs=outputs)
        if nothing_read(result):
            stage.discard()
            result.outdir = Path(outdir)
            return result, None
        # pandas comes in only now: during the run it would sit beside the connection table.
        from analyzer.outputs.reports import build_and_write

        stats = build_and_write(result, lang=lang)
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


def analyze(paths, outdir=None, *, lang: str | None = None, policy=None, expect=(), jsonl: bool = False,
            parquet: bool = False) -> Analysis:
    """Analyse captures and return the tables the files hold, as DataFrames.

    `paths` is a path or a list of them (files, directories, "-").  Reports
    are written to `outdir` (a new temporary directory when None).  Damaged
    inputs do not raise: `Analysis.run.errors` lists them, as the CLI would.
    When no input could be read at all the first InputError is raised and
    nothing is written; OutputError when the reports cannot be written.
    """
    import os
    import tempfile

    from analyzer.outputs.events import events_frame

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = Path(outdir) if outdir is not None else Path(tempfile.mkdtemp(prefix="analyzer-"))
    lang = resolve_lang(lang)
    result, stats = run_analysis(expand_inputs([str(p) for p in paths]), out, lang=lang, policy=policy,
                                 expect=expect, jsonl=jsonl, parquet=parquet, keep=True)
    if stats is None:  # no input could be read: nothing was written
        raise result.errors[0]
    events = events_frame(result.kept.table())
    result.kept = None  # the DataFrame holds them now
    return Analysis(outdir=out, run=result, events=events, hosts=stats.hosts, codes=stats.codes, stats=stats)
