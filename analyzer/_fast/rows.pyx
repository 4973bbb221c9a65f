# cython: language_level=3, boundscheck=False, wraparound=False
# The compiled twin of engines/sink.py's EventRows: the events a run holds
# until their turn, kept as column buffers instead of Python tuples.
#
# The reference keeps (epoch, frame, arrival, event, endpoints) tuples, sorts
# them, turns each released event into a row tuple and each column of rows
# into an Arrow array: five Python objects and a pass through every value per
# event (4 us of the 6 us an event cost in the sink, measured on the tiny
# profile).  Here add() copies the event's fields straight into growable C
# buffers, one per column (UTF-8 bytes and int64 offsets for strings, 8-byte
# values and a validity byte for numbers); release() makes Arrow arrays of
# them without a Python object per cell, puts them after the rows held back
# last time, and orders the lot by (epoch, frame) with a stable sort, which is
# the reference's (epoch, frame, arrival): the held-back rows all arrived
# before the new ones, in order.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport free, realloc
from libc.string cimport memcpy

import numpy as np
import pyarrow as pa

from analyzer.events import RAW_COLUMNS, EVENT_TYPES

cdef enum:
    # What a column holds (NCOL, the number of RAW_COLUMNS, is in rows.pxd).
    STR = 0
    I64 = 1
    F64 = 2
    BOOL = 3

cdef int _grow(Buf* b, Py_ssize_t need) except -1:
    cdef Py_ssize_t cap = b.cap * 2 if b.cap else 4096
    while cap < b.size + need:
        cap *= 2
    cdef char* p = <char*>realloc(b.data, cap)
    if p == NULL:
        raise MemoryError()
    b.data = p
    b.cap = cap
    return 0


cdef inline int _put(Buf* b, const void* src, Py_ssize_t n) except -1:
    if b.size + n > b.cap:
        _grow(b, n)
    memcpy(b.data + b.size, src, n)
    b.size += n
    return 0


cdef inline int _put_i64(Buf* b, int64_t v) except -1:
    return _put(b, &v, 8)


cdef inline int _put_f64(Buf* b, double v) except -1:
    return _put(b, &v, 8)


cdef inline int _put_u8(Buf* b, uint8_t v) except -1:
    return _put(b, &v, 1)


# The order of the RAW_COLUMNS this twin fills (checked at import against events.py).
_LAYOUT = ("epoch", "frame", "protocol", "client_ip", "client_port", "server_ip", "server_port", "code", "text",
           "request", "host", "latency_ms", "connection", "direction", "inferred", "lines", "substatus",
           "substatus_source", "data_bytes", "flags", "capture", "last_frame")
if tuple(RAW_COLUMNS) != _LAYOUT:
    raise ImportError("analyzer._fast.rows is out of date with analyzer.events.RAW_COLUMNS: rebuild it")
_KINDS = {"string": STR, "int64": I64, "float64": F64, "bool": BOOL}


