# Command line: a thin layer that turns arguments into library calls and
# domain errors into one line on stderr plus a documented exit status
# (errors.ExitStatus, listed in README "Exit codes").  Anything else escaping
# is a bug and is reported as such, still without a traceback unless
# ANALYZER_DEBUG is set.
from __future__ import annotations

import argparse
import gc
import os
import signal
import sys

# numpy's OpenBLAS starts a spinning worker thread per core on its first
# matrix call; the command does no linear algebra worth it, and with -j N
# those threads take cores from our own workers (tiny 1 M: 3.3 -> 3.1 s CPU).
# A user's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from analyzer._version import __version__
from analyzer.cli.options import engine_options
from analyzer.errors import AnalyzerError, ExitStatus
from analyzer.outputs.visible import visible

EPILOG_ANALYZE = """examples:
  analyzer analyze capture.pcapng -o out/
  analyzer analyze day1.pcap.gz day2.pcap.zst -o out/ --fail-on 'http.5xx>1%'
  tcpdump -w - -i eth0 port 80 | analyzer analyze - -o out/
  analyzer analyze -r capture.pcapng --server 10.0.0.5:443 --since 2024-05-01T08:00:00Z --protocol http
  analyzer analyze /archive/ --cluster tcp://10.0.0.2:8786 -o out/
"""


def _analyze_parser(sub) -> None:
    p = sub.add_parser(
        "analyze", help="analyse capture files (pcap, pcapng, compressed, or - for stdin)",
        description="Reassemble TCP, report every HTTP response, FTP reply and WebSocket close "
                    "with its request, and write events.csv, hosts.csv, codes.csv, report.html.",
        epilog=EPILOG_ANALYZE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("captures", nargs="*", metavar="CAPTURE",
                   help="capture files or directories of them; '-' reads standard input")
    p.add_argument("-r", "--read-file", action="append", default=[], dest="read_files", metavar="CAPTURE",
                   help="a capture to read, as with tshark -r (repeatable; same as a CAPTURE argument)")
    p.add_argument("-o", "--outdir", default="analyzer-report", help="output directory (default: %(default)s)")
    p.add_argument("--lang", choices=("en", "zh"), default=None,
                   help="language of meanings in the outputs (default: from the locale, else en)")
    p.add_argument("--fail-on", action="append", default=[], metavar="EXPR",
                   help="exit with status 5 when EXPR holds, e.g. 'http.5xx>1%%', 'websocket.1006>0', "
                        "'ftp.530>=10' (repeatable)")
    p.add_argument("--policy", metavar="FILE", help="TOML file saying which codes count as errors")
    p.add_argument("--expect", action="append", default=[], metavar="PROTO:CODE",
                   help="treat this code as expected, not an error (e.g. http:401; repeatable)")
    p.add_argument("--jsonl", action="store_true", help="also write events.jsonl")
    p.add_argument("--parquet", action="store_true", help="also write events.parquet")
    p.add_argument("--metrics-file", metavar="PATH", default=None,
                   help="also write the Prometheus metrics of the run to PATH (node_exporter textfile-collector "
                        "format, e.g. /var/lib/node_exporter/textfile/analyzer.prom)")
    p.add_argument("--metrics-servers", type=int, default=None, metavar="N",
                   help="servers with their own metrics label; later ones count as server=\"other\" (default: 50)")
    p.add_argument("-q", "--quiet", action="store_true", help="no terminal summary or progress bar")
    p.add_argument("--clients", action="store_true", help="also list client rows in the terminal summary")
    select = p.add_argument_group("selection (events kept in every output; connections.csv keeps all)")
    select.add_argument("-f", "--filter", dest="bpf", metavar="BPF",
                        help="capture filter applied to the files' packets, as tcpdump -r FILE EXPR "
                             "(libpcap syntax, e.g. 'tcp port 8080'; frame numbers stay the file's)")
    select.add_argument("--protocol", action="append", default=[], choices=("http", "ftp", "websocket"),
                        help="only this protocol's events (repeatable)")
    select.add_argument("--server", action="append", default=[], metavar="IP[:PORT]",
                        help="only events of this server, e.g. 10.0.0.5, 10.0.0.5:8080, [2001:db8::1]:443 (repeatable)")
    select.add_argument("--since", metavar="TIME", help="only events at or after TIME (ISO 8601, UTC unless an "
                                                        "offset is given, or epoch seconds)")
    select.add_argument("--until", metavar="TIME", help="only events before TIME")
    p.add_argument("--uris", choices=("path", "full"), default="path",
                   help="failing URIs grouped by path, query dropped and IDs as {id} (default), or full URIs"),
    p.add_argument("-j", "--jobs", type=int, default=0, metavar="N",
                   help="processes to use for large inputs (default: all cores, up to 8; 1 = one process)")
    p.add_argument("--cluster", metavar="ADDRESS", default=None,
                   help="run on a Dask cluster: a scheduler (tcp://host:8786) or local:N (N worker processes "
                        "started and stopped by the run); needs pip install 'analyzer[cluster]'")
    p.add_argument("--cluster-ports", metavar="LOW-HIGH", default=None,
                   help="with --cluster local:N: the ports its scheduler, dashboard and workers listen on "
                        "(default: any free ones)")
    p.add_argument("--cluster-timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for the scheduler before giving up (default: 10)")
    p.add_argument("--engine", choices=("native", "tshark"), default="native",
                   help="native (default, fast) or tshark (Wireshark's dissectors: TLS with a key log, HTTP/2)")
    p.add_argument("--tls-keylog", metavar="FILE", default=None,
                   help="NSS key log (SSLKEYLOGFILE) to decrypt TLS; needs --engine tshark")
    p.add_argument("--decode-as", action="append", default=[], metavar="SPEC",
                   help="tshark decode-as rule, e.g. tcp.port==8888,http (repeatable; --engine tshark)")
    p.set_defaults(func=cmd_analyze)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analyzer",
        description="Which hosts answered what (HTTP status, FTP reply, WebSocket close), and what it means.",
    )
    parser.add_argument("--version", action="version", version=f"analyzer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _analyze_parser(sub)
    try:
        from analyzer.cli.catalog import register
    except ImportError:
        pass
    else:
        register(sub)
    try:
        from analyzer.cli.live import register as register_live
    except ImportError:
        pass
    else:
        register_live(sub)
    from analyzer.cli.crosscheck import register as register_crosscheck

    register_crosscheck(sub)
    return parser


def cmd_analyze(args) -> int:
    from analyzer.cli.analyze import run_and_report

    from analyzer.engines.selection import make_selection
    from analyzer.errors import UsageError

    captures = list(args.read_files) + list(args.captures)
    if not captures:
        raise UsageError("no capture given: name files, directories, '-' for stdin, or -r FILE")
    selection = make_selection(args.protocol, args.server, args.since, args.until)
    return run_and_report(
        captures, args.outdir, lang=args.lang, fail_on=args.fail_on, policy=args.policy,
        expect=args.expect, jsonl=args.jsonl, parquet=args.parquet, quiet=args.quiet, jobs=args.jobs,
        metrics_file=args.metrics_file, metrics_servers=args.metrics_servers,
        selection=selection, uri_grouping=args.uris, clients=args.clients, bpf=args.bpf, cluster=args.cluster,
        cluster_ports=args.cluster_ports, cluster_timeout=args.cluster_timeout, **engine_options(args),
    )


def _subcommand(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser | None:
    for action in parser._actions:  # argparse keeps its subparsers here, public API has no accessor
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, "command", None))
    return None


