# `analyzer crosscheck CAPTURE`: run the native engine and the tshark engine
# over the same captures and show where they disagree.
#
# Strategy.  Both engines run with their events kept in memory (the same
# columns as events.csv, which they also write).  Events are
# grouped by (capture, protocol, client, server) and each group's code
# sequences are aligned (difflib, as shared/tools/score.py does), so one
# missed event costs one line, not the rest of the connection.  Aligned pairs
# agree when their requests agree too ("GET /x" vs "GET /x HTTP/1.1" are the
# same).  Every other event is a disagreement, printed with its frame number
# (open the capture in Wireshark, "Go to packet") and classified:
#
#   known      a documented tshark fault, proven on this capture:
#              - tshark_http_body_incomplete: tshark reports the response
#                only with -o http.desegment_body:FALSE (its body never
#                completed: a gap, or the capture ends inside it);
#              - tshark_out_of_order_not_reassembled: only with
#                -o tcp.reassemble_out_of_order:TRUE;
#              - tshark_ftp_reply_not_first_in_segment: the reply line does
#                not start its TCP segment, and tshark decodes a reply code
#                on the first line of a segment only (read from the bytes);
#              - tshark_connection_not_dissected: tshark shows no PDU of
#                that connection at all (another dissector owns the port, or
#                its heuristics did not fire; try --decode-as);
#              - interim_response_pairing: a 1xx the engines pair
#                differently (tshark reports a request when its body ends,
#                after the 100 Continue);
#              - native_engine_does_not_decode_h2 / _tls: what the tshark
#                engine is for (HTTP/2, decrypted TLS), seen by it alone;
#              - listed: a difference the caller documents (--known FILE,
#                columns capture,protocol,side,frame,code[,why]; side "ours"
#                = only the native engine reports it, "truth" = only tshark).
#   unexplained  anything else: a bug in one engine, or a tshark fault not
#              documented yet.  The exit status is 5 when there is any.
#
# Limits: the alternative tshark modes are run only when some event is
# reported by the native engine alone, over the whole capture (one more
# tshark run each); pairing differences other than 1xx are unexplained.
from __future__ import annotations

import argparse
import csv
import difflib
import os
import sys
import tempfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from analyzer.errors import ExitStatus

from analyzer.protocols import EVENT_PROTOCOLS as PROTOCOLS
ALT_MODES = (
    ("tshark_http_body_incomplete", {"http.desegment_body": "FALSE"}),
    ("tshark_out_of_order_not_reassembled", {"tcp.reassemble_out_of_order": "TRUE"}),
)
# Disagreement lines printed per class before "... N more".
MAX_SHOWN = 50

EPILOG = """examples:
  analyzer crosscheck capture.pcapng
  analyzer crosscheck https.pcap --tls-keylog keys.log -o cc/
  analyzer crosscheck odd-port.pcap --decode-as tcp.port==8888,http

exit status: 0 the engines agree (or differ only where tshark is known to be
wrong), 5 they disagree beyond the known differences, 7 tshark is missing.
"""


@dataclass
class Disagreement:
    protocol: str
    kind: str            # "native-only" | "tshark-only" | "request-differs"
    capture: str
    frame: str           # frame of the native event (tshark's for tshark-only)
    code: str
    request: str         # native's request (tshark's for tshark-only)
    other: str = ""      # tshark's request when they differ
    client: str = ""
    server: str = ""
    known: str = ""      # class of a known difference, "" = unexplained
    why: str = ""


@dataclass
class CrossCheck:
    captures: list[str]
    tshark_version: str = ""
    agree: Counter = field(default_factory=Counter)
    native: Counter = field(default_factory=Counter)
    tshark: Counter = field(default_factory=Counter)
    disagreements: list[Disagreement] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def unexplained(self) -> list[Disagreement]:
        return [d for d in self.disagreements if not d.known]

    @property
    def ok(self) -> bool:
        return not self.unexplained and not self.errors


def _norm_request(text: str) -> str:
    parts = " ".join((text or "").split()).split(" ")
    if len(parts) >= 3 and parts[-1].upper().startswith("HTTP/"):
        parts = parts[:-1]
    return " ".join(parts)


def _cell(value) -> str:
    """An event value as its events.csv cell reads (before neutralisation)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _load(result) -> dict:
    """A run's events (kept in memory: EventOutputs.keep) grouped by connection endpoints."""
    groups: dict = defaultdict(list)
    if result.kept is None:
        return groups
    for event in result.kept.table().to_pylist():
        row = {name: _cell(value) for name, value in event.items()}
        if row["protocol"] not in PROTOCOLS:
            continue
        key = (row["capture"], row["protocol"], row["client_ip"], row["client_port"], row["server_ip"],
               row["server_port"])
        groups[key].append(row)
    for rows in groups.values():
        rows.sort(key=lambda r: (float(r["epoch"] or 0), int(r["frame"] or 0)))
    return groups


