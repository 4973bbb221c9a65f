# `analyzer live`: watch an interface, keep every event, report while it runs.
#
# The pipeline is the one `analyze` uses (pipeline.Session: decode ->
# reassembly -> dissectors -> events.csv, or engines.tshark.TsharkSession
# with --engine tshark); only the packets' source changes (capture/interface.py).
# Around it, this module owns the capture loop:
#
#   * Waiting: the socket is drained without blocking in batches; when it is
#     empty the loop select()s on it and on a signal wake-up pipe, with a
#     timeout up to the next report or the end of --duration.  SIGINT and
#     SIGTERM only set a flag (and wake the select), so the loop notices at
#     once and ends like --duration or --count does: every open connection
#     finalised (pending requests flushed, WebSockets still open reported as
#     open), final reports written, kernel drop counts printed.  Packets the
#     kernel had already received when the stop came are still analysed
#     (bounded by DRAIN_SECONDS).  A second signal during that final step
#     interrupts it (exit 130).
#   * Reports every --interval: events.csv is appended (flushed), and only
#     the rows added since the last interval are read back and fed to one
#     incremental StatsAccumulator, with the connections finished since;
#     hosts.csv, codes.csv, summary.json and report.html are then rewritten
#     atomically (temporary file + rename).  The terminal shows a hosts x
#     codes table (a TTY) or one status line per interval on stderr.
#   * Memory: nothing is kept per packet or per event; per connection only
#     while it is open (the flow table expires idle ones) and its row until
#     the next interval (then it is in connections.csv and the statistics).
#     The statistics are bounded by their own limits (stats/hosts.py).  What grows
#     is on disk: events.csv, connections.csv and the -w pcap.
#
# Limits: interim reports count finished connections only (an open one is
# counted when it ends or at the end of the run); without -o the events are
# kept in a temporary directory for the run's duration and then deleted.
from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from analyzer.errors import ExitStatus, UsageError
from analyzer.outputs.visible import visible

# Default seconds between running reports; report.html takes ~0.1 s to render.
DEFAULT_INTERVAL = 5.0
MIN_INTERVAL = 0.2
# Longest select() wait: bounds how late a library caller's stop_event is seen.
MAX_WAIT = 0.25
# At a stop, packets the kernel already holds are still analysed, for at most
# this long (under a flood the queue never empties; 16 MiB drain in ~0.5 s).
DRAIN_SECONDS = 2.0
# The terminal view, the metrics' capture figures and the event files are
# brought up to date this often (the reports every --interval).
TICK_SECONDS = 1.0

EPILOG = """examples:
  analyzer live -i eth0 -f 'tcp port 80 or tcp port 21' -o out/
  analyzer live -i lo -f 'tcp port 8080' --duration 60 -o out/ -w run.pcap
  analyzer live -i eth0 --count 100000 --fail-on 'http.5xx>1%'
  analyzer live -i eth0 -f 'tcp port 80' --metrics 127.0.0.1:9464
  analyzer live -i lo --duration 300 --fail-on 'http.errors>0' --exit-on-fail
  analyzer live --list-interfaces

Stops at --duration, --count, Ctrl-C, SIGTERM or (with --exit-on-fail) the
first --fail-on crossing; each ends cleanly (open connections finalised,
final reports written, kernel drops printed).
Exit status: 0 done (--duration, --count), 2 bad option / unknown interface /
invalid filter, 3 the interface went away or -w cannot be written, 5 a
--fail-on threshold was crossed (at any report or at the end), 6 no capture
privilege (root or CAP_NET_RAW), 7 libpcap missing, 130 stopped by Ctrl-C
(SIGINT), 143 stopped by SIGTERM (in both cases after writing every report).
"""


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value
    return parse