def entry() -> int:
    """The `analyzer` command (console script and `python -m analyzer`): main(),
    then an exit without the interpreter's last collection.

    At exit Python collects once more, walking every object still alive --
    the imported libraries' and the run's -- which took ~0.3 s after a
    200,000-packet run.  Frozen objects are not walked; files are still
    flushed and closed and atexit handlers still run.  Not in main(): tests
    call that in their own process, which must go on collecting.
    """
    status = main()
    gc.freeze()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            # An unknown option belongs to the subcommand: show its usage, not the top-level one.
            command = _subcommand(parser, args)
            (command or parser).error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse already printed its message
        return int(exc.code) if isinstance(exc.code, int) else ExitStatus.USAGE
    try:
        return int(args.func(args))
    except AnalyzerError as exc:
        _say(f"analyzer: error: {visible(str(exc))}")
        return int(exc.exit_status)
    except KeyboardInterrupt:
        from analyzer import interrupt

        # A second stop signal while finishing: the run is abandoned, OUTDIR unchanged.
        _say("analyzer: interrupted; nothing written")
        return int(ExitStatus.TERMINATED if interrupt.exit_signal() == signal.SIGTERM
                   else ExitStatus.INTERRUPTED)
    except BrokenPipeError:
        return int(ExitStatus.OK)
    except Exception as exc:  # a bug: say so in one line, keep the trace for developers
        if os.environ.get("ANALYZER_DEBUG"):
            raise
        _say(f"analyzer: internal error: {type(exc).__name__}: {visible(str(exc))} "
             f"(set ANALYZER_DEBUG=1 for a traceback, and please report it)")
        return int(ExitStatus.ERROR)


def _say(line: str) -> None:
    """One line on stderr, if there is a stderr (it may have been closed)."""
    try:
        print(line, file=sys.stderr)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
