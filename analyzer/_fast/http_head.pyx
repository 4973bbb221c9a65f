# cython: language_level=3, boundscheck=False, wraparound=False
# HTTP head helpers in C, each equal to a pure function of
# protocols/http/dissector.py (the reference), so the compiled twin of that
# module (analyzer._fast.http_dissector, see setup.py) can call them instead.
#
#   headers(head, start, utf8)  ==  dissector._headers(head, start)
#   (headers_utf8(head, start) is headers(head, start, True))
#   start_line(line)            ==  dissector._start_line(line)
#   framing(is_response, method, code, headers)  ==  dissector.framing(...)
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
#
# start_line: what the reference's STATUS_LINE / REQUEST_LINE matches
# accept, worked out once (the backtracking included) and written as
# straight scans; the derivation is beside each function.
# tests/test_http_head_c.py compares both on random and structured lines.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from cpython.unicode cimport PyUnicode_DecodeLatin1, PyUnicode_DecodeUTF8
from libc.string cimport memchr

# Lower-case names, in the reference regex's order.
cdef tuple WANTED = (b"content-length", b"transfer-encoding", b"host", b"upgrade", b"connection",
                     b"content-encoding", b"sec-websocket-extensions")
cdef tuple WANTED_STR = tuple(name.decode("ascii") for name in WANTED)


