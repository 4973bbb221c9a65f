"""Live monitoring for people and tools watching a capture (issue 15).

Real parts only: nginx answers known codes on two loopback ports, curl
makes the requests (its own %{http_code} output is the truth), `analyzer
live` captures on `lo` as a subprocess, a real Prometheus server (Debian's
`prometheus`, own config and data dir, its own port) scrapes `--metrics`, and
the test reads Prometheus's HTTP API.  The terminal view is read from a tmux
pane, the refreshing report from headless Chromium.  Ports: 19400-19498.

Capture tests need root or CAP_NET_RAW and skip otherwise; each tool skips
its test when it is not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pytest

from test_live import Live, live_runs, needs_capture  # noqa: F401 - live_runs is a fixture

ROOT = Path(__file__).resolve().parents[1]
NGINX_PORTS = (19401, 19402)
METRICS_PORT = 19410
PROMETHEUS_PORT = 19411
# What nginx answers, by path (its own `return`, no upstream).
CODES = {"/ok": 200, "/missing": 404, "/boom": 500, "/busy": 503}

pytestmark = [pytest.mark.live, pytest.mark.slow,
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="live capture is Linux only")]

NGINX_CONF = """
daemon off;
master_process on;
worker_processes 1;
user root;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server_tokens off;
    default_type text/plain;
{servers}
}}
"""
NGINX_SERVER = """
    server {{
        listen 127.0.0.1:{port};
{locations}
    }}
"""


def wait_port(port: int, timeout: float = 15) -> None:
    import socket

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def stop(proc: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def nginx(tmp_path):
    if shutil.which("nginx") is None:
        pytest.skip("nginx is not installed")
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True)
    locations = "\n".join(f"        location = {path} {{ return {code} \"{code}\\n\"; }}"
                          for path, code in CODES.items())
    servers = "".join(NGINX_SERVER.format(port=port, locations=locations) for port in NGINX_PORTS)
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(prefix=prefix, servers=servers))
    proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(prefix), "-e", str(prefix / "error.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for port in NGINX_PORTS:
            wait_port(port)
        yield NGINX_PORTS
    finally:
        stop(proc, signal.SIGQUIT)


def curl(port: int, paths) -> list[int]:
    """One curl run (one keep-alive connection); the codes curl itself saw."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    urls = [arg for p in paths for arg in ("-o", "/dev/null", f"http://127.0.0.1:{port}{p}")]
    out = subprocess.run(["curl", "-s", "--max-time", "10", "-w", "%{http_code}\\n", *urls],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [int(line) for line in out.split()]


# -- Prometheus -------------------------------------------------------------------


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    home = tmp_path / "prometheus"
    (home / "data").mkdir(parents=True)
    config = home / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: analyzer\n    scrape_interval: 1s\n    scrape_timeout: 1s\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{METRICS_PORT}']\n")
    log = open(home / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={home / 'data'}",
                             f"--web.listen-address=127.0.0.1:{PROMETHEUS_PORT}", "--log.level=warn"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=home)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PROMETHEUS_PORT}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > end:
                raise AssertionError("prometheus did not start:\n" + (home / "prometheus.log").read_text())
            time.sleep(0.2)
        yield proc
    finally:
        stop(proc)
        log.close()


def promql(query: str) -> list[dict]:
    url = f"http://127.0.0.1:{PROMETHEUS_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


def by_labels(result: list[dict], *names: str) -> dict:
    return {tuple(r["metric"].get(n, "") for n in names): float(r["value"][1]) for r in result}


def until(predicate, timeout: float = 30, what: str = ""):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


