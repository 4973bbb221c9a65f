# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# The compiled HTTP lane: a connection's HTTP dissection in C while its
# traffic is plain, the reference dissector (protocols/http/dissector.py, as
# its compiled twin) from the first byte that is not.
#
# Why: with the twin, every message still costs Python objects -- the
# head's bytes, a headers dict, a Request, an Event, the sink's call --
# ~10 us per exchange, which is all the time of small-response traffic.
# Here a request is one small object in a FIFO, and a response's row goes
# from the packet's bytes straight into the sink's column buffers
# (rows.pyx put_http) once the lane is bound to its connection (bind(), by
# the packet loop); unbound (the detection replay, a live capture's
# callback) it returns the Events the reference would.
#
# "Plain" is what the reference handles on its fast paths, and no more:
#   * a message head wholly inside the segment, every line ending CRLF,
#     no empty line before it, start line in its strict form
#     (METHOD SP URI SP HTTP/d.d, HTTP/d.d SP ddd [SP reason]), ASCII in what
#     goes into an event (URI, Host, reason), each framing field at most once;
#   * requests without Upgrade, CONNECT or Transfer-Encoding, with a
#     decimal Content-Length or none, fewer than MAX_PENDING_REQUESTS waiting;
#   * final responses (no 1xx) that have a request to answer, framed by
#     Content-Length or chunked (no read-until-close), whose chunk lines are
#     strict hex sizes;
#   * bodies counted, 4xx/5xx body prefixes kept for the IIS sub-status, as
#     the reference does.
# Anything else -- and gap(), acked() (no gap, no ACK tracking), a close()
# with a response still going -- materialises the reference dissector with
# exactly the state the reference would have (materialize()) and hands it
# the call, and puts it in its place on the connection (attach()); from
# then on this object, wherever still held, only forwards.  A segment is handled
# as a unit: its state is saved first, its events are staged, and a
# segment that meets something not plain is rolled back and given whole to
# the reference, so no event is ever half done by both.
#
# tests/test_http_lane.py compares it with the pure-Python reference call by
# call (events and state); tests/test_fast_path.py and every suite run
# through the `implementation` fixture compare whole runs event for event.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.float cimport PyFloat_FromDouble
from libc.math cimport fabs, rint
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memchr, memcmp

import builtins

cimport cython

from analyzer._fast import http_dissector as _twin
from analyzer.protocols.http.pairing import MAX_PENDING_REQUESTS as _MAX_PENDING, Request, response_event

try:  # as the reference's _flush_sniff: the catalogue module may be missing
    from analyzer.protocols.http.iis import MAX_DECODED_BYTES as _IIS_TEXT, find_substatus
except ImportError:
    find_substatus = None
    _IIS_TEXT = 0
cdef Py_ssize_t IIS_TEXT = _IIS_TEXT


cdef bint _may_name_substatus(bytearray body) noexcept:
    """find_substatus's first test on a body sent as is: its first IIS_TEXT
    bytes hold "iis" or "http" in any ASCII case (bytes.lower()).  Most
    error pages hold neither, and the call costs ~1.5 us a page (42k on tiny)."""
    cdef const uint8_t* p = <const uint8_t*>PyByteArray_AS_STRING(body)
    cdef Py_ssize_t n = PyByteArray_GET_SIZE(body), i
    if n > IIS_TEXT:
        n = IIS_TEXT
    for i in range(n - 2):
        if _lower(p[i]) == 105 and _lower(p[i + 1]) == 105 and _lower(p[i + 2]) == 115:   # iis
            return True
        if i + 3 < n and _lower(p[i]) == 104 and _lower(p[i + 1]) == 116 and _lower(p[i + 2]) == 116 \
                and _lower(p[i + 3]) == 112:                                           # http
            return True
    return False

detect = _twin.detect
_round = builtins.round

