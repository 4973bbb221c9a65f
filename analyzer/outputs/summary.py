# summary.json: the statistics' `summary` dict (totals per protocol, error
# rates, capture span, coverage, the severity policy, the limits that made a
# number approximate) plus the hosts with most errors; it is deterministic (no
# generation time) so runs can be diffed.  (The event files are written from
# the engine's batches: outputs/events.py.)
from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from analyzer.outputs.csvfile import write_atomic
from analyzer.outputs.visible import json_text


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


def summary_document(stats, coverage: dict | None = None, *, lang: str = "en", top: int = 10,
                     outputs: list[str] | None = None, live: dict | None = None) -> dict:
    doc = {"language": lang}
    if live is not None:
        # A live capture rewrites this file every interval: `running` is true
        # until the final write, `as_of` says when these numbers were taken.
        doc["running"] = bool(live.get("running"))
        doc["as_of"] = datetime.fromtimestamp(live["as_of"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    if coverage:
        doc["version"] = coverage.get("version", "")
        doc["engine"] = coverage.get("engine", "")
    # An interrupted run wrote what it had read: its numbers cover part of the input.
    doc["partial"] = bool((coverage or {}).get("partial"))
    if outputs is not None:
        doc["outputs"] = list(outputs)  # the files of this run's set
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
    # Every failing server endpoint (report.html shows the first few), with
    # exact first/last error and the frame to jump to in Wireshark.
    failing = getattr(stats, "failing", None)
    doc["failing_endpoints"] = [] if failing is None or not len(failing) else [
        {**row, "top_codes": [{"code": c, "count": n} for c, n in row["top_codes"]],
         "top_paths": [{"path": p, "count": n} for p, n in row["top_paths"]]}
        for row in failing.to_dict("records")]
    return json_safe(doc)


def write_summary(path: str | Path, stats, coverage: dict | None = None, *, lang: str = "en",
                  outputs: list[str] | None = None, live: dict | None = None) -> None:
    doc = summary_document(stats, coverage, lang=lang, outputs=outputs, live=live)
    write_atomic(path, json_text(doc, indent=2) + "\n")
