# The tshark engine: Wireshark's dissectors (through pyshark) feeding the same
# Event records, events.csv, statistics and reports as the native engine.
#
# Strategy.  tshark does the decoding we do not: TLS decryption with an NSS
# key log (`-o tls.keylog_file:FILE`; pcapng Decryption Secrets Blocks work
# natively), HTTP/2 (HPACK, streams), HTTP/1.x and WebSocket inside TLS.  We
# ask it for JSON (`-T json --no-duplicate-keys`, through pyshark's
# FileCapture / PipeCapture / LiveCapture with use_json) limited to the layers
# we read (-J) and to the frames that matter (a display filter: HTTP, HTTP/2,
# WebSocket, FTP PDUs, TLS hellos, SYN/FIN/RST).  JSON rather than `-T
# fields` or EK because one frame can carry several PDUs and only JSON keeps
# each PDU's fields together; the packets are parsed with plain json.loads
# (tshark already merged duplicate keys), not pyshark's per-field objects,
# which are several times slower.
#
# Everything tshark does not provide is our own code, with the native
# dissectors' rules, so that the two engines' outputs compare: FIFO pairing of
# HTTP/1.x responses with requests (1xx other than 101 do not consume one; a
# response reported before its request -- tshark reports a request when its
# body ends, after a 100 Continue -- waits for it), HTTP/2 pairing by stream
# id (:status with :method/:path/:authority, PUSH_PROMISE included, the h2c
# Upgrade request answering stream 1), FTP (one event per reply, multi-line
# replies collapsed, greeting answers nothing, 1xx do not consume a command,
# PASS masked), WebSocket close codes (an empty close payload is 1005, a
# connection that ends by FIN/RST without any close frame gets an inferred
# 1006, as in protocols/websocket/dissector.py).  Events carry the frame and time
# where the PDU starts (first of tshark's `tcp.segments`), like the native
# engine; file mode learns every frame's time from our own capture reader.
#
# TLS: a session is a connection with a ClientHello/ServerHello; it counts as
# decrypted when tshark dissected HTTP, HTTP/2 or WebSocket inside it.  Every
# other one is reported, never dropped: an anomaly `tls_undecrypted` per
# session (client random, SNI), a connections.csv row with protocol "tls"
# and outcome "encrypted - status unknown", and coverage["tls_undecrypted"]
# with the count and the client randoms a key log would need.
#
# Limits (tshark's, documented in README "Engines"): FTP reply codes exist
# only on the first line of a server TCP segment (a reply coalesced after
# another one is invisible); responses whose body never completes are not
# reported (http.desegment_body); out-of-order segments are not reassembled;
# HTTP on a port another dissector owns needs --decode-as.  Byte counts in
# connections.csv come from sequence numbers of the frames tshark shows us
# (exact for connections that end with FIN/RST); gaps are not measured.
# Connections do not continue across capture files.  The engine is several
# times slower than the native one (README, "Performance").
from __future__ import annotations

import json
import os
import queue
import re
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from array import array
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path

from analyzer.errors import AnalyzerError, CaptureError, InputError, MissingTool, UsageError
from analyzer.events import Anomaly, Event, side_label, with_endpoints
from analyzer.meaning.anomalies import sample
from analyzer.protocols.ftp.pairing import FtpSession
from analyzer.protocols.http.pairing import HttpPairing, Request, requested_upgrade, response_event
from analyzer.protocols.websocket.dissector import close_code_ok
from analyzer.protocols.websocket.pairing import CloseHandshake, close_flags
from analyzer.tcp.table import connection_id
from analyzer import community_id
from analyzer.engines.native import FileReport, RunResult, _size, read_all
from analyzer.engines.sink import AnomalySink, EventOutputs, EventSink, open_consumers
from analyzer.outputs.connections import ConnectionRows

INSTALL_HINT = "tshark is not installed; install it with: apt-get install tshark"
PYSHARK_HINT = "pyshark is not installed; install it with: pip install pyshark"

# Top-level layers tshark writes (-J); everything else is left out of the JSON.
LAYERS = "frame ip ipv6 tcp tcp.segments http http2 websocket ftp tls"
# Frames we need: PDUs of our protocols, TLS hellos (session bookkeeping) and
# the TCP handshake/teardown (roles, 1006 inference, connection times).
DISPLAY_FILTER = ("http || http2 || websocket || ftp || tls.handshake.type == 1 || tls.handshake.type == 2"
                  " || tcp.flags.syn == 1 || tcp.flags.fin == 1 || tcp.flags.reset == 1")
# Live capture has no file to learn frame times from: the frames holding the
# first segments of reassembled PDUs are asked for too.
LIVE_FILTER = DISPLAY_FILTER + " || tcp.segment_data"
# Protocols whose presence above TLS proves the session was decrypted.
DECRYPTED_PROTOCOLS = frozenset({"http", "http2", "websocket"})
TLS_UNKNOWN = "encrypted - status unknown"

# Responses held for a request tshark has not reported yet (its body is still
# coming); beyond this the oldest is written unpaired.
MAX_WAITING_RESPONSES = 1000
# HTTP/2 streams whose request is remembered per connection (nginx's
# http2_max_concurrent_streams is 128; we keep more, finished streams too).
MAX_H2_STREAMS = 1000
# Client randoms listed in coverage; the count stays exact.
MAX_TLS_RANDOMS_LISTED = 1000
# A connection without any frame shown for this long (capture time) is
# finalised.  Longer than the native engine's 300 s: body segments are not
# shown to us, so a long download looks idle (Suricata's established-flow
# timeout is 1 h).
IDLE_TIMEOUT = 3600.0
SWEEP_INTERVAL = 60.0
# Frame times remembered in live mode (first segments of reassembled PDUs).
MAX_LIVE_FRAME_TIMES = 200_000
# Compressions tshark 4.0 cannot read itself (it reads gzip): decompressed
# into a temporary file first.
TSHARK_UNREADABLE = frozenset({"bzip2", "xz", "zstd"})

