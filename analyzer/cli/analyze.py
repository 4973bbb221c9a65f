# `analyzer analyze`: run the library, print what a person needs (progress,
# the terminal summary, one line per error, threshold crossings) and turn
# the outcome into a documented exit status.
from __future__ import annotations

import sys
from pathlib import Path

from analyzer.api import resolve_lang, run_analysis
from analyzer.engines.native import _size, expand_inputs
from analyzer.errors import CaptureError, ExitStatus, InputError


def run_and_report(captures, outdir, *, lang=None, fail_on=(), policy=None, expect=(), jsonl=False,
                   parquet=False, quiet=False, jobs: int = 0, engine: str = "native", keylog=None,
                   decode_as=None) -> int:
    from analyzer.engines.parallel import default_jobs

    paths = expand_inputs(list(captures))
    jobs = jobs if jobs < 0 else (jobs or default_jobs())
    lang = resolve_lang(lang)
    rules = []
    if fail_on:
        from analyzer.meaning.gate import parse

        rules = [parse(expr) for expr in fail_on]  # bad expressions fail before any work
    if engine == "native":
        from analyzer import _fast

        notice = _fast.notice()  # the compiled loop is not built: say so once, keep going
        if notice:
            print(notice, file=sys.stderr)
    options = dict(lang=lang, policy=policy, expect=expect, jsonl=jsonl, parquet=parquet, jobs=jobs,
                   engine=engine, keylog=keylog, decode_as=decode_as)
    if quiet:
        result, stats = run_analysis(paths, outdir, **options)
    else:
        from analyzer.cli.terminal import print_summary, progress

        with progress(sum(_size(p) for p in paths)) as bar:
            result, stats = run_analysis(paths, outdir, progress=lambda done, total: bar.update(done), **options)
        print_summary(stats, result.coverage())
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