def _connections(rows) -> dict:
    """(capture, client, server) -> what the tshark engine learnt: "h2", "tls" or ""."""
    import json

    out: dict = {}
    for row in rows:
        outcome = row.get("outcome") or {}
        if isinstance(outcome, str):
            try:
                outcome = json.loads(outcome or "{}")
            except ValueError:
                outcome = {}
        how = "tls" if isinstance(outcome.get("tls"), dict) and outcome["tls"].get("decrypted") else \
            "h2" if outcome.get("http_version") == "2" else ""
        c, s = (str(row["client_ip"]), str(row["client_port"])), (str(row["server_ip"]), str(row["server_port"]))
        out[(row["capture"], *c, *s)] = how
        out[(row["capture"], *s, *c)] = how
    return out


def _read_known(paths) -> set:
    known = set()
    for path in paths or ():
        with open(path, newline="", encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                known.add((row["capture"], row["protocol"], row.get("side", ""), str(row["frame"]), str(row["code"])))
    return known


def compare(native, tshark) -> tuple[Counter, Counter, Counter, list[Disagreement]]:
    """Align the events of two runs; (agree, native, tshark counts per protocol, disagreements)."""
    a, b = _load(native), _load(tshark)
    agree, n_native, n_tshark = Counter(), Counter(), Counter()
    out: list[Disagreement] = []
    for key in sorted(set(a) | set(b)):
        capture, proto, cip, cport, sip, sport = key
        mine, theirs = a.get(key, []), b.get(key, [])
        n_native[proto] += len(mine)
        n_tshark[proto] += len(theirs)
        ends = dict(client=f"{cip}:{cport}", server=f"{sip}:{sport}", capture=capture, protocol=proto)
        got_a, got_b = set(), set()
        # Same code and request first; what is left between those anchors is
        # aligned on the code alone (a pair there differs in its request).
        keyed = difflib.SequenceMatcher(a=[(r["code"], _norm_request(r["request"])) for r in mine],
                                        b=[(r["code"], _norm_request(r["request"])) for r in theirs],
                                        autojunk=False)
        for tag, i1, i2, j1, j2 in keyed.get_opcodes():
            if tag == "equal":
                for k in range(i2 - i1):
                    got_a.add(i1 + k)
                    got_b.add(j1 + k)
                    agree[proto] += 1
            elif tag == "replace":
                codes = difflib.SequenceMatcher(a=[r["code"] for r in mine[i1:i2]],
                                                b=[r["code"] for r in theirs[j1:j2]], autojunk=False)
                for block in codes.get_matching_blocks():
                    for k in range(block.size):
                        i, j = i1 + block.a + k, j1 + block.b + k
                        got_a.add(i)
                        got_b.add(j)
                        x, y = mine[i], theirs[j]
                        out.append(Disagreement(kind="request-differs", frame=x["frame"], code=x["code"],
                                                request=x["request"], other=y["request"], **ends))
        out += [Disagreement(kind="native-only", frame=mine[i]["frame"], code=mine[i]["code"],
                             request=mine[i]["request"], **ends) for i in range(len(mine)) if i not in got_a]
        out += [Disagreement(kind="tshark-only", frame=theirs[j]["frame"], code=theirs[j]["code"],
                             request=theirs[j]["request"], **ends) for j in range(len(theirs)) if j not in got_b]
    return agree, n_native, n_tshark, out


def _payloads(path: str, frames: set[int]) -> dict[int, bytes]:
    """TCP payload of the given frames, read with our own decoder."""
    from analyzer.decode.packets import Decoder
    from analyzer.errors import AnalyzerError
    from analyzer.capture import open_capture

    out: dict[int, bytes] = {}
    if not frames:
        return out
    decoder = Decoder()
    last = max(frames)
    try:
        with open_capture(path) as reader:
            for number, (ts, linktype, data, wirelen) in enumerate(reader, 1):
                if number in frames:
                    seg = decoder.decode(linktype, data, ts, wirelen)
                    out[number] = bytes(seg[7]) if seg else b""
                if number >= last:
                    break
    except AnalyzerError:
        pass
    return out


def _alt_events(path: str, prefs: dict, keylog, decode_as, workdir: Path) -> set:
    from analyzer.engines.sink import EventOutputs
    from analyzer.engines.tshark import run as tshark_run

    out = workdir / ("alt-" + "-".join(f"{k}" for k in prefs))
    result = tshark_run([path], out, keylog=keylog, decode_as=decode_as, prefs=prefs,
                        outputs=EventOutputs(keep=True, stats=False))
    seen = set()
    for rows in _load(result).values():
        for r in rows:
            ends = (r["protocol"], r["client_ip"], r["client_port"], r["server_ip"], r["server_port"])
            seen.add(ends + (r["frame"], r["code"]))
            if r["request"]:
                # With out-of-order reassembly tshark's first frame is the
                # lowest-numbered segment, not the one with the first byte.
                seen.add(ends + ("request", r["code"], _norm_request(r["request"])))
    return seen


def classify(cc: CrossCheck, paths: dict[str, str], tshark_conns: dict, known: set, *, keylog=None,
             decode_as=None, workdir: Path) -> None:
    """Mark each disagreement that a documented tshark fault explains."""
    for d in cc.disagreements:
        if d.kind == "tshark-only":
            cip, cport = d.client.rsplit(":", 1)
            sip, sport = d.server.rsplit(":", 1)
            how = tshark_conns.get((d.capture, cip, cport, sip, sport), "")
            if how:
                d.known = "native_engine_does_not_decode_" + how
                d.why = {"h2": "HTTP/2: only the tshark engine decodes it",
                         "tls": "decrypted TLS: only the tshark engine decrypts it"}[how]
                continue
        side = "ours" if d.kind == "native-only" else "truth" if d.kind == "tshark-only" else "pairing"
        if (d.capture, d.protocol, side, d.frame, d.code) in known:
            d.known, d.why = "listed", "documented in the --known file"
        elif d.kind == "request-differs" and d.code.isdigit() and 100 <= int(d.code) < 200:
            d.known = "interim_response_pairing"
            d.why = "tshark reports a request when its body ends (after the 100 Continue)"
    # Byte-level proofs and connections tshark never dissected.
    ftp = [d for d in cc.disagreements if not d.known and d.kind == "native-only" and d.protocol == "ftp"]
    by_capture = defaultdict(set)
    for d in ftp:
        by_capture[d.capture].add(int(d.frame))
    for capture, frames in by_capture.items():
        payloads = _payloads(paths.get(capture, capture), frames)
        for d in ftp:
            if d.capture == capture:
                data = payloads.get(int(d.frame), b"")
                if data and not data.startswith(d.code.encode()):
                    d.known = "tshark_ftp_reply_not_first_in_segment"
                    d.why = "tshark decodes a reply code only on the first line of a TCP segment"
    # Events tshark finds only with another preference.
    pending = [d for d in cc.disagreements if not d.known and d.kind in ("native-only", "request-differs")]
    for name, prefs in ALT_MODES:
        if not pending:
            break
        for capture in sorted({d.capture for d in pending}):
            seen = _alt_events(paths.get(capture, capture), prefs, keylog, decode_as, workdir / _safe(capture))
            for d in pending:
                if d.capture != capture:
                    continue
                cip, cport = d.client.rsplit(":", 1)
                sip, sport = d.server.rsplit(":", 1)
                ends = (d.protocol, cip, cport, sip, sport)
                if ends + (d.frame, d.code) in seen or \
                        (d.request and ends + ("request", d.code, _norm_request(d.request)) in seen):
                    d.known = name
                    pref = ", ".join(f"-o {k}:{v}" for k, v in prefs.items())
                    d.why = f"tshark reports it only with {pref}"
        pending = [d for d in pending if not d.known]
    for d in cc.disagreements:
        if d.known or d.kind != "native-only":
            continue
        cip, cport = d.client.rsplit(":", 1)
        sip, sport = d.server.rsplit(":", 1)
        if (d.capture, cip, cport, sip, sport) not in tshark_conns:
            d.known = "tshark_connection_not_dissected"
            d.why = f"tshark shows no PDU of this connection (try --decode-as tcp.port=={sport},{d.protocol})"


def crosscheck(captures, *, outdir=None, keylog=None, decode_as=None, known_files=(), lang: str = "en") -> CrossCheck:
    """Run both engines over `captures` and classify every disagreement."""
    from analyzer.engines.tshark import run as tshark_run, tshark_version
    from analyzer.engines.native import expand_inputs, run as native_run
    from analyzer.engines.sink import EventOutputs

    paths = expand_inputs(list(captures))
    cc = CrossCheck(captures=paths, tshark_version=tshark_version()[0])
    tmp = None
    if outdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="analyzer-crosscheck-")
        base = Path(tmp.name)
    else:
        base = Path(outdir)
    try:
        by_name: dict[str, str] = {}
        conns: dict = {}
        for path in paths:
            # One capture at a time: each is its own world (the native engine
            # would carry connections from one file into the next).
            name = "<stdin>" if path == "-" else os.path.basename(path)
            by_name[name] = path
            sub = _safe(name)
            keep = EventOutputs(keep=True, stats=False)
            native = native_run([path], base / "native" / sub, lang=lang, outputs=keep)
            theirs = tshark_run([path], base / "tshark" / sub, lang=lang, keylog=keylog, decode_as=decode_as,
                                outputs=keep)
            cc.errors += [f"native: {e}" for e in native.errors] + [f"tshark: {e}" for e in theirs.errors]
            agree, n_native, n_tshark, rows = compare(native, theirs)
            cc.agree.update(agree)
            cc.native.update(n_native)
            cc.tshark.update(n_tshark)
            cc.disagreements += rows
            conns.update(_connections(theirs.connections.rows()))
        classify(cc, by_name, conns, _read_known(known_files), keylog=keylog, decode_as=decode_as,
                 workdir=base / "alt")
        if outdir is not None:
            write_csv(cc, base / "crosscheck.csv")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return cc


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "capture"