cdef class EventRows:
    """Events held until their turn; release(n) gives the n earliest as a RAW_COLUMNS batch.

    Its fields are declared in rows.pxd, so the compiled HTTP lane
    (http_conn.pyx) can add a response's row without an Event (put_http)."""

    def __cinit__(self):
        cdef int k
        for k in range(NCOL):
            self.values[k].data = NULL
            self.values[k].size = self.values[k].cap = 0
            self.offsets[k].data = NULL
            self.offsets[k].size = self.offsets[k].cap = 0
            self.valid[k].data = NULL
            self.valid[k].size = self.valid[k].cap = 0
            self.kind[k] = _KINDS[EVENT_TYPES[_LAYOUT[k]]]
        self._reset()
        self.carry = None
        self.carried = 0

    def __init__(self, schema):
        self.schema = schema

    def __dealloc__(self):
        cdef int k
        for k in range(NCOL):
            free(self.values[k].data)
            free(self.offsets[k].data)
            free(self.valid[k].data)

    cdef int _reset(self) except -1:
        """Empty buffers; a string column's offsets start with the 0 Arrow wants first."""
        cdef int k
        for k in range(NCOL):
            self.values[k].size = self.offsets[k].size = self.valid[k].size = 0
            if self.kind[k] == STR:
                _put_i64(&self.offsets[k], 0)
        self.fresh = 0
        return 0

    def __len__(self):
        return self.fresh + self.carried

    cdef int _str(self, int k, object s) except -1:
        cdef Py_ssize_t n
        cdef const char* p = PyUnicode_AsUTF8AndSize(s, &n)
        _put(&self.values[k], p, n)
        return _put_i64(&self.offsets[k], self.values[k].size)

    cdef int _opt_i64(self, int k, object v) except -1:
        if v is None:
            _put_u8(&self.valid[k], 0)
            return _put_i64(&self.values[k], 0)
        _put_u8(&self.valid[k], 1)
        return _put_i64(&self.values[k], v)

    cdef int _opt_f64(self, int k, object v) except -1:
        if v is None:
            _put_u8(&self.valid[k], 0)
            return _put_f64(&self.values[k], 0.0)
        _put_u8(&self.valid[k], 1)
        return _put_f64(&self.values[k], v)

    cdef int _bytes(self, int k, bytes b) except -1:
        _put(&self.values[k], PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))
        return _put_i64(&self.offsets[k], self.values[k].size)

    cdef Py_ssize_t length(self):
        return self.fresh + self.carried

    cdef int put_http(self, double epoch, int64_t frame, tuple ends, int64_t code, bytes text, bytes request,
                      bytes host, object latency, str substatus, str source, object last_frame) except -1:
        """add() of the Event pairing.response_event makes, from its parts: `text`,
        `request` and `host` as their UTF-8 bytes (the lane passes ASCII only), no flags."""
        cip, cport, sip, sport, cid, capture = ends
        _put_f64(&self.values[0], epoch)
        _put_i64(&self.values[1], frame)
        self._str(2, "http")
        self._str(3, cip)
        _put_i64(&self.values[4], cport)
        self._str(5, sip)
        _put_i64(&self.values[6], sport)
        _put_i64(&self.values[7], code)
        self._bytes(8, text)
        self._bytes(9, request)
        self._bytes(10, host)
        self._opt_f64(11, latency)
        self._str(12, cid)
        self._str(13, "")
        _put_u8(&self.values[14], 0)
        self._opt_i64(15, None)
        self._str(16, substatus)
        self._str(17, source)
        self._opt_i64(18, None)
        self._str(19, "")
        self._str(20, capture)
        self._opt_i64(21, last_frame)
        self.fresh += 1
        return 0

    def add(self, ev, tuple ends):
        cip, cport, sip, sport, cid, capture = ends
        flags = ev.flags
        _put_f64(&self.values[0], ev.epoch)
        _put_i64(&self.values[1], ev.frame)
        self._str(2, ev.protocol)
        self._str(3, cip)
        _put_i64(&self.values[4], cport)
        self._str(5, sip)
        _put_i64(&self.values[6], sport)
        _put_i64(&self.values[7], ev.code)
        self._str(8, ev.text)
        self._str(9, ev.request)
        self._str(10, ev.host)
        self._opt_f64(11, ev.latency_ms)
        self._str(12, cid)
        self._str(13, ev.direction)
        _put_u8(&self.values[14], 1 if ev.inferred else 0)
        self._opt_i64(15, ev.lines)
        self._str(16, ev.substatus)
        self._str(17, ev.substatus_source)
        self._opt_i64(18, ev.data_bytes)
        self._str(19, ";".join(flags) if flags else "")
        self._str(20, capture)
        self._opt_i64(21, ev.last_frame)
        self.fresh += 1

    cdef object _column(self, int k, Py_ssize_t n):
        cdef Buf* b = &self.values[k]
        cdef int kind = self.kind[k]
        cdef object validity = None
        data = pa.py_buffer(b.data[:b.size]) if b.size else pa.py_buffer(b"")
        if kind == STR:
            # int64 offsets, then the type the schema says.  Under 2 GiB the
            # offsets narrow in numpy (an Arrow cast per column cost ~3x
            # more); a column over it fails in the cast, as the reference's
            # pa.array does.
            wide = np.frombuffer(self.offsets[k].data[:self.offsets[k].size], np.int64)
            if b.size < 2**31:
                return pa.StringArray.from_buffers(n, pa.py_buffer(wide.astype(np.int32)), data)
            return pa.LargeStringArray.from_buffers(n, pa.py_buffer(wide), data).cast(pa.string())
        if self.valid[k].size:
            flags = np.frombuffer(self.valid[k].data[:self.valid[k].size], np.uint8)
            if not flags.all():
                validity = pa.py_buffer(np.packbits(flags, bitorder="little"))
        if kind == I64:
            return pa.Array.from_buffers(pa.int64(), n, [validity, data])
        if kind == F64:
            return pa.Array.from_buffers(pa.float64(), n, [validity, data])
        bits = np.packbits(np.frombuffer(data, np.uint8), bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), n, [None, pa.py_buffer(bits)])

    def release(self, Py_ssize_t n):
        """The n earliest rows by (epoch, frame, arrival) as a batch (None when none); the rest stay.

        The rows held back are kept as a list of batches in order (`carry`).
        New rows that are in order and come after them -- nearly always, since
        events arrive nearly in time order -- join the list as they are;
        otherwise everything held is sorted into one batch, the reference's
        stable (epoch, frame) sort.  The n earliest are then the front of the
        list: slices, and a copy only where they span two batches.  Sorting
        the window each time copied every row about three times (concatenate,
        then take both the rows released and those held back).
        """
        cdef int k
        cdef Py_ssize_t rows = self.fresh, need, size
        chunks = self.carry if self.carry is not None else []
        if rows:
            fresh = pa.RecordBatch.from_arrays([self._column(k, rows) for k in range(NCOL)], schema=self.schema)
            self._reset()
            epoch, frame = fresh.column(0).to_numpy(), fresh.column(1).to_numpy()
            if _in_order(epoch, frame) and (not chunks or _last_key(chunks[len(chunks) - 1]) <= (epoch[0], frame[0])):
                chunks.append(fresh)
            else:
                held = pa.concat_batches(chunks + [fresh]) if chunks else fresh
                order = np.lexsort((held.column(1).to_numpy(), held.column(0).to_numpy()))  # stable: arrival breaks ties
                chunks = [_rows(held, order, 0, held.num_rows)]
            self.carried += rows
        elif not chunks:
            return None
        n = min(n, self.carried)
        out = []
        need = n
        while need:
            first = chunks[0]
            size = first.num_rows
            if size <= need:
                out.append(first)
                del chunks[0]
                need -= size
            else:
                out.append(first.slice(0, need))
                chunks[0] = first.slice(need)
                need = 0
        self.carried -= n
        self.carry = chunks if chunks else None
        if not out:
            return None
        return out[0] if len(out) == 1 else pa.concat_batches(out)


cdef bint _in_order(epoch, frame):
    """Rows already in (epoch, frame) order (a NaN epoch never is: the sort decides).
    (No negative indices in this module: wraparound is off.)"""
    cdef Py_ssize_t n = len(epoch)
    if n < 2:
        return n == 1 and epoch[0] == epoch[0]
    later, same = epoch[1:] > epoch[:n - 1], epoch[1:] == epoch[:n - 1]
    return bool((later | (same & (frame[1:] >= frame[:n - 1]))).all())


cdef tuple _last_key(batch):
    cdef Py_ssize_t last = batch.num_rows - 1
    return batch.column(0)[last].as_py(), batch.column(1)[last].as_py()


cdef object _rows(held, order, Py_ssize_t start, Py_ssize_t stop):
    """Rows order[start:stop] of `held`; a slice, not a copy, when they are in place
    (events mostly arrive in time order)."""
    part = order[start:stop]
    if part[0] == start and part[stop - start - 1] == stop - 1 and (np.diff(part) == 1).all():
        return held.slice(start, stop - start)
    return held.take(pa.array(part))
