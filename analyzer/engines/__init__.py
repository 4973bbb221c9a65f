# Analysis engines: where events come from.
#
#   native  analyzer.engines.native (our own decoder, reassembly and dissectors):
#           the fast default, no external tool.
#   cluster analyzer.engines.cluster: the native engine spread over a Dask
#           cluster (--cluster); run by api.run_analysis, not by run() below.
#   tshark  analyzer.engines.tshark: Wireshark's dissectors through pyshark,
#           for what ours does not decode (TLS with a key log, HTTP/2) and to
#           check one engine against the other (`analyzer crosscheck`).
#
# Both write the same events.csv / connections.csv / anomalies.csv and return
# a pipeline.RunResult, so statistics and reports do not know which ran.
# Modules load on first use: pyshark is imported only by the tshark engine.
from __future__ import annotations

ENGINES = ("native", "tshark")
DEFAULT_ENGINE = "native"


def run(engine: str, paths: list[str], outdir, **options):
    """Run `engine` over `paths` into `outdir`; options as the engine's run() takes them.

    Every engine takes lang/progress/on_event/outputs (an EventOutputs:
    where the events go); the native engine also jobs (processes), the
    tshark engine keylog/decode_as/prefs.
    """
    if engine == "native":
        for name in ("keylog", "decode_as", "prefs"):
            if options.pop(name, None):
                from analyzer.errors import UsageError

                raise UsageError(f"--{name.replace('_', '-')} needs --engine tshark")
        jobs = options.pop("jobs", 1) or 1
        if options.get("packet_filter") is None:
            options.pop("packet_filter", None)
        else:
            jobs = 1  # -f: the filter runs in this process (parallel workers read unfiltered)
        if jobs > 1 and options.get("on_event") is None:
            from analyzer.engines.parallel import run_parallel, worth_it

            if worth_it(paths, jobs):
                options.pop("counters", None)  # workers report bytes only
                return run_parallel(paths, outdir, jobs=jobs, **options)
        from analyzer.engines.native import run as native_run

        return native_run(paths, outdir, **options)
    if engine == "tshark":
        from analyzer.engines.tshark import run as tshark_run

        options.pop("jobs", None)  # one tshark process per file; no partitioning
        options.pop("counters", None)
        if options.pop("packet_filter", None) is not None:
            from analyzer.errors import UsageError

            raise UsageError("-f on capture files needs --engine native (tshark takes display filters)")
        return tshark_run(paths, outdir, **options)
    from analyzer.errors import UsageError

    raise UsageError(f"unknown engine {engine!r} (choose from {', '.join(ENGINES)})")