@needs_capture
def test_prometheus_scrapes_exact_counts_per_server_and_code(tmp_path, live_runs, nginx, prometheus):
    bpf = " or ".join(f"tcp port {p}" for p in NGINX_PORTS)
    run = Live(tmp_path, bpf, "--metrics", f"127.0.0.1:{METRICS_PORT}", "--interval", "1", "-q")
    live_runs.append(run)
    assert f"metrics at http://127.0.0.1:{METRICS_PORT}/metrics" in run.stderr
    until(lambda: by_labels(promql('up{job="analyzer"}'), "job") == {("analyzer",): 1.0}, what="the first scrape")

    plan = {NGINX_PORTS[0]: ["/ok"] * 3 + ["/missing"] * 2 + ["/boom"],
            NGINX_PORTS[1]: ["/busy"] * 4 + ["/ok"]}
    truth: Counter = Counter()
    for port, paths in plan.items():
        for code in curl(port, paths):
            truth[(f"127.0.0.1:{port}", str(code))] += 1
    assert truth[(f"127.0.0.1:{NGINX_PORTS[1]}", "503")] == 4  # curl saw what nginx was told to answer

    want = {k: float(v) for k, v in truth.items()}
    got = until(lambda: (lambda r: r if r == want else None)(
        by_labels(promql('analyzer_events_total{protocol="http"}'), "server", "code")),
        what=f"analyzer_events_total == {want}")
    assert got == want
    errors = by_labels(promql('analyzer_errors_total{protocol="http"}'), "server")
    assert errors == {(f"127.0.0.1:{NGINX_PORTS[0]}",): 3.0, (f"127.0.0.1:{NGINX_PORTS[1]}",): 4.0}
    counts = by_labels(promql("analyzer_http_latency_seconds_count"), "server")
    assert counts == {(f"127.0.0.1:{NGINX_PORTS[0]}",): 6.0, (f"127.0.0.1:{NGINX_PORTS[1]}",): 5.0}
    # Every answer took less than 30 s: the highest finite bucket holds them all.
    top = by_labels(promql('analyzer_http_latency_seconds_bucket{le="30.0"}'), "server")
    assert top == counts
    quantile = promql("histogram_quantile(0.95, sum by (le) (analyzer_http_latency_seconds_bucket))")
    assert len(quantile) == 1 and 0 < float(quantile[0]["value"][1]) <= 30
    packets = promql("analyzer_packets_total")
    assert len(packets) == 1 and float(packets[0]["value"][1]) > 0
    info = promql("analyzer_info")
    assert len(info) == 1 and info[0]["metric"]["interface"] == "lo" and info[0]["metric"]["filter"] == bpf
    dashboard_queries_run_against(exposed_names())
    assert run.stop() == 130, run.stderr   # stopped by SIGINT, after every report


def exposed_names() -> set[str]:
    """Every sample name the analyzer's /metrics declares (also those without samples yet)."""
    import re

    with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as r:
        text = r.read().decode()
    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.MULTILINE):
        names |= {name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else {name}
    return names


def dashboard_queries_run_against(names: set[str]) -> None:
    """Every query of the Grafana dashboard is valid PromQL over series Prometheus really has."""
    import re

    from analyzer.outputs.metrics import DASHBOARD

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        for name in re.findall(r"\b(analyzer_[a-z_]+)", expr):
            assert name in names, (name, expr)
        query = expr.replace("$__rate_interval", "15s").replace("$instance", ".*").replace("$server", ".*")
        promql(query)  # asserts status == success
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Error rate per server", "Codes over time", "HTTP latency percentiles", "Packets and kernel drops"} <= titles
    # The error rate per server, as the dashboard computes it, over what curl was answered.
    panel = next(p for p in dashboard["panels"] if p["title"] == "Error rate per server")
    query = panel["targets"][0]["expr"].replace("$__rate_interval", "1m").replace("$instance", ".*") \
        .replace("$server", ".*")
    # rate() needs two scrapes of a series; the series are a few seconds old.
    servers = until(lambda: {r["metric"]["server"] for r in promql(query)} or None, timeout=20,
                    what="the error-rate panel to have series")
    assert servers == {f"127.0.0.1:{p}" for p in NGINX_PORTS}


@needs_capture
def test_exit_on_fail_stops_the_capture_at_the_first_crossing(tmp_path, live_runs, nginx):
    out = tmp_path / "out"
    prom = tmp_path / "live.prom"
    run = Live(tmp_path, f"tcp port {NGINX_PORTS[0]}", "--fail-on", "http.5xx>=2", "--exit-on-fail",
               "--interval", "0.5", "--duration", "120", "-o", out, "--metrics-file", prom)
    live_runs.append(run)
    assert curl(NGINX_PORTS[0], ["/ok", "/boom"]) == [200, 500]
    from test_metrics import parse, series

    def codes() -> list:
        text = prom.read_text() if prom.exists() else ""
        return sorted((dict(k)["code"], v) for k, v in series(parse(text), "analyzer_events_total").items())

    # The file is rewritten every interval; one 5xx is below the threshold: still running.
    until(lambda: codes() == [("200", 1.0), ("500", 1.0)], what="the metrics file to have both events")
    assert run.proc.poll() is None, run.stderr
    assert json.loads((out / "summary.json").read_text())["running"] is True
    assert curl(NGINX_PORTS[0], ["/busy"]) == [503]
    status = run.wait(30)
    err = run.stderr
    assert status == 5, err
    crossed = [line for line in err.splitlines() if line.startswith("analyzer: threshold crossed at ")]
    assert len(crossed) == 1 and "http.5xx>=2: 2 (2 5xx of 3 http events)" in crossed[0], err
    assert "ended: --fail-on threshold crossed (--exit-on-fail)" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["running"] is False and summary["protocols"]["http"]["events"] == 3
    assert codes() == [("200", 1.0), ("500", 1.0), ("503", 1.0)]


@needs_capture
def test_crossing_during_the_run_fails_even_if_the_end_is_below(tmp_path, live_runs, nginx):
    """A burst of errors that a later flood of 200s dilutes still fails the run (exit 5)."""
    # It ends by itself (--duration): a signal stop would exit 130 whatever was crossed.
    run = Live(tmp_path, f"tcp port {NGINX_PORTS[0]}", "--fail-on", "http.5xx>40%", "--interval", "0.5", "-q",
               "--duration", "10")
    live_runs.append(run)
    assert curl(NGINX_PORTS[0], ["/boom"]) == [500]
    until(lambda: "threshold crossed at " in run.stderr, what="the crossing to be printed")
    assert curl(NGINX_PORTS[0], ["/ok"] * 9) == [200] * 9
    status = run.wait(60)
    err = run.stderr
    assert status == 5, err
    assert "threshold crossed at " in err
    assert not [line for line in err.splitlines() if line.startswith("analyzer: threshold crossed: ")]


# -- the refreshing report, in a browser ----------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("chromium is not installed")


BROWSER_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


def browser(profile: Path, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *BROWSER_FLAGS, f"--user-data-dir={profile}", *args],
                          capture_output=True, timeout=timeout)


