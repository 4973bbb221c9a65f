"""Python API: analyzer.analyze() returns the numbers of the files it wrote."""
from __future__ import annotations

from pathlib import Path

import keyword

import pandas as pd
import pytest

import analyzer
from analyzer.errors import CaptureError, ExitStatus, InputError, UsageError

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "captures"


def test_dataframes_equal_the_csv_files(tmp_path):
    result = analyzer.analyze([SAMPLES / "http_nginx_codes.pcap", SAMPLES / "ws_closes.pcap"], tmp_path, lang="en")
    codes = pd.read_csv(tmp_path / "codes.csv", keep_default_na=False)
    assert list(codes.columns) == ["server_ip", "protocol", "code", "count", "class", "name", "meaning"]
    assert codes[["server_ip", "protocol", "code", "count"]].values.tolist() == \
        result.codes[["server_ip", "protocol", "code", "count"]].values.tolist()
    hosts = pd.read_csv(tmp_path / "hosts.csv", keep_default_na=False)
    assert hosts["events"].tolist() == result.hosts["events"].tolist()
    assert hosts["error_count"].tolist() == result.hosts["error_count"].tolist()
    events = pd.read_csv(tmp_path / "events.csv", keep_default_na=False)
    assert len(events) == len(result.events) > 0
    assert events["code"].tolist() == result.events["code"].tolist()
    # codes.csv is exactly the events counted by server x protocol x code
    counted = result.events.groupby(["server_ip", "protocol", "code"]).size()
    for row in result.codes.itertuples():
        assert counted[(row.server_ip, row.protocol, row.code)] == row.count


def test_damaged_input_raises_like_the_cli_with_the_partial_result(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes((SAMPLES / "http_direct.pcap").read_bytes()[:5000])
    with pytest.raises(CaptureError) as caught:
        analyzer.analyze(bad, tmp_path / "out")
    assert caught.value.exit_status == ExitStatus.DAMAGED
    assert len(caught.value.analysis.events) > 0                         # what was read is kept
    result = analyzer.analyze(bad, tmp_path / "out2", errors="keep")
    assert result.run.errors and len(result.events) == len(caught.value.analysis.events)


def test_missing_file_is_an_error_not_empty_frames(tmp_path):
    with pytest.raises(InputError) as caught:
        analyzer.analyze(tmp_path / "nope.pcap", tmp_path / "out")
    assert caught.value.exit_status == ExitStatus.INPUT
    assert str(caught.value) == f"{tmp_path / 'nope.pcap'}: no such file"


def test_bad_arguments_raise_usage_errors(tmp_path):
    for kwargs in ({"errors": "ignore"}, {"servers": ["not-an-ip"]}, {"protocols": ["gopher"]},
                   {"since": "tomorrow"}):
        with pytest.raises(UsageError):
            analyzer.analyze(SAMPLES / "http_direct.pcap", tmp_path / "out", **kwargs)


def test_no_temporary_folder_is_left_behind(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = analyzer.analyze(SAMPLES / "http_nginx_codes.pcap")
    assert result.outdir is None and len(result.events) > 0
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError):
        analyzer.analyze(tmp_path / "missing.pcap")
    assert list(tmp_path.iterdir()) == []


def test_events_are_typed_for_pandas(tmp_path):
    result = analyzer.analyze(SAMPLES / "http_nginx_codes.pcap", tmp_path, engine="native", jobs=2)
    ev = result.events
    assert str(ev["time"].dtype) == "datetime64[ns, UTC]"
    csv_rows = pd.read_csv(tmp_path / "events.csv", keep_default_na=False)
    assert ev["time"].dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ").tolist() == csv_rows["time"].tolist()
    row = ev[ev["code"] == 599].iloc[0]
    assert (row["method"], row["uri"], row["path"]) == (
        "GET", "/app/status/599?reason=Network%20Connect%20Timeout%20Error", "/app/status/{id}")
    assert row["request"] == "GET " + row["uri"]                      # the raw request is kept
    assert ev["is_error"].dtype == bool
    assert ev["is_error"].tolist() == [c >= 400 for c in ev["code"]]     # default policy: HTTP 4xx/5xx
    for column in ev.columns:                                            # df.<column> means the column
        assert not keyword.iskeyword(column) and not hasattr(pd.DataFrame, column), column
    assert {"code_class", "anomaly_flags"} <= set(ev.columns)
    assert result.failing.iloc[0]["first_error_frame"] > 0


def test_readme_api_example_runs(tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("<!-- api-example: run by tests/test_api.py -->")[1].split("```python\n")[1].split("```")[0]
    (tmp_path / "samples").symlink_to(SAMPLES.parent)                 # the example's paths, as in a checkout
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)                # noqa: S102 - our own README
    assert (tmp_path / "error-rate.png").stat().st_size > 1000
    assert namespace["per_minute"].max() > 0