cdef int HEAD = _twin.HEAD, BODY_LENGTH = _twin.BODY_LENGTH, BODY_CHUNKED = _twin.BODY_CHUNKED
cdef int CHUNK_SIZE = _twin.CHUNK_SIZE, CHUNK_DATA = _twin.CHUNK_DATA
cdef int CHUNK_DATA_END = _twin.CHUNK_DATA_END, CHUNK_TRAILER = _twin.CHUNK_TRAILER
cdef Py_ssize_t MAX_PENDING = _MAX_PENDING
cdef Py_ssize_t MAX_SNIFF = _twin.MAX_SNIFF_BYTES
# A cut chunk-size line longer than this goes to the reference (which flags
# one past MAX_START_LINE): the lane never holds more.
cdef Py_ssize_t MAX_CUT_LINE = 1024
cdef object NO_EVENTS = []   # never appended to
cdef Py_ssize_t COMPACT_AT = 64   # answered requests kept before the FIFO drops them

# round(x, 3) in C below this many thousandths: there x * 1000 is off the
# exact product by at most 2**-22, far inside round3's margin.
cdef double ROUND3_BELOW = 2147483648.0


cdef object _round3(double x):
    """round(x, 3) exactly as the builtin answers (a correctly rounded decimal, then
    the double nearest it): the nearest integer number of thousandths, divided by
    1000 (IEEE division rounds that decimal correctly), unless x * 1000 lies within
    1e-6 of a half, where only the builtin's exact arithmetic can tell.  The
    builtin's dtoa cost ~0.3 us a response (tests/test_http_lane.py compares them)."""
    cdef double y = x * 1000.0
    cdef double m
    if fabs(y) < ROUND3_BELOW:
        m = rint(y)
        if fabs(fabs(y - m) - 0.5) > 1e-6:
            return PyFloat_FromDouble(m / 1000.0)
    return _round(x, 3)


def round3(double x):
    """_round3 for the tests."""
    return _round3(x)


cdef uint8_t IS_TCHAR[256]
cdef int _c
for _c in range(256):
    IS_TCHAR[_c] = 0
for _c in b"!#$%&'*+.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz-":
    IS_TCHAR[_c] = 1


def dissector_for(server_direction=None, midstream=False):
    """The http spec's dissector: the lane for a connection seen from its SYN,
    the reference (twin) for one picked up mid-stream (it starts resynchronising)."""
    if midstream or server_direction is None:
        return _twin.HttpDissector(server_direction=server_direction, midstream=midstream)
    return FastHttp(server_direction)


