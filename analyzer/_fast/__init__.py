# Which implementation of the packet loop runs: the one place that decides.
#
#   compiled  analyzer/_fast/loop.pyx (Cython), built by `pip install` when a
#             C compiler is there; the per-packet work in C (see its header).
#   python    engines/native.py's Session.read_file: the reference, always
#             there, and what the compiled loop is tested against.
#
# As aiohttp does with AIOHTTP_NO_EXTENSIONS, ANALYZER_NO_EXTENSIONS=1 (or
# the name for it, ANALYZER_PURE_PYTHON=1) forces the Python loop;
# it is read when this module is first imported.  A missing build is not an
# error: the Python loop runs, and the CLI says so once on stderr
# (`notice()`).  Tests switch with `use()`.
from __future__ import annotations

import os

SWITCHES = ("ANALYZER_NO_EXTENSIONS", "ANALYZER_PURE_PYTHON")
IMPLEMENTATIONS = ("compiled", "python")

# How much slower the Python loop is than the compiled one, as measured by
# benchmarks/fastpath.py (see README "Speed"): what the notice tells.
PYTHON_SLOWDOWN = "4x (web traffic) to 5x (small messages)"


def _switched_off() -> bool:
    return any(os.environ.get(name, "").strip() not in ("", "0") for name in SWITCHES)


# Reference module -> its compiled twin (the same source compiled by Cython
# under another name; see setup.py TWINS).
TWINS = {
    "analyzer.protocols.http.dissector": "analyzer._fast.http_dissector",
}
# Reference module -> (compiled module, factory): a protocol whose plain
# connections a compiled lane dissects, handing the rest to the twin
# (analyzer/_fast/http_conn.pyx).  Detection stays the twin's.
LANES = {
    "analyzer.protocols.http.dissector": ("analyzer._fast.http_conn", "dissector_for"),
}
# Pure functions of a twin replaced by C ones equal to them: twin module ->
# {name: function of the reference module giving the C one, or None when
# none answers as the reference does (then the twin keeps its own)}.
def _first_equal(candidates, reference, probes):
    """The first of `candidates` answering as `reference` on every probe (argument tuples), or None."""
    for candidate in candidates:
        if all(candidate(*args) == reference(*args) for args in probes):
            return candidate
    return None


def _http_headers(reference):
    from analyzer._fast.http_head import headers, headers_utf8

    return _first_equal((headers, headers_utf8), reference._headers, _HEAD_PROBES)


