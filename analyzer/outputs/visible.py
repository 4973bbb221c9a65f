# Characters from the wire (and from file names) that must not act on the
# reader: shown in a visible form instead of being interpreted.
#
# Which: the C0 controls and DEL (ESC starts terminal sequences such as
# OSC 52, a clipboard write; BEL, NUL, CR rewrite a line), the C1 controls
# (U+0080-U+009F, some terminals honour CSI as U+009B) and the invisible
# format characters that reorder or hide text: bidi embeddings, overrides
# and isolates (U+202A-U+202E, U+2066-U+2069, U+061C, U+200E/F; "Trojan
# Source"), zero-width characters (U+200B-U+200D, U+2060-U+2064, U+FEFF) and
# the line/paragraph separators U+2028/U+2029.
#
# How each output shows them (README "Outputs"):
#
#   CSV, HTML, terminal   `\xNN` (up to U+00FF) or `\uNNNN` -- the Python and
#                         JSON notation, the same form as the UTF-8 fallback
#                         for undecodable header bytes.  In HTML a tab or
#                         line feed stays (it is white space there).
#   JSON (jsonl, summary) the JSON escape `\uNNNN`: the value is exact once
#                         parsed, and the file holds no raw control.
#   Parquet               exact: a binary format no terminal renders.
#
# The CSV form is not reversible for a wire string that itself holds a
# backslash followed by `x`; the exact value is in events.jsonl/parquet.
from __future__ import annotations

import json
import re

# The characters, as a regex character class body (Python `re` and RE2 alike).
UNSAFE_CLASS = ("\\x00-\\x1f\\x7f-\\x9f\\x{061c}\\x{200b}-\\x{200f}\\x{2028}-\\x{202e}"
                "\\x{2060}-\\x{2064}\\x{2066}-\\x{2069}\\x{feff}")
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
_UNSAFE_HTML = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064"
                          "\u2066-\u2069\ufeff]")
# json.dumps escapes C0 itself; a raw C0 in its output is indentation.
_UNSAFE_JSON = re.compile("[\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
# RE2 (pyarrow.compute) spells code points as \x{...}.
UNSAFE_RE2 = "[" + UNSAFE_CLASS + "]"


def may_hold_unsafe(column) -> bool:
    """False when an Arrow string array is printable ASCII throughout (no regex needed).

    Most columns are (URIs, hosts, reasons): their value bytes' minimum and
    maximum answer in microseconds, where the regex takes milliseconds a batch.
    """
    import numpy as np
    import pyarrow as pa  # here, not at the top: the CLI imports this module for `visible` on every start

    data = column.buffers()[2] if column.type == pa.string() else None
    if data is None or data.size == 0:
        return data is None and column.null_count < len(column)  # another layout: let the caller look
    values = np.frombuffer(data, dtype=np.uint8)
    return bool(values.min() < 0x20 or values.max() >= 0x7F)


def _shown(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _json_escape(match: re.Match) -> str:
    return f"\\u{ord(match.group()):04x}"


def visible(text: str) -> str:
    """`text` with every unsafe character as `\\xNN` / `\\uNNNN` (CSV cells, terminal lines)."""
    if text.isascii() and text.isprintable():
        return text   # U+0020-U+007E only: nothing to show (a C-level check, ~5x cheaper than the search)
    return _UNSAFE.sub(_shown, text) if _UNSAFE.search(text) else text


def visible_html(text: str) -> str:
    """As visible(), keeping tab and line feed (white space in HTML)."""
    return _UNSAFE_HTML.sub(_shown, text) if _UNSAFE_HTML.search(text) else text


def has_unsafe(text: str) -> bool:
    return _UNSAFE.search(text) is not None


def json_text(value, **options) -> str:
    """json.dumps with UTF-8 kept readable and every unsafe character escaped."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, **options)
    # Past C0 these characters can only stand inside strings, where \\uNNNN
    # means the same character.
    return _UNSAFE_JSON.sub(_json_escape, text) if _UNSAFE_JSON.search(text) else text
