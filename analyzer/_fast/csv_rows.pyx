# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# events.csv rows in C: the compiled twin of pyarrow's CSV writer as
# outputs/events.write_rows calls it (every string quoted, quotes doubled,
# nulls empty, CRLF row ends, no header), byte for byte.
#
# pyarrow's writer casts every column to strings, then quotes and joins them:
# ~1 us an event on the tiny profile (0.5 s of its 2.4 s), the largest
# per-event cost left after the packet loop.  Here one pass over the batch's
# buffers writes each cell straight into the output, and hands back where
# each row ends (a parallel worker's events.csv lines need no second scan).
#
# Doubles are the one subtle cell.  Arrow writes the shortest digits that
# read back as the same double (as Python's repr), laid out its own way:
# plain when the decimal point falls after at most 10 digits and before at
# most 5 zeros (1e9 -> 1000000000, 1e-6 -> 0.000001), else d.ddde+X with no
# zero padding (1e+10, 9.99e-7).  Every timestamp and latency an event has is
# a whole number of microseconds under 2**32 seconds, and for those the
# answer is arithmetic: with N the nearest integer to |v| * 1e6, if N / 1e6
# (one correctly rounded division, which is what reading the decimal N*10^-6
# gives) is v again, then N's digits are the shortest: below 2**32 a double's
# spacing is under 1e-6, so no other number of microseconds -- and so no
# shorter decimal, which would be one -- reads back as v.  Every other
# double takes Python's repr digits (shortest, nearest, the same digits) and
# lays them out as Arrow does.  tests/test_csv_rows.py holds this to
# pyarrow's own output on random doubles and batches.
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.mem cimport PyMem_Free
from libc.math cimport fabs, isfinite, isnan, llround, signbit
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memchr, memcpy

import numpy as np
import pyarrow as pa

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags, int* ptype) except NULL

cdef enum:
    STR = 0
    I64 = 1
    F64 = 2
    BOOL = 3

cdef struct Column:
    int kind
    const uint8_t* validity   # NULL: every cell valid
    int64_t offset            # the array's offset (bits for bitmaps, values otherwise)
    const uint8_t* data       # string bytes, 8-byte values, or the bool bitmap
    const int32_t* offsets    # strings only

cdef struct Out:
    char* data       # inside the bytearray being written, sized to the batch's bound
    Py_ssize_t size

cdef inline void _byte(Out* o, char c) noexcept:
    o.data[o.size] = c
    o.size += 1

cdef inline void _digits(Out* o, uint64_t v) noexcept:
    # v's decimal digits
    cdef char tmp[20]
    cdef int n = 0
    while True:
        tmp[n] = <char>(48 + v % 10)
        n += 1
        v //= 10
        if v == 0:
            break
    while n:
        n -= 1
        o.data[o.size] = tmp[n]
        o.size += 1

cdef inline void _int(Out* o, int64_t v) noexcept:
    if v < 0:
        _byte(o, b'-')
        _digits(o, <uint64_t>0 - <uint64_t>v)  # INT64_MIN has no positive int64
    else:
        _digits(o, <uint64_t>v)

cdef inline void _put(Out* o, const char* s, Py_ssize_t n) noexcept:
    memcpy(o.data + o.size, s, n)
    o.size += n

cdef int _laid_out(Out* o, bint negative, const char* digits, int ndigits, int point) except -1:
    # Arrow's layout of the shortest digits `digits` (no leading or trailing
    # zeros) with the decimal point after `point` of them.
    cdef int i, e
    if negative:
        _byte(o, b'-')
    if -6 < point <= 10:
        if point <= 0:
            _byte(o, b'0')
            _byte(o, b'.')
            for i in range(-point):
                _byte(o, b'0')
            for i in range(ndigits):
                _byte(o, digits[i])
        elif point >= ndigits:
            for i in range(ndigits):
                _byte(o, digits[i])
            for i in range(point - ndigits):
                _byte(o, b'0')
        else:
            for i in range(point):
                _byte(o, digits[i])
            _byte(o, b'.')
            for i in range(point, ndigits):
                _byte(o, digits[i])
    else:
        _byte(o, digits[0])
        if ndigits > 1:
            _byte(o, b'.')
            for i in range(1, ndigits):
                _byte(o, digits[i])
        e = point - 1
        _byte(o, b'e')
        if e < 0:
            _byte(o, b'-')
            e = -e
        else:
            _byte(o, b'+')
        _digits(o, <uint64_t>e)
    return 0