# Heads on which a C helper must answer as the reference (how values are
# decoded, repeated and odd fields); tests/test_fast_path.py checks many more.
_HEAD_PROBES = (
    (b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nhost:a\r\nHOST :  b \r\n\r\n", 15),
    (b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9.example\r\nUpgrade: \xe9\xff\r\n\r\n", 14),
    (b"\ncontent-length\t:\t7\x0b\r\ntransfer-encoding: chunked\n\n", 0),
)

# Start lines on which http_head.start_line must answer as _start_line: the
# regexes' corners (backtracking past a URI cut by \v, spaces, no URI, `$`
# before a final LF, CR in a reason, non-ASCII digits, non-UTF-8 bytes).
_LINE_PROBES = (
    b"HTTP/1.1 200 OK\r\n", b"HTTP/1.0 404 Not\rFound\r\r\n", b"HTTP/1.1 200\n\n", b"HTTP/1.1 200 x\n\n\n",
    b"HTTP/1.1 2\xd9\xa30 x\r\n", b"HTTP/1.1 500 \xe9\xc3\xa9\r\n", b"HTTP/1.1 301", b"HTTP/2 200\r\n",
    b"GET /a HTTP/1.1\r\n", b"GET /a\x0bb HTTP/1.1\r\n", b"GET   /\xe9  HTTP/1.1 \r\n", b"OPTIONS",
    b"GET /\r\n\r\n", b"GET \t/\r\n", b"M" * 33 + b" / HTTP/1.1\r\n", b"PUT /x\x0c\n",
)
# Framing questions on which http_head.framing must answer as framing():
# the states' numbers, HEAD/CONNECT/1xx/204/304, list values, odd digits.
_FRAMING_PROBES = (
    (True, "GET", 200, {"content-length": "12"}), (True, "HEAD", 200, {"content-length": "12"}),
    (True, "GET", 204, {}), (True, "GET", 101, {}), (True, "CONNECT", 200, {}), (True, "GET", 200, {}),
    (False, "POST", 0, {"content-length": "7, 7"}), (False, "GET", 0, {}), (True, "GET", 200, {"content-length": "0"}),
    (True, "GET", 500, {"transfer-encoding": "gzip , Chunked", "content-length": "3"}),
    (True, "GET", 200, {"transfer-encoding": "chun\u212aed"}), (False, "PUT", 0, {"content-length": "\xb3"}),
    (True, "GET", 200, {"content-length": "9" * 30}), (True, "GET", 200, {"content-length": "\x1c12\x1f"}),
)


def _http_start_line(reference):
    from analyzer._fast.http_head import start_line

    return _first_equal((start_line,), reference._start_line, [(line,) for line in _LINE_PROBES])


def _http_framing(reference):
    from analyzer._fast.http_head import framing

    return _first_equal((framing,), reference.framing, _FRAMING_PROBES)


HELPERS = {
    "analyzer._fast.http_dissector": {
        "_headers": ("analyzer.protocols.http.dissector", _http_headers),
        "_start_line": ("analyzer.protocols.http.dissector", _http_start_line),
        "framing": ("analyzer.protocols.http.dissector", _http_framing),
    },
}


def _load():
    try:
        from analyzer._fast import loop
    except ImportError as exc:  # not built (no compiler at install time) or built for another Python
        return None, str(exc)
    return loop, ""


_COMPILED, _WHY_NOT = _load()
_forced = "python" if _switched_off() else None


def available() -> bool:
    """True when the compiled loop is built and importable."""
    return _COMPILED is not None


def selected() -> str:
    """"compiled" or "python": what the next Session will run."""
    if _forced is not None:
        return _forced
    return "compiled" if _COMPILED is not None else "python"


def use(name: str | None) -> None:
    """Force an implementation ("compiled", "python"), or None for the default.

    ValueError for "compiled" when it is not built (tests skip on that).
    """
    global _forced
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {name!r} (choose from {', '.join(IMPLEMENTATIONS)})")
    if name == "compiled" and _COMPILED is None:
        raise ValueError(f"the compiled loop is not built ({_WHY_NOT})")
    _forced = name


# The compiled entry points, each with a Python equal beside its caller, and
# the compiled module that holds each.
ENTRY_POINTS = {"read_file": "loop", "feed_records": "loop", "scan_records": "loop", "ftp_lines": "loop",
                "share_key": "loop", "EventRows": "rows", "render_csv": "csv_rows",
                "write_csv_rows": "csv_rows"}


def compiled(name: str):
    """<module>.<name> when the compiled implementation is selected, else None (the
    caller runs its Python equal).  The entry points:

      read_file     Session.read_file (engines/native.py)
      feed_records  Session.feed_records (the cluster's partitions)
      scan_records  the record scan of the cluster's decode tasks (capture/split.py)
      ftp_lines     the pre-pass of the loopback FTP routes (capture/split.py)
      share_key     the per-packet share key; -1 where its decoder leaves the
                    packet to the Python one
      EventRows     the events a sink holds until their turn (engines/sink.py)
      render_csv    a batch's events.csv rows, as pyarrow's CSV writer makes them,
                    with where each ends (outputs/events.py); write_csv_rows
                    writes them to a file
    """
    module = ENTRY_POINTS.get(name)
    if module is None:
        raise ValueError(f"no compiled entry point {name!r}")
    if selected() != "compiled":
        return None
    from importlib import import_module

    try:
        return getattr(import_module(f"analyzer._fast.{module}"), name)
    except ImportError:  # built before this module existed: the Python equal runs
        return None


def protocols(specs: tuple) -> tuple:
    """The registry's specs, with each module that has a built twin pointed at it.

    Only while the compiled implementation is selected; detection, the
    dissector class and roles then all come from the twin, or from its lane
    (LANES), which makes twins for what it does not dissect itself.
    """
    if selected() != "compiled":
        return specs
    from dataclasses import replace
    from importlib.util import find_spec

    out = []
    for spec in specs:
        twin = TWINS.get(spec.module)
        if twin is not None and _is_compiled(find_spec(twin)):
            _with_helpers(twin)
            lane = LANES.get(spec.module)
            if lane is not None and _is_compiled(find_spec(lane[0])):
                spec = replace(spec, module=lane[0], dissector_name=lane[1])
            else:
                spec = replace(spec, module=twin)
        out.append(spec)
    return tuple(out)


def _is_compiled(found) -> bool:
    return found is not None and found.origin is not None and not found.origin.endswith(".py")


def _with_helpers(twin: str) -> None:
    """Give a twin its C helpers (the twin looks its globals up at call time)."""
    from importlib import import_module

    module = import_module(twin)
    for name, (reference, choose) in HELPERS.get(twin, {}).items():
        helper = helper_for(twin, name)
        if helper is not None:
            setattr(module, name, helper)


def helper_for(twin: str, name: str):
    """The C function that stands in for `name` in `twin`, or None (not built, or
    no longer answering as the reference does)."""
    from importlib import import_module

    reference, choose = HELPERS[twin][name]
    try:
        return choose(import_module(reference))
    except ImportError:
        return None


def notice() -> str:
    """One line for stderr when the compiled loop is missing (not when switched off); else ""."""
    if _COMPILED is not None or _switched_off():
        return ""
    return ("analyzer: the compiled fast path is not built (no C compiler when it was installed?); "
            f"running the pure-Python engine, {PYTHON_SLOWDOWN} slower "
            "(install gcc and python3-dev, then reinstall; ANALYZER_NO_EXTENSIONS=1 hides this)")