def register(sub) -> None:
    p = sub.add_parser(
        "live", help="capture on a network interface and report while it runs",
        description="Capture on an interface (BPF filter compiled into the kernel), dissect HTTP, FTP and "
                    "WebSocket as `analyze` does, and refresh the reports every --interval.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-i", "--interface", metavar="IFACE", help="interface to capture on (e.g. eth0, lo)")
    p.add_argument("-f", "--filter", metavar="BPF", default=None,
                   help="capture filter in tcpdump syntax, e.g. 'tcp port 80 or tcp port 21'")
    p.add_argument("--duration", type=_positive(float), metavar="SECONDS", help="stop after this many seconds")
    p.add_argument("-c", "--count", type=_positive(int), metavar="PACKETS", help="stop after this many packets")
    p.add_argument("-o", "--outdir", default=None,
                   help="write events.csv (appended) and the reports (rewritten every interval) here")
    p.add_argument("--interval", type=_positive(float), default=DEFAULT_INTERVAL, metavar="SECONDS",
                   help="seconds between running reports (default: %(default)s)")
    p.add_argument("-w", "--write", metavar="FILE", help="also save the raw packets as a pcap file")
    p.add_argument("-p", "--no-promiscuous-mode", dest="promisc", action="store_false",
                   help="do not put the interface into promiscuous mode")
    p.add_argument("-D", "--list-interfaces", action="store_true", help="list the interfaces and exit")
    p.add_argument("--lang", choices=("en", "zh"), default=None,
                   help="language of meanings in the outputs (default: from the locale, else en)")
    p.add_argument("--fail-on", action="append", default=[], metavar="EXPR",
                   help="exit with status 5 when EXPR holds at a report or at the end, e.g. 'http.5xx>1%%' "
                        "(repeatable; checked every --interval, the first crossing is printed at once)")
    p.add_argument("--exit-on-fail", action="store_true",
                   help="stop the capture at the first --fail-on crossing (exit 5): a smoke test for CI")
    p.add_argument("--metrics", metavar="HOST:PORT", default=None,
                   help="serve Prometheus/OpenMetrics metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9464")
    p.add_argument("--metrics-file", metavar="PATH", default=None,
                   help="also write the metrics to PATH every --interval and at the end (node_exporter "
                        "textfile-collector format)")
    p.add_argument("--metrics-servers", type=int, default=None, metavar="N",
                   help="servers with their own metrics label; later ones count as server=\"other\" (default: 50)")
    p.add_argument("--policy", metavar="FILE", help="TOML file saying which codes count as errors")
    p.add_argument("--expect", action="append", default=[], metavar="PROTO:CODE",
                   help="treat this code as expected, not an error (e.g. http:401; repeatable)")
    p.add_argument("--jsonl", action="store_true", help="also write events.jsonl at the end (needs -o)")
    p.add_argument("--parquet", action="store_true", help="also write events.parquet at the end (needs -o)")
    p.add_argument("-q", "--quiet", action="store_true", help="no live table, status lines or final summary")
    p.add_argument("--engine", choices=("native", "tshark"), default="native",
                   help="native (default, fast) or tshark (packets piped to Wireshark's dissectors)")
    p.add_argument("--tls-keylog", metavar="FILE", default=None,
                   help="NSS key log (SSLKEYLOGFILE) to decrypt TLS; needs --engine tshark")
    p.add_argument("--decode-as", action="append", default=[], metavar="SPEC",
                   help="tshark decode-as rule, e.g. tcp.port==8888,http (repeatable; --engine tshark)")
    p.set_defaults(func=cmd_live)


def cmd_live(args) -> int:
    if args.list_interfaces:
        return list_interfaces()
    if not args.interface:
        raise UsageError("live: choose an interface with -i IFACE (see `analyzer live --list-interfaces`)")
    if (args.jsonl or args.parquet) and not args.outdir:
        raise UsageError("live: --jsonl and --parquet need -o OUTDIR")
    if args.interval < MIN_INTERVAL:
        raise UsageError(f"live: --interval must be at least {MIN_INTERVAL} seconds")
    if args.exit_on_fail and not args.fail_on:
        raise UsageError("live: --exit-on-fail needs at least one --fail-on EXPR")
    metrics = None
    if args.metrics is not None:
        from analyzer.outputs.metrics import parse_address

        try:
            metrics = parse_address(args.metrics)
        except ValueError as exc:
            raise UsageError(f"live: {exc}") from None
    if args.metrics_servers is not None and args.metrics is None and args.metrics_file is None:
        raise UsageError("live: --metrics-servers needs --metrics HOST:PORT or --metrics-file PATH")
    from analyzer.cli.options import engine_options

    outcome = capture(
        args.interface, args.filter, outdir=args.outdir, duration=args.duration, count=args.count,
        interval=args.interval, lang=args.lang, policy=args.policy, expect=args.expect, fail_on=args.fail_on,
        write=args.write, promisc=args.promisc, jsonl=args.jsonl, parquet=args.parquet, quiet=args.quiet,
        metrics=metrics, metrics_file=args.metrics_file, metrics_servers=args.metrics_servers,
        exit_on_fail=args.exit_on_fail,
        **engine_options(args),
    )
    return int(outcome.status)


