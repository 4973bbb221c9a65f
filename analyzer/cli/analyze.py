# `analyzer analyze`: run the library, print what a person needs (progress,
# the terminal summary, one line per error, threshold crossings) and turn
# the outcome into a documented exit status.
from __future__ import annotations

import signal
import sys
from pathlib import Path

from analyzer import interrupt
from analyzer.api import resolve_lang, run_analysis
from analyzer.engines.native import _size, expand_inputs
from analyzer.errors import CaptureError, ExitStatus, InputError
from analyzer.outputs.visible import visible


def run_and_report(captures, outdir, *, lang=None, fail_on=(), policy=None, expect=(), jsonl=False,
                   parquet=False, quiet=False, jobs: int = 0, engine: str = "native", keylog=None,
                   decode_as=None, metrics_file=None, metrics_servers=None, selection=None,
                   uri_grouping: str = "path", clients: bool = False, bpf: str | None = None, cluster=None,
                   cluster_ports=None, cluster_timeout=None) -> int:
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
    metrics = None
    if metrics_file is not None:
        from analyzer._version import __version__
        from analyzer.meaning.severity import make_policy
        from analyzer.outputs.metrics import EventMetrics, check_servers, check_textfile

        metrics_file = check_textfile(metrics_file)
        policy = make_policy(policy, expect)  # one policy for the statistics and the metrics
        expect = ()
        metrics = EventMetrics(policy, max_servers=check_servers(metrics_servers),
                               info={"version": __version__, "engine": engine, "interface": "", "filter": ""})
    options = dict(lang=lang, policy=policy, expect=expect, jsonl=jsonl, parquet=parquet, jobs=jobs,
                   engine=engine, keylog=keylog, decode_as=decode_as, also=(metrics,) if metrics else (),
                   selection=selection, uri_grouping=uri_grouping, bpf=bpf)
    if cluster is not None:
        from analyzer.engines.cluster import check_address, parse_ports

        check_address(cluster)
        options.update(cluster=cluster, cluster_ports=parse_ports(cluster_ports), cluster_timeout=cluster_timeout)
    # SIGINT/SIGTERM stop the reading; what was read is written, marked partial.
    interrupt.install()
    try:
        if quiet:
            result, stats = run_analysis(paths, outdir, **options)
        elif cluster is not None:
            # Progress as lines (tasks done / total, packets/s), after the dashboard's address.
            from analyzer.cli.terminal import print_summary

            result, stats = run_analysis(paths, outdir, notify=lambda text: print(f"analyzer: {text}", file=sys.stderr,
                                                                               flush=True), **options)
            if stats is not None:
                print_summary(stats, result.coverage(), lang=lang, clients=clients)
        else:
            from analyzer.cli.terminal import print_summary, progress

            with progress(sum(_size(p) for p in paths), stdin="-" in paths) as bar:
                result, stats = run_analysis(paths, outdir, progress=lambda done, total: bar.update(done),
                                             on_phase=bar.phase, counters=bar.counters, **options)
            if stats is not None:
                print_summary(stats, result.coverage(), lang=lang, clients=clients)
    finally:
        interrupt.uninstall()
    status = ExitStatus.OK
    if metrics is not None:
        metrics.set_capture(metrics.figures(result.coverage()))
        try:
            metrics.write_textfile(metrics_file)
        except OSError as exc:
            result.errors.append(InputError(f"--metrics-file {metrics_file}: cannot write ({exc.strerror or exc})"))
    added = result.coverage().get("decode_as_added") or []
    if added:
        # The tshark engine's pre-scan found servers tshark would have shown as plain TCP.
        print("analyzer: note: tshark does not dissect these servers by itself; added "
              + " ".join(f"--decode-as {rule}" for rule in added), file=sys.stderr)
    for exc in result.errors:
        print(f"analyzer: error: {visible(str(exc))}", file=sys.stderr)
    note = undecoded_note(result.packets, result.skipped)
    if note:
        print(f"analyzer: {note}", file=sys.stderr)
    if any(isinstance(e, CaptureError) for e in result.errors):
        status = ExitStatus.DAMAGED
    elif any(isinstance(e, InputError) for e in result.errors):
        status = ExitStatus.INPUT
    if rules and stats is not None:
        from analyzer.meaning.gate import evaluate

        reasons = evaluate(rules, stats)
        for reason in reasons:
            print(f"analyzer: threshold crossed: {visible(str(reason))}", file=sys.stderr)
        if reasons and status == ExitStatus.OK:
            status = ExitStatus.THRESHOLD
    where = visible(f"{Path(outdir).resolve()}/")
    if stats is None:
        print(f"analyzer: no input could be read; nothing written to {where}", file=sys.stderr)
    elif result.interrupted:
        print(f"analyzer: interrupted ({signal.Signals(interrupt.exit_signal()).name}); "
              f"what was read is written to {where}, marked partial", file=sys.stderr)
    elif not quiet:
        from analyzer.cli.terminal import label

        print(label(lang, "outputs written", path=visible(str(Path(outdir).resolve()))), file=sys.stderr)
    if result.interrupted:
        return interrupted_status()
    return int(status)


def interrupted_status() -> int:
    """130 for SIGINT (Ctrl-C), 143 for SIGTERM: 128 + the signal, as shells report it."""
    return int(ExitStatus.TERMINATED if interrupt.exit_signal() == signal.SIGTERM else ExitStatus.INTERRUPTED)


def undecoded_note(packets: int, skipped) -> str:
    """One line when most packets were not decoded (a tunnel or link type we
    do not read, a capture of something else): the report would otherwise
    look empty for no visible reason."""
    lost = sum(skipped.values()) if skipped else 0
    if packets < 20 or lost * 2 <= packets:
        return ""
    top = ", ".join(f"{visible(reason)} {count:,}" for reason, count in skipped.most_common(3))
    return f"{lost:,} of {packets:,} packets were not decoded ({top}); see packets_skipped in summary.json"