_FTP_REPLY = re.compile(r"([1-6]\d\d)([ -]|$)")


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts "³" and "٣", which int() refuses or reads."""
    return text.isascii() and text.isdigit()


# ------------------------------------------------------------- the tool --

_VERSION_CACHE: dict[str, tuple[str, str]] = {}


def find_tshark() -> str:
    """Path of tshark, or MissingTool with the install line."""
    path = shutil.which("tshark")
    if path is None:
        raise MissingTool(INSTALL_HINT)
    return path


def tshark_version(path: str | None = None) -> tuple[str, str]:
    """(version number, first line of `tshark --version`), e.g. ("4.0.17", "TShark (Wireshark) 4.0.17 (...)")."""
    path = path or find_tshark()
    if path not in _VERSION_CACHE:
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise MissingTool(f"{INSTALL_HINT} ({path} does not run: {exc})") from None
        line = out.splitlines()[0].strip() if out else ""
        m = re.search(r"(\d+\.\d+\.\d+)", line)
        if m is None:
            raise MissingTool(f"{INSTALL_HINT} ({path} --version says {line!r})")
        _VERSION_CACHE[path] = (m.group(1), line)
    return _VERSION_CACHE[path]


def _pyshark():
    try:
        import pyshark
    except ImportError:
        raise MissingTool(PYSHARK_HINT) from None
    return pyshark


def _capture_classes():
    """pyshark capture classes whose packets are the plain JSON layer dicts."""
    pyshark = _pyshark()
    from pyshark.tshark.output_parser.tshark_json import TsharkJsonParser

    class LayersParser(TsharkJsonParser):
        # tshark --no-duplicate-keys already merged repeated keys into lists:
        # plain json.loads is enough, and much faster than pyshark's objects.
        def _parse_single_packet(self, packet):
            return json.loads(packet)["_source"]["layers"]

    def parser(self):
        return LayersParser(self._get_tshark_version())

    from pyshark.capture.pipe_capture import PipeCapture

    classes = {}
    for name, base in (("FileCapture", pyshark.FileCapture), ("PipeCapture", PipeCapture),
                       ("LiveCapture", pyshark.LiveCapture)):
        classes[name] = type(f"Layers{name}", (base,), {"_setup_tshark_output_parser": parser})
    return classes


def tshark_options(keylog: str | None = None, decode_as: dict | None = None,
                   prefs: dict | None = None) -> dict:
    """Keyword arguments for a pyshark capture: JSON, our layers, key log, decode-as."""
    overrides = dict(prefs or {})
    if keylog:
        if not os.path.isfile(keylog):
            raise InputError(f"{keylog}: no such TLS key log file")
        overrides["tls.keylog_file"] = os.path.abspath(keylog)
    return dict(use_json=True, custom_parameters=["-J", LAYERS], override_prefs=overrides or None,
                decode_as=dict(decode_as) if decode_as else None)


def parse_decode_as(specs) -> dict:
    """["tcp.port==8888,http", ...] -> {"tcp.port==8888": "http"} (tshark's -d syntax)."""
    out = {}
    for spec in specs or ():
        criterion, sep, proto = spec.rpartition(",")
        if not sep or "==" not in criterion or not proto.strip():
            raise UsageError(f"--decode-as {spec!r}: expected LAYER==VALUE,PROTOCOL (e.g. tcp.port==8888,http)")
        out[criterion.strip()] = proto.strip()
    return out


# -------------------------------------------------------------- helpers --

def _all(value) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _find(tree, name: str):
    """First value of field `name` anywhere in a JSON subtree (depth first)."""
    if isinstance(tree, dict):
        if name in tree:
            return tree[name]
        for value in tree.values():
            if isinstance(value, (dict, list)):
                got = _find(value, name)
                if got is not None:
                    return got
    elif isinstance(tree, list):
        for value in tree:
            got = _find(value, name)
            if got is not None:
                return got
    return None


def _first(value):
    return value[0] if isinstance(value, list) else value


def _text(value) -> str:
    value = _first(value)
    return "" if value is None else str(value)


def _line_text(key: str) -> str:
    """tshark's showname key of a text line ("220 Hi\\r\\n", escaped) -> the line."""
    for end in ("\\r\\n", "\\n"):
        if key.endswith(end):
            return key[: -len(end)]
    return key


def _norm_ip(text: str) -> str:
    try:
        import ipaddress

        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


# ----------------------------------------------------- per-connection state --

class _Response:
    __slots__ = ("code", "text", "frame", "ts", "sender", "upgrade", "flags", "request_in", "shown")

    def __init__(self, code, text, frame, ts, sender, upgrade="", flags=(), request_in=0, shown=None) -> None:
        self.code, self.text, self.frame, self.ts, self.sender = code, text, frame, ts, sender
        self.upgrade, self.flags, self.request_in = upgrade, flags, request_in
        self.shown = shown   # the frame tshark reported it in: the message's last segment


class _Conn:
    """What we track of one tcp.stream."""

    def __init__(self, key: int, src: str, sport: int, dst: str, dport: int, ts: float, frame: int,
                 flags: int, capture: str, anomaly) -> None:
        self.key = key
        self.anomaly = anomaly                # the session's _anomaly
        self.capture = capture
        if flags & 0x12 == 0x12:  # SYN+ACK first: its receiver is the client
            src, sport, dst, dport = dst, dport, src, sport
        self.addr = ((src, sport), (dst, dport))
        self.first_ts = self.last_ts = ts
        self.cid = connection_id(src, sport, dst, dport, ts)
        self.syn = bool(flags & 0x02)
        self.server: int | None = 1 if self.syn else None
        self.nxt = [0, 0]
        self.fin = [False, False]
        self.rst = False
        self.end: tuple | None = None         # (direction, ts, frame, rst) of the first FIN/RST
        self.proto = ""                       # "http" | "ftp" | "websocket" once content says so
        # HTTP/1.x and HTTP/2
        # HTTP/1.x and HTTP/2: pairing as the native dissector's (protocols/http/pairing.py)
        self.http = HttpPairing(self.note)
        self.waiting: list[_Response] = []    # responses whose request tshark has not reported yet
        self.h2 = False
        self.h2_requests: dict[int, Request] = {}
        # WebSocket (protocols/websocket/pairing.py)
        self.ws = False
        self.ws_request = ""
        self.ws_open_ts: float | None = None
        self.ws_close = CloseHandshake()
        self.ws_frames = False                # tshark showed a websocket layer
        # FTP (protocols/ftp/pairing.py)
        self.ftp = FtpSession(self.note)
        self.open_reply: int | None = None
        self.last_pdu = [None, None]          # signature of the last PDU per direction
        # TLS
        self.tls = False
        self.tls_random = ""
        self.tls_sni = ""
        self.decrypted = False

    def note(self, name: str, ts: float, frame: int, detail: str = "") -> None:
        self.anomaly(self, name, ts, frame, detail)

    def direction(self, src: str, sport: int) -> int:
        return 0 if (src, sport) == self.addr[0] else 1

    def set_server(self, direction: int) -> None:
        if self.server is None:
            self.server = direction

    def ends(self) -> tuple:
        sd = self.server if self.server is not None else 1
        (a, pa), (b, pb) = self.addr
        if sd == 1:
            return (a, pa, b, pb, self.cid, self.capture)
        return (b, pb, a, pa, self.cid, self.capture)

    def byte_counts(self) -> tuple[int, int]:
        sent = [max(0, n - 1 - (1 if fin else 0)) for n, fin in zip(self.nxt, self.fin)]
        sd = self.server if self.server is not None else 1
        return (sent[0], sent[1]) if sd == 1 else (sent[1], sent[0])


# ------------------------------------------------------------- the session --

@dataclass
class TsharkRunResult(RunResult):
    tshark_version: str = ""
    tshark_line: str = ""
    keylog: str | None = None
    tls_sessions: int = 0
    tls_decrypted: int = 0
    tls_undecrypted: int = 0
    tls_randoms: list = field(default_factory=list)
    frames_shown: int = 0
    decode_as_added: dict = field(default_factory=dict)  # rule -> protocol, from the pre-scan

    def coverage(self) -> dict:
        cov = super().coverage()
        cov.update({
            "engine": "tshark",
            "decode_as_added": [f"{rule},{proto}" for rule, proto in sorted(self.decode_as_added.items())],
            "tshark_version": self.tshark_version,
            "tshark": self.tshark_line,
            "tshark_frames_shown": self.frames_shown,
            "tls_keylog": self.keylog,
            "tls_sessions": self.tls_sessions,
            "tls_decrypted": self.tls_decrypted,
            "tls_undecrypted": {
                "count": self.tls_undecrypted,
                "status": TLS_UNKNOWN,
                "client_randoms": list(self.tls_randoms),
                "listed": len(self.tls_randoms),
            },
        })
        return cov


class TsharkSession:
    """One analysis through tshark; the same shape as pipeline.Session.

    Files: `read_file(path)` (tshark reads the file itself).  Live capture:
    `packet(ts, linktype, data, wirelen)` for each packet a live source
    captured (they are piped to one tshark process as a pcap stream) and
    `interim()` at every report interval.  `finish()` writes events.csv,
    anomalies.csv, connections.csv and returns a TsharkRunResult.
    """

    def __init__(self, outdir: str | os.PathLike, *, lang: str = "en", on_event=None,
                 stream_events: bool = False, on_connection=None, keylog: str | None = None,
                 decode_as: dict | None = None, prefs: dict | None = None,
                 outputs: EventOutputs | None = None) -> None:
        self.started = time.perf_counter()
        self.tshark = find_tshark()
        version, line = tshark_version(self.tshark)
        self.options = tshark_options(keylog, decode_as, prefs)
        self.classes = _capture_classes()
        self.out = Path(outdir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.result = TsharkRunResult(outdir=self.out, tshark_version=version, tshark_line=line,
                                      keylog=os.path.abspath(keylog) if keylog else None)
        consumers, self.result.stats, self.result.kept = open_consumers(
            self.out, outputs or EventOutputs(), stream=stream_events)
        self.events = EventSink(lang, consumers)
        self.anomalies = AnomalySink(self.out)
        self.on_event = on_event
        if on_connection is None:  # else live: the caller writes connections.csv
            self.result.connections = ConnectionRows(self.out)
            on_connection = self.result.connections.add

        def keep_row(row: dict) -> None:
            row["community_id"] = community_id.for_row(row)
            on_connection(row)

        self.on_connection = keep_row
        self.conns: dict[int, _Conn] = {}
        self.anomaly_counts: Counter = Counter()
        self.capture = ""
        self.report: FileReport | None = None
        self.times = None               # array of frame times (file) or dict (live)
        self.next_sweep = float("-inf")
        self.connections_total = 0
        self.frames_shown = 0
        self.tcp_frames = 0
        self._pipe = None               # live: (write fd, reader thread, queue)
        self._pipe_frames = 0
        self._packet_linktype = None

    # -- sources -------------------------------------------------------------
    def begin(self, name: str, display: str | None = None) -> FileReport:
        self._finish_conns()
        report = FileReport(name=name)
        self.result.files.append(report)
        self.report = report
        self.capture = self.anomalies.capture = display or os.path.basename(name)
        return report

    def read_file(self, path: str, progress=None, done_before: int = 0, total: int = 0) -> None:
        """Run tshark over one capture; an error is recorded and ends this file only."""
        report = self.begin(path, "<stdin>" if path == "-" else None)
        tmp = None
        try:
            readable, tmp, report.format, report.compression = _tshark_readable(path)
            times, h2c_ports, servers = _prescan(readable, report)
            self.times = times
            size = _size(path)
            options = self.options
            missing = undissected(servers, options.get("decode_as") or {}, self.tshark)
            if h2c_ports or missing:
                decode_as = dict(options.get("decode_as") or {})
                for port in sorted(h2c_ports):
                    decode_as.setdefault(f"tcp.port=={port}", "http2")
                for rule, proto in missing.items():
                    decode_as.setdefault(rule, proto)
                    self.result.decode_as_added.setdefault(rule, proto)
                options = dict(options, decode_as=decode_as)
            cap = self.classes["FileCapture"](readable, keep_packets=False, display_filter=DISPLAY_FILTER,
                                              tshark_path=self.tshark, **options)
            self._drive(cap, report, progress, done_before, size, len(times), total)
            report.packets = len(times)
            self.result.packets += len(times)
            if len(times):
                first, last = times[0], times[-1]
                r = self.result
                r.first_epoch = first if r.first_epoch is None else min(r.first_epoch, first)
                r.last_epoch = last if r.last_epoch is None else max(r.last_epoch, last)
        except AnalyzerError as exc:
            report.error = str(exc)
            self.result.errors.append(exc)
        finally:
            if tmp is not None:
                tmp.cleanup()
        self._finish_conns()

    def _drive(self, cap, report, progress, done_before, size, frames, total) -> None:
        from pyshark.capture.capture import TSharkCrashException

        next_tick = 0
        stopped = ""   # tshark's last stderr line when it really failed
        try:
            for layers in cap:
                self._packet(layers)
                if progress is not None and self.frames_shown >= next_tick and frames:
                    next_tick = self.frames_shown + 2000
                    number = self._last_frame
                    progress(done_before + int(size * min(1.0, number / frames)), total)
        except TSharkCrashException as exc:
            last = getattr(cap, "_last_error_line", "") or str(exc).splitlines()[-1]
            # pyshark checks the exit status after the last packet (EOF); see
            # _harmless for the exit status asyncio sometimes loses.
            if not (getattr(cap, "_eof_reached", False) and _harmless(last)):
                stopped = last
        finally:
            try:
                cap.close()
            except TSharkCrashException as exc:
                last = getattr(cap, "_last_error_line", "") or str(exc).splitlines()[-1]
                if not stopped and not _harmless(last):
                    stopped = last
            except (RuntimeError, OSError):
                pass
            # pyshark's __del__ closes again and would print the same crash as
            # a traceback at exit: nothing is left for it to clean up.
            getattr(cap, "_running_processes", set()).clear()
        if stopped:
            raise CaptureError(f"{report.name}: tshark stopped: {stopped}")

    # -- live: packets from a live source, piped to tshark ----------------------
    def packet(self, ts: float, linktype: int, data: bytes, wirelen: int) -> None:
        """One captured packet (live capture); tshark dissects it, events follow shortly."""
        if self.report is None:
            self.begin("live")
        if self._pipe is None:
            self._start_pipe(linktype)
        self.result.packets += 1
        self.report.packets += 1
        if self.result.first_epoch is None:
            self.result.first_epoch = ts
        self.result.last_epoch = ts
        whole = int(ts)
        micros = int(round((ts - whole) * 1e6))
        if micros >= 1_000_000:
            whole, micros = whole + 1, micros - 1_000_000
        record = struct.pack("<IIII", whole, micros, len(data), max(wirelen, len(data))) + data
        try:
            os.write(self._pipe[0], record)
        except OSError as exc:
            raise InputError(f"tshark stopped reading packets: {exc}") from None
        self._drain_pipe(block=False)

    def _start_pipe(self, linktype: int) -> None:
        read_fd, write_fd = os.pipe()
        # pcap global header: magic, v2.4, zone, sigfigs, snaplen, linktype.
        os.write(write_fd, struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, linktype))
        self.times = {}
        cap = self.classes["PipeCapture"](read_fd, display_filter=LIVE_FILTER, tshark_path=self.tshark,
                                          **self.options)
        out: queue.Queue = queue.Queue()

        import asyncio

        # pyshark attached a SafeChildWatcher to this (main) thread's loop,
        # which does not run while the reader thread waits for tshark; a
        # ThreadedChildWatcher works from any thread (Python's own default).
        asyncio.set_child_watcher(asyncio.ThreadedChildWatcher())

        def reader() -> None:
            try:
                asyncio.set_event_loop(asyncio.new_event_loop())
                cap.eventloop = asyncio.get_event_loop()
                for layers in cap._packets_from_tshark_sync():
                    out.put(layers)
            except Exception as exc:  # handed to the main thread, which reports it
                out.put(exc)
            finally:
                out.put(None)

        thread = threading.Thread(target=reader, name="tshark-reader", daemon=True)
        thread.start()
        self._pipe = (write_fd, thread, out, cap)

    def _drain_pipe(self, block: bool, timeout: float = 0.0) -> None:
        if self._pipe is None:
            return
        _, thread, out, _ = self._pipe
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = out.get(block=block, timeout=max(0.0, deadline - time.monotonic()) if block else None)
            except queue.Empty:
                return
            if item is None:
                return
            if isinstance(item, Exception):
                self.result.errors.append(InputError(f"tshark: {item}"))
                continue
            self._packet(item)

    def _close_pipe(self) -> None:
        if self._pipe is None:
            return
        write_fd, thread, out, cap = self._pipe
        try:
            os.close(write_fd)
        except OSError:
            pass
        end = time.monotonic() + 60
        while thread.is_alive() or not out.empty():
            self._drain_pipe(block=True, timeout=0.2)
            if time.monotonic() > end:
                break
        self._pipe = None

    def interim(self) -> None:
        """Make every event so far visible in events.csv (live capture)."""
        self._drain_pipe(block=True, timeout=0.05)
        self.events.flush()

    # -- one frame ---------------------------------------------------------------
    _last_frame = 0
    _retrans = False

    def _duplicate(self, conn: _Conn, d: int, signature: tuple, ts: float, frame: int) -> bool:
        """tshark dissects some retransmitted segments a second time (corpus
        arkime_wireshark_retrans): a PDU in a retransmission equal to the
        last one of its direction is that copy."""
        last, conn.last_pdu[d] = conn.last_pdu[d], signature
        if self._retrans and last == signature:
            self._anomaly(conn, "tshark_retransmission_dissected_twice", ts, frame, " ".join(map(str, signature)))
            return True
        return False

    def _packet(self, layers: dict) -> None:
        frame = layers.get("frame") or {}
        try:
            number = int(frame["frame.number"])
            ts = float(frame["frame.time_epoch"])
        except (KeyError, TypeError, ValueError):
            return
        self._last_frame = number
        self.frames_shown += 1
        protocols = str(frame.get("frame.protocols", "")).split(":")
        if isinstance(self.times, dict):
            if len(self.times) >= MAX_LIVE_FRAME_TIMES:
                self.times.pop(next(iter(self.times)))
            self.times[number] = ts
        tcp = layers.get("tcp")
        if isinstance(tcp, list):
            tcp = tcp[-1]
        if not isinstance(tcp, dict) or "tcp.stream" not in tcp:
            return
        self.tcp_frames += 1
        ip_name = next((p for p in reversed(protocols[: protocols.index("tcp")] if "tcp" in protocols else [])
                        if p in ("ip", "ipv6")), None)
        ip = layers.get(ip_name) if ip_name else None
        if isinstance(ip, list):
            ip = ip[-1]
        if not isinstance(ip, dict):
            return
        src = ip.get(f"{ip_name}.src")
        dst = ip.get(f"{ip_name}.dst")
        try:
            key = int(tcp["tcp.stream"])
            sport, dport = int(tcp["tcp.srcport"]), int(tcp["tcp.dstport"])
            flags = int(str(tcp.get("tcp.flags", "0")), 16)
        except (KeyError, TypeError, ValueError):
            return
        if src is None or dst is None:
            return
        if ts >= self.next_sweep:
            self._sweep(ts)
        conn = self.conns.get(key)
        if conn is None:
            conn = _Conn(key, _norm_ip(src), sport, _norm_ip(dst), dport, ts, number, flags, self.capture,
                         self._anomaly)
            self.conns[key] = conn
            self.connections_total += 1
        src = _norm_ip(src) if (src, sport) not in conn.addr else src
        d = conn.direction(src, sport)
        conn.last_ts = ts
        try:
            nxt = int(tcp.get("tcp.nxtseq", 0))
        except (TypeError, ValueError):
            nxt = 0
        if nxt > conn.nxt[d]:
            conn.nxt[d] = nxt
        if flags & 0x02 and not flags & 0x10:
            conn.set_server(1 - d)
        elif flags & 0x12 == 0x12:
            conn.set_server(d)

        analysis = tcp.get("tcp.analysis")
        retrans = False
        if isinstance(analysis, dict):
            flags_tree = analysis.get("tcp.analysis.flags") or analysis
            retrans = _find(flags_tree, "tcp.analysis.retransmission") is not None
            if _find(flags_tree, "tcp.analysis.lost_segment") is not None or \
                    _find(flags_tree, "tcp.analysis.ack_lost_segment") is not None:
                conn.ftp.lost_bytes()
        self._retrans = retrans
        # PDUs in the order tshark shows them; the first may have begun in an
        # earlier frame (tcp.segments), the others begin here.
        starts = self._starts(layers, number, ts)
        if "tls" in layers:
            self._tls(conn, layers["tls"], d, protocols)
        for layer in _all(layers.get("http")):
            self._http(conn, layer, d, *next(starts))
        for layer in _all(layers.get("http2")):
            self._http2(conn, layer, d, *next(starts))
        for layer in _all(layers.get("websocket")):
            self._websocket(conn, layer, d, *next(starts))
        for layer in _all(layers.get("ftp")):
            self._ftp(conn, layer, d, *next(starts))

        if flags & 0x05:
            rst = bool(flags & 0x04)
            if conn.end is None:
                conn.end = (d, ts, number, rst)
            if rst:
                conn.rst = True
                self._finalise(conn, "reset")
            else:
                conn.fin[d] = True
                if conn.fin[0] and conn.fin[1]:
                    self._finalise(conn, "closed")

    def _starts(self, layers: dict, number: int, ts: float):
        segs = layers.get("tcp.segments")
        first = None
        for item in _all(segs):
            if isinstance(item, dict):
                frames = [int(s) for s in _all(item.get("tcp.segment")) if _digits(str(s))]
                if frames:
                    first = min(frames) if first is None else min(first, min(frames))
        if first is not None and first < number:
            yield first, self._time(first, ts)
        while True:
            yield number, ts

    def _time(self, number: int, default: float) -> float:
        times = self.times
        if isinstance(times, dict):
            return times.get(number, default)
        if times is not None and 0 < number <= len(times):
            return times[number - 1]
        return default

    # -- TLS ---------------------------------------------------------------------
    def _tls(self, conn: _Conn, tls, d: int, protocols: list[str]) -> None:
        types = [str(t) for t in _all(_find(tls, "tls.handshake.type"))]
        if "1" in types:
            conn.tls = True
            conn.set_server(1 - d)
            random = _text(_find(tls, "tls.handshake.random"))
            if random and not conn.tls_random:
                conn.tls_random = random.replace(":", "").lower()
            sni = _text(_find(tls, "tls.handshake.extensions_server_name"))
            if sni:
                conn.tls_sni = sni
        if "2" in types:
            conn.tls = True
            conn.set_server(d)
        if "tls" in protocols:
            after = protocols[protocols.index("tls") + 1:]
            if DECRYPTED_PROTOCOLS.intersection(after):
                conn.decrypted = True
                conn.tls = True

    # -- HTTP/1.x ----------------------------------------------------------------
    def _http(self, conn: _Conn, layer, d: int, frame: int, ts: float) -> None:
        if not isinstance(layer, dict):
            return
        code = _find(layer, "http.response.code")
        method = _find(layer, "http.request.method")
        if method is not None and code is None:
            conn.set_server(1 - d)
            conn.proto = conn.proto or "http"
            conn_hdr = _find(layer, "http.connection")
            upgrade = requested_upgrade(_text(method), _text(_find(layer, "http.upgrade")),
                                        None if conn_hdr is None else _text(conn_hdr))
            req = Request(_text(method), _text(_find(layer, "http.request.uri")), _text(_find(layer, "http.host")),
                          ts, frame, upgrade, shown=self._last_frame)
            if self._duplicate(conn, d, ("request", req.method, req.uri), ts, frame):
                return
            # A request tshark reports late (its body came after a 100 Continue
            # or an early final status) goes before the responses that came after it.
            conn.http.request(req)
            self._pair_waiting(conn)
            return
        if code is None:
            return
        raw = _text(code)
        if not (_digits(raw) and len(raw) == 3 and 100 <= int(raw)):
            # tshark reads "HTTP/1.0 2XX OK" as status 2: RFC 9112 section 4 wants 3 digits.
            self._anomaly(conn, "http_bad_status_line", ts, frame, f"tshark status code {raw!r}")
            return
        conn.set_server(d)
        conn.proto = conn.proto or "http"
        up = _text(_find(layer, "http.upgrade")).lower()
        phrase = _text(_find(layer, "http.response.phrase"))
        request_in = _text(_find(layer, "http.request_in"))
        if self._duplicate(conn, d, ("response", raw, phrase), ts, frame):
            return
        resp = _Response(int(raw), phrase, frame, ts, d, up, request_in=int(request_in) if _digits(request_in) else 0,
                         shown=self._last_frame)
        conn.waiting.append(resp)
        if len(conn.waiting) > MAX_WAITING_RESPONSES:
            self._pair_waiting(conn, flush=1)
        self._pair_waiting(conn)

    def _pair_waiting(self, conn: _Conn, flush: int = 0) -> None:
        """Pair held responses with requests that began before them (FIFO).

        `flush` > 0 writes that many responses even without a request (hold
        limit); a negative value flushes every held response (end of the
        connection).
        """
        waiting = conn.waiting
        pending = conn.http.pending
        while waiting:
            resp = waiting[0]
            if resp.request_in and pending:
                self._skip_to(conn, resp)
            req = pending[0] if pending else None
            if req is not None and req.frame <= resp.frame:
                waiting.pop(0)
                self._emit_response(conn, resp, conn.http.answer(resp.code, resp.ts, resp.frame))
                continue
            if req is not None or flush:
                # The oldest request began after this response: nothing before
                # it will come.  Or we are told to let go.
                waiting.pop(0)
                self._emit_response(conn, resp, conn.http.answer(resp.code, resp.ts, resp.frame, unpaired=True))
                if flush > 0:
                    flush -= 1
                continue
            return

    def _skip_to(self, conn: _Conn, resp: _Response) -> None:
        """tshark links a response to its request's frame (http.request_in).
        When exactly one waiting request was reported in that frame and it is
        not the oldest, the older ones lost their responses (not reported by
        tshark: a body never completed, a segment missing): drop them so that
        FIFO pairing does not shift.  Several requests in that frame
        (pipelining) make the link ambiguous: FIFO decides."""
        pending = conn.http.pending
        hits = [i for i, r in enumerate(pending) if r.shown == resp.request_in]
        if len(hits) != 1 or hits[0] == 0:
            return
        if sum(1 for r in pending if r.shown == pending[hits[0]].shown) != 1:
            return
        for _ in range(hits[0]):
            conn.http.response_lost(resp.ts, resp.frame, f"{pending[0].line}: tshark reported no response for it",
                                    "http_response_not_reported")

    def _emit_response(self, conn: _Conn, resp: _Response, req: Request | None) -> None:
        self._emit(conn, response_event(resp.code, resp.text, resp.ts, resp.frame, resp.sender, req, resp.flags,
                                        resp.shown))
        if resp.code == 101:
            proto = resp.upgrade or (req.upgrade if req else "")
            if proto == "websocket":
                conn.ws = True
                conn.ws_request = req.line if req else ""
                conn.ws_open_ts = resp.ts
                conn.set_server(resp.sender)
            elif proto == "h2c":
                conn.h2 = True
                if req is not None:
                    # RFC 7540 section 3.2: the upgrade request is stream 1's request.
                    conn.h2_requests[1] = req

    # -- HTTP/2 --------------------------------------------------------------------
    def _http2(self, conn: _Conn, layer, d: int, frame: int, ts: float) -> None:
        if not isinstance(layer, dict):
            return
        conn.h2 = True
        conn.proto = conn.proto or "http"
        if "http2.magic" in layer:
            conn.set_server(1 - d)
        for stream in _all(layer.get("http2.stream")):
            if not isinstance(stream, dict):
                continue
            headers = {}
            for header in _all(stream.get("http2.header")):
                if isinstance(header, dict):
                    name = _text(header.get("http2.header.name"))
                    if name.startswith(":") and name not in headers:
                        headers[name] = _text(header.get("http2.header.value"))
            if not headers:
                continue
            try:
                sid = int(_text(stream.get("http2.streamid")) or 0)
            except ValueError:
                continue
            kind = _text(stream.get("http2.type"))
            if kind == "5":  # PUSH_PROMISE: the request of the promised stream
                try:
                    sid = int(_text(_find(stream, "http2.push_promise.promised_stream_id")))
                except ValueError:
                    continue
            if ":method" in headers:
                conn.set_server(1 - d)
                if len(conn.h2_requests) >= MAX_H2_STREAMS:
                    conn.h2_requests.pop(next(iter(conn.h2_requests)))
                conn.h2_requests[sid] = Request(headers[":method"], headers.get(":path", ""),
                                                headers.get(":authority", ""), ts, frame)
                conn.http.requests += 1
            elif ":status" in headers:
                status = headers[":status"]
                if not (_digits(status) and len(status) == 3):
                    self._anomaly(conn, "http2_bad_status", ts, frame, status[:20])
                    continue
                code = int(status)
                conn.set_server(d)
                # Paired by stream id (RFC 9113 section 8.1), not FIFO.
                conn.http.responses += 1
                req = conn.h2_requests.get(sid)
                if req is not None and not 100 <= code < 200:
                    del conn.h2_requests[sid]
                if req is None:
                    conn.note("http_response_without_request", ts, frame, str(code))
                self._emit_response(conn, _Response(code, "", frame, ts, d, shown=self._last_frame), req)

    # -- WebSocket -------------------------------------------------------------------
    def _websocket(self, conn: _Conn, layer, d: int, frame: int, ts: float) -> None:
        if not isinstance(layer, dict):
            return
        conn.ws_frames = True
        if not conn.ws:
            conn.ws = True
            conn.proto = conn.proto or "websocket"
        masked = _text(layer.get("websocket.mask")) == "1"
        if conn.server is None:
            conn.set_server(1 - d if masked else d)
        if _text(layer.get("websocket.opcode")) != "8":
            return
        status = _text(_find(layer, "websocket.payload.close.status_code"))
        reason = _text(_find(layer, "websocket.payload.close.reason"))
        if self._duplicate(conn, d, ("close", status, reason), ts, frame):
            return
        length = _text(layer.get("websocket.payload_length"))
        flags: list[str] = []
        if _digits(status):
            code, inferred = int(status), False
            if not close_code_ok(code):
                flags.append("websocket_reserved_close_code")     # RFC 6455 section 7.4
        else:
            # RFC 6455 section 7.1.5: a close frame without a status code is 1005.
            code, inferred = 1005, True
            if length == "1":
                flags.append("websocket_close_payload_1_byte")
        if conn.ws_close.sent_by(d):
            flags.append("websocket_duplicate_close")
        ev = Event(protocol="websocket", code=code, text=reason, request=conn.ws_request, epoch=ts, frame=frame,
                   sender=d, direction=side_label(d, conn.server if conn.server is not None else 1),
                   inferred=inferred, flags=tuple(close_flags(flags)), last_frame=self._last_frame)
        conn.ws_close.add(ev)
        self._emit(conn, ev)

    # -- FTP -------------------------------------------------------------------------
    def _ftp(self, conn: _Conn, layer, d: int, frame: int, ts: float) -> None:
        if not isinstance(layer, dict):
            return
        conn.proto = conn.proto or "ftp"
        if _text(layer.get("ftp.response")) == "1":
            conn.set_server(d)
            self._ftp_reply(conn, layer, frame, ts)
        elif _text(layer.get("ftp.request")) == "1":
            conn.set_server(1 - d)
            for key, value in layer.items():
                if isinstance(value, dict) and "ftp.request.command" in value:
                    self._ftp_command(conn, _text(value["ftp.request.command"]), _text(value.get("ftp.request.arg")),
                                      frame, ts)
                    break

    def _ftp_command(self, conn: _Conn, verb: str, arg: str, frame: int, ts: float) -> None:
        verb = verb.upper()
        if verb in ("PASS", "ACCT"):
            request = f"{verb} ****" if arg else verb   # the secret is never stored
        else:
            request = f"{verb} {arg}" if arg else verb
        conn.ftp.command(verb, request, ts, frame, user=arg if verb == "USER" else None)

    def _ftp_reply(self, conn: _Conn, layer: dict, frame: int, ts: float) -> None:
        decoded = None
        lines = []
        for key, value in layer.items():
            if key.startswith(("ftp.", "_ws.")):
                continue
            if decoded is None and isinstance(value, dict) and "ftp.response.code" in value:
                decoded = (key, value)
            else:
                lines.append(_line_text(key))
        if decoded is None and conn.open_reply is None and lines and lines[0][:1].isdigit():
            # "99 PASV invalid": tshark decodes no code; like the native
            # dissector, the broken answer still answers the oldest command.
            self._anomaly(conn, "ftp_reply_malformed", ts, frame, lines[0][:40])
            conn.ftp.malformed()
        if decoded is not None:
            key, value = decoded
            raw = _text(value.get("ftp.response.code"))
            line = _line_text(key)
            sep = line[3:4]
            if conn.open_reply is not None:
                if raw == str(conn.open_reply):
                    if sep == " " or sep == "":
                        conn.open_reply = None     # the final line of the open reply
                    # "NNN-" with the same code: a line inside it
                    decoded = None
                else:
                    conn.open_reply = None         # its final line was not shown to us
            if decoded is not None:
                m = _FTP_REPLY.match(line)
                if m is None:
                    # "230_no_space": not an RFC 959 reply; it still answers the oldest command.
                    self._anomaly(conn, "ftp_reply_malformed", ts, frame, line[:40])
                    conn.ftp.malformed()
                else:
                    code = int(m.group(1))
                    text = _text(value.get("ftp.response.arg"))
                    self._ftp_event(conn, code, text, frame, ts)
                    if sep == "-":
                        conn.open_reply = code
        if conn.open_reply is not None:
            prefix = f"{conn.open_reply} "
            if any(ln.startswith(prefix) or ln == str(conn.open_reply) for ln in lines):
                conn.open_reply = None

    def _ftp_event(self, conn: _Conn, code: int, text: str, frame: int, ts: float) -> None:
        flags: list[str] = []
        cmd = conn.ftp.reply(code, text, ts, frame, flags)
        ev = Event(protocol="ftp", code=code, text=text, request=cmd.request if cmd else "", epoch=ts, frame=frame,
                   sender=conn.server if conn.server is not None else 1, flags=tuple(flags),
                   last_frame=self._last_frame)
        self._emit(conn, ev)

    # -- output ----------------------------------------------------------------------
    def _emit(self, conn: _Conn, ev: Event) -> None:
        ends = conn.ends()
        self.events.add(ev, ends)
        if self.on_event is not None:
            self.on_event(with_endpoints(ev, ends))

    def _anomaly(self, conn: _Conn | None, name: str, ts: float, frame: int, detail: str = "") -> None:
        # Counted every time; the row is written only when the policy samples it.
        n = self.anomaly_counts[name] = self.anomaly_counts[name] + 1
        if sample(name, n):
            self.anomalies.add(Anomaly(name, ts, frame, detail, conn.cid if conn is not None else ""))

    def _finalise(self, conn: _Conn, state: str) -> None:
        if self.conns.get(conn.key) is conn:
            del self.conns[conn.key]
        self._pair_waiting(conn, flush=-1)
        conn.http.close()
        if conn.ws and not conn.ws_frames and not conn.ws_request:
            # tshark switches to WebSocket only after the upgrade request; a
            # 101 without it leaves the frames undecoded: the closes are
            # unknown, not missing (no 1006 inferred).
            self._anomaly(conn, "tshark_websocket_not_dissected", conn.ws_open_ts or conn.first_ts, 0)
            conn.ws_close.lost_close = True   # outcome "unknown"
        elif conn.ws and conn.end is not None:
            conn.ws_close.ended(*conn.end)
            abnormal = conn.ws_close.infer_abnormal(conn.ws_request, conn.server if conn.server is not None else 1)
            if abnormal is not None:
                self._emit(conn, abnormal)
        conn.ftp.close(conn.last_ts)
        if conn.tls:
            self.result.tls_sessions += 1
            if conn.decrypted:
                self.result.tls_decrypted += 1
            else:
                self.result.tls_undecrypted += 1
                if len(self.result.tls_randoms) < MAX_TLS_RANDOMS_LISTED:
                    self.result.tls_randoms.append(conn.tls_random or "(no ClientHello seen)")
                self._anomaly(conn, "tls_undecrypted", conn.first_ts, 0,
                              f"client_random={conn.tls_random or '?'} sni={conn.tls_sni or '?'}: {TLS_UNKNOWN}")
        row = self._row(conn, state)
        if row is None:
            return
        self.on_connection(row)

    def _row(self, conn: _Conn, state: str) -> dict | None:
        outcome: dict = {}
        proto = conn.proto
        if proto == "http" or (proto == "websocket" and conn.ws_request):
            proto = "http"
            outcome = {**conn.http.outcome(), "http_version": "2" if conn.h2 else "1.x"}
            if conn.ws:
                outcome["websocket"] = conn.ws_close.outcome(conn.server if conn.server is not None else 1)
        elif proto == "websocket":
            outcome = conn.ws_close.outcome(conn.server if conn.server is not None else 1)
        elif proto == "ftp":
            outcome = {**conn.ftp.outcome(), "tls": conn.tls}
        elif conn.tls:
            proto = "tls"
            outcome = {"status": TLS_UNKNOWN if not conn.decrypted else "decrypted, no HTTP/WebSocket seen"}
        else:
            return None
        if conn.tls:
            outcome["tls"] = {"client_random": conn.tls_random, "sni": conn.tls_sni, "decrypted": conn.decrypted}
        cip, cport, sip, sport, cid, capture = conn.ends()
        c2s, s2c = conn.byte_counts()
        return {
            "connection": cid, "protocol": proto, "client_ip": cip, "client_port": cport,
            "server_ip": sip, "server_port": sport, "first_epoch": conn.first_ts, "last_epoch": conn.last_ts,
            "bytes_c2s": c2s, "bytes_s2c": s2c, "missed_bytes": 0, "gaps": 0, "state": state,
            "outcome": json.dumps(outcome, sort_keys=True, default=str), "capture": capture,
        }

    def _sweep(self, ts: float) -> None:
        self.next_sweep = ts + SWEEP_INTERVAL
        for conn in [c for c in self.conns.values() if ts - c.last_ts > IDLE_TIMEOUT]:
            self._finalise(conn, "timeout")

    def _finish_conns(self) -> None:
        for conn in list(self.conns.values()):
            self._finalise(conn, "open")
        self.conns.clear()

    def snapshot(self) -> dict:
        """Coverage so far, as finish() would report it (live capture, mid-run)."""
        self._collect()
        return self.result.coverage()

    def _collect(self) -> None:
        r = self.result
        r.events = self.events.count
        r.events_by_protocol = self.events.by_protocol
        r.anomalies = Counter(self.anomaly_counts)
        r.connections_total = self.connections_total
        r.tcp_segments = self.tcp_frames
        r.frames_shown = self.frames_shown
        r.seconds = time.perf_counter() - self.started

    def finish(self) -> TsharkRunResult:
        self._close_pipe()
        self._finish_conns()
        self.events.commit()
        self.anomalies.commit()
        self._collect()
        if self.result.connections is not None:
            self.result.connections.commit()
        return self.result


def _harmless(stderr_line: str) -> bool:
    """Is a reported tshark "crash" with this last stderr line a false alarm?

    asyncio's child watcher sometimes loses tshark's exit status ("Unknown
    child process ... will report returncode 255") and pyshark calls that a
    crash.  When tshark wrote nothing but its running-as-root warning (CI
    runs as root), it did not fail.
    """
    line = stderr_line.strip()
    return not line or line.startswith("Running as user")


# ------------------------------------------------------------ file helpers --

def _tshark_readable(path: str):
    """(path tshark can read, TemporaryDirectory or None, format, compression).

    tshark reads pcap, pcapng and gzip itself; stdin and the compressions it
    does not know are copied (decompressed) into a temporary file.
    """
    from analyzer.capture import open_file
    from analyzer.capture.compression import CountingReader, detect, open_stream

    if path != "-":
        with open_file(path) as fh:
            head = fh.read(8)
        kind = detect(head)
        if kind not in TSHARK_UNREADABLE:
            inner = head
            if kind == "gzip":
                import gzip

                try:
                    with gzip.open(path, "rb") as fh:
                        inner = fh.read(4)
                except (OSError, EOFError):
                    inner = b""
            return path, None, _format(inner), kind
    tmp = tempfile.TemporaryDirectory(prefix="analyzer-tshark-")
    target = Path(tmp.name) / "capture"
    try:
        import sys

        raw = sys.stdin.buffer if path == "-" else open(path, "rb")
        try:
            head = raw.read(8)
            kind = detect(head)
            source = CountingReader(raw, head)
            stream = open_stream(kind, source) if kind else source
            with open(target, "wb") as out:
                while True:
                    chunk = stream.read(1 << 20)
                    if not chunk:
                        break
                    out.write(chunk)
        finally:
            if path != "-":
                raw.close()
        with open(target, "rb") as fh:
            fmt = _format(fh.read(4))
    except AnalyzerError:
        tmp.cleanup()
        raise
    except Exception as exc:  # decompression errors of any library
        tmp.cleanup()
        raise CaptureError(f"{path}: cannot decompress: {exc}") from None
    return str(target), tmp, fmt, kind


def _format(head: bytes) -> str:
    if head[:4] == b"\x0a\x0d\x0d\x0a":
        return "pcapng"
    if head[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        return "pcap"
    return ""


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"   # RFC 9113 section 3.4
# Server ports given to tshark as HTTP/2 (it has no TCP heuristic for h2c).
MAX_H2C_PORTS = 32


# Protocols tshark finds only on its registered ports (no TCP heuristic):
# elsewhere it shows plain TCP and their events vanish (FTP 1,117 -> 0 on a
# mixed capture).  HTTP has a heuristic and is found on any port.
NO_TCP_HEURISTIC = ("ftp",)
GREETINGS = {"ftp": (b"220", b"120", b"421")}  # RFC 959 §5.4: what a server says first
PRESCAN_HEAD_BYTES = 512      # per direction: enough for a greeting and a command or two
MAX_PRESCAN_FLOWS = 100_000   # flows being decided at once; past that new flows are not looked at
MAX_PRESCAN_SERVERS = 64      # distinct (protocol, port) rules a run may add


def _prescan(path: str, report: FileReport) -> tuple[array, set[int], set[tuple[str, int]]]:
    """Every frame's time, the ports of servers spoken to in cleartext HTTP/2
    with prior knowledge, and the (protocol, server port) of connections our
    own detectors recognise as a NO_TCP_HEURISTIC protocol -- from our reader
    and decoder (tshark numbers frames alike).

    Only connections whose SYN is in the capture are looked at (the SYN says
    which side is the server); each is decided from its first
    PRESCAN_HEAD_BYTES per direction, then forgotten.
    """
    from analyzer import protocols
    from analyzer.capture import open_capture
    from analyzer.decode.packets import Decoder
    from analyzer.protocols.base import DETECTED, REJECTED

    specs = [protocols.get(name) for name in NO_TCP_HEURISTIC]
    times = array("d")
    ports: set[int] = set()
    servers: set[tuple[str, int]] = set()
    flows: dict[tuple, list] = {}    # (client, cport, server, sport) -> [client head, server head]
    decided: set[tuple] = set()
    decode = Decoder().decode
    try:
        with open_capture(path) as reader:
            report.format = report.format or reader.format
            for ts, linktype, data, wirelen in reader:
                times.append(ts)
                seg = decode(linktype, data, ts, wirelen)
                if seg is None:
                    continue
                src, dst, sport, dport, _, _, flags, payload = seg[:8]
                if b"PRI * HTTP/2.0" in data and len(ports) < MAX_H2C_PORTS and payload.startswith(H2_PREFACE[:16]):
                    ports.add(dport)
                if len(servers) >= MAX_PRESCAN_SERVERS:
                    continue
                if flags & 0x02 and not flags & 0x10:  # a SYN: src is the client
                    key = (src, sport, dst, dport)
                    if key not in decided and len(flows) < MAX_PRESCAN_FLOWS:
                        flows.setdefault(key, [b"", b"", None])
                    continue
                if not payload:
                    continue
                key, side = (src, sport, dst, dport), 0
                heads = flows.get(key)
                if heads is None:
                    key, side = (dst, dport, src, sport), 1
                    heads = flows.get(key)
                    if heads is None:
                        continue
                if heads[2] is None:
                    heads[2] = side
                if len(heads[side]) < PRESCAN_HEAD_BYTES:
                    heads[side] = heads[side] + payload[:PRESCAN_HEAD_BYTES - len(heads[side])]
                verdicts = [spec.detect(heads[0], heads[1], key[3] in spec.port_hints, False) for spec in specs]
                # A control connection greets first and the client answers; an
                # FTP data connection (a file that happens to read like replies)
                # is one-sided.
                found = [spec.name for spec, v in zip(specs, verdicts) if v == DETECTED and heads[0]
                         and heads[2] == 1 and heads[1][:3] in GREETINGS.get(spec.name, (heads[1][:3],))]
                full = len(heads[0]) >= PRESCAN_HEAD_BYTES and len(heads[1]) >= PRESCAN_HEAD_BYTES
                if found or full or all(v == REJECTED for v in verdicts):
                    if found:
                        servers.add((found[0], key[3]))
                    del flows[key]
                    decided.add(key)
    except CaptureError:
        pass  # tshark reads up to the damage too and says so itself
    return times, ports, servers


def undissected(servers, decode_as: dict, tshark: str) -> dict:
    """Decode-as rules ({"tcp.port==P": protocol}) for servers tshark would not dissect.

    A port is left alone when the user gave a rule for it or tshark's own
    decode table (`tshark -G decodes`) already maps it to that protocol.
    """
    own = tshark_port_table(tshark)
    rules = {}
    for proto, port in sorted(servers):
        rule = f"tcp.port=={port}"
        if rule in decode_as or port in own.get(proto, ()):
            continue
        rules[rule] = proto
    return rules


_PORT_TABLES: dict[str, dict] = {}


def tshark_port_table(tshark: str) -> dict:
    """{protocol: {ports}} from tshark's decode table, once per tshark binary."""
    table = _PORT_TABLES.get(tshark)
    if table is None:
        table = {}
        try:
            out = subprocess.run([tshark, "-G", "decodes"], capture_output=True, text=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        for line in out.splitlines():
            field_, _, rest = line.partition("\t")
            value, _, proto = rest.partition("\t")
            if field_ == "tcp.port" and _digits(value):
                table.setdefault(proto, set()).add(int(value))
        _PORT_TABLES[tshark] = table
    return table


# ---------------------------------------------------------------- entry --

def run(paths: list[str], outdir: str | os.PathLike, *, lang: str = "en", progress=None, on_event=None,
        keylog: str | None = None, decode_as: dict | None = None, prefs: dict | None = None,
        outputs: EventOutputs | None = None) -> TsharkRunResult:
    """Analyse `paths` through tshark into `outdir` (as pipeline.run does).

    Raises MissingTool when tshark or pyshark is absent, InputError for an
    unreadable key log; errors of one capture are collected in
    `result.errors` and the run goes on.
    """
    session = TsharkSession(outdir, lang=lang, on_event=on_event, keylog=keylog, decode_as=decode_as,
                            prefs=prefs, outputs=outputs)
    return read_all(session, paths, progress)


def iter_live_events(interface: str, bpf: str | None = None, *, keylog: str | None = None,
                     decode_as: dict | None = None, packet_count: int | None = None,
                     outdir: str | os.PathLike | None = None, lang: str = "en"):
    """Events from a live interface through pyshark.LiveCapture (dumpcap + tshark).

    A generator of Event records with endpoints filled, as they are decided
    (pairing may hold an HTTP response until its request is reported; 1006
    and flushed responses come when the generator is closed).  `outdir`
    (default: a temporary directory) receives events.csv etc. as a side
    effect; stop by closing the generator or with `packet_count`.
    """
    out_tmp = None
    if outdir is None:
        out_tmp = tempfile.TemporaryDirectory(prefix="analyzer-live-tshark-")
        outdir = out_tmp.name
    ready: deque = deque()
    session = TsharkSession(outdir, lang=lang, on_event=ready.append, stream_events=True, keylog=keylog,
                            decode_as=decode_as)
    session.begin(interface, display=interface).format = "live"
    session.times = {}
    cap = session.classes["LiveCapture"](interface=interface, bpf_filter=bpf, display_filter=LIVE_FILTER,
                                         tshark_path=session.tshark, **session.options)
    packets = cap.sniff_continuously(packet_count=packet_count)
    try:
        for layers in packets:
            session._packet(layers)
            while ready:
                yield ready.popleft()
    finally:
        try:
            packets.close()       # pyshark's generator stops tshark and dumpcap
            cap.close()
        except Exception:  # noqa: BLE001 - tshark is killed on purpose
            pass
        session.finish()          # flushes held responses, infers 1006
        if out_tmp is not None:
            out_tmp.cleanup()
    while ready:                  # reached only when the capture ended by itself
        yield ready.popleft()