def list_interfaces(out=None) -> int:
    from analyzer.capture.interface import interfaces

    out = out or sys.stdout
    rows = interfaces()
    width = max((len(r["name"]) for r in rows), default=4)
    for r in rows:
        state = "up" if r["up"] else "down"
        if r["up"] and not r["carrier"]:
            state += " (no carrier)"
        mtu = f"mtu {r['mtu']}" if r["mtu"] is not None else ""
        print(f"{r['index']:>3}. {r['name']:<{width}}  {r['link']:<24} {state:<16} {mtu}".rstrip(), file=out)
    return int(ExitStatus.OK)


@dataclass
class LiveOutcome:
    """What `capture()` returns."""

    status: ExitStatus
    packets: int = 0                 # packets fed to the pipeline
    duplicates: int = 0              # loopback outgoing copies ignored
    kernel_received: int = 0         # passed the filter (both loopback copies)
    kernel_dropped: int = 0
    events: int = 0
    seconds: float = 0.0
    unanalysed: int = 0              # read past --count or after the stop, not analysed
    stopped_by: str = ""             # "duration" | "count" | "SIGINT" | "SIGTERM" | "stop_event" | "error" | "fail-on"
    crossed: list = field(default_factory=list)  # --fail-on reasons printed while the capture ran
    stats: object = None             # stats.StatsResult of the final reports
    outdir: Path | None = None
    errors: list = field(default_factory=list)


