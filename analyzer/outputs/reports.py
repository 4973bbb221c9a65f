# Every report file in OUTDIR besides events.csv, written atomically.
#
#   hosts.csv       one row per host x role x protocol (stats.HOST_COLUMNS)
#   codes.csv       server_ip, protocol, code, count, class, name, meaning
#   report.html     the self-contained page (outputs/html.py)
#   summary.json    totals, coverage, policy (outputs/summary.py); written last,
#                   it lists the set of files (`outputs`) and says `partial`
#
# (events.csv, events.jsonl and events.parquet are written during the run,
# from the engine's batches: outputs/events.py.)
#
# Each file goes through csvfile's AtomicWriter (temporary sibling, fsync,
# rename), so a reader — or a live capture rewriting the reports every
# interval — never sees a half-written file.  CSV cells that start with
# = + - @ tab or CR get a leading apostrophe (csvfile.neutralise), which keeps
# spreadsheets from running wire strings as formulas; numbers stay numbers.
# Floats are written rounded (rates to 6 places, milliseconds to 3) and a
# missing value (no latency for FTP, no events for a rate) is an empty cell.
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from analyzer.outputs.csvfile import write_atomic, write_dataframe
from analyzer.outputs.html import render_html
from analyzer.outputs.publish import OUTPUT_NAMES
from analyzer.outputs.summary import write_summary
from analyzer.stats.hosts import StatsAccumulator, connections_frame

CONNECTION_CHUNK_ROWS = 10_000  # connection rows turned into a DataFrame at a time

FLOAT_PLACES = {"error_rate": 6, "latency_p50_ms": 3, "latency_p95_ms": 3, "latency_p99_ms": 3}


def csv_ready(frame: pd.DataFrame) -> pd.DataFrame:
    """Round floats, NaN -> "" and booleans -> true/false, for a CSV a human reads."""
    out = {}
    for name in frame.columns:
        col = frame[name]
        if col.dtype == bool:
            out[name] = np.where(col.to_numpy(), "true", "false")
        elif pd.api.types.is_float_dtype(col.dtype):
            rounded = col.round(FLOAT_PLACES.get(name, 6))
            out[name] = [("" if pd.isna(v) else (int(v) if float(v).is_integer() and name not in FLOAT_PLACES else float(v)))
                         for v in rounded]
        elif pd.api.types.is_integer_dtype(col.dtype):
            out[name] = ["" if pd.isna(v) else int(v) for v in col]
        else:
            out[name] = ["" if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in col]
    return pd.DataFrame(out, columns=list(frame.columns))


def write_reports(outdir: str | Path, stats, coverage: dict | None = None, *, lang: str = "en",
                  html: bool = True, live: dict | None = None) -> list[Path]:
    """Write the report files for `stats` (a StatsResult) into `outdir`; returns their paths.

    `live` (a live capture's reports): {"running": bool, "as_of": epoch, "refresh": seconds};
    summary.json then says whether the capture still runs, report.html shows it and reloads.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    coverage = dict(coverage or {})
    written = []

    path = outdir / "hosts.csv"
    write_dataframe(path, csv_ready(stats.hosts))
    written.append(path)

    path = outdir / "codes.csv"
    write_dataframe(path, csv_ready(stats.codes))
    written.append(path)

    if html:
        path = outdir / "report.html"
        write_atomic(path, render_html(stats, coverage, lang, live=live))
        written.append(path)

    # Last: summary.json lists the set of files (the manifest, outputs/publish.py).
    path = outdir / "summary.json"
    present = sorted(p.name for p in outdir.iterdir() if p.name in OUTPUT_NAMES and p.is_file())
    write_summary(path, stats, coverage, lang=lang, outputs=sorted(set(present) | {path.name}), live=live)
    written.append(path)
    return written


def finish_stats(accumulator: StatsAccumulator, connections=(), coverage: dict | None = None):
    """The statistics of a run: its accumulated events plus its connection rows
    (dicts, any iterable: a run's come from its spill, outputs/connections.py)."""
    chunk: list = []
    for row in connections or ():
        chunk.append(row)
        if len(chunk) == CONNECTION_CHUNK_ROWS:
            accumulator.add_connections(connections_frame(chunk))
            chunk = []
    if chunk:
        accumulator.add_connections(connections_frame(chunk))
    return accumulator.finish(coverage or {})


def build_and_write(result, *, lang: str = "en", selection=None):
    """The engine's RunResult -> StatsResult and every report file besides the event files.

    The statistics were fed by the run itself (RunResult.stats), with the
    severity policy the run was given (EventOutputs.policy).
    """
    if result.stats is None:
        raise ValueError("this run kept no statistics (EventOutputs.stats was off)")
    coverage = result.coverage()
    coverage["partial"] = bool(result.interrupted)  # stopped by a signal: what was read
    connections = result.connections.rows() if result.connections is not None else ()
    if selection:
        # The events were selected on their way to the statistics; the
        # connections are selected by the same rules (engines/selection.py).
        connections = (row for row in connections if selection.keeps_connection(row))
        coverage["selection"] = selection.describe()
    stats = finish_stats(result.stats.accumulator, connections, coverage)
    write_reports(result.outdir, stats, coverage, lang=lang)
    return stats
