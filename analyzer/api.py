# The library entry point behind `analyzer analyze`: run an engine with the
# statistics fed from its event batches, write every report, and hand back
# the tables.  Nothing here prints (the CLI, analyzer/cli/analyze.py, does);
# `analyze()` returns the same tables as DataFrames, built from the same
# batches the files were written from, never by reading a file back.
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analyzer.engines.native import RunResult, expand_inputs
from analyzer.engines.sink import EventOutputs
from analyzer.errors import UsageError
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
                 keylog=None, decode_as=None, progress=None, selection=None, uri_grouping: str = "path",
                 on_phase=None):
    """Run `engine` and write every report; returns (RunResult, StatsResult).

    `on_phase(name)` is told when reading ends and the statistics ("statistics")
    and reports ("reports") are being made, so a progress display is never silent.
    """
    from analyzer.engines import run as engine_run

    if jobs < 0:
        raise UsageError("--jobs takes a number of processes (0 = all cores)")
    outputs = EventOutputs(jsonl=jsonl, parquet=parquet, keep=keep, policy=make_policy(policy, expect),
                           selection=selection, uri_grouping=uri_grouping)
    result = engine_run(engine, paths, outdir, lang=lang, jobs=jobs, keylog=keylog, decode_as=decode_as,
                        progress=progress, outputs=outputs)
    # pandas comes in only now: during the run it would sit beside the connection table.
    from analyzer.outputs.reports import build_and_write

    if on_phase is not None:
        on_phase("statistics")
    return result, build_and_write(result, lang=lang, selection=selection)


def analyze(paths, outdir=None, *, lang: str | None = None, policy=None, expect=(), jsonl: bool = False,
            parquet: bool = False) -> Analysis:
    """Analyse captures and return the tables the files hold, as DataFrames.

    `paths` is a path or a list of them (files, directories, "-").  Reports
    are written to `outdir` (a new temporary directory when None).  Damaged
    inputs do not raise: `Analysis.run.errors` lists them, as the CLI would.
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
    events = events_frame(result.kept.table())
    result.kept = None  # the DataFrame holds them now
    return Analysis(outdir=out, run=result, events=events, hosts=stats.hosts, codes=stats.codes, stats=stats)
