# report.html (analyzer/outputs/html.py + templates/report.html.j2): the
# page is self-contained, bilingual, and inert whatever the capture held.
#
# Static checks parse the HTML with the standard library's parser.  The
# Chromium checks (skipped without Debian's `chromium`) load the page in
# headless Chromium: --dump-dom shows the DOM after the script ran, console
# messages appear on stderr as ":CONSOLE" lines (--enable-logging=stderr),
# and a local HTTP server records any request the page would make.  Both
# detectors are first shown to work on control pages, so a silent run means
# something.  The screenshot goes to tests/artifacts/report.png (gitignored).
from __future__ import annotations

import html
import http.server
import random
import re
import shutil
import subprocess
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

from analyzer.outputs import html as report_html
from analyzer.outputs.html import SCRIPT, TEXT, render_html, script_hash
from analyzer.stats.hosts import compute, connections_frame, events_frame

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium (Debian package chromium) not installed")

T0 = 1_714_550_400.0  # 2024-05-01 08:00:00 UTC


def payloads(port: int = 9) -> list[str]:
    return [
        '<script>document.body.setAttribute("data-pwned","script")</script>',
        '"><img src=x onerror="document.body.setAttribute(\'data-pwned\',\'img\')">',
        "'><svg onload=document.body.setAttribute('data-pwned','svg')>",
        "</title></style></textarea><script>alert(1)</script>",
        f'<img src="http://127.0.0.1:{port}/leak">',
        f"<link rel=stylesheet href=http://127.0.0.1:{port}/css>",
        "javascript:alert(1)//\u2028\u2029",
    ]


def dataset(evil: bool = False, port: int = 9, n: int = 1200):
    rnd = random.Random(11)
    bad = payloads(port)
    rows, conns = [], []
    servers = ["192.0.2.10", "192.0.2.11", "2001:db8::5"]
    for i in range(n):
        t = T0 + 3600 * i / n
        srv, cli = rnd.choice(servers), f"10.1.0.{rnd.randint(2, 20)}"
        kind = rnd.random()
        text = bad[i % len(bad)] if evil else ""
        if kind < 0.75:
            code = rnd.choices([200, 304, 401, 404, 500, 503], [70, 8, 3, 10, 4, 5])[0]
            uri = bad[i % len(bad)] if evil else rnd.choice(["/", "/api/items", "/login", f"/missing/{i % 9}"])
            host = bad[(i + 1) % len(bad)] if evil else "www.example.com"
            rows.append(dict(epoch=t, protocol="http", client_ip=cli, server_ip=srv, server_port=80, code=code,
                             text=text or "OK", request=f"GET {uri} HTTP/1.1", host=host,
                             latency_ms=rnd.lognormvariate(3, 1)))
        elif kind < 0.9:
            code = rnd.choice([220, 230, 331, 530, 550])
            rows.append(dict(epoch=t, protocol="ftp", client_ip=cli, server_ip="203.0.113.21", server_port=21,
                             code=code, text=text or "reply", request="PASS ****" if code in (230, 530) else "RETR f"))
        else:
            code = rnd.choice([1000, 1001, 1006, 1011, 4001])
            rows.append(dict(epoch=t, protocol="websocket", client_ip=cli, server_ip="192.0.2.30", code=code,
                             inferred=code == 1006, text=text, request="GET /ws"))
            conns.append(dict(connection=f"W{i}", protocol="websocket", client_ip=cli, server_ip="192.0.2.30",
                              first_epoch=t - 3, last_epoch=t, outcome={
                                  "state": "aborted" if code == 1006 else "closed", "close_code": code,
                                  "closed_first_by": rnd.choice(["client", "server"])}))
        ev = rows[-1]
        ev["class"] = f"{ev['code'] // 100}{'yz' if ev['protocol'] == 'ftp' else 'xx'}"
        ev["name"] = bad[i % len(bad)] if evil else f"name {ev['code']}"
        ev["meaning"] = bad[(i + 2) % len(bad)] if evil else f"meaning of {ev['code']}"
    for j in range(6):
        conns.append(dict(connection=f"F{j}", protocol="ftp", client_ip=f"10.1.0.{j + 2}", server_ip="203.0.113.21",
                          first_epoch=T0 + j, last_epoch=T0 + j + 9,
                          outcome={"user": bad[j] if evil else "alice", "login": "failed",
                                   "failed_logins": [bad[j] if evil else "root", "admin"]}))
    coverage = {
        "files": [{"name": bad[0] if evil else "capture-2024-05-01.pcapng", "format": "pcapng", "compression": "",
                   "packets": 9000, "error": bad[1] if evil else ""}],
        "packets_read": 9000, "packets_skipped": {bad[2] if evil else "non-ip": 4}, "tcp_segments": 8000,
        "connections": 700, "connections_with_gaps": 2, "missed_bytes": 1200,
        "anomalies": {bad[3] if evil else "http_response_without_request": 3},
        "first_epoch": T0, "last_epoch": T0 + 3600, "engine": "native", "version": "0.1.0", "limits_hit": {},
    }
    return compute(events_frame(rows), connections_frame(conns), coverage), coverage


class Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.script: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        (self.script if self._in_script else self.text).append(data)


def parse(page: str) -> Collector:
    collector = Collector()
    collector.feed(page)
    collector.close()
    return collector


def assert_inert(page: str, bad: list[str]) -> None:
    doc = parse(page)
    scripts = [a for t, a in doc.tags if t == "script"]
    assert scripts == [{}], "exactly our one inline script"
    assert "".join(doc.script) == SCRIPT
    names = {t for t, _ in doc.tags}
    assert not names & {"img", "iframe", "object", "embed", "link", "textarea", "base", "form", "a"}
    for tag, attrs in doc.tags:
        for key, value in attrs.items():
            assert not key.startswith("on"), (tag, key)
            assert key not in ("src", "href", "srcset", "action", "formaction", "xlink:href"), (tag, key)
            assert "javascript:" not in (value or "").lower() or key == "title", (tag, key, value)
            assert not re.search(r"https?://", value or "") or key == "title", (tag, key, value)
    text = "".join(doc.text)
    shown = [p for p in bad if p.replace("\u2028", "").replace("\u2029", "") in text.replace("\u2028", "").replace("\u2029", "")]
    assert shown, "the payloads are shown, as text"


def test_page_structure_and_csp():
    stats, coverage = dataset()
    page = render_html(stats, coverage, "en")
    doc = parse(page)
    csp = [a["content"] for t, a in doc.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0] and f"'{script_hash()}'" in csp[0]
    assert "unsafe-inline" not in csp[0].split("script-src")[1].split(";")[0]
    ids = {a.get("id") for _, a in doc.tags}
    for section in ("cards", "failing", "failing-table", "codes", "timeline", "hosts", "uris", "ftp", "websocket", "coverage", "glossary",
                    "host-table", "uri-table", "ftp-table", "ws-table", "glossary-table"):
        assert section in ids, section
    charts = [a for t, a in doc.tags if t == "svg" and "chart" in a.get("class", "")]
    assert {a["data-protocol"] for a in charts if "codes-chart" in a["class"]} == {"http", "ftp", "websocket"}
    assert len([a for a in charts if "series-chart" in a["class"]]) >= 3
    assert sum(1 for t, a in doc.tags if t == "rect") > 100             # real bars, not tables pretending
    text = "".join(doc.text)
    for key in ("title", "failing_title", "codes_title", "timeline", "host_table", "failing_paths", "ftp_title",
                "ws_title",
                "coverage", "glossary", "error_rate", "seen"):
        assert TEXT[key][0] in text, key
    for en, zh in TEXT.values():                                         # every UI string shown in both languages
        if en in text:
            assert zh in text, en
    assert 'lang="en"' in page and 'data-default-lang="en"' in page
    assert 'data-default-lang="zh"' in render_html(stats, coverage, "zh")
    assert not re.search(r"\b(?:src|href)\s*=", page)                   # nothing to fetch


def test_every_code_explained_in_both_languages():
    pytest.importorskip("analyzer.meaning.catalog")
    stats, coverage = dataset()
    page = render_html(stats, coverage, "en")
    from analyzer.meaning.catalog import lookup

    for proto, code in {(p, int(c)) for p, c in zip(stats.codes["protocol"], stats.codes["code"])}:
        meaning = lookup(proto, code)
        assert html.escape(meaning.name("en"), quote=False) in page
        assert html.escape(meaning.name("zh"), quote=False) in page
        assert html.escape(meaning.description("zh"), quote=False) in page


@pytest.mark.parametrize("catalogue", [True, False])
def test_payloads_render_as_text(monkeypatch, catalogue):
    if not catalogue:                     # names and meanings then come from the (hostile) events
        monkeypatch.setattr(report_html, "_catalog", lambda: None)
    stats, coverage = dataset(evil=True)
    assert_inert(render_html(stats, coverage, "en"), payloads())


def test_empty_report_renders():
    stats = compute(events_frame([]))
    page = render_html(stats, {}, "zh")
    doc = parse(page)
    assert [a for t, a in doc.tags if t == "script"] == [{}]
    assert not [a for t, a in doc.tags if t == "svg"]
    assert TEXT["nothing"][1] in page


# -- headless Chromium ------------------------------------------------------------

def chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *extra, url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def console_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def dom_of(proc: subprocess.CompletedProcess) -> Collector:
    assert "<html" in proc.stdout, proc.stderr[-2000:]
    return parse(proc.stdout)


class Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        Recorder.hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture()
def recorder():
    Recorder.hits = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], Recorder.hits
    server.shutdown()
    server.server_close()