def write_csv(cc: CrossCheck, path: Path) -> None:
    from analyzer.outputs.csvfile import CsvWriter

    columns = ("capture", "protocol", "kind", "frame", "code", "request", "other_request", "client", "server",
               "known", "why")
    writer = CsvWriter(path, columns)
    writer.write_rows((d.capture, d.protocol, d.kind, d.frame, d.code, d.request, d.other, d.client, d.server,
                       d.known, d.why) for d in cc.disagreements)
    writer.commit()


def format_report(cc: CrossCheck, show: int = MAX_SHOWN) -> str:
    lines = [f"crosscheck: native engine vs tshark {cc.tshark_version} over {len(cc.captures)} capture(s)"]
    lines.append(f"{'protocol':10} {'native':>7} {'tshark':>7} {'agree':>7} {'known':>7} {'unexplained':>12}")
    for proto in PROTOCOLS:
        rows = [d for d in cc.disagreements if d.protocol == proto]
        if not (cc.native[proto] or cc.tshark[proto] or rows):
            continue
        known = sum(1 for d in rows if d.known)
        lines.append(f"{proto:10} {cc.native[proto]:>7} {cc.tshark[proto]:>7} {cc.agree[proto]:>7} "
                     f"{known:>7} {len(rows) - known:>12}")
    for title, rows in (("unexplained", cc.unexplained), ("known differences", [d for d in cc.disagreements if d.known])):
        if not rows:
            continue
        lines.append(f"{title} ({len(rows)}):")
        for d in rows[:show]:
            what = f"{d.code} {d.request!r}" if d.kind != "request-differs" else \
                f"{d.code} native {d.request!r} / tshark {d.other!r}"
            tag = f"  [{d.known}]" if d.known else ""
            lines.append(f"  {d.capture} frame {d.frame}: {d.protocol} {d.kind}: {what}  "
                         f"{d.client} -> {d.server}{tag}")
        if len(rows) > show:
            lines.append(f"  ... {len(rows) - show} more (see crosscheck.csv with -o)")
    for err in cc.errors:
        lines.append(f"error: {err}")
    verdict = "the engines agree" if not cc.disagreements else \
        "the engines differ only in documented ways (known tshark faults, or what only one engine decodes)" if cc.ok else \
        f"{len(cc.unexplained)} unexplained disagreement(s)"
    lines.append(verdict)
    return "\n".join(lines)


