# Machine-readable outputs: summary.json, events.jsonl and events.parquet.
#
# summary.json is the statistics' `summary` dict (totals per protocol, error
# rates, capture span, coverage, the severity policy, the limits that made a
# number approximate) plus the hosts with most errors; it is deterministic (no
# generation time) so runs can be diffed.
#
# events.jsonl / events.parquet are derived from events.csv, streamed in
# chunks (pandas.read_csv(chunksize=...)) so memory stays flat however big the
# capture.  Reading the CSV back means undoing csvfile.neutralise: a cell that
# is "'" followed by = + - @ tab or CR loses the apostrophe.  XX: a wire string
# that genuinely began with "'=" comes back as "=": no spreadsheet-safe CSV
# can tell the two apart, and such strings do not occur in practice.
# Types follow the events contract: ints, floats (null when empty), booleans,
# nullable ints (lines, data_bytes); unknown extra columns stay strings.
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pandas as pd

from analyzer.outputs.csvfile import DANGEROUS_PREFIXES, AtomicWriter, write_atomic

CHUNK_ROWS = 10_000  # rows read from events.csv at a time: ~15 MB of Python strings, flat RSS

INT_COLUMNS = ("frame", "client_port", "server_port", "code")
FLOAT_COLUMNS = ("epoch", "latency_ms")
BOOL_COLUMNS = ("inferred", "standard")
NULLABLE_INT_COLUMNS = ("lines", "data_bytes")


def json_safe(value):
    """numpy / pandas scalars and NaN -> plain JSON values (NaN and NA -> null)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return None if math.isnan(value) or math.isinf(value) else float(value)
    return value


def summary_document(stats, coverage: dict | None = None, *, lang: str = "en", top: int = 10) -> dict:
    doc = {"language": lang}
    if coverage:
        doc["version"] = coverage.get("version", "")
        doc["engine"] = coverage.get("engine", "")
    doc.update(stats.summary)
    hosts = stats.hosts
    if len(hosts):
        worst = hosts[hosts["error_count"] > 0].sort_values(
            ["error_count", "events"], ascending=[False, False], kind="stable").head(top)
        doc["hosts_with_most_errors"] = [
            {k: row[k] for k in ("host", "role", "protocol", "events", "error_count", "error_rate",
                                 "first_seen", "last_seen")}
            for row in worst.to_dict("records")]
    else:
        doc["hosts_with_most_errors"] = []
    return json_safe(doc)


def write_summary(path: str | Path, stats, coverage: dict | None = None, *, lang: str = "en") -> None:
    text = json.dumps(summary_document(stats, coverage, lang=lang), ensure_ascii=False, indent=2, allow_nan=False)
    write_atomic(path, text + "\n")


def unneutralise(value: str) -> str:
    if len(value) > 1 and value[0] == "'" and value[1:].startswith(DANGEROUS_PREFIXES):
        return value[1:]
    return value


def _to_bool(series: pd.Series) -> pd.Series:
    return series.str.strip().str.lower().isin(("true", "1", "yes"))


def read_events_csv(path: str | Path, chunksize: int = CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """events.csv in typed chunks, as the pipeline's DataFrames were before writing."""
    reader = pd.read_csv(path, chunksize=chunksize, dtype=str, keep_default_na=False, na_filter=False)
    with reader:
        for chunk in reader:
            yield type_events(chunk)


def type_events(chunk: pd.DataFrame) -> pd.DataFrame:
    out = {}
    for name in chunk.columns:
        col = chunk[name].astype(str)
        if name in INT_COLUMNS:
            out[name] = pd.to_numeric(col.replace("", None), errors="coerce").astype("Int64")
        elif name in NULLABLE_INT_COLUMNS:
            out[name] = pd.to_numeric(col.replace("", None), errors="coerce").astype("Int64")
        elif name in FLOAT_COLUMNS:
            out[name] = pd.to_numeric(col.replace("", None), errors="coerce").astype(float)
        elif name in BOOL_COLUMNS:
            out[name] = _to_bool(col)
        elif name in NEUTRALISED_COLUMNS:
            out[name] = col.map(unneutralise).astype(object)
        else:
            out[name] = col.astype(object)
    return pd.DataFrame(out, index=chunk.index)


# The events.csv cells that may carry a neutralised string: wire strings and
# file names (pipeline.event_row), and catalogue text written by other writers.
NEUTRALISED_COLUMNS = frozenset({"text", "request", "host", "capture", "class", "name", "meaning"})


def write_events_jsonl(path: str | Path, chunks: Iterable[pd.DataFrame]) -> int:
    """One JSON object per event and line, UTF-8; returns the number of lines."""
    rows = 0
    with AtomicWriter(path) as handle:
        for chunk in chunks:
            columns = list(chunk.columns)
            for values in chunk.itertuples(index=False, name=None):
                record = {c: json_safe(v) for c, v in zip(columns, values)}
                handle.write(json.dumps(record, ensure_ascii=False, allow_nan=False))
                handle.write("\n")
                rows += 1
    return rows


def _arrow_type(name: str):
    import pyarrow as pa

    if name in INT_COLUMNS or name in NULLABLE_INT_COLUMNS:
        return pa.int64()
    if name in FLOAT_COLUMNS:
        return pa.float64()
    if name in BOOL_COLUMNS:
        return pa.bool_()
    return pa.string()


def write_events_parquet(path: str | Path, chunks: Iterable[pd.DataFrame]) -> int:
    """Stream chunks into one Parquet file (one row group per chunk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    writer = None
    schema = None
    out = AtomicWriter(path)
    try:
        for chunk in chunks:
            if schema is None:
                schema = pa.schema([(c, _arrow_type(c)) for c in chunk.columns])
                writer = pq.ParquetWriter(out.handle.buffer, schema, compression="zstd")
            writer.write_table(pa.Table.from_pandas(chunk, schema=schema, preserve_index=False))
            rows += len(chunk)
        if writer is None:  # no events: still a valid, empty file with no columns
            schema = pa.schema([])
            writer = pq.ParquetWriter(out.handle.buffer, schema)
        writer.close()
        out.commit()
    except BaseException:
        out.abort()
        raise
    return rows
