# Request lines -> the path a status view groups failures by.
#
# A failure spread over query variants (/search?q=1, /search?q=2, ...) or
# over object IDs (/users/17, /users/18) is one failure to a person.  As APM
# tools do (Elastic APM, Datadog "resource" names, GoAccess without query
# strings), the default groups by the path without query or fragment, with
# ID-like segments replaced by a placeholder:
#
#   /users/123/orders          -> /users/{id}/orders
#   /o/3f2b...-...-...-...     -> /o/{uuid}
#   /blob/9fceb02d0ae598e9     -> /blob/{hex}     (12+ hex digits, at least one digit)
#
# A segment is replaced only when it is entirely ID-like, so /v2/api and
# /img/logo2x.png keep their names.  The raw request stays in events
# (`request`); `full` keeps whole URIs for those who want them.
#
# Everything works on whole columns (pandas' vectorised regular
# expressions): only failing rows reach here, once per batch.
from __future__ import annotations

import re

import numpy as np
import pandas as pd

URI_GROUPINGS = ("path", "full")
MAX_URI_CHARS = 2048          # longer URIs are cut (browsers' practical URL limit is ~2K)

# "GET /a b HTTP/1.1" -> "/a b": method, then everything before a final HTTP version.
_REQUEST = r"^(?P<method>[^ ]*) (?P<uri>.*?)(?: HTTP/[0-9.]+)?\Z"
# Absolute-form request targets (proxies, RFC 9112 §3.2.2) start with scheme://authority.
_ABSOLUTE = r"^[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*"
_UUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
# (segment regex, placeholder), tried in order on each whole segment.
SEGMENT_RULES = (
    (r"(?<=/)" + _UUID + r"(?=/|\Z)", "{uuid}"),
    (r"(?<=/)[0-9]+(?=/|\Z)", "{id}"),
    (r"(?<=/)(?=[0-9A-Fa-f]*[0-9])[0-9A-Fa-f]{12,}(?=/|\Z)", "{hex}"),
)


def split_requests(requests) -> tuple[pd.Series, pd.Series]:
    """(method, uri) of request lines; a line without a space is all URI, no method."""
    s = pd.Series(np.asarray(requests, dtype=object), dtype=object).fillna("")
    parts = s.str.extract(_REQUEST, flags=re.S)
    no_method = parts["method"].isna()
    method = parts["method"].where(~no_method, "")
    uri = parts["uri"].where(~no_method, s)
    return method.astype(object), uri.astype(object)


def group_paths(uris) -> pd.Series:
    """The path of each URI with query, fragment and ID-like segments normalised."""
    s = pd.Series(np.asarray(uris, dtype=object), dtype=object).fillna("")
    s = s.str.replace(_ABSOLUTE, "", regex=True)
    s = s.str.replace(r"(?s)[?#].*", "", regex=True)
    for pattern, placeholder in SEGMENT_RULES:
        s = s.str.replace(pattern, placeholder, regex=True)
    return s.where(s != "", "/").astype(object)


def failing_keys(requests, grouping: str = "path") -> np.ndarray:
    """What the failing-URI table is keyed by: grouped paths, or whole URIs (cut at MAX_URI_CHARS)."""
    _, uri = split_requests(requests)
    if grouping == "path":
        uri = group_paths(uri)
    return uri.str.slice(0, MAX_URI_CHARS).to_numpy(dtype=object)