def register(sub) -> None:
    p = sub.add_parser(
        "crosscheck", help="run the native and the tshark engine and show where they disagree",
        description="Analyse captures with both engines and print, per protocol, how many events agree and "
                    "every disagreement (frame, code, request), marking those a documented tshark fault explains.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("captures", nargs="+", metavar="CAPTURE", help="capture files or directories of them")
    p.add_argument("-o", "--outdir", default=None,
                   help="keep both engines' outputs and crosscheck.csv here (default: a temporary directory)")
    p.add_argument("--tls-keylog", metavar="FILE", default=None,
                   help="NSS key log (SSLKEYLOGFILE) for the tshark engine")
    p.add_argument("--decode-as", action="append", default=[], metavar="SPEC",
                   help="tshark decode-as rule, e.g. tcp.port==8888,http (repeatable)")
    p.add_argument("--known", action="append", default=[], metavar="FILE",
                   help="CSV of documented differences (capture,protocol,side,frame,code[,why]; repeatable)")
    p.add_argument("--show", type=int, default=MAX_SHOWN, metavar="N", help="disagreements printed per class")
    p.set_defaults(func=cmd_crosscheck)


def cmd_crosscheck(args) -> int:
    from analyzer.engines.tshark import parse_decode_as

    cc = crosscheck(args.captures, outdir=args.outdir, keylog=args.tls_keylog,
                    decode_as=parse_decode_as(args.decode_as), known_files=args.known)
    from analyzer.outputs.visible import visible

    # Requests and reasons in the report are wire strings: controls shown escaped, line by line.
    print("\n".join(visible(line) for line in format_report(cc, args.show).split("\n")))
    if args.outdir:
        print(f"outputs written to {Path(args.outdir).resolve()}/", file=sys.stderr)
    return int(ExitStatus.OK if cc.ok else ExitStatus.THRESHOLD)
