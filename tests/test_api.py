"""Python API: analyzer.analyze() returns the numbers of the files it wrote."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

import analyzer

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


def test_damaged_input_is_reported_not_raised(tmp_path):
    bad = tmp_path / "bad.pcap"
    bad.write_bytes((SAMPLES / "http_direct.pcap").read_bytes()[:5000])
    result = analyzer.analyze(bad, tmp_path / "out")
    assert result.run.errors and len(result.events) > 0
