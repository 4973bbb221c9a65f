# The compiled EventRows (rows.pyx), declared for the modules that add rows
# to it from C (http_conn.pyx).
from libc.stdint cimport int64_t


cdef struct Buf:
    char* data
    Py_ssize_t size
    Py_ssize_t cap


cdef enum:
    NCOL = 22   # len(RAW_COLUMNS)


cdef class EventRows:
    cdef Buf values[NCOL]      # numbers: 8 bytes (bool: 1) per row; strings: UTF-8 bytes
    cdef Buf offsets[NCOL]     # strings: int64 end offset per row
    cdef Buf valid[NCOL]       # nullable numbers: one byte per row, 1 = a value
    cdef int kind[NCOL]
    cdef Py_ssize_t fresh      # rows in the buffers
    cdef object carry          # rows held back by the last release (a list of batches in order), or None
    cdef Py_ssize_t carried    # how many
    cdef object schema

    cdef int _reset(self) except -1
    cdef int _str(self, int k, object s) except -1
    cdef int _bytes(self, int k, bytes b) except -1
    cdef int _opt_i64(self, int k, object v) except -1
    cdef int _opt_f64(self, int k, object v) except -1
    cdef object _column(self, int k, Py_ssize_t n)
    cdef Py_ssize_t length(self)
    cdef int put_http(self, double epoch, int64_t frame, tuple ends, int64_t code, bytes text, bytes request,
                      bytes host, object latency, str substatus, str source, object last_frame) except -1
