# cython: language_level=3, boundscheck=False, wraparound=False
# HTTP head helpers in C, each equal to a pure function of
# protocols/http/dissector.py (the reference), so the compiled twin of that
# module (analyzer._fast.http_dissector, see setup.py) can call them instead.
#
#   headers(head, start, utf8)  ==  dissector._headers(head, start)
#
# with `utf8` saying how the reference decodes a value: Latin-1, or UTF-8
# with \xNN escapes for the bytes that are not (analyzer/_fast/__init__.py
# probes the reference and picks the one that answers the same, or none).
#
# The reference scans with one case-insensitive regex; here the same scan is
# a loop over line feeds.  Why it is the same: no wanted name is a prefix of
# another, so at most one alternative can match at a line start; after a
# match the search resumes at the end of its value, which is a CR, a LF or
# the end.  tests/test_fast_path.py checks equality on random heads.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr

# Lower-case names, in the reference regex's order.
cdef tuple WANTED = (b"content-length", b"transfer-encoding", b"host", b"upgrade", b"connection",
                     b"content-encoding", b"sec-websocket-extensions")
cdef tuple WANTED_STR = tuple(name.decode("ascii") for name in WANTED)


cdef inline int _lower(int c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


def headers(bytes head, Py_ssize_t start=0, bint utf8=False):
    """Wanted header fields of a head, from `start` on: see dissector._headers."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(head)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(head)
    cdef Py_ssize_t i = start, j, k, q, vstart, vend, length
    cdef const unsigned char* name
    cdef const void* hit
    cdef int w, found
    cdef dict out = {}
    if i < 0:
        i = 0
    while i < n:
        hit = memchr(p + i, 10, n - i)
        if hit == NULL:
            break
        i = <const unsigned char*>hit - p
        j = i + 1
        found = -1
        for w in range(7):
            name = <const unsigned char*>PyBytes_AS_STRING(<bytes>WANTED[w])
            length = PyBytes_GET_SIZE(<bytes>WANTED[w])
            if j + length > n:
                continue
            k = 0
            while k < length and _lower(p[j + k]) == name[k]:
                k += 1
            if k == length:
                found = w
                break
        if found < 0:
            i += 1
            continue
        q = j + PyBytes_GET_SIZE(<bytes>WANTED[found])
        while q < n and (p[q] == 32 or p[q] == 9):
            q += 1
        if q >= n or p[q] != 58:    # ':'
            i += 1
            continue
        q += 1
        while q < n and (p[q] == 32 or p[q] == 9):
            q += 1
        vstart = q
        while q < n and p[q] != 13 and p[q] != 10:
            q += 1
        vend = q
        raw = head[vstart:vend].strip()
        value = raw.decode("utf-8", "backslashreplace") if utf8 else raw.decode("latin-1")
        key = WANTED_STR[found]
        if key in out:
            out[key] = out[key] + "," + value
        else:
            out[key] = value
        i = vend
    return out