cdef inline int _lower(int c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


def headers(bytes head, Py_ssize_t start=0, bint utf8=False):
    """Wanted header fields of a head, from `start` on: see dissector._headers."""
    return _scan(head, start, utf8)


def headers_utf8(bytes head, Py_ssize_t start=0):
    """headers(head, start, utf8=True), without a partial's cost per call (~0.2 us)."""
    return _scan(head, start, True)


cdef dict _scan(bytes head, Py_ssize_t start, bint utf8):
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


# -- start lines -----------------------------------------------------------------------------

cdef extern from "Python.h":
    bint PyUnicode_IS_ASCII(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size) except NULL

# Request method characters (RFC 9110 tchar), as in REQUEST_LINE's class.
cdef bytes TCHAR = b"!#$%&'*+.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-"
cdef unsigned char IS_TCHAR[256]
cdef int _c
for _c in range(256):
    IS_TCHAR[_c] = 0
for _c in TCHAR:
    IS_TCHAR[_c] = 1


cdef inline bint _digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57          # \d of a bytes pattern: ASCII digits only


cdef inline bint _space(unsigned char c) noexcept nogil:
    # \s of a bytes pattern: space, \t, \n, \v, \f, \r
    return c == 32 or 9 <= c <= 13


cdef inline bint _tail(const unsigned char* p, Py_ssize_t i, Py_ssize_t n) noexcept nogil:
    """`\r?\n?$` matches at i: the rest is "", "\r", "\n", "\r\n", "\n\n" or "\r\n\n"
    (`$` also matches before a final line feed)."""
    if i < n and p[i] == 13:
        i += 1
    if i < n and p[i] == 10:
        i += 1
    return i == n or (i == n - 1 and p[i] == 10)


cdef inline str _text(const unsigned char* p, Py_ssize_t a, Py_ssize_t b):
    return PyUnicode_DecodeUTF8(<const char*>p + a, b - a, "backslashreplace")


def start_line(bytes line):
    """A start line as (code, reason) or (method, URI), or None: see dissector._start_line."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(line)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(line)
    cdef Py_ssize_t i, f, e, c
    cdef const void* hit
    if n >= 5 and p[0] == 72 and p[1] == 84 and p[2] == 84 and p[3] == 80 and p[4] == 47:   # "HTTP/"
        # HTTP/(\d)\.(\d) (\d{3})(?:[ \t]([^\n]*))?\r?\n?$
        if n < 12 or not (_digit(p[5]) and p[6] == 46 and _digit(p[7]) and p[8] == 32
                          and _digit(p[9]) and _digit(p[10]) and _digit(p[11])):
            return None
        code = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        if n > 12 and (p[12] == 32 or p[12] == 9):
            # The reason group, if present, takes everything to the first LF
            # (greedy; giving bytes back never reaches a later `$`), and the
            # rest must then be "", "\n" or "\n\n".  Without the group the
            # line would need a CR or LF here: it has a space or a tab.
            hit = memchr(p + 13, 10, n - 13)
            f = n if hit == NULL else <const unsigned char*>hit - p
            if not _tail(p, f, n):
                return None
            e = f
            while e > 13 and p[e - 1] == 13:   # .rstrip("\r") of the text = of the bytes (CR is ASCII)
                e -= 1
            return code, _text(p, 13, e)
        return (code, "") if _tail(p, 12, n) else None
    # ([tchar]{1,32})(?: +(\S+))?(?: +([^\r\n]*))?\r?\n?$
    i = 0
    while i < n and IS_TCHAR[p[i]]:
        i += 1
    if i == 0 or i > 32:
        # A shorter method leaves a tchar next, which no later part matches.
        return None
    method = PyUnicode_DecodeLatin1(<const char*>p, i, NULL)
    if i == n or p[i] != 32:
        return (method, "") if _tail(p, i, n) else None
    # Spaces follow.  Every way to match ends both optional groups at the
    # first CR or LF (the URI group holds neither), so that is where `\r?\n?$`
    # must match.  The URI is the token after the spaces if it is followed
    # by a space, a CR, a LF or the end; if it is cut by \t, \v or \f (or
    # there is none), the regex drops the URI group and lets the version
    # group take the whole rest: URI "".
    f = i
    while f < n and p[f] != 13 and p[f] != 10:
        f += 1
    if not _tail(p, f, n):
        return None
    c = i
    while c < n and p[c] == 32:
        c += 1
    if c == n or _space(p[c]):
        return method, ""
    e = c
    while e < n and not _space(p[e]):
        e += 1
    if e == n or p[e] == 32 or p[e] == 13 or p[e] == 10:
        return method, _text(p, c, e)
    return method, ""


# -- framing ---------------------------------------------------------------------------------

# Body states, as the reference numbers them (HEAD, BODY_LENGTH, BODY_CHUNKED,
# BODY_CLOSE, RESYNC, TUNNEL = 0, 1, 2, 3, 4, 5); __init__'s probes check them.
cdef tuple NO_BODY = (0, 0)
cdef tuple CHUNKED = (2, 0)
cdef tuple TO_CLOSE = (3, 0)
cdef tuple TUNNEL = (5, 0)
cdef bytes CHUNKED_NAME = b"chunked"


cdef inline bint _str_space(unsigned char c) noexcept nogil:
    # str.isspace() of an ASCII character: \t\n\v\f\r, \x1c-\x1f and space
    return c == 32 or 9 <= c <= 13 or 28 <= c <= 31


cdef bint _chunked(str te) except -1:
    """te.replace(" ", "").lower().split(",")[-1] == "chunked" """
    cdef Py_ssize_t n, i
    cdef size_t k
    cdef const unsigned char* p
    cdef const unsigned char* word = <const unsigned char*>PyBytes_AS_STRING(CHUNKED_NAME)
    if not PyUnicode_IS_ASCII(te):
        # str.lower() of non-ASCII text may give ASCII (KELVIN SIGN -> "k"): ask
        # Python (rpartition()[2] is split()[-1]; no negative index under wraparound=False).
        return te.replace(" ", "").lower().rpartition(",")[2] == "chunked"
    p = <const unsigned char*>PyUnicode_AsUTF8AndSize(te, &n)
    # Walk the last element backwards, skipping spaces, against "chunked".
    k = 7
    i = n - 1
    while i >= 0 and p[i] != 44:   # ','
        if p[i] != 32:
            if k == 0 or not (65 <= p[i] <= 90 or 97 <= p[i] <= 122):
                return False
            k -= 1
            if (p[i] | 32) != word[k]:
                return False
        i -= 1
    return k == 0


cdef object _length(str cl):
    """The reference's Content-Length reading: an int, or None for a value that is not one."""
    cdef Py_ssize_t n, a, b, i
    cdef const unsigned char* p
    cdef long long v
    if not PyUnicode_IS_ASCII(cl):
        first = cl.split(",")[0].strip()
        return int(first) if first.isascii() and first.isdigit() else None
    p = <const unsigned char*>PyUnicode_AsUTF8AndSize(cl, &n)
    b = 0
    while b < n and p[b] != 44:
        b += 1
    a = 0
    while a < b and _str_space(p[a]):
        a += 1
    while b > a and _str_space(p[b - 1]):
        b -= 1
    if a == b:
        return None
    for i in range(a, b):
        if not _digit(p[i]):
            return None
    if b - a <= 18:
        v = 0
        for i in range(a, b):
            v = v * 10 + (p[i] - 48)
        return v
    return int(cl[a:b])   # Python ints are unbounded, as the reference's


def framing(is_response, method, code, dict headers):
    """Body framing as (state, length): see dissector.framing."""
    if is_response:
        if 100 <= code < 200 or code == 204 or code == 304 or method == "HEAD":
            return NO_BODY
        if method == "CONNECT" and 200 <= code < 300:
            return TUNNEL
    cdef PyObject* te = PyDict_GetItem(headers, "transfer-encoding")
    if te != NULL and _chunked(<str>te):
        return CHUNKED
    cdef PyObject* cl = PyDict_GetItem(headers, "content-length")
    if cl != NULL:
        n = _length(<str>cl)
        if n is not None:
            return (1, n) if n else NO_BODY
    return TO_CLOSE if is_response else NO_BODY
