# The compiled HTTP lane (http_conn.pyx), declared for the packet loop.
from libc.stdint cimport int64_t, uint8_t, uint32_t

from analyzer._fast.rows cimport EventRows


cdef class Req:
    cdef bytes line          # "METHOD URI"
    cdef Py_ssize_t mlen     # length of METHOD
    cdef bytes host
    cdef double ts
    cdef int64_t frame, start


cdef class Resp:
    cdef int code
    cdef bytes reason
    cdef Req req
    cdef object latency      # as response_event rounds it
    cdef double ts
    cdef int64_t frame, head_frame
    cdef object sniff        # bytearray of a 4xx/5xx body's first bytes, or None
    cdef str encoding
    cdef object last_frame   # set when it ends
    cdef str substatus, source


cdef class Side:
    cdef int state, chunk
    cdef int64_t remaining, end, msg_off, msg_frame
    cdef double msg_ts
    cdef bint seen
    cdef bytes line          # a chunk-size line cut by the segment's end
    cdef Resp cur            # the response whose body is going on

    cdef void copy_from(self, Side other)


cdef class FastHttp:
    cdef public object anomalies, expectations, handover, server_direction
    cdef public Py_ssize_t buffered
    cdef public bint wants_acks
    cdef Side s0, s1, spare
    cdef list pending
    cdef Py_ssize_t head
    cdef int64_t requests, responses, unanswered, frame
    cdef bint pipelining, waited
    cdef list staged
    cdef object ref
    # Rows straight into the sink (bind()), else Events returned.
    cdef EventRows rows
    cdef object sink, conn
    cdef tuple ends          # conn.endpoints(), which cannot change while the lane has the connection
    cdef Py_ssize_t release_at
    # The packet loop's copy of this connection's hot TCP state (loop.pyx,
    # Loop.lane_slot): read from the Python Connection and Streams once per
    # loop epoch, advanced in C by the lane's packets, written back (when
    # `dirty`) before the loop runs any Python code.  Not used by this module.
    cdef long long epoch
    cdef int dirty               # bit d: direction d's stream advanced; bit 2: last_ts
    cdef bint ok[2]              # the stream synced, nothing held, not ended
    cdef uint32_t nseq[2]
    cdef int64_t spos[2], sdel[2]
    cdef Py_ssize_t conn_held
    cdef object last_ts, lconn, st0, st1

    cdef object feed_c(self, const uint8_t* p, Py_ssize_t n, int d, object ts_obj, double ts, int64_t frame,
                       object data)
    cdef object _forward_feed(self, const uint8_t* p, Py_ssize_t n, int d, object ts_obj, int64_t frame,
                              object data)
    cdef int bind(self, object conn, object sink, EventRows rows) except -1
    cdef int _consume(self, Side side, bint server, const uint8_t* p, Py_ssize_t n, double ts,
                      int64_t frame) except -1
    cdef int _request(self, Side side, const uint8_t* p, Py_ssize_t n, double ts, int64_t frame) except -1
    cdef int _response(self, Side side, const uint8_t* p, Py_ssize_t n, double ts, int64_t frame) except -1
    cdef Py_ssize_t _chunked(self, Side side, const uint8_t* p, Py_ssize_t pos, Py_ssize_t n) except -2
    cdef Py_ssize_t _take(self, Side side, const uint8_t* p, Py_ssize_t pos, Py_ssize_t n) except -1
    cdef int _done(self, Side side) except -1
    cdef object _emit(self, int d)
    cdef int _count_buffered(self) except -1
    cdef object materialize(self)
    cdef int _sync(self) except -1