cdef int _double_slow(Out* o, double v) except -1:
    # Python's repr digits (shortest round trip), laid out as Arrow does.
    cdef char* text = PyOS_double_to_string(v, b'r', 0, 0, NULL)
    cdef char digits[40]
    cdef int ndigits = 0, intlen = -1, point, exp10 = 0, exp_sign = 1, i = 0, start
    cdef bint negative = False
    try:
        if text[0] == b'-':
            negative = True
            i = 1
        while text[i] != 0 and text[i] != b'e':
            if text[i] == b'.':
                intlen = ndigits
            elif ndigits < 40:
                digits[ndigits] = text[i]
                ndigits += 1
            i += 1
        if text[i] == b'e':
            i += 1
            if text[i] == b'-':
                exp_sign = -1
                i += 1
            elif text[i] == b'+':
                i += 1
            while text[i] != 0:
                exp10 = exp10 * 10 + (text[i] - 48)
                i += 1
    finally:
        PyMem_Free(text)
    if intlen < 0:
        intlen = ndigits
    point = intlen + exp_sign * exp10
    start = 0
    while start < ndigits and digits[start] == b'0':
        start += 1
        point -= 1
    while ndigits > start and digits[ndigits - 1] == b'0':
        ndigits -= 1
    if ndigits == start:  # zero (the fast path takes it; kept for completeness)
        if negative:
            _byte(o, b'-')
        _byte(o, b'0')
        return 0
    return _laid_out(o, negative, digits + start, ndigits - start, point)

cdef int _double(Out* o, double v) except -1:
    cdef double a
    cdef int64_t n, whole, frac
    cdef int width, i
    cdef char tmp[6]
    if not isfinite(v):
        if isnan(v):
            _put(o, b"nan", 3)
        elif v < 0:
            _put(o, b"-inf", 4)
        else:
            _put(o, b"inf", 3)
        return 0
    a = fabs(v)
    if a < 4294967296.0:
        n = llround(a * 1e6)
        if <double>n / 1e6 == a:
            if signbit(v):
                _byte(o, b'-')
            whole = n // 1000000
            frac = n % 1000000
            _digits(o, <uint64_t>whole)
            if frac:
                _byte(o, b'.')
                width = 6
                while frac % 10 == 0:
                    frac //= 10
                    width -= 1
                for i in range(width - 1, -1, -1):
                    tmp[i] = <char>(48 + frac % 10)
                    frac //= 10
                for i in range(width):
                    _byte(o, tmp[i])
            return 0
    return _double_slow(o, v)

cdef inline bint _valid(const Column* c, int64_t r) noexcept:
    cdef int64_t bit
    if c.validity == NULL:
        return True
    bit = c.offset + r
    return (c.validity[bit >> 3] >> (bit & 7)) & 1

cdef inline void _string(Out* o, const Column* c, int64_t r) noexcept:
    cdef int64_t start = c.offsets[c.offset + r], end = c.offsets[c.offset + r + 1], k
    cdef const uint8_t* s = c.data
    cdef const uint8_t* quote
    _byte(o, b'"')
    while start < end:
        # up to and with the next quote, which is then doubled
        quote = <const uint8_t*>memchr(s + start, 34, end - start)
        if quote == NULL:
            memcpy(o.data + o.size, s + start, end - start)
            o.size += end - start
            break
        k = quote - s + 1
        memcpy(o.data + o.size, s + start, k - start)
        o.size += k - start
        _byte(o, b'"')
        start = k
    _byte(o, b'"')


_KINDS = {pa.string(): STR, pa.int64(): I64, pa.float64(): F64, pa.bool_(): BOOL}
# The most bytes a cell other than a string's takes: int64 is 20 digits and a
# sign; a double at most 17 digits, a sign, a point and e-324 (or, plain, 10
# digits before the point and 5 zeros after it).
cdef enum:
    MOST = 26


