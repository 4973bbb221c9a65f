# --engine tshark and protocols on ports tshark does not know (issue 14,
# item 3): our pre-scan finds the FTP servers tshark would show as plain TCP,
# adds the --decode-as rules and says so; a rule the user gave is left alone.
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from tests.test_cli import SAMPLES, analyzer

pytestmark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
FTP = SAMPLES / "ftp_vsftpd_curl.pcap"


def ftp_frames(outdir: Path) -> list[tuple[str, str]]:
    with open(outdir / "events.csv", newline="", encoding="utf-8") as handle:
        return [(r["frame"], r["code"]) for r in csv.DictReader(handle) if r["protocol"] == "ftp"]


def golden_port() -> str:
    with open(FTP.with_suffix(".events.csv"), newline="", encoding="utf-8") as handle:
        return next(csv.DictReader(handle))["server_port"]


def test_ftp_on_a_non_standard_port_is_not_dropped(tmp_path):
    port = golden_port()
    assert port != "21"
    proc = analyzer("analyze", FTP, "--engine", "tshark", "-o", tmp_path / "t", "-q")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.decode().splitlines() == [
        f"analyzer: note: tshark does not dissect these servers by itself; added --decode-as tcp.port=={port},ftp"]
    native = analyzer("analyze", FTP, "-o", tmp_path / "n", "-q", "-j1")
    assert native.returncode == 0
    assert ftp_frames(tmp_path / "t") == ftp_frames(tmp_path / "n") != []
    import json

    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["coverage"]["decode_as_added"] == [f"tcp.port=={port},ftp"]


def test_a_rule_given_by_the_user_is_not_repeated(tmp_path):
    port = golden_port()
    proc = analyzer("analyze", FTP, "--engine", "tshark", "--decode-as", f"tcp.port=={port},ftp",
                    "-o", tmp_path, "-q")
    assert proc.returncode == 0 and proc.stderr.decode() == ""
    assert ftp_frames(tmp_path)