cdef inline bint _digit(uint8_t c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint _ws(uint8_t c) noexcept nogil:
    # bytes.strip()'s whitespace
    return c == 32 or c == 9 or c == 10 or c == 13 or c == 11 or c == 12


cdef inline int _lower(int c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint _named(const uint8_t* p, Py_ssize_t n, const char* name, Py_ssize_t length) noexcept nogil:
    if n != length:
        return 0
    cdef Py_ssize_t i
    for i in range(n):
        if _lower(p[i]) != <uint8_t>name[i]:
            return 0
    return 1


cdef inline bint _ascii(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] >= 128:
            return 0
    return 1


cdef struct Fields:
    # [a, b) of each value (bytes.strip()ped) in the head; a < 0: absent
    Py_ssize_t cl_a, cl_b, te_a, te_b, host_a, host_b, ce_a, ce_b
    bint upgrade
    bint twice      # a field we use came twice (the reference joins them)


cdef inline int _field(Py_ssize_t* a, Py_ssize_t* b, Py_ssize_t va, Py_ssize_t vb, Fields* f) noexcept nogil:
    if a[0] >= 0:
        f.twice = 1
    a[0] = va
    b[0] = vb
    return 0


cdef void _fields(const uint8_t* p, Py_ssize_t lf, Py_ssize_t n, Fields* f) noexcept nogil:
    # dissector._headers' scan (a wanted name right after a LF, [ \t]*, ':',
    # [ \t]*, the value to the first CR or LF, strip()ped) over p[lf:n], where
    # every LF ends a CRLF line.
    cdef Py_ssize_t i = lf + 1, le, colon, ne, va, vb
    cdef const uint8_t* q
    cdef int c
    f.cl_a = f.te_a = f.host_a = f.ce_a = -1
    f.cl_b = f.te_b = f.host_b = f.ce_b = -1
    f.upgrade = f.twice = 0
    while i < n:
        q = <const uint8_t*>memchr(p + i, 10, n - i)
        if q == NULL:
            return
        le = q - p
        c = _lower(p[i])
        # Only lines that can start a wanted name are looked into.
        q = <const uint8_t*>memchr(p + i, 58, le - i) if c == 99 or c == 116 or c == 104 or c == 117 else NULL
        if q != NULL:
            colon = q - p
            ne = colon
            while ne > i and (p[ne - 1] == 32 or p[ne - 1] == 9):
                ne -= 1
            va = colon + 1
            while va < le and (p[va] == 32 or p[va] == 9):
                va += 1
            vb = va
            while vb < le and p[vb] != 13:
                vb += 1
            while va < vb and _ws(p[va]):
                va += 1
            while vb > va and _ws(p[vb - 1]):
                vb -= 1
            if _named(p + i, ne - i, "content-length", 14):
                _field(&f.cl_a, &f.cl_b, va, vb, f)
            elif _named(p + i, ne - i, "transfer-encoding", 17):
                _field(&f.te_a, &f.te_b, va, vb, f)
            elif _named(p + i, ne - i, "host", 4):
                _field(&f.host_a, &f.host_b, va, vb, f)
            elif _named(p + i, ne - i, "content-encoding", 16):
                _field(&f.ce_a, &f.ce_b, va, vb, f)
            elif _named(p + i, ne - i, "upgrade", 7):
                f.upgrade = 1
        i = le + 1


cdef int64_t _length(const uint8_t* p, Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    # A Content-Length of ASCII digits (at most 18), else -1.
    if a < 0:
        return 0
    if b <= a or b - a > 18:
        return -1
    cdef int64_t v = 0
    cdef Py_ssize_t i
    for i in range(a, b):
        if not _digit(p[i]):
            return -1
        v = v * 10 + (p[i] - 48)
    return v


cdef Py_ssize_t _head_end(const uint8_t* p, Py_ssize_t pos, Py_ssize_t n, Py_ssize_t* first_lf) noexcept nogil:
    # The end of a head starting at pos (after its CRLFCRLF), or -1 when it
    # does not end in p[:n] or has a line that does not end CRLF.
    cdef Py_ssize_t i = pos, q
    cdef const uint8_t* hit
    first_lf[0] = -1
    while True:
        hit = <const uint8_t*>memchr(p + i, 10, n - i)
        if hit == NULL:
            return -1
        q = hit - p
        if q == pos or p[q - 1] != 13:
            return -1
        if first_lf[0] < 0:
            first_lf[0] = q
        elif q - 3 >= pos and p[q - 2] == 10 and p[q - 3] == 13:
            return q + 1
        i = q + 1


# Requests, responses and sides hold no reference that could make a cycle
# (bytes, a bytearray, each other downwards): the cyclic GC need not track
# them (it ran ~2 % of the tiny profile's loop for them).
@cython.no_gc
cdef class Req:
    pass


@cython.no_gc
cdef class Resp:
    pass


@cython.no_gc
cdef class Side:
    def __cinit__(self):
        self.state = HEAD
        self.chunk = CHUNK_SIZE
        self.line = b""

    cdef void copy_from(self, Side o):
        self.state, self.chunk, self.remaining, self.end = o.state, o.chunk, o.remaining, o.end
        self.msg_off, self.msg_frame, self.msg_ts, self.seen = o.msg_off, o.msg_frame, o.msg_ts, o.seen
        self.line, self.cur = o.line, o.cur

    @property
    def buf(self):
        """What the reference's _Side.buf would hold (a cut chunk-size line)."""
        return bytearray(self.line)


cdef object _request_of(Req r):
    line = r.line.decode("ascii")
    return Request(line[:r.mlen], line[r.mlen + 1:], r.host.decode("ascii"), r.ts, r.frame, "", False, 0,
                   r.start, None)


cdef object _event_of(Resp r, int d):
    ev = response_event(r.code, r.reason.decode("ascii"), r.ts, r.frame, d, _request_of(r.req), (), r.head_frame)
    return ev


cdef class FastHttp:
    """HttpDissector's contract (protocols/base.py) for one connection; see the module comment."""

    protocol = "http"

    def __init__(self, server_direction):
        self.anomalies = []
        self.expectations = []
        self.handover = None
        self.server_direction = server_direction
        self.buffered = 0
        self.wants_acks = False
        self.s0, self.s1, self.spare = Side(), Side(), Side()
        self.pending = []
        self.head = 0
        self.staged = []
        self.ref = None
        self.epoch = -1          # no copy of the TCP state yet (loop.pyx)
        self.dirty = 0

    @property
    def sides(self):
        return self.ref.sides if self.ref is not None else (self.s0, self.s1)

    @property
    def upgraded(self):
        return self.ref.upgraded if self.ref is not None else None

    @property
    def held_requests(self):
        """Requests the lane holds: the unanswered ones and at most COMPACT_AT answered ones."""
        return len(self.pending) if self.ref is None else None

    @property
    def pairing(self):
        return self.materialize().pairing

    def attach(self, conn):
        """The connection this dissects (tcp/table.py): materialize() puts the reference in its place."""
        self.conn = conn

    cdef int bind(self, object conn, object sink, EventRows rows) except -1:
        """Rows of this connection's responses straight into `rows`, the sink's held rows."""
        self.conn, self.sink, self.rows = conn, sink, rows
        self.release_at = sink.window + sink.batch_rows
        return 0

    # -- the contract ----------------------------------------------------------
    def feed(self, data, int direction, ts, frame):
        if type(data) is not bytes:
            data = bytes(data)
        return self.feed_c(<const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), direction, ts, ts,
                           frame, data)

    cdef object feed_c(self, const uint8_t* p, Py_ssize_t n, int d, object ts_obj, double ts, int64_t frame,
                       object data):
        if self.ref is not None:
            return self._forward_feed(p, n, d, ts_obj, frame, data)
        cdef Side side = self.s0 if d == 0 else self.s1
        cdef bint server = d == self.server_direction
        if side.state == BODY_LENGTH and n < side.remaining and (side.cur is None or side.cur.sniff is None) \
                and not (n >= 5 and memcmp(p, b"HTTP/", 5) == 0):
            # The reference's hot path: inside a body that goes on.
            side.remaining -= n
            side.end += n
            side.seen = True
            return NO_EVENTS
        # Saved, to roll the segment back if it meets what the lane does not do.
        self.spare.copy_from(side)
        cdef int64_t requests = self.requests, responses = self.responses, frame0 = self.frame
        cdef bint pipelining = self.pipelining, waited = self.waited
        cdef Py_ssize_t head = self.head, queued = len(self.pending), sniffed = -1
        if side.cur is not None and side.cur.sniff is not None:
            sniffed = len(side.cur.sniff)
        if self._consume(side, server, p, n, ts, frame):
            side.end += n
            if self.head >= COMPACT_AT:
                # Answered requests leave the FIFO now and then, not one by
                # one: a keep-alive connection's would otherwise all stay.
                del self.pending[:self.head]
                self.head = 0
            self._count_buffered()
            return self._emit(d) if self.staged else NO_EVENTS
        # Rolled back: the whole segment to the reference, from the state before it.
        side.copy_from(self.spare)
        if side.cur is not None:
            side.cur.last_frame = side.cur.head_frame
            side.cur.substatus = side.cur.source = ""
            if sniffed >= 0:
                del side.cur.sniff[sniffed:]
        self.requests, self.responses, self.frame = requests, responses, frame0
        self.pipelining, self.waited = pipelining, waited
        self.head = head
        del self.pending[queued:]
        self.staged = []
        self.materialize()
        return self._forward_feed(p, n, d, ts_obj, frame, data)

    cdef object _forward_feed(self, const uint8_t* p, Py_ssize_t n, int d, object ts_obj, int64_t frame,
                              object data):
        if data is None:
            data = PyBytes_FromStringAndSize(<const char*>p, n)
        events = self.ref.feed(data, d, ts_obj, frame)
        self._sync()
        return events

    def acked(self, direction, ahead):
        # Called only while wants_acks, which only the reference (after a gap) sets.
        self.materialize().acked(direction, ahead)

    def gap(self, nbytes, direction, ts, frame):
        events = self.materialize().gap(nbytes, direction, ts, frame)
        self._sync()
        return events

    def end(self, direction, ts, frame, rst):
        if self.ref is not None:
            events = self.ref.end(direction, ts, frame, rst)
            self._sync()
            return events
        # The reference ends a read-until-close body here; the lane has none.
        self.frame = frame
        return []

    def close(self, ts):
        if self.ref is None and self.s0.cur is None and self.s1.cur is None and not self.s0.line \
                and not self.s1.line:
            # Nothing cut short: the reference's close() only counts what waits.
            self.unanswered += len(self.pending) - self.head
            self.pending = []
            self.head = 0
            return []
        events = self.materialize().close(ts)
        self._sync()
        return events

    def on_data(self, nbytes, ts):
        pass

    def outcome(self):
        if self.ref is not None:
            return self.ref.outcome()
        return {"requests": self.requests, "responses": self.responses, "unanswered": self.unanswered}

    # -- one segment -----------------------------------------------------------
    cdef int _consume(self, Side side, bint server, const uint8_t* p, Py_ssize_t n, double ts,
                      int64_t frame) except -1:
        """dissector._consume on plain bytes: 1 done, 0 not plain (nothing kept)."""
        cdef Py_ssize_t pos = 0, end, lf
        cdef int st
        self.frame = frame
        side.seen = True
        if server and (side.state == BODY_LENGTH or side.state == BODY_CHUNKED) and n >= 5 \
                and memcmp(p, b"HTTP/", 5) == 0:
            return 0     # a head where a body goes on: the reference decides (http_body_interrupted)
        while pos < n:
            st = side.state
            if st == BODY_LENGTH:
                pos = self._take(side, p, pos, n)
                if side.remaining == 0:
                    self._done(side)
            elif st == HEAD:
                if p[pos] == 13 or p[pos] == 10:
                    return 0
                end = _head_end(p, pos, n, &lf)
                if end < 0:
                    return 0
                side.msg_ts, side.msg_frame, side.msg_off = ts, frame, side.end + pos
                if (n - pos >= 5 and memcmp(p + pos, b"HTTP/", 5) == 0) != server:
                    return 0
                if server:
                    if not self._response(side, p + pos, end - pos, ts, frame):
                        return 0
                elif not self._request(side, p + pos, end - pos, ts, frame):
                    return 0
                pos = end
            elif st == BODY_CHUNKED:
                pos = self._chunked(side, p, pos, n)
                if pos < 0:
                    return 0
            else:
                return 0
        return 1

    cdef int _request(self, Side side, const uint8_t* p, Py_ssize_t n, double ts, int64_t frame) except -1:
        cdef Py_ssize_t lf = <const uint8_t*>memchr(p, 10, n) - p
        cdef Py_ssize_t m = 0, u, v
        cdef Fields f
        cdef int64_t length
        while m < lf and IS_TCHAR[p[m]]:
            m += 1
        if m == 0 or m > 32 or p[m] != 32:
            return 0
        u = m + 1
        while u < lf and 33 <= p[u] <= 126:
            u += 1
        # u: the space before the version; HTTP/d.d CR LF after it
        if u == m + 1 or u + 11 != lf + 1 or p[u] != 32 or memcmp(p + u + 1, b"HTTP/", 5) != 0 \
                or not _digit(p[u + 6]) or p[u + 7] != 46 or not _digit(p[u + 8]):
            return 0
        if m == 7 and memcmp(p, b"CONNECT", 7) == 0:
            return 0
        _fields(p, lf, n, &f)
        if f.twice or f.upgrade or f.te_a >= 0:
            return 0
        length = _length(p, f.cl_a, f.cl_b)
        if length < 0:
            return 0
        if f.host_a >= 0 and not _ascii(p + f.host_a, f.host_b - f.host_a):
            return 0
        if len(self.pending) - self.head >= MAX_PENDING:
            return 0     # the reference drops the oldest, with an anomaly
        # HttpPairing.request
        self.requests += 1
        if len(self.pending) > self.head:
            self.pipelining = True
        elif self.responses:
            self.waited = True
        cdef Req r = Req.__new__(Req)
        r.line = PyBytes_FromStringAndSize(<const char*>p, u)
        r.mlen = m
        r.host = PyBytes_FromStringAndSize(<const char*>p + f.host_a, f.host_b - f.host_a) if f.host_a >= 0 else b""
        r.ts, r.frame, r.start = ts, frame, side.msg_off
        self.pending.append(r)
        side.state = BODY_LENGTH if length else HEAD
        side.remaining = length
        side.chunk = CHUNK_SIZE
        return 1

    cdef int _response(self, Side side, const uint8_t* p, Py_ssize_t n, double ts, int64_t frame) except -1:
        cdef Py_ssize_t lf = <const uint8_t*>memchr(p, 10, n) - p
        cdef Py_ssize_t e
        cdef Fields f
        cdef int code, state
        cdef int64_t length = 0
        if lf < 13 or not _digit(p[5]) or p[6] != 46 or not _digit(p[7]) or p[8] != 32 \
                or not (_digit(p[9]) and _digit(p[10]) and _digit(p[11])):
            return 0
        code = (p[9] - 48) * 100 + (p[10] - 48) * 10 + (p[11] - 48)
        if code < 200:
            return 0     # interim and 101: the reference
        if p[12] == 13:
            if lf != 13:
                return 0
            e = 12
        elif p[12] == 32 or p[12] == 9:
            e = lf
            while e > 13 and p[e - 1] == 13:
                e -= 1
            if not _ascii(p + 13, e - 13):
                return 0
        else:
            return 0
        if self.head == len(self.pending):
            return 0     # nothing to answer: the reference flags it
        _fields(p, lf, n, &f)
        if f.twice:
            return 0
        cdef Req req = <Req>self.pending[self.head]
        if code == 204 or code == 304 or (req.mlen == 4 and memcmp(PyBytes_AS_STRING(req.line), b"HEAD", 4) == 0):
            state = HEAD
        elif f.te_a >= 0:
            if not _named(p + f.te_a, f.te_b - f.te_a, "chunked", 7):
                return 0
            state = BODY_CHUNKED
        elif f.cl_a >= 0:
            length = _length(p, f.cl_a, f.cl_b)
            if length < 0:
                return 0     # read until close
            state = BODY_LENGTH if length else HEAD
        else:
            return 0         # read until close
        if 400 <= code < 600 and state != HEAD and f.ce_a >= 0 and not _ascii(p + f.ce_a, f.ce_b - f.ce_a):
            return 0
        # HttpPairing.answer, then response_event
        self.head += 1
        self.responses += 1
        cdef Resp r = Resp.__new__(Resp)
        r.code = code
        r.reason = PyBytes_FromStringAndSize(<const char*>p + 13, e - 13) if e > 13 else b""
        r.req = req
        r.latency = _round3((ts - req.ts) * 1000.0)   # the builtin's answer, as response_event
        r.ts, r.frame, r.head_frame = ts, frame, frame
        r.last_frame = frame
        r.substatus = r.source = ""
        r.sniff = None
        side.state, side.remaining, side.chunk = state, length, CHUNK_SIZE
        if state == HEAD:
            self.staged.append(r)
        else:
            if 400 <= code < 600:
                r.sniff = bytearray()
                r.encoding = PyBytes_FromStringAndSize(<const char*>p + f.ce_a, f.ce_b - f.ce_a).decode("ascii") \
                    if f.ce_a >= 0 else ""
            side.cur = r
        return 1

    cdef Py_ssize_t _take(self, Side side, const uint8_t* p, Py_ssize_t pos, Py_ssize_t n) except -1:
        cdef Py_ssize_t take = side.remaining if side.remaining < n - pos else n - pos
        cdef Py_ssize_t room
        if side.cur is not None and side.cur.sniff is not None:
            room = MAX_SNIFF - len(side.cur.sniff)
            if room > 0:
                side.cur.sniff += PyBytes_FromStringAndSize(<const char*>p + pos, take if take < room else room)
        side.remaining -= take
        return pos + take

    cdef Py_ssize_t _chunked(self, Side side, const uint8_t* p, Py_ssize_t pos, Py_ssize_t n) except -2:
        """dissector._chunked; -1 where the reference would flag a bad chunk."""
        cdef const uint8_t* hit
        cdef const uint8_t* q
        cdef Py_ssize_t nl, a, b, i
        cdef int64_t length
        cdef bytes joined
        while pos < n:
            if side.chunk == CHUNK_DATA:
                pos = self._take(side, p, pos, n)
                if side.remaining == 0:
                    side.chunk = CHUNK_DATA_END
                continue
            hit = <const uint8_t*>memchr(p + pos, 10, n - pos)
            if hit == NULL:
                if PyBytes_GET_SIZE(side.line) + n - pos > MAX_CUT_LINE:
                    return -1
                side.line = side.line + PyBytes_FromStringAndSize(<const char*>p + pos, n - pos)
                return n
            nl = hit - p
            if PyBytes_GET_SIZE(side.line):
                joined = side.line + PyBytes_FromStringAndSize(<const char*>p + pos, nl - pos)
                q, a, b = <const uint8_t*>PyBytes_AS_STRING(joined), 0, PyBytes_GET_SIZE(joined)
                side.line = b""
            else:
                q, a, b = p, pos, nl
            pos = nl + 1
            while a < b and _ws(q[a]):
                a += 1
            while b > a and _ws(q[b - 1]):
                b -= 1
            if side.chunk == CHUNK_DATA_END:
                side.chunk = CHUNK_SIZE
                if b > a:
                    return -1
            elif side.chunk == CHUNK_SIZE:
                # line.split(b";")[0].strip(), as int(size, 16): strict hex digits only here
                i = a
                while i < b and q[i] != 59:
                    i += 1
                b = i
                while b > a and _ws(q[b - 1]):
                    b -= 1
                if b == a or b - a > 15:
                    return -1
                length = 0
                for i in range(a, b):
                    if _digit(q[i]):
                        length = length * 16 + (q[i] - 48)
                    elif 97 <= _lower(q[i]) <= 102:
                        length = length * 16 + (_lower(q[i]) - 87)
                    else:
                        return -1
                if length == 0:
                    side.chunk = CHUNK_TRAILER
                else:
                    side.remaining = length
                    side.chunk = CHUNK_DATA
            elif b == a:   # the empty line after the trailer fields
                self._done(side)
                return pos
        return pos

    cdef int _done(self, Side side) except -1:
        """dissector._message_done: the response whose body ended here leaves."""
        cdef Resp r = side.cur
        if r is not None:
            side.cur = None
            if r.sniff is not None and find_substatus is not None and len(r.sniff) \
                    and (r.encoding or _may_name_substatus(r.sniff)):
                sub = find_substatus(r.code, bytes(r.sniff), r.encoding)
                if sub:
                    r.substatus, r.source = sub, "body"
            r.last_frame = self.frame
            self.staged.append(r)
        side.state = HEAD
        side.remaining = 0
        side.chunk = CHUNK_SIZE
        return 0

    cdef object _emit(self, int d):
        """The staged responses: rows into the sink when bound, else the reference's Events."""
        cdef Resp r
        cdef EventRows rows = self.rows
        staged, self.staged = self.staged, []
        if rows is None:
            events = []
            for r in staged:
                ev = _event_of(r, d)
                ev.last_frame = r.last_frame
                if r.substatus:
                    ev.substatus, ev.substatus_source = r.substatus, r.source
                events.append(ev)
            return events
        sink = self.sink
        ends = self.ends
        if ends is None:
            # The connection's own cache (tcp/table.py) is keyed by the server
            # side, which the SYN fixed (the lane starts only from a SYN), and
            # dropped only when it closes: it is this tuple until then.
            ends = self.ends = self.conn.endpoints()
        # EventSink.add, step for step, but the counts once for the lot
        # (nothing reads them before the loop's next progress report)
        sink.count += len(staged)
        sink.by_protocol["http"] += len(staged)
        for r in staged:
            rows.put_http(r.ts, r.frame, ends, r.code, r.reason, r.req.line, r.req.host, r.latency, r.substatus,
                          r.source, r.last_frame)
            if rows.length() >= self.release_at:
                sink._release(rows.length() - sink.window)
        return NO_EVENTS

    cdef int _count_buffered(self) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(self.s0.line) + PyBytes_GET_SIZE(self.s1.line)
        if self.s0.cur is not None and self.s0.cur.sniff is not None:
            n += len(self.s0.cur.sniff)
        if self.s1.cur is not None and self.s1.cur.sniff is not None:
            n += len(self.s1.cur.sniff)
        self.buffered = n
        return 0

    # -- to the reference --------------------------------------------------------
    cdef object materialize(self):
        """The reference dissector in this connection's state (made once; then it has the calls)."""
        if self.ref is not None:
            return self.ref
        cdef Side side
        cdef Resp r
        cdef int d
        ref = _twin.HttpDissector(server_direction=self.server_direction, midstream=False)
        ref.anomalies = self.anomalies
        ref.expectations = self.expectations
        for d in range(2):
            side = self.s0 if d == 0 else self.s1
            rs = ref.sides[d]
            rs.state, rs.remaining, rs.chunk = side.state, side.remaining, side.chunk
            rs.msg_ts, rs.msg_frame, rs.msg_off = side.msg_ts, side.msg_frame, side.msg_off
            rs.seen, rs.end, rs.mark = side.seen, side.end, side.remaining
            rs.buf += side.line
            r = side.cur
            if r is not None:
                ev = _event_of(r, d)
                if r.sniff is not None:
                    rs.sniff = [ev, bytearray(r.sniff), r.encoding]
                else:
                    rs.deferred = ev
        pairing = ref.pairing
        pairing.pending = [_request_of(<Req>req) for req in self.pending[self.head:]]
        pairing.requests, pairing.responses, pairing.unanswered = self.requests, self.responses, self.unanswered
        pairing.pipelining, pairing.waited = self.pipelining, self.waited
        ref._frame = self.frame
        ref.buffered = self.buffered
        self.ref = ref
        conn = self.conn
        if conn is not None and conn.dissector is self:
            # The table calls the reference from now on, and this object goes:
            # a connection costs what the table charges for the reference
            # (tests/fuzz/test_memory.py).  Callers holding it still reach
            # the reference through it.
            conn.dissector = ref
        self.pending = self.staged = None
        self.s0 = self.s1 = self.spare = None
        self.rows = self.sink = self.conn = None
        return ref

    cdef int _sync(self) except -1:
        ref = self.ref
        self.buffered = ref.buffered
        self.wants_acks = ref.wants_acks
        self.handover = ref.handover
        self.server_direction = ref.server_direction
        return 0