class _Stopper:
    """SIGINT/SIGTERM set a flag and wake the select(); a second one interrupts."""

    def __init__(self) -> None:
        self.reason = ""
        self.finishing = False
        self.wake_r = self.wake_w = None
        self._old: dict = {}
        self._old_fd = None

    def install(self) -> None:
        try:
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self._old_fd = signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: the caller stops us with stop_event
            self.uninstall()

    def _handle(self, signum, frame) -> None:
        if self.reason and self.finishing:
            raise KeyboardInterrupt
        self.reason = self.reason or signal.Signals(signum).name

    def drain(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except (BlockingIOError, OSError, TypeError):
            pass

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        if self._old_fd is not None:
            signal.set_wakeup_fd(self._old_fd)
            self._old_fd = None
        for fd in (self.wake_r, self.wake_w):
            if fd is not None:
                os.close(fd)
        self.wake_r = self.wake_w = None


class LiveReports:
    """Incremental statistics over a live Session's events, and the report files.

    The session's event batches feed `acc` directly (EventOutputs.accumulator),
    so the statistics see exactly what `analyze` would; finished connections
    come through `connection()` and are added at each update.
    """

    def __init__(self, outdir: Path, *, policy, lang: str, write_files: bool) -> None:
        from analyzer.events import CONNECTION_COLUMNS
        from analyzer.outputs.csvfile import CsvWriter
        from analyzer.stats.hosts import StatsAccumulator

        self.out = Path(outdir)
        self.lang = lang
        self.write_files = write_files
        self.acc = StatsAccumulator(policy)
        self.pending: list[dict] = []
        self.columns = CONNECTION_COLUMNS
        self.connections = CsvWriter(self.out / "connections.csv", CONNECTION_COLUMNS, atomic=False)
        self.stats = None

    def outputs(self, *, jsonl: bool = False, parquet: bool = False, also=()):
        """Where the session sends its events: events.csv, these statistics, the optional files, `also`."""
        from analyzer.engines.sink import EventOutputs

        return EventOutputs(csv=self.write_files, jsonl=jsonl and self.write_files,
                            parquet=parquet and self.write_files, accumulator=self.acc, also=tuple(also))

    def connection(self, row: dict) -> None:
        """Session's on_connection: stream the row to connections.csv, keep it until the next update."""
        self.connections.write_rows((tuple(row[c] for c in self.columns),))
        self.pending.append(row)

    def _absorb(self) -> None:
        from analyzer.stats.hosts import connections_frame

        if self.pending:
            rows, self.pending = self.pending, []
            self.acc.add_connections(connections_frame(rows))

    def update(self, session, coverage: dict, interval: float):
        """Mid-run: events so far into events.csv and the statistics, reports rewritten."""
        session.interim()
        self.connections.flush()
        return self._refresh(coverage, {"running": True, "as_of": time.time(), "refresh": interval})

    def final(self, coverage: dict):
        """After session.finish(): the last connections, every report."""
        self.connections.commit()
        return self._refresh(coverage, {"running": False, "as_of": time.time()})

    def _refresh(self, coverage: dict, live: dict):
        self._absorb()
        self.stats = self.acc.finish(coverage)
        if self.write_files:
            from analyzer.outputs.reports import write_reports

            write_reports(self.out, self.stats, coverage, lang=self.lang, live=live)
        return self.stats


class _Watch:
    """What runs beside the capture: metrics, the live view's numbers, the live --fail-on gate."""

    def __init__(self, rules, exit_on_fail: bool, metrics, activity, err, metrics_file=None) -> None:
        self.rules = rules
        self.exit_on_fail = exit_on_fail
        self.metrics = metrics
        self.metrics_file = metrics_file
        self.activity = activity
        self.err = err
        self.file_error = None
        self.fired: set = set()
        self.crossed: list[str] = []
        self.stop = False

    def consumers(self) -> tuple:
        return tuple(c for c in (self.metrics, self.activity) if c is not None)

    def capture_figures(self, coverage: dict, session) -> None:
        if self.metrics is not None:
            self.metrics.set_capture(self.metrics.figures(coverage, _open_connections(session)))

    def write_metrics(self) -> None:
        """--metrics-file, rewritten whole; a failure is said once and kept for the exit status."""
        if self.metrics_file is None:
            return
        try:
            self.metrics.write_textfile(self.metrics_file)
        except OSError as exc:
            if self.file_error is None:
                from analyzer.errors import InputError

                self.file_error = InputError(f"--metrics-file {self.metrics_file}: cannot write "
                                             f"({exc.strerror or exc})")
                print(f"analyzer: error: {self.file_error}", file=self.err, flush=True)

    def gate(self, stats, elapsed: float) -> None:
        """The first crossing of each rule is printed at once; --exit-on-fail then stops the capture."""
        if not self.rules:
            return
        from analyzer.meaning.gate import evaluate

        for rule in self.rules:
            if rule.text in self.fired:
                continue
            for reason in evaluate([rule], stats):
                self.fired.add(rule.text)
                self.crossed.append(reason)
                print(f"analyzer: threshold crossed at {_clock(elapsed)}: {reason}", file=self.err, flush=True)
        if self.crossed and self.exit_on_fail:
            self.stop = True


def _open_connections(session) -> int:
    """TCP connections the session's table holds open (native: FlowTable.live; tshark: its dict)."""
    table = getattr(session, "table", None)
    if table is not None and hasattr(table, "live"):
        return int(table.live)
    return len(getattr(session, "conns", ()) or ())


def capture(iface: str, bpf: str | None = None, *, outdir=None, duration: float | None = None,
            count: int | None = None, interval: float = DEFAULT_INTERVAL, lang: str | None = None,
            policy=None, expect=(), fail_on=(), write=None, promisc: bool = True, jsonl: bool = False,
            parquet: bool = False, quiet: bool = False, stop_event=None, console=None,
            err=None, engine: str = "native", keylog: str | None = None,
            decode_as: dict | None = None, metrics: tuple[str, int] | None = None,
            metrics_file=None, metrics_servers: int | None = None, exit_on_fail: bool = False) -> LiveOutcome:
    """Capture on `iface` until `duration`, `count`, SIGINT/SIGTERM or `stop_event.is_set()`.

    engine="tshark" pipes the captured packets to tshark (engines/tshark.py)
    instead of the native dissectors; the reports are the same files.

    Raises UsageError / PermissionDenied / MissingTool / InputError before
    any packet is read when the capture cannot start (see capture/interface.py).
    `metrics` (host, port) serves /metrics there (outputs/metrics.py) while the capture runs;
    `metrics_file` gets the same metrics every `interval` and at the end.
    """
    err = err or sys.stderr
    from analyzer.api import resolve_lang as _lang
    from analyzer.errors import InputError
    from analyzer.engines.native import Session
    from analyzer.meaning.severity import make_policy
    from analyzer.capture.interface import LiveSource, PcapWriter

    lang = _lang(lang)
    rules = []
    if fail_on:
        from analyzer.meaning.gate import parse

        rules = [parse(expr) for expr in fail_on]  # a bad expression fails before the capture starts
    policy = make_policy(policy, expect)
    if outdir is not None:
        try:
            Path(outdir).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{outdir}: cannot create the output directory ({exc.strerror or exc})") from None
    _quiet_scapy()

    source = LiveSource(iface, bpf, promisc=promisc)
    tmp = None
    pcap = None
    view = None
    exporter = None
    stopper = _Stopper()
    try:
        if metrics is not None or metrics_file is not None:
            exporter = _metrics(metrics, metrics_file, metrics_servers, policy, engine, source)
        activity = None
        if not quiet:
            from analyzer.stats.recent import RecentActivity

            activity = RecentActivity(policy)
        watch = _Watch(rules, exit_on_fail, exporter, activity, err, metrics_file)
        if outdir is None:
            tmp = tempfile.TemporaryDirectory(prefix="analyzer-live-")
            out = Path(tmp.name)
        else:
            out = Path(outdir)
        if write:
            pcap = PcapWriter(write, source.linktype)
        reports = LiveReports(out, policy=policy, lang=lang, write_files=outdir is not None)
        if engine == "tshark":
            from analyzer.engines.tshark import TsharkSession

            session = TsharkSession(out, lang=lang, stream_events=True, on_connection=reports.connection,
                                    keylog=keylog, decode_as=decode_as,
                                    outputs=reports.outputs(jsonl=jsonl, parquet=parquet, also=watch.consumers()))
        else:
            session = Session(out, lang=lang, stream_events=True, on_connection=reports.connection,
                              outputs=reports.outputs(jsonl=jsonl, parquet=parquet, also=watch.consumers()))
        session.begin(iface, display=iface).format = "live"
        stopper.install()
        if not quiet:
            from analyzer.cli.live_view import LiveView

            view = LiveView(console, err, iface)
        if exporter is not None and exporter.server is not None:
            host, port = exporter.server.server_address[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"analyzer: metrics at http://{shown}:{port}/metrics", file=err, flush=True)
        where = f", filter {bpf!r}" if bpf else ""
        print(f"analyzer: listening on {iface}, link-type {source.link_name}{where}; "
              f"stop with Ctrl-C", file=err, flush=True)
        outcome = LiveOutcome(status=ExitStatus.OK, outdir=Path(outdir) if outdir is not None else None)
        _loop(source, session, reports, pcap, stopper, view, watch, outcome, duration=duration, count=count,
              interval=interval, stop_event=stop_event)
        # Finalisation: a second signal from here on interrupts (exit 130).
        stopper.finishing = True
        received, dropped = source.kernel_stats()
        source.close()
        if pcap is not None:
            pcap.close()
        if view is not None:
            view.stop()
        result = session.finish()
        coverage = _coverage(session.snapshot(), source, received, dropped, outcome)
        watch.capture_figures(coverage, session)
        stats = reports.final(coverage)
        watch.write_metrics()
        outcome.packets = result.packets
        outcome.duplicates = source.duplicates
        outcome.kernel_received, outcome.kernel_dropped = received, dropped
        outcome.events = result.events
        outcome.stats = stats
        outcome.seconds = result.seconds
        if not quiet:
            from analyzer.cli.terminal import print_summary

            print_summary(stats, coverage, console=console)
        _closing_lines(outcome, source, iface, err)
        outcome.errors += result.errors
        if watch.file_error is not None:
            outcome.errors.append(watch.file_error)
        for exc in outcome.errors:
            print(f"analyzer: error: {visible(str(exc))}", file=err)
        if outcome.errors:
            outcome.status = ExitStatus.INPUT
        if rules:
            from analyzer.meaning.gate import evaluate

            reasons = evaluate(rules, stats)
            for reason in reasons:
                print(f"analyzer: threshold crossed: {reason}", file=err)
            outcome.crossed = list(watch.crossed)
            if (reasons or watch.crossed) and outcome.status == ExitStatus.OK:
                outcome.status = ExitStatus.THRESHOLD
        if outdir is not None and not quiet:
            print(f"outputs written to {Path(outdir).resolve()}/", file=err)
        # Stopped by a signal: every report is final, yet the exit says so
        # (128 + the signal), as `analyze` and shells do.
        if outcome.stopped_by in ("SIGINT", "SIGTERM"):
            outcome.status = ExitStatus.INTERRUPTED if outcome.stopped_by == "SIGINT" else ExitStatus.TERMINATED
        return outcome
    finally:
        stopper.uninstall()
        if view is not None:
            view.stop()
        if exporter is not None:
            exporter.close()
        source.close()
        if pcap is not None:
            pcap.close()
        if tmp is not None:
            tmp.cleanup()


def _metrics(address: tuple[str, int] | None, path, servers: int | None, policy, engine: str, source):
    """The metrics consumer; serving on `address` (a port that cannot be bound is a usage error)."""
    from analyzer._version import __version__
    from analyzer.outputs.metrics import EventMetrics, check_servers, check_textfile

    if path is not None:
        check_textfile(path)
    exporter = EventMetrics(policy, max_servers=check_servers(servers),
                            info={"version": __version__, "engine": engine, "interface": source.iface,
                                  "filter": source.filter or ""})
    if address is not None:
        host, port = address
        try:
            exporter.serve(host, port)
        except OSError as exc:
            raise UsageError(f"live: --metrics {host}:{port}: cannot listen there ({exc.strerror or exc})") from None
    return exporter


def _loop(source, session, reports, pcap, stopper, view, watch, outcome, *, duration, count, interval,
          stop_event) -> None:
    from analyzer.errors import InputError

    clock = time.monotonic
    started = clock()
    deadline = started + duration if duration else None
    next_report = started + interval
    next_tick = started + min(TICK_SECONDS, interval)
    packet = session.packet
    fds = [source] + ([stopper.wake_r] if stopper.wake_r is not None else [])
    state = {"seen": 0}

    def feed(batch, cutoff: float | None = None) -> bool:
        """Analyse `batch`; False once --count is reached or a packet is past `cutoff`."""
        seen = state["seen"]
        for i, (ts, linktype, data, wirelen) in enumerate(batch):
            if (count is not None and seen >= count) or (cutoff is not None and ts > cutoff):
                state["seen"] = seen
                outcome.unanalysed += len(batch) - i
                return False
            seen += 1
            packet(ts, linktype, data, wirelen)
            if pcap is not None:
                pcap.write(ts, data, wirelen)
        state["seen"] = seen
        return count is None or seen < count

    last_packets, last_tick = 0, started
    while True:
        stop = stopper.reason or ("stop_event" if stop_event is not None and stop_event.is_set() else "")
        stop = stop or ("fail-on" if watch.stop else "")
        now = clock()
        if not stop and deadline is not None and now >= deadline:
            stop = "duration"
        if stop:
            outcome.stopped_by = stop
            _drain(source, feed, outcome)
            return
        try:
            batch = source.read_ready()
        except InputError as exc:
            outcome.errors.append(exc)
            outcome.stopped_by = "error"
            return
        if not feed(batch):
            outcome.stopped_by = "count"
            return
        if now >= next_tick or now >= next_report:
            # Every tick: events so far to every consumer (metrics, the view);
            # every --interval: the statistics and the report files too.
            received, dropped = source.kernel_stats()
            report = now >= next_report
            coverage = _coverage(session.snapshot(), source, received, dropped, outcome)
            # Packet figures first, events after: a scrape in between never
            # shows events without the packets that carried them.
            watch.capture_figures(coverage, session)
            if report:
                if pcap is not None:
                    pcap.flush()
                stats = reports.update(session, coverage, interval)
                watch.write_metrics()
                watch.gate(stats, now - started)
            else:
                session.interim()
            seen = state["seen"]
            rate = (seen - last_packets) / max(now - last_tick, 1e-9)
            last_packets, last_tick = seen, now
            if view is not None:
                view.tick(watch.activity, seen, rate, received, dropped, now - started)
                if report:
                    view.report(stats, seen, rate, dropped, now - started)
            now = clock()
            if report:
                next_report = max(next_report + interval, now + interval / 2)
            next_tick = max(next_tick + TICK_SECONDS, now + TICK_SECONDS / 2)
        if not batch:
            wake = min(next_report, next_tick)
            wake = min(wake, deadline) if deadline is not None else wake
            timeout = max(0.0, min(wake - now, MAX_WAIT))
            ready, _, _ = select.select(fds, [], [], timeout)
            if stopper.wake_r is not None and stopper.wake_r in ready:
                stopper.drain()


def _drain(source, feed, outcome) -> None:
    """At a stop: analyse what the kernel had already received (timestamps up to now)."""
    from analyzer.errors import InputError

    cutoff = time.time()
    end = time.monotonic() + DRAIN_SECONDS
    while time.monotonic() < end:
        try:
            batch = source.read_ready()
        except InputError as exc:
            outcome.errors.append(exc)
            return
        if not batch or not feed(batch, cutoff):
            return


def _coverage(coverage: dict, source, received: int, dropped: int, outcome) -> dict:
    # packets_read (the pipeline's) + packets_not_analysed == packets the socket gave;
    # on loopback the kernel counts each of those twice (plus the duplicates ignored).
    coverage["live"] = {
        "interface": source.iface, "filter": source.filter, "link": source.link_name,
        "packets_not_analysed": outcome.unanalysed, "loopback_duplicates_ignored": source.duplicates,
        "packets_truncated": source.truncated,
        "kernel_packets_received": received, "kernel_packets_dropped": dropped,
        "stopped_by": outcome.stopped_by,  # duration, count, SIGINT, SIGTERM, stop_event, error
    }
    return coverage


def _closing_lines(outcome: LiveOutcome, source, iface: str, err) -> None:
    why = {"duration": "--duration reached", "count": "--count reached", "SIGINT": "interrupted (SIGINT)",
           "SIGTERM": "terminated (SIGTERM)", "stop_event": "stopped", "error": "capture error",
           "fail-on": "--fail-on threshold crossed (--exit-on-fail)"}
    notes = [f"{outcome.duplicates:,} loopback duplicates ignored"] if outcome.duplicates else []
    if outcome.unanalysed:
        notes.append(f"{outcome.unanalysed:,} read after the stop not analysed")
    extra = f" ({'; '.join(notes)})" if notes else ""
    print(f"analyzer: capture on {iface} ended: {why.get(outcome.stopped_by, outcome.stopped_by)}", file=err)
    print(f"{outcome.packets:,} packets captured{extra}", file=err)
    print(f"{outcome.kernel_received:,} packets received by filter", file=err)
    print(f"{outcome.kernel_dropped:,} packets dropped by kernel", file=err)
    print(f"{outcome.events:,} events", file=err, flush=True)


def _quiet_scapy() -> None:
    # scapy warns that it cannot pick a dissector class for some link types
    # (e.g. lo); we never let scapy dissect, so the warning is noise.
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"
