# IIS sub-status codes from the response body (sans-IO: bytes in, answer out).
#
# IIS never puts the sub-status in the status line ("HTTP/1.1 403 Forbidden"),
# but its detailed error pages name it, in English or localised:
#   <title>IIS 10.0 Detailed Error - 403.14 - Forbidden</title>
#   <h3>HTTP Error 403.14 - Forbidden</h3>
#   <h3>HTTP 错误 404.0 - Not Found</h3>
# and the IIS 5/6 pages say "HTTP Error 403.1 - Forbidden: ..." next to
# "Internet Information Services".
#
# Strategy: only for 4xx/5xx; decode at most MAX_DECODED_BYTES of the body
# prefix (identity, gzip, x-gzip or deflate; anything else gives up); look for
# those markers; accept a value only if every marker found agrees and its
# major code equals the status code on the wire, so a page that merely
# mentions another code yields None.  Whether the value is a real IIS
# sub-status is a question of meaning: the annotation (meaning/annotate.py)
# keeps only those the catalogue lists, so a made-up one is never reported.
#
# Limits: brotli/zstd bodies are not decoded (IIS does not compress its own
# error pages with them by default); a marker split past the decoded budget
# is missed.  Any exception escaping find_substatus is a bug.
from __future__ import annotations

import re
import zlib

# IIS detailed error pages are 4-6 KiB; the markers sit in the first 1 KiB.
# 64 KiB of output bounds the work a hostile compressed body can cause
# (a zip bomb stops here), like the 64 KiB h11 allows a header block.
MAX_DECODED_BYTES = 64 * 1024

_TITLE = re.compile(
    rb"<title>\s*IIS\s+\d{1,2}(?:\.\d{1,2})?\s+[^<]{1,60}?\s-\s(\d{3})\.(\d{1,4})\s-\s", re.I)
_HEADING = re.compile(
    rb"<h[1-6][^>]{0,80}>\s*HTTP\s+[^<\s]{1,24}\s+(\d{3})[.-](\d{1,4})\s+-\s", re.I)
_CLASSIC = re.compile(rb"HTTP\s+Error\s+(\d{3})[.-](\d{1,4})\s+-\s", re.I)
_CLASSIC_MARK = b"Internet Information Services"


def _decode(body: bytes, content_encoding: str) -> bytes | None:
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return body[:MAX_DECODED_BYTES]
    if len(codings) > 1:
        return None        # stacked encodings: not something IIS sends
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        attempts = (16 + zlib.MAX_WBITS,)
    elif coding == "deflate":
        # RFC 9110 says zlib-wrapped; some servers send raw deflate.
        attempts = (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    else:
        return None
    for wbits in attempts:
        try:
            return zlib.decompressobj(wbits).decompress(body, MAX_DECODED_BYTES)
        except zlib.error:
            continue
    return None


def find_substatus(code: int, body_prefix: bytes, content_encoding: str = "") -> str | None:
    """The IIS sub-status ("403.14") a 4xx/5xx error page claims, else None."""
    if not isinstance(code, int) or not 400 <= code <= 599 or not body_prefix:
        return None
    body = bytes(body_prefix)
    text = body[:MAX_DECODED_BYTES] if not content_encoding else _decode(body, content_encoding)
    if not text:
        return None
    # Every marker needs "IIS" (_TITLE) or "HTTP" (_HEADING, _CLASSIC), in any
    # case: most error pages (nginx's, JSON) have neither, and the
    # case-insensitive searches cost ~4 us a page (140,000 pages on the api
    # benchmark) where this costs ~0.2.
    lowered = text.lower()
    if b"iis" not in lowered and b"http" not in lowered:
        return None
    found = set()
    for pattern in (_TITLE, _HEADING):
        for match in pattern.finditer(text):
            found.add((int(match.group(1)), int(match.group(2))))
    if not found and _CLASSIC_MARK in text:
        for match in _CLASSIC.finditer(text):
            found.add((int(match.group(1)), int(match.group(2))))
    if len(found) != 1:
        return None        # nothing, or markers that disagree: do not guess
    major, minor = found.pop()
    if major != code:
        return None
    return f"{major}.{minor}"