cdef Py_ssize_t _columns(batch, Column* cols, list keep) except -1:
    """Fill cols from the batch's arrays (their buffers appended to keep,
    which must outlive the addresses); the most bytes its CSV text can take:
    a string at most twice its bytes (each quote doubled) and its two quotes,
    MOST for other cells, commas and CRLF."""
    cdef Py_ssize_t ncol = batch.num_columns, n = batch.num_rows, j
    cdef Py_ssize_t bound = n * (ncol + 2)
    cdef Column* c
    for j in range(ncol):
        column = batch.column(j)
        kind = _KINDS.get(column.type)
        if kind is None:
            raise TypeError(f"render_csv: column {batch.schema.names[j]!r} is {column.type}")
        buffers = column.buffers()
        keep.append(buffers)
        c = &cols[j]
        c.kind = kind
        c.offset = column.offset
        c.validity = NULL
        if buffers[0] is not None and column.null_count:
            c.validity = <const uint8_t*><size_t>buffers[0].address
        c.offsets = NULL
        c.data = NULL
        if kind == STR:
            c.offsets = <const int32_t*><size_t>buffers[1].address
            if buffers[2] is not None:
                c.data = <const uint8_t*><size_t>buffers[2].address
            bound += 2 * (c.offsets[c.offset + n] - c.offsets[c.offset]) + 2 * n
        else:
            c.data = <const uint8_t*><size_t>buffers[1].address
            bound += MOST * n
    return bound


cdef Py_ssize_t _fill(const Column* cols, Py_ssize_t ncol, Py_ssize_t n, char* out, int32_t* ends) except -1:
    """The rows into out (room for the bound made), each row's end into ends
    (n + 1 of them, or NULL); the bytes written."""
    cdef Py_ssize_t j
    cdef int64_t r, bit
    cdef const Column* c
    cdef Out o
    o.data = out
    o.size = 0
    if ends != NULL:
        ends[0] = 0
    for r in range(n):
        for j in range(ncol):
            c = &cols[j]
            if j:
                _byte(&o, b',')
            if not _valid(c, r):
                continue
            if c.kind == STR:
                _string(&o, c, r)
            elif c.kind == I64:
                _int(&o, (<const int64_t*>c.data)[c.offset + r])
            elif c.kind == F64:
                _double(&o, (<const double*>c.data)[c.offset + r])
            else:
                bit = c.offset + r
                if (c.data[bit >> 3] >> (bit & 7)) & 1:
                    _put(&o, b"true", 4)
                else:
                    _put(&o, b"false", 5)
        _byte(&o, b'\r')
        _byte(&o, b'\n')
        if ends != NULL:
            if o.size > 0x7FFFFFFF:
                raise OverflowError("render_csv: a batch's CSV text over 2 GB")
            ends[r + 1] = <int32_t>o.size
    return o.size


cdef Py_ssize_t _render(batch, bytearray out, int32_t* ends) except -1:
    """The batch's rows into `out`, grown to their bound when smaller (not
    cleared: only the pages written become resident; the bound is ~4x the
    text), each row's end into ends (num_rows + 1, or NULL); the bytes written."""
    cdef Py_ssize_t ncol = batch.num_columns, bound
    cdef Column* cols = <Column*>malloc(max(ncol, 1) * sizeof(Column))
    if cols == NULL:
        raise MemoryError()
    keep = []  # the buffers stay referenced while their addresses are read
    try:
        bound = _columns(batch, cols, keep)
        if bound > PyByteArray_GET_SIZE(out):
            PyByteArray_Resize(out, bound)
        return _fill(cols, ncol, batch.num_rows, PyByteArray_AS_STRING(out), ends)
    finally:
        free(cols)


def render_csv(batch):
    """(bytearray, row ends) of the batch's CSV rows as pyarrow's writer makes
    them (include_header=False, eol CRLF): row i is text[ends[i]:ends[i+1]],
    ends an int32 numpy array of num_rows + 1 offsets.  Written in place into
    one bytearray sized to the batch's bound, then cut to its length: no
    capacity check per cell, and no copy."""
    ends = np.empty(batch.num_rows + 1, dtype=np.int32)
    cdef int32_t[::1] e = ends
    text = bytearray()
    del text[_render(batch, text, &e[0]):]
    return text, ends


def write_csv_rows(batch, sink, bytearray scratch=None):
    """render_csv's text to sink.write(), through `scratch`: the caller's
    bytearray, kept between batches (EventsCsv has one), so its pages are
    faulted in once per run rather than once per batch (a fresh 3 MB object
    per batch cost as much as the rendering).  The caller's own, not a module
    global: the write releases the GIL, and a second thread's batch must not
    overwrite it meanwhile (while a memoryview of it is alive it cannot be
    resized).  Returns the bytes written."""
    if scratch is None:
        scratch = bytearray()
    cdef Py_ssize_t size = _render(batch, scratch, NULL)
    with memoryview(scratch) as view:
        sink.write(view[:size])
    return size