class _Counting:
    """A static file server for `folder` that counts the GETs of each path (to see the page reload)."""

    def __init__(self, folder: Path, port: int) -> None:
        import functools
        import http.server
        import threading

        self.hits: Counter = Counter()
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits[self.path.split("?")[0]] += 1
                return super().do_GET()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port),
                                                      functools.partial(Handler, directory=str(folder)))
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@needs_capture
def test_interim_report_says_live_and_reloads_itself_in_a_browser(tmp_path, live_runs, nginx):
    out = tmp_path / "out"
    run = Live(tmp_path, f"tcp port {NGINX_PORTS[0]}", "--interval", "1", "-o", out, "-q")
    live_runs.append(run)
    assert curl(NGINX_PORTS[0], ["/ok", "/missing"]) == [200, 404]
    # summary.json is written last (the manifest): once it is there, so is the report.
    until(lambda: (out / "summary.json").exists() and
          json.loads((out / "summary.json").read_text()).get("events") == 2, what="an interim report with 2 events")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["running"] is True and summary["as_of"].endswith("Z")
    html = (out / "report.html").read_text()
    assert '<meta http-equiv="refresh" content="1">' in html
    shot = tmp_path / "live-report.png"
    profile = tmp_path / "profile"
    browser(profile, "--window-size=1280,700", "--virtual-time-budget=300", f"--screenshot={shot}",
            (out / "report.html").as_uri())
    assert shot.exists() and shot.stat().st_size > 10_000
    if os.environ.get("ANALYZER_KEEP_SCREENSHOTS"):
        shutil.copy(shot, os.environ["ANALYZER_KEEP_SCREENSHOTS"])
    dom = browser(profile, "--dump-dom", (out / "report.html").as_uri()).stdout.decode()
    assert "live — as of " in dom and "still running" in dom and 'data-ready="true"' in dom  # its script ran
    # Served over HTTP, the open page asks for itself again and again: the meta
    # refresh works under the page's CSP.  (With a debugging port the browser
    # stays open like a person's tab; it is stopped by its process group.)
    files = _Counting(out, 19420)
    proc = subprocess.Popen([chromium(), *BROWSER_FLAGS, f"--user-data-dir={tmp_path / 'profile2'}",
                             "--remote-debugging-port=19421", "http://127.0.0.1:19420/report.html"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        until(lambda: files.hits["/report.html"] >= 3, timeout=30, what="the page to reload itself twice")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        files.close()
    assert run.stop() == 130, run.stderr   # stopped by SIGINT, after every report
    final = (out / "report.html").read_text()
    assert "still running" not in final and 'http-equiv="refresh"' not in final
    assert json.loads((out / "summary.json").read_text())["running"] is False


# -- the terminal view, in tmux ---------------------------------------------------------


def tmux(*args, check=True) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=check, timeout=20).stdout


@needs_capture
def test_live_terminal_view_in_tmux(tmp_path, nginx):
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed")
    session = f"analyzer-live-{os.getpid()}"
    socket_args = ["-L", session]
    # COLUMNS/LINES from the test runner's environment would fix the width: the pane decides.
    command = (f"unset COLUMNS LINES; cd {ROOT} && PYTHONPATH={ROOT} {sys.executable} -m analyzer live -i lo "
               f"-f 'tcp port {NGINX_PORTS[0]}' --duration 60 2>{tmp_path / 'err'}; sleep 30")
    tmux(*socket_args, "new-session", "-d", "-s", session, "-x", "160", "-y", "50", command)
    try:
        until(lambda: "listening on lo" in (tmp_path / "err").read_text() if (tmp_path / "err").exists() else False,
              what="analyzer live to start")
        codes = curl(NGINX_PORTS[0], ["/ok"] * 4 + ["/boom"] * 2 + ["/missing"])
        assert codes == [200] * 4 + [500] * 2 + [404]

        def screen() -> str | None:
            text = tmux(*socket_args, "capture-pane", "-p", "-t", session)
            return text if "events 7 " in text else None

        text = until(screen, timeout=20, what="the view to show 7 events")
        (tmp_path / "screen.txt").write_text(text)
        assert "live on lo" in text and "dropped by kernel" in text
        assert "errors 3 (" in text and "42.9% of all" in text
        assert "HTTP latency p50" in text and "p95" in text
        row = next(line for line in text.splitlines() if line.strip().startswith(f"127.0.0.1:{NGINX_PORTS[0]}"))
        assert row.split()[:5] == [f"127.0.0.1:{NGINX_PORTS[0]}", "http", "7", "3", "42.9%"], row
        assert "500×2" in row and "404×1" in row and "GET /boom ×2" in row
        feed = text[text.index("recent errors"):]
        assert feed.count(f"127.0.0.1:{NGINX_PORTS[0]}") == 3 and "GET /missing" in feed
        # The view redraws every second: the clock moves on.
        first = next(line for line in text.splitlines() if "live on lo" in line)
        until(lambda: next(line for line in tmux(*socket_args, "capture-pane", "-p", "-t", session).splitlines()
                           if "live on lo" in line) != first, timeout=5, what="a redraw")
        tmux(*socket_args, "send-keys", "-t", session, "C-c")
        until(lambda: "ended: interrupted (SIGINT)" in (tmp_path / "err").read_text(), what="the capture to end")
    finally:
        tmux(*socket_args, "kill-server", check=False)


# -- cardinality under a scan ---------------------------------------------------------

SCAN_PORTS = range(19430, 19480)      # 50 ports of our range ...
SCAN_HOSTS = [f"127.0.1.{i}" for i in range(1, 41)]  # ... on 40 loopback addresses: 2,000 servers


@pytest.fixture
def many_servers():
    """One asyncio thread answering HTTP on every SCAN_HOSTS x SCAN_PORTS; the code depends on the port."""
    import asyncio
    import threading

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    servers = []

    async def answer(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
            port = writer.get_extra_info("sockname")[1]
            code = 503 if port % 2 else 200
            writer.write(f"HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start():
        for host in SCAN_HOSTS:
            for port in SCAN_PORTS:
                servers.append(await asyncio.start_server(answer, host, port, backlog=16))
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(60), "the scan servers did not start"
    yield
    async def close():
        for server in servers:
            server.close()
    asyncio.run_coroutine_threadsafe(close(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@needs_capture
def test_metrics_stay_bounded_while_thousands_of_servers_answer(tmp_path, live_runs, many_servers):
    import http.client

    bpf = f"tcp portrange {SCAN_PORTS[0]}-{SCAN_PORTS[-1]}"
    run = Live(tmp_path, bpf, "--metrics", "127.0.0.1:19412", "--metrics-servers", "20", "-q", "--interval", "1")
    live_runs.append(run)
    truth = Counter()
    for host in SCAN_HOSTS:
        for port in SCAN_PORTS:
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("GET", "/")
            truth[conn.getresponse().status] += 1
            conn.close()
    assert sum(truth.values()) == 2000 and truth[503] == 1000

    from test_metrics import parse, series

    def scrape() -> dict | None:
        with urllib.request.urlopen("http://127.0.0.1:19412/metrics", timeout=5) as r:
            samples = parse(r.read().decode())
        events = series(samples, "analyzer_events_total")
        return samples if sum(events.values()) == 2000 else None

    samples = until(scrape, timeout=60, what="all 2,000 events in the metrics")
    events = series(samples, "analyzer_events_total")
    servers = {dict(k)["server"] for k in events}
    assert len(servers) == 21 and "other" in servers
    assert {dict(k)["code"]: 0 for k in events}.keys() == {"200", "503"}
    assert sum(v for k, v in events.items() if dict(k)["code"] == "503") == truth[503]
    assert sum(series(samples, "analyzer_errors_total").values()) == truth[503]
    assert len(samples) < 500  # 2,000 servers, a few hundred samples
    assert run.stop() == 130, run.stderr   # stopped by SIGINT, after every report