@needs_chromium
def test_detectors_work_on_control_pages(tmp_path, recorder):
    port, hits = recorder
    control = tmp_path / "control.html"
    control.write_text(f'<html><body><img src="http://127.0.0.1:{port}/control">'
                       '<script>console.error("control-console")</script></body></html>', encoding="utf-8")
    proc = chromium(tmp_path, control.as_uri(), "--dump-dom")
    assert "/control" in hits
    assert any("control-console" in line for line in console_lines(proc))


@needs_chromium
def test_report_in_chromium(tmp_path):
    stats, coverage = dataset()
    page = tmp_path / "report.html"
    page.write_text(render_html(stats, coverage, "en"), encoding="utf-8")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    shot.unlink(missing_ok=True)
    proc = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1400,2400")
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    assert console_lines(proc) == []
    proc = chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert console_lines(proc) == []
    doc = dom_of(proc)
    body = [a for t, a in doc.tags if t == "body"][0]
    assert body.get("data-ready") == "true"                             # the script ran to its end
    assert [a["lang"] for t, a in doc.tags if t == "html"] == ["en"]
    svgs = [a for t, a in doc.tags if t == "svg" and "chart" in a.get("class", "")]
    assert len([a for a in svgs if "codes-chart" in a["class"]]) == 3
    assert len([a for a in svgs if "series-chart" in a["class"]]) >= 3
    host_rows = proc.stdout.split('id="host-table"')[1].split("<tbody>")[1].split("</tbody>")[0].count("<tr>")
    assert host_rows == len(stats.hosts)
    sortable = [a for t, a in doc.tags if t == "th" and a.get("data-type")]
    assert sortable and all(a.get("tabindex") == "0" for a in sortable)  # sort handlers attached


@needs_chromium
@pytest.mark.parametrize("default, fragment, shown", [("en", "#lang=zh", "zh"), ("zh", "", "zh"),
                                                      ("zh", "#lang=en", "en"), ("en", "", "en")])
def test_language_switch(tmp_path, default, fragment, shown):
    stats, coverage = dataset(n=200)
    page = tmp_path / "report.html"
    page.write_text(render_html(stats, coverage, default), encoding="utf-8")
    proc = chromium(tmp_path, page.as_uri() + fragment, "--dump-dom")
    doc = dom_of(proc)
    assert [a["lang"] for t, a in doc.tags if t == "html"] == [shown]
    pressed = {a["data-set-lang"]: a["aria-pressed"] for t, a in doc.tags if "data-set-lang" in a}
    assert pressed == {"zh": str(shown == "zh").lower(), "en": str(shown == "en").lower()}
    assert console_lines(proc) == []


@needs_chromium
def test_payloads_inert_in_chromium(tmp_path, recorder, monkeypatch):
    port, hits = recorder
    monkeypatch.setattr(report_html, "_catalog", lambda: None)           # hostile names/meanings shown too
    stats, coverage = dataset(evil=True, port=port, n=400)
    page = tmp_path / "report.html"
    page.write_text(render_html(stats, coverage, "en"), encoding="utf-8")
    proc = chromium(tmp_path, page.as_uri(), "--dump-dom")
    doc = dom_of(proc)
    body = [a for t, a in doc.tags if t == "body"][0]
    assert "data-pwned" not in body and body.get("data-ready") == "true"
    assert not {t for t, _ in doc.tags} & {"img", "iframe", "link"}
    assert not [k for _, a in doc.tags for k in a if k.startswith("on")]
    assert console_lines(proc) == []                                    # not even a CSP violation
    assert hits == []                                                   # no request left the page


@needs_chromium
@pytest.mark.parametrize("lang", ["en", "zh"])
def test_report_of_the_bundled_samples_in_chromium(tmp_path, recorder, lang):
    """The report a user gets from `samples/quickstart.sh`, opened as they would."""
    from analyzer.engines.native import run
    from analyzer.outputs.reports import build_and_write

    samples = sorted((Path(__file__).resolve().parents[1] / "samples" / "captures").glob("*.pcap*"))
    result = run([str(p) for p in samples], tmp_path / "out", lang=lang)
    build_and_write(result, lang=lang)
    page = tmp_path / "out" / "report.html"
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"samples-report-{lang}.png"
    shot.unlink(missing_ok=True)
    port, hits = recorder
    proc = chromium(tmp_path, page.as_uri(), f"--screenshot={shot}", "--window-size=1400,3000")
    assert shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    proc = chromium(tmp_path, page.as_uri(), "--dump-dom")
    assert console_lines(proc) == []
    assert hits == []  # nothing fetched from anywhere
    doc = dom_of(proc)
    assert [a["lang"] for t, a in doc.tags if t == "html"] == [lang]
    charts = [a for t, a in doc.tags if t == "svg" and "codes-chart" in a.get("class", "")]
    assert len(charts) == 3  # HTTP, FTP and WebSocket all present in the samples
    assert 'id="host-table"' in proc.stdout
