# The api profile of benchmarks/bench.py: its nginx must answer every request
# of the weighted mix with the code the table gives (the capture's .json and
# the README describe the mix from the table, not from the capture), close
# the connection after the one 500 that should, and the pipelined run must
# not carry that request (a close would drop the requests queued behind it).
from __future__ import annotations

import contextlib
import importlib.util
import shutil
from collections import Counter
from pathlib import Path

import pytest

from samples.capture import free_port

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def api_nginx(bench, workdir: Path):
    port = free_port()
    fill = {"PROFILE": "api", "LOG_LEVEL": "crit", "HOST": bench.API_HOST, "DEAD_PORT": free_port()}
    with bench.site_server([], port, workdir, bench.api_site(), bench.API_SERVER, fill):
        yield port


def test_the_mix_has_every_code_of_the_issue_in_100_requests(bench):
    codes = bench.api_expected_codes()
    assert sum(codes.values()) == 100
    assert set(codes) == {200, 204, 301, 304, 403, 404, 500, 502}
    assert all(len(body) <= 2048 for body in bench.api_site().values())


def test_the_pipelined_cycle_leaves_out_the_closing_request(bench):
    paths = Counter(path for path, _, _ in bench.api_cycle(pipelined=True))
    assert bench.API_CLOSING and not set(paths) & bench.API_CLOSING
    assert sum(paths.values()) == 100 - sum(w for p, _, _, w in bench.API_MIX if p in bench.API_CLOSING)


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_nginx_answers_the_mix_as_the_table_says(bench, tmp_path):
    with api_nginx(bench, tmp_path) as port:
        bench.check_codes(port, bench.api_cycle())  # raises SystemExit on any difference


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
@pytest.mark.parametrize("wrong", [("/v1/users/me", "", 404), ("/v1/reports", "", 502)])
def test_the_check_stops_on_a_code_the_table_does_not_give(bench, tmp_path, wrong):
    with api_nginx(bench, tmp_path) as port, pytest.raises(SystemExit, match=wrong[0]):
        bench.check_codes(port, [wrong])


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx")
def test_the_check_stops_when_a_closing_request_keeps_the_connection(bench, tmp_path, monkeypatch):
    # /v1/reports answers 500 and keeps the connection: declared closing, it must fail.
    monkeypatch.setattr(bench, "API_CLOSING", {"/v1/reports"})
    with api_nginx(bench, tmp_path) as port, pytest.raises(SystemExit, match="closing"):
        bench.check_codes(port, [("/v1/reports", "", 500)])
