# The library entry points behind `analyzer analyze`: run the pipeline, build
# the statistics, write every report, apply the --fail-on gate.  The CLI only
# parses arguments; `analyze()` returns the same tables as DataFrames.
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from analyzer.errors import CaptureError, ExitStatus, InputError, UsageError
from analyzer.engines.native import RunResult, expand_inputs, run


@dataclass
class Analysis:
    """What `analyzer.analyze()` returns: the numbers of the written files."""

    outdir: Path
    run: RunResult
    events: "object"       # pandas.DataFrame, as events.csv
    hosts: "object"        # pandas.DataFrame, as hosts.csv
    codes: "object"        # pandas.DataFrame, as codes.csv
    stats: "object"


def _lang(lang: str | None) -> str:
    if lang:
        return lang
    try:
        from analyzer.meaning.catalog import default_lang
    except ImportError:
        return "en"
    return default_lang()


def run_and_report(captures, outdir, *, lang=None, fail_on=(), policy=None, expect=(), jsonl=False,
                   parquet=False, quiet=False, jobs: int = 0, engine: str = "native", keylog=None,
                   decode_as=None) -> int:
    from analyzer.engines.parallel import default_jobs

    paths = expand_inputs(list(captures))
    if jobs < 0:
        raise UsageError("--jobs takes a number of processes (0 = all cores)")
    jobs = jobs or default_jobs()
    lang = _lang(lang)
    rules = []
    if fail_on:
        from analyzer.meaning.gate import parse

        rules = [parse(expr) for expr in fail_on]  # bad expressions fail before any work
    progress_cm = None
    if not quiet:
        try:
            from analyzer.cli.terminal import progress as progress_cm
        except ImportError:
            progress_cm = None
    from analyzer.engines import run as engine_run

    options = dict(lang=lang, jobs=jobs, keylog=keylog, decode_as=decode_as)
    if progress_cm is not None:
        with progress_cm(sum(_size(p) for p in paths)) as bar:
            result = engine_run(engine, paths, outdir, progress=lambda done, total: bar.update(done), **options)
    else:
        result = engine_run(engine, paths, outdir, **options)
    stats = _reports(result, lang=lang, policy=policy, expect=expect, jsonl=jsonl, parquet=parquet, quiet=quiet)
    status = ExitStatus.OK
    for exc in result.errors:
        print(f"analyzer: error: {exc}", file=sys.stderr)
    if any(isinstance(e, CaptureError) for e in result.errors):
        status = ExitStatus.DAMAGED
    elif any(isinstance(e, InputError) for e in result.errors):
        status = ExitStatus.INPUT
    if rules and stats is not None:
        from analyzer.meaning.gate import evaluate

        reasons = evaluate(rules, stats)
        for reason in reasons:
            print(f"analyzer: threshold crossed: {reason}", file=sys.stderr)
        if reasons and status == ExitStatus.OK:
            status = ExitStatus.THRESHOLD
    if not quiet:
        print(f"outputs written to {Path(outdir).resolve()}/", file=sys.stderr)
    if result.interrupted:
        return int(ExitStatus.INTERRUPTED)
    return int(status)


def _reports(result: RunResult, *, lang, policy, expect, jsonl, parquet, quiet):
    from analyzer.outputs.reports import build_and_write

    return build_and_write(result, lang=lang, policy=policy, expect=expect, jsonl=jsonl, parquet=parquet,
                           quiet=quiet)


def analyze(paths, outdir=None, *, lang: str | None = None, policy=None, expect=(), jsonl: bool = False,
            parquet: bool = False) -> Analysis:
    """Analyse captures and return the tables the files hold, as DataFrames.

    `paths` is a path or a list of them (files, directories, "-").  Reports
    are written to `outdir` (a new temporary directory when None).  Damaged
    inputs do not raise: `Analysis.run.errors` lists them, as the CLI would.
    """
    import os
    import tempfile

    import pandas as pd

    from analyzer.outputs.summary import read_events_csv

    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out = Path(outdir) if outdir is not None else Path(tempfile.mkdtemp(prefix="analyzer-"))
    lang = _lang(lang)
    result = run(expand_inputs([str(p) for p in paths]), out, lang=lang)
    stats = _reports(result, lang=lang, policy=policy, expect=expect, jsonl=jsonl, parquet=parquet, quiet=True)
    chunks = list(read_events_csv(out / "events.csv"))
    events = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    return Analysis(outdir=out, run=result, events=events, hosts=stats.hosts, codes=stats.codes, stats=stats)


def _size(path: str) -> int:
    import os

    try:
        return os.path.getsize(path) if path != "-" else 0
    except OSError:
        return 0
