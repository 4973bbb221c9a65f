# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# The compiled packet loop: the same work as engines/native.py's
# Session.read_file (the pure-Python reference), done without a Python call
# for the packets that need none.
#
# Per packet, in C: the pcap record walk and the pcapng block walk over the
# chunk buffer (the other pcapng blocks, and packets whose timestamps need
# Python integers, as capture/pcapng.py handles them), and link/IP/TCP
# decode for the common cases -- Ethernet with any VLAN tags, Linux SLL and
# SLL2, raw IP, BSD null/loop, IPv4 with or without options, IPv6 without
# extension headers.  Anything else (fragments, tunnels, extension headers,
# 802.11, truncations, non-TCP) goes to the Python Decoder with the packet's
# bytes, so every skip reason is counted by the reference code.
#
# Then the flow lookup in the FlowTable's own dict, and three lanes that do
# what FlowTable.packet's hot path would do, on the same Python objects:
#   * a pure ACK on a dissected connection: last_ts only;
#   * the next in-order segment of an HTTP body of known length that it does
#     not finish: counted against the body in place, no payload object and
#     no Python call (HttpDissector.feed's own hot path, as data);
#   * any other next in-order segment of a dissected connection: straight
#     to dissector.feed, skipping the table's Python frame (after
#     dissector.acked() when it wants_acks, as the table does).
#   * the next in-order segment (or pure ACK) of a connection the compiled
#     HTTP lane dissects (http_conn.pyx, while its traffic is plain): its
#     pointer into the capture buffer, no payload object; the lane adds the
#     responses' rows to the sink's column buffers itself once bound here.
#     Its TCP bookkeeping is done on a C copy of the connection's and
#     streams' fields, written back before any Python code runs (Loop.leave).
# Whatever a lane does not cover exactly (SYN/FIN/RST, a sweep due, an ACK
# that tells something, out-of-order or cut segments, connections still in
# detection...) is handed to FlowTable.packet as the reference tuple: a lane
# checks every condition before it changes anything.
#
# The lanes read attributes the Python modules define (Stream.next_seq,
# HttpDissector.sides, _Side.remaining...); tests/test_fast_path.py runs
# every sample and corpus capture through both loops and requires identical
# outputs, so a change there that the lanes do not follow fails a test.
#
# Limits: nanosecond pcap timestamps are divided with Python integers (the
# float must be the correctly rounded one, which 64-bit doubles cannot give
# for ~1e18 ticks); microsecond ones are exact in C (below 2**53).
import sys

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.exc cimport PyErr_CheckSignals
from cpython.float cimport PyFloat_FromDouble
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memchr, memcmp, memcpy

from analyzer.capture import open_capture
from analyzer.capture.pcap import KEEP_RECORD_BYTES, MAX_RECORD_BYTES, _packets, read_past, refill
from analyzer.capture import pcapng as _pcapng
from analyzer.errors import AnalyzerError, CaptureError
from analyzer.protocols.http.dissector import BODY_LENGTH as _BODY_LENGTH, HttpDissector
try:  # the same class compiled (a twin, see setup.py): the lanes take both
    from analyzer._fast.http_dissector import HttpDissector as HttpDissectorTwin
except ImportError:
    HttpDissectorTwin = HttpDissector
from analyzer.tcp.table import MODE_DISSECT as _MODE_DISSECT

from analyzer._fast.http_conn cimport FastHttp
from analyzer._fast.rows cimport EventRows

cdef int MODE_DISSECT = _MODE_DISSECT
cdef int BODY_LENGTH = _BODY_LENGTH
cdef Py_ssize_t MAX_RECORD = MAX_RECORD_BYTES
cdef Py_ssize_t KEEP_RECORD = KEEP_RECORD_BYTES
cdef Py_ssize_t MAX_BLOCK = _pcapng.MAX_BLOCK_BYTES
cdef Py_ssize_t KEEP_BLOCK = _pcapng.KEEP_BLOCK_BYTES
cdef uint32_t SHB = _pcapng.SHB, IDB = _pcapng.IDB, PB = _pcapng.PB, SPB = _pcapng.SPB, EPB = _pcapng.EPB
cdef uint32_t DSB = _pcapng.DSB
# Microsecond ticks below this are exact doubles: their quotient by 1e6 is
# the correctly rounded one, as Python's int / int (see pcap below).
cdef uint64_t EXACT_TICKS = 1ULL << 53
cdef object NO_EVENTS = []   # never appended to, as the dissector's own _NO_EVENTS
# As in Session.read_file: progress and first_epoch now and then, not per packet.
cdef Py_ssize_t TICK = 20000
# Ctrl-C is seen by Python code only; lanes may run long stretches without any.
cdef Py_ssize_t SIGNAL_EVERY = 1024

# Flow-key slots of the loop (a power of two: flow_slot masks with it).
cdef enum:
    NSLOTS = 64


cdef struct Seg:
    const uint8_t* src
    const uint8_t* dst
    int alen
    unsigned int sport
    unsigned int dport
    uint32_t seq
    uint32_t ack
    int flags
    Py_ssize_t pay       # payload start
    Py_ssize_t avail     # payload end within the captured bytes
    Py_ssize_t seglen    # payload length the IP header claims


cdef inline unsigned int u16(const uint8_t* p) noexcept nogil:
    return (p[0] << 8) | p[1]


cdef inline uint32_t u32be(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint32_t u32le(const uint8_t* p) noexcept nogil:
    return (<uint32_t>p[3] << 24) | (<uint32_t>p[2] << 16) | (<uint32_t>p[1] << 8) | p[0]


cdef inline uint32_t u32o(const uint8_t* p, bint big) noexcept nogil:
    return u32be(p) if big else u32le(p)


cdef inline unsigned int u16o(const uint8_t* p, bint big) noexcept nogil:
    return u16(p) if big else (p[1] << 8) | p[0]


# -- decode: 1 = a segment, exactly what decode/packets.py returns; 0 = ask it --

cdef inline int _tcp(const uint8_t* d, Py_ssize_t n, Py_ssize_t start, Py_ssize_t end, Seg* s) noexcept nogil:
    cdef Py_ssize_t avail = n if end > n else end
    if avail - start < 20:
        return 0
    cdef int doff = d[start + 12]
    cdef Py_ssize_t p = start + ((doff >> 4) << 2)
    if p > avail or doff < 0x50:
        return 0
    s.sport = u16(d + start)
    s.dport = u16(d + start + 2)
    s.seq = u32be(d + start + 4)
    s.ack = u32be(d + start + 8)
    s.flags = d[start + 13]
    s.pay = p
    s.avail = avail
    s.seglen = end - p
    return 1


cdef inline int _ip4(const uint8_t* d, Py_ssize_t n, Py_ssize_t off, int64_t cut, Seg* s) noexcept nogil:
    if n - off < 20:
        return 0
    cdef int vihl = d[off]
    if vihl >> 4 != 4:
        return 0
    cdef Py_ssize_t ihl = (vihl & 15) << 2
    if ihl < 20 or n - off < ihl:
        return 0
    cdef Py_ssize_t tot = u16(d + off + 2)
    cdef Py_ssize_t end
    if tot == 0:
        end = n              # segmentation offload: as the reference decoder
    elif tot < ihl:
        return 0
    else:
        end = off + tot
        if end > n and end > n + cut:
            end = n + cut
    if u16(d + off + 6) & 0x3FFF or d[off + 9] != 6:
        return 0             # fragments and other protocols: the reference decides
    s.src = d + off + 12
    s.dst = d + off + 16
    s.alen = 4
    return _tcp(d, n, off + ihl, end, s)


cdef inline int _ip6(const uint8_t* d, Py_ssize_t n, Py_ssize_t off, int64_t cut, Seg* s) noexcept nogil:
    if n - off < 40 or d[off] >> 4 != 6 or d[off + 6] != 6:
        return 0             # extension headers: the reference decides
    cdef Py_ssize_t plen = u16(d + off + 4)
    cdef Py_ssize_t p = off + 40
    cdef Py_ssize_t end = p + plen if plen else n
    if end > n and end > n + cut:
        end = n + cut
    s.src = d + off + 8
    s.dst = d + off + 24
    s.alen = 16
    return _tcp(d, n, p, end, s)


cdef inline int _ethertype(unsigned int et, const uint8_t* d, Py_ssize_t n, Py_ssize_t off, int64_t cut,
                           Seg* s) noexcept nogil:
    while et == 0x8100 or et == 0x88A8 or et == 0x9100 or et == 0x9200:
        if n - off < 4:
            return 0
        et = u16(d + off + 2)
        off += 4
    if et == 0x0800:
        return _ip4(d, n, off, cut, s)
    if et == 0x86DD:
        return _ip6(d, n, off, cut, s)
    return 0


cdef inline int _sll(unsigned int hatype, unsigned int proto, const uint8_t* d, Py_ssize_t n, Py_ssize_t off,
                     int64_t cut, Seg* s) noexcept nogil:
    if hatype == 824 or proto == 0x0004 or proto == 0x0001 or proto == 0x000C or proto == 0x000D:
        return 0
    return _ethertype(proto, d, n, off, cut, s)


cdef inline int _family(uint32_t af, const uint8_t* d, Py_ssize_t n, int64_t cut, Seg* s) noexcept nogil:
    if af == 2:
        return _ip4(d, n, 4, cut, s)
    if af == 24 or af == 28 or af == 30:
        return _ip6(d, n, 4, cut, s)
    return 0


cdef int decode(int linktype, const uint8_t* d, Py_ssize_t n, int64_t cut, Seg* s) noexcept nogil:
    cdef uint32_t af
    if linktype == 1:
        if n < 14:
            return 0
        return _ethertype(u16(d + 12), d, n, 14, cut, s)
    if linktype == 113:
        if n < 16:
            return 0
        return _sll(u16(d + 2), u16(d + 14), d, n, 16, cut, s)
    if linktype == 276:
        if n < 20:
            return 0
        return _sll(u16(d + 8), u16(d), d, n, 20, cut, s)
    if linktype == 101 or linktype == 12 or linktype == 14:
        if n < 1:
            return 0
        if d[0] >> 4 == 4:
            return _ip4(d, n, 0, cut, s)
        if d[0] >> 4 == 6:
            return _ip6(d, n, 0, cut, s)
        return 0
    if linktype == 228:
        return _ip4(d, n, 0, cut, s)
    if linktype == 229:
        return _ip6(d, n, 0, cut, s)
    if linktype == 0 or linktype == 108:
        if n < 4:
            return 0
        if linktype == 108:
            af = u32be(d)
        else:
            af = u32le(d)
            if af > 0xFFFF:
                af = u32be(d)
        return _family(af, d, n, cut, s)
    return 0


cdef inline uint64_t _mix(uint64_t key) noexcept nogil:
    # engines/native.py's _mix: Linux hands out ephemeral ports of one parity.
    return (key * 0x9E3779B1ULL >> 16) & 0xFFFF


def decode_segment(int linktype, bytes data, wirelen):
    """The segment the C decoder makes of one packet, as decode/packets.py's tuple,
    or None where it leaves the packet to that decoder (for the tests)."""
    cdef Seg s
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef int64_t cut = wirelen - n
    if cut < 0:
        cut = 0
    cdef const uint8_t* d = <const uint8_t*>PyBytes_AS_STRING(data)
    if not decode(linktype, d, n, cut, &s):
        return None
    return (PyBytes_FromStringAndSize(<const char*>s.src, s.alen), PyBytes_FromStringAndSize(<const char*>s.dst, s.alen),
            s.sport, s.dport, s.seq, s.ack, s.flags, data[s.pay:s.avail], s.seglen)



# -- the cluster's decode tasks (engines/cluster.py): records and their share keys --

cdef inline int32_t _seg_key(Seg* s) noexcept nogil:
    # _share_key in engines/native.py (the key _share_filter mixes).
    cdef int a = s.alen
    if memcmp(s.src, s.dst, a) != 0:
        return <int32_t>(s.src[a - 2] + s.src[a - 1] + s.dst[a - 2] + s.dst[a - 1])
    return <int32_t>(s.sport + s.dport)


cdef inline int64_t _seg_ports(Seg* s) noexcept nogil:
    # Both ends one host (loopback): the ports, for the FTP routes of capture/split.py; else -1.
    if memcmp(s.src, s.dst, s.alen) == 0:
        return (<int64_t>s.sport << 16) | s.dport
    return -1


def share_key(int linktype, bytes data, wirelen):
    """(share key, ports) of one packet where the C decoder makes a segment of it, else
    None (capture/split.py keys it through the Python Decoder)."""
    cdef Seg s
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef int64_t cut = wirelen - n
    if cut < 0:
        cut = 0
    if not decode(linktype, <const uint8_t*>PyBytes_AS_STRING(data), n, cut, &s):
        return None
    return _seg_key(&s), _seg_ports(&s)


cdef inline bint _whole_record(const uint8_t* p, Py_ssize_t pos, Py_ssize_t limit, bint big, Py_ssize_t keep,
                               uint32_t* incl, uint32_t* orig) noexcept nogil:
    # The record header at `pos` (its captured and original lengths into
    # incl/orig) when the whole record lies within `limit` and is at most
    # `keep` long: the walk of scan_records and ftp_lines.
    if pos + 16 > limit:
        return 0
    incl[0] = u32o(p + pos + 8, big)
    orig[0] = u32o(p + pos + 12, big)
    return incl[0] <= keep and pos + 16 + <Py_ssize_t>incl[0] <= limit


def scan_records(bytes buf, Py_ssize_t pos, Py_ssize_t limit, bint big, int linktype, Py_ssize_t keep):
    """The complete pcap records in buf[pos:limit], for a decode task (capture/split.py).

    Stops before a record that does not end within `limit`, and before one
    longer than `keep` (the caller reads those through).  Returns
    (position after the last record taken, records taken, header fields as
    four uint32 arrays' bytes (sec, frac, incl, orig), the captured bytes
    concatenated, their int32 offsets (n + 1), int32 share keys (-1 where
    the C decoder leaves the packet to the Python one), int64 loopback ports
    (sport << 16 | dport when both ends are one host, else -1)).
    """
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(buf)
    if limit > PyBytes_GET_SIZE(buf):
        limit = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t most = (limit - pos) // 16 + 1 if limit > pos else 1
    fields = bytearray(most * 16)
    data = bytearray(limit - pos if limit > pos else 0)
    offsets = bytearray((most + 1) * 4)
    keys = bytearray(most * 4)
    ports = bytearray(most * 8)
    cdef int64_t* pt = <int64_t*><char*>ports
    cdef uint32_t* f = <uint32_t*><char*>fields
    cdef uint8_t* out = <uint8_t*><char*>data
    cdef int32_t* off = <int32_t*><char*>offsets
    cdef int32_t* k = <int32_t*><char*>keys
    cdef Py_ssize_t n = 0, used = 0, start
    cdef uint32_t incl, orig
    cdef int64_t cut
    cdef Seg s
    off[0] = 0
    while _whole_record(p, pos, limit, big, keep, &incl, &orig):
        start = pos + 16
        f[4 * n], f[4 * n + 1], f[4 * n + 2], f[4 * n + 3] = u32o(p + pos, big), u32o(p + pos + 4, big), incl, orig
        memcpy(out + used, p + start, incl)
        used += incl
        off[n + 1] = <int32_t>used
        cut = <int64_t>orig - <int64_t>incl
        if cut < 0:
            cut = 0
        if decode(linktype, p + start, incl, cut, &s):
            k[n] = _seg_key(&s)
            pt[n] = _seg_ports(&s)
        else:
            k[n] = -1
            pt[n] = -1
        n += 1
        pos = start + incl
    return (pos, n, bytes(fields[:16 * n]), bytes(data[:used]), bytes(offsets[:4 * (n + 1)]), bytes(keys[:4 * n]),
            bytes(ports[:8 * n]))


cdef inline bint _space(uint8_t c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13 or c == 11 or c == 12


cdef inline bint _ftp_line(const uint8_t* q, Py_ssize_t n) noexcept nogil:
    # A line (already stripped of leading whitespace) starting 227/229, or PORT/EPRT in any case.
    if n >= 3 and q[0] == 50 and q[1] == 50 and (q[2] == 55 or q[2] == 57):
        return 1
    if n < 4:
        return 0
    cdef uint8_t a = q[0] | 0x20, b = q[1] | 0x20, c = q[2] | 0x20, d = q[3] | 0x20
    return (a == 112 or a == 101) and b == (111 if a == 112 else 112) and c == 114 and d == 116  # port / eprt


def ftp_lines(bytes buf, Py_ssize_t pos, Py_ssize_t limit, bint big, int linktype, Py_ssize_t keep):
    """The pre-pass of the cluster's loopback FTP routes (capture/split.py): the
    complete records in buf[pos:limit] (as scan_records walks them) whose packet is
    TCP between one host and itself with a payload line starting 227, 229, PORT or
    EPRT.  Returns (position after the last record walked, [(key, ports, payload)],
    [(offset, captured, original length)] of the records its decoder leaves to the
    Python one)."""
    cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(buf)
    if limit > PyBytes_GET_SIZE(buf):
        limit = PyBytes_GET_SIZE(buf)
    cdef uint32_t incl, orig
    cdef int64_t cut
    cdef Py_ssize_t start, q, end
    cdef const uint8_t* nl
    cdef Seg s
    found = []
    rest = []
    while _whole_record(p, pos, limit, big, keep, &incl, &orig):
        start = pos + 16
        cut = <int64_t>orig - <int64_t>incl
        if cut < 0:
            cut = 0
        if not decode(linktype, p + start, incl, cut, &s):
            rest.append((pos, incl, orig))
        elif s.avail > s.pay and memcmp(s.src, s.dst, s.alen) == 0:
            q = start + s.pay
            end = start + s.avail
            while q < end:
                while q < end and _space(p[q]):
                    q += 1
                if _ftp_line(p + q, end - q):
                    found.append((_seg_key(&s), _seg_ports(&s),
                                  PyBytes_FromStringAndSize(<const char*>p + start + s.pay, s.avail - s.pay)))
                    break
                nl = <const uint8_t*>memchr(p + q, 10, end - q)
                if nl == NULL:
                    break
                q = (nl - p) + 1
        pos = start + incl
    return pos, found, rest


cdef inline int _advance(object conn, object stream, uint32_t next_seq, Py_ssize_t seglen, object ts_obj) except -1:
    """Stream.take_next's bookkeeping for a whole in-order segment, and the connection's clock."""
    conn.last_ts = ts_obj
    stream.next_seq = (next_seq + <uint32_t>seglen) & 0xFFFFFFFF
    stream.pos += seglen
    stream.delivered += seglen
    return 0


cdef class Loop:
    """One file of a Session, read by the compiled loop (see the module comment)."""

    cdef object session, result, table, tdict, decoder, table_packet, reader
    cdef object progress, last_ts
    cdef Py_ssize_t done_before, total, frame, next_tick, fast_decoded, elsewhere
    cdef int share, shares
    # Flow keys of recent packets, direct-mapped by a mix of their ports and
    # addresses (flow_slot): the dict key tuple is reused instead of made and
    # hashed again, for the few connections that carry most packets (tiny's
    # four keep-alive ones interleave: two slots missed on most packets).
    cdef uint8_t key_src[NSLOTS][16]
    cdef uint8_t key_dst[NSLOTS][16]
    cdef int key_alen[NSLOTS]
    cdef unsigned int key_ports[NSLOTS][2]
    cdef list slot_keys
    # What each of those keys leads to, as of `slot_epoch`: the compiled
    # HTTP lane of its connection (slot_lane, None when the packet must take
    # another way) and the direction.  A lane's TCP state is copied into the
    # FastHttp object (http_conn.pxd) and advanced there, in C; `leave()`
    # writes the copies back and starts a new epoch before the loop runs any
    # Python code that may read or change a Connection, a Stream or the
    # table (FlowTable.packet, drain, recharge, the decoder, callbacks,
    # signals, the end of the file), so that code always sees exactly what
    # the reference would have, and nothing copied survives it.
    cdef long long epoch, slot_epoch[NSLOTS], sweep_epoch
    cdef list slot_lanes
    cdef int slot_dir[NSLOTS]
    cdef double sweep_at
    cdef list dirty
    # The reference's check for capture time going backwards, when its
    # Session has one (BACKWARDS_SECONDS and _went_backwards beside it).
    cdef bint check_back
    cdef double back, newest
    cdef object went_backwards
    # The sink's compiled rows, when the HTTP lane may add to them directly
    # (the table's events go straight to the sink: no callback between).
    cdef object sink
    cdef EventRows rows

    def __cinit__(self, session, partition, progress, done_before, total):
        self.session = session
        self.result = session.result
        self.table = session.table
        self.tdict = session.table.table
        self.decoder = session.decoder
        self.table_packet = session.table.packet
        self.progress = progress
        self.done_before = done_before
        self.total = total
        self.frame = 0
        self.next_tick = 1
        self.last_ts = None
        self.fast_decoded = 0
        self.elsewhere = 0
        cdef int k
        for k in range(NSLOTS):
            self.key_alen[k] = 0
            self.slot_epoch[k] = -1
        self.slot_keys = [None] * NSLOTS
        self.slot_lanes = [None] * NSLOTS
        self.epoch = 0
        self.sweep_epoch = -1
        self.dirty = []
        back = getattr(sys.modules.get(type(session).__module__), "BACKWARDS_SECONDS", None)
        self.went_backwards = getattr(session, "_went_backwards", None)
        self.check_back = back is not None and self.went_backwards is not None
        self.back = back if self.check_back else 0.0
        self.newest = float("-inf")
        self.sink = session.events
        held = getattr(self.sink, "held", None)
        self.rows = held if type(held) is EventRows and self.table.on_event == self.sink.add else None
        if partition is None:
            self.share, self.shares = 0, 0
        else:
            self.share, self.shares = partition

    # -- one packet ------------------------------------------------------------
    cdef int packet(self, object ts_obj, double ts, int linktype, const uint8_t* d, Py_ssize_t n,
                    int64_t wirelen, object data) except -1:
        # 1: left to another share before decoding (no progress tick); else 0.
        cdef Seg s
        cdef int64_t cut = wirelen - n
        if cut < 0:
            cut = 0
        if self.shares and linktype == 1 and self._other(d, n):
            self.elsewhere += 1     # another process dissects it
            return 1                # and, as in the reference, no progress tick for it
        if not decode(linktype, d, n, cut, &s):
            self.leave()
            if data is None:
                data = PyBytes_FromStringAndSize(<const char*>d, n)
            seg = self.decoder.decode(linktype, data, ts_obj, wirelen)
            if seg is not None and (not self.shares or self._mine_seg(seg)):
                self.table_packet(seg, ts_obj, self.frame)
            return 0
        self.fast_decoded += 1
        if self.shares and not self._mine(&s):
            return 0
        return self.segment(&s, ts_obj, ts, d)

    cdef int _other(self, const uint8_t* d, Py_ssize_t n) noexcept:
        # _other_share in engines/native.py, byte for byte.
        cdef uint64_t key
        if n < 38 or d[12] != 8 or d[13] != 0 or d[14] != 0x45 or d[23] != 6 or d[20] & 0x3F or d[21]:
            return 0
        if memcmp(d + 26, d + 30, 4) != 0:
            key = <uint64_t>d[28] + d[29] + d[32] + d[33]
        else:
            key = <uint64_t>u16(d + 34) + u16(d + 36)
        return <int>(_mix(key) % <uint64_t>self.shares != <uint64_t>self.share)

    cdef int _mine(self, Seg* s) noexcept:
        # _share_filter in engines/native.py.
        cdef uint64_t key
        cdef int a = s.alen
        if memcmp(s.src, s.dst, a) != 0:
            key = <uint64_t>s.src[a - 2] + s.src[a - 1] + s.dst[a - 2] + s.dst[a - 1]
        else:
            key = <uint64_t>s.sport + s.dport
        return <int>(_mix(key) % <uint64_t>self.shares == <uint64_t>self.share)

    cdef int _mine_seg(self, tuple seg) except -1:
        cdef bytes src = seg[0]
        cdef bytes dst = seg[1]
        cdef uint64_t key
        cdef Py_ssize_t a = len(src), b = len(dst)
        if src != dst:
            key = src[a - 2] + src[a - 1] + dst[b - 2] + dst[b - 1]
        else:
            key = seg[2] + seg[3]
        return <int>(_mix(key) % <uint64_t>self.shares == <uint64_t>self.share)

    cdef int segment(self, Seg* s, object ts_obj, double ts, const uint8_t* d) except -1:
        cdef Py_ssize_t caplen = s.avail - s.pay
        cdef Py_ssize_t seglen = s.seglen
        cdef int i = self.flow_slot(s)
        cdef tuple key = <tuple>self.slot_keys[i]
        cdef FastHttp lane
        cdef int dr
        cdef uint32_t next_seq
        if not s.flags & 0x07:
            if self.slot_epoch[i] != self.epoch:
                self.lane_slot(i, key)
            found_lane = self.slot_lanes[i]
            if found_lane is not None:
                # The compiled HTTP lane (http_conn.pyx): no payload object, no
                # Event, no Python attribute; the same conditions as below.
                lane = <FastHttp>found_lane
                dr = self.slot_dir[i]
                if ts < self.sweep_at and seglen == 0 and (lane.ok[1 - dr] or not s.flags & 0x10
                                                           or s.ack == lane.nseq[1 - dr]):
                    # A pure ACK that tells nothing new.  FlowTable.packet's
                    # _peer_ack looks at one that is not for exactly what the
                    # other stream delivered only while that stream holds
                    # segments out of order (ok: it holds none).  Web clients
                    # acknowledge every other segment of a response, behind
                    # what the server sent: those went to Python.
                    lane.last_ts = ts_obj
                    self.mark(lane, 4)
                    return 0
                if ts < self.sweep_at and (not s.flags & 0x10 or s.ack == lane.nseq[1 - dr]):
                    if caplen == seglen and s.seq == lane.nseq[dr] and lane.ok[dr]:
                        # Stream.take_next's bookkeeping, on the copy.
                        lane.nseq[dr] = lane.nseq[dr] + <uint32_t>seglen
                        lane.spos[dr] += seglen
                        lane.sdel[dr] += seglen
                        lane.last_ts = ts_obj
                        self.mark(lane, 4 | (1 << dr))
                        events = lane.feed_c(d + s.pay, caplen, dr, ts_obj, ts, self.frame, None)
                        if lane.buffered != lane.conn_held or events or lane.anomalies or lane.expectations \
                                or lane.ref is not None:
                            self.leave()
                            conn = lane.lconn
                            if lane.buffered != lane.conn_held:   # conn.held, as of this epoch
                                self.table.recharge(conn, ts_obj)
                            if events or lane.anomalies or lane.expectations:
                                self.table.drain(conn, events)
                        return 0
        self.leave()
        cdef PyObject* found = PyDict_GetItem(self.tdict, key)
        cdef tuple entry
        if found is not NULL and not s.flags & 0x07:
            entry = <tuple>found
            conn = entry[0]
            other = entry[3]
            if <int>conn.mode == MODE_DISSECT and other is not None and ts < <double>self.table.next_sweep \
                    and seglen == 0 and (not other.held or not s.flags & 0x10
                                         or s.ack == <uint32_t>other.next_seq):
                conn.last_ts = ts_obj              # a pure ACK that tells nothing new (as in the lane above)
                return 0
            if <int>conn.mode == MODE_DISSECT and other is not None and ts < <double>self.table.next_sweep \
                    and (not s.flags & 0x10 or s.ack == <uint32_t>other.next_seq):
                stream = entry[2]
                next_seq = <uint32_t>stream.next_seq
                if caplen == seglen and s.seq == next_seq and stream.synced and not stream.held \
                        and not stream.ended:
                    # Stream.take_next accepts it: the next in-order bytes, whole.
                    direction = entry[1]
                    dissector = conn.dissector
                    kind = type(dissector)
                    if (kind is HttpDissector or kind is HttpDissectorTwin) and dissector.upgraded is None:
                        side = dissector.sides[direction]
                        if <int>side.state == BODY_LENGTH and side.sniff is None and seglen < side.remaining \
                                and not (caplen >= 5 and memcmp(d + s.pay, b"HTTP/", 5) == 0):
                            # Inside a body of known length that goes on: only counted.
                            _advance(conn, stream, next_seq, seglen, ts_obj)
                            side.remaining -= seglen
                            side.seen = True
                            if dissector.anomalies or dissector.expectations:
                                self.table.drain(conn, NO_EVENTS)
                            return 0
                    _advance(conn, stream, next_seq, seglen, ts_obj)
                    payload = PyBytes_FromStringAndSize(<const char*>d + s.pay, caplen)
                    if dissector.wants_acks:
                        # As FlowTable.packet: the ACK, relative to what was
                        # delivered of the other stream (this lane: exactly it).
                        dissector.acked(direction, 0 if s.flags & 0x10 else None)
                    events = dissector.feed(payload, direction, ts_obj, self.frame)
                    if dissector.buffered != conn.held:
                        self.table.recharge(conn, ts_obj)   # its buffers grew or shrank (FlowTable.packet)
                    if events or dissector.anomalies or dissector.expectations:
                        self.table.drain(conn, events)
                    return 0
        payload = PyBytes_FromStringAndSize(<const char*>d + s.pay, caplen)
        self.table_packet((key[0], key[2], key[1], key[3], s.seq, s.ack, s.flags, payload, seglen),
                          ts_obj, self.frame)
        return 0

    # -- the lanes' copies of the TCP state (see slot_lane above) -----------------
    cdef int lane_slot(self, int i, tuple key) except -1:
        """What the key in slot i leads to in this epoch: its connection's HTTP lane, its
        TCP state copied, when the lane may take its packets; else None."""
        cdef FastHttp lane
        cdef int k
        self.slot_epoch[i] = self.epoch
        self.slot_lanes[i] = None
        cdef PyObject* found = PyDict_GetItem(self.tdict, key)
        if found is NULL:
            return 0
        cdef tuple entry = <tuple>found
        conn = entry[0]
        dissector = conn.dissector
        if type(dissector) is not FastHttp or (<FastHttp>dissector).ref is not None or entry[3] is None \
                or <int>conn.mode != MODE_DISSECT:
            return 0
        lane = <FastHttp>dissector
        if lane.rows is None and self.rows is not None:
            lane.bind(conn, self.sink, self.rows)
        dr = entry[1]
        if lane.epoch != self.epoch:
            lane.lconn = conn
            if dr == 0:
                lane.st0, lane.st1 = entry[2], entry[3]
            else:
                lane.st0, lane.st1 = entry[3], entry[2]
            for k in range(2):
                stream = lane.st0 if k == 0 else lane.st1
                lane.nseq[k] = <uint32_t>stream.next_seq
                lane.spos[k] = stream.pos
                lane.sdel[k] = stream.delivered
                lane.ok[k] = stream.synced and not stream.held and not stream.ended
            lane.conn_held = conn.held
            lane.epoch = self.epoch
        if self.sweep_epoch != self.epoch:
            self.sweep_at = self.table.next_sweep
            self.sweep_epoch = self.epoch
        self.slot_dir[i] = dr
        self.slot_lanes[i] = lane
        return 0

    cdef inline int mark(self, FastHttp lane, int what) except -1:
        if not lane.dirty:
            self.dirty.append(lane)
        lane.dirty |= what
        return 0

    cdef int leave(self) except -1:
        """Before Python code that may see the table: the copies written back, a new epoch."""
        cdef FastHttp lane
        if self.dirty:
            for lane in self.dirty:
                if lane.dirty & 4:
                    lane.lconn.last_ts = lane.last_ts
                if lane.dirty & 1:
                    stream = lane.st0
                    stream.next_seq, stream.pos, stream.delivered = lane.nseq[0], lane.spos[0], lane.sdel[0]
                if lane.dirty & 2:
                    stream = lane.st1
                    stream.next_seq, stream.pos, stream.delivered = lane.nseq[1], lane.spos[1], lane.sdel[1]
                lane.dirty = 0
            del self.dirty[:]
        self.epoch += 1
        return 0

    cdef int flow_slot(self, Seg* s) except -1:
        """The slot of (src, sport, dst, dport), the key as the FlowTable keys its dict:
        reused when it is there, else made in its slot (whose lane is forgotten)."""
        cdef int a = s.alen
        cdef int i = <int>((s.sport * 31 + s.dport * 17 + s.src[a - 1] * 7 + s.dst[a - 1]) & (NSLOTS - 1))
        if self.key_alen[i] == a and self.key_ports[i][0] == s.sport and self.key_ports[i][1] == s.dport \
                and memcmp(self.key_src[i], s.src, a) == 0 and memcmp(self.key_dst[i], s.dst, a) == 0:
            return i
        self.slot_keys[i] = (PyBytes_FromStringAndSize(<const char*>s.src, a), s.sport,
                             PyBytes_FromStringAndSize(<const char*>s.dst, a), s.dport)
        memcpy(self.key_src[i], s.src, a)
        memcpy(self.key_dst[i], s.dst, a)
        self.key_alen[i] = a
        self.key_ports[i][0] = s.sport
        self.key_ports[i][1] = s.dport
        self.slot_epoch[i] = -1
        return i

    cdef inline int clock(self, object ts_obj, double ts) except -1:
        # As Session.read_file, before anything else is done with the packet.
        if self.check_back:
            if ts > self.newest:
                self.newest = ts
            elif ts < self.newest - self.back:
                self.leave()
                self.newest = self.went_backwards(ts_obj, self.newest, self.frame)
        return 0

    cdef int tick(self, object ts_obj) except -1:
        if self.frame % SIGNAL_EVERY == 0:
            self.leave()             # a signal handler may end the loop here
            PyErr_CheckSignals()
        if self.frame >= self.next_tick:
            self.leave()
            self.next_tick = self.frame + TICK
            if self.result.first_epoch is None:
                self.result.first_epoch = ts_obj
            counters = self.session.counters
            if counters is not None:
                counters.packets = self.result.packets + self.frame
                counters.events = self.session.events.count
            if self.progress is not None:
                self.progress(self.done_before + (self.reader.bytes_read or 0), self.total)
        return 0

    # -- record walks ------------------------------------------------------------
    def walk_pcap(self, reader, header, buf, fill):
        """capture/pcap.py's records(), the record loop in C; same damage messages."""
        self.reader = reader
        name = reader.name
        cdef bint big = header.byte_order == ">"
        cdef bint micro = header.units == 1_000_000
        units = header.units
        cdef int linktype = header.linktype
        cdef Py_ssize_t pos = 0, end, need, start, stop, n = 0
        cdef const uint8_t* p
        cdef uint32_t sec, frac, incl, orig
        cdef double ts
        cdef int skipped
        if not isinstance(buf, bytes):
            buf = bytes(buf)
        while True:
            end = PyBytes_GET_SIZE(buf)
            p = <const uint8_t*>PyBytes_AS_STRING(buf)
            need = 16
            while pos + 16 <= end:
                if big:
                    sec = u32be(p + pos)
                    frac = u32be(p + pos + 4)
                    incl = u32be(p + pos + 8)
                    orig = u32be(p + pos + 12)
                else:
                    sec = u32le(p + pos)
                    frac = u32le(p + pos + 4)
                    incl = u32le(p + pos + 8)
                    orig = u32le(p + pos + 12)
                start = pos + 16
                stop = start + incl
                if stop > end:
                    if incl > MAX_RECORD:
                        raise CaptureError(
                            f"{name}: damaged record after {_packets(n)}: it claims "
                            f"{incl} captured bytes (more than {MAX_RECORD_BYTES})", n)
                    if incl > KEEP_RECORD:
                        # As records(): read through, keep the first KEEP_RECORD_BYTES.
                        data, _last, buf = read_past(name, fill, buf[start:], incl, n, KEEP_RECORD_BYTES)
                        reader.records_cut += 1
                        ts_obj = (sec * units + frac) / units
                        self.frame += 1
                        self.last_ts = ts_obj
                        self.clock(ts_obj, ts_obj)
                        skipped = self.packet(ts_obj, ts_obj, linktype, <const uint8_t*>PyBytes_AS_STRING(data),
                                              PyBytes_GET_SIZE(data), max(orig, incl), data)
                        n += 1
                        if not skipped:
                            self.tick(ts_obj)
                        pos = 0
                        end = PyBytes_GET_SIZE(buf)
                        p = <const uint8_t*>PyBytes_AS_STRING(buf)
                        continue
                    need = stop - pos
                    break
                if micro:
                    ts = <double>(<uint64_t>sec * 1000000ULL + frac) / 1000000.0
                    ts_obj = PyFloat_FromDouble(ts)
                else:
                    ts_obj = (sec * units + frac) / units
                    ts = ts_obj
                self.frame += 1
                self.last_ts = ts_obj
                self.clock(ts_obj, ts)
                skipped = self.packet(ts_obj, ts, linktype, p + start, incl, orig, None)
                n += 1
                pos = stop
                if not skipped:
                    self.tick(ts_obj)
            self.leave()
            reader._progress(n)
            more = refill(name, fill, need - (end - pos), n)
            if not more:
                if pos == end:
                    return
                what = "a packet header" if end - pos < 16 else "a packet"
                raise CaptureError(f"{name}: cut short in the middle of {what} after {_packets(n)}", n)
            if not isinstance(more, bytes):
                more = bytes(more)
            buf = buf[pos:] + more if pos < end else more
            pos = 0

    def walk_pcapng(self, reader, buf, fill):
        """capture/pcapng.py's records(), the block walk in C; same damage messages.

        Enhanced Packet Blocks of microsecond interfaces without a time
        offset (what dumpcap writes) are handled without a Python object
        but the timestamp; every other block the way records() does it,
        with Python values (rare: one per section, interface, secret).
        """
        self.reader = reader
        name = reader.name
        interfaces, secrets = reader.interfaces, reader.decryption_secrets
        cdef bint big = False
        cdef Py_ssize_t pos = 0, end, need, nxt, n = 0
        cdef uint32_t btype, blen, ifid, caplen, wirelen
        cdef uint64_t ticks
        cdef const uint8_t* p
        cdef double ts
        cdef int skipped
        # The interface of the last packet, in C: (id, link type, exact microseconds).
        cdef Py_ssize_t last_if = -1
        cdef int last_link = 0
        cdef bint last_micro = False
        section = []   # (linktype, units, offset, snaplen) by interface id, as records()
        if not isinstance(buf, bytes):
            buf = bytes(buf)

        def damaged(why):
            return CaptureError(f"{name}: damaged pcapng block after {_packets(n)}: {why}", n)

        while True:
            end = PyBytes_GET_SIZE(buf)
            p = <const uint8_t*>PyBytes_AS_STRING(buf)
            need = 12
            while pos + 12 <= end:
                btype = u32o(p + pos, big)
                blen = u32o(p + pos + 4, big)
                if btype == SHB:
                    order = _pcapng.byte_order(buf[pos + 8:pos + 12])
                    if order is None:
                        raise damaged("section header with a bad byte-order magic")
                    big = order == ">"
                    blen = u32o(p + pos + 4, big)
                if blen < 12 or blen & 3:
                    raise damaged(f"impossible block length {blen} (below 12 or not a multiple of 4)")
                nxt = pos + blen
                if nxt > end:
                    if blen > MAX_BLOCK:
                        raise damaged(f"block length {blen} is larger than {MAX_BLOCK}")
                    if blen > KEEP_BLOCK:
                        head, last, buf = read_past(name, fill, buf[pos:], blen, n, KEEP_BLOCK)
                        pos, end = 0, PyBytes_GET_SIZE(buf)
                        p = <const uint8_t*>PyBytes_AS_STRING(buf)
                        if u32o(<const uint8_t*>PyBytes_AS_STRING(last), big) != blen:
                            raise damaged(f"block length {blen} does not match its trailing copy")
                        reader._cut()
                        packet = _pcapng._long_block(btype, ">" if big else "<", head, blen, section, damaged)
                        if packet is not None:
                            self._record(packet)
                            n += 1
                        elif btype == SHB:
                            section = []
                            last_if = -1
                        continue
                    need = blen
                    break
                if u32o(p + nxt - 4, big) != blen:
                    raise damaged(f"block length {blen} does not match its trailing copy")
                if btype == EPB or btype == PB:
                    if blen < 32:
                        raise damaged(f"{'enhanced packet' if btype == EPB else 'packet'} block of {blen} bytes")
                    # The obsolete Packet Block: a 16-bit interface id, then a drops count.
                    ifid = u32o(p + pos + 8, big) if btype == EPB else u16o(p + pos + 8, big)
                    caplen = u32o(p + pos + 20, big)
                    wirelen = u32o(p + pos + 24, big)
                    if caplen > blen - 32:
                        raise damaged(f"packet of {caplen} bytes in a block of {blen}")
                    if ifid != last_if:
                        if ifid >= len(section):
                            raise damaged(f"packet on interface {ifid}, but only "
                                          f"{len(section)} interfaces are described")
                        link, units, offset, _snaplen = section[ifid]
                        last_if, last_link, last_micro = ifid, link, units == 1_000_000 and offset == 0
                    ticks = (<uint64_t>u32o(p + pos + 12, big) << 32) | u32o(p + pos + 16, big)
                    if last_micro and ticks < EXACT_TICKS:
                        ts = <double>ticks / 1000000.0
                        ts_obj = PyFloat_FromDouble(ts)
                    else:
                        _link, units, offset, _snaplen = section[ifid]
                        ts_obj = ticks / units + offset
                        ts = ts_obj
                    self.frame += 1
                    self.last_ts = ts_obj
                    self.clock(ts_obj, ts)
                    skipped = self.packet(ts_obj, ts, last_link, p + pos + 28, caplen, wirelen, None)
                    n += 1
                    if not skipped:
                        self.tick(ts_obj)
                elif btype == IDB:
                    if blen < 20:
                        raise damaged(f"interface description block of {blen} bytes")
                    link, units, offset, snaplen, resol = _pcapng._interface(">" if big else "<", buf, pos, nxt)
                    section.append((link, units, offset, snaplen))
                    interfaces.append((link, resol))
                elif btype == SPB:
                    if blen < 16:
                        raise damaged(f"simple packet block of {blen} bytes")
                    if not section:
                        raise damaged("simple packet block before any interface description")
                    wirelen = u32o(p + pos + 8, big)
                    link, _units, _offset, snaplen = section[0]
                    caplen = min(wirelen, blen - 16)
                    if snaplen:
                        caplen = min(caplen, snaplen)
                    self._record((0.0, link, buf[pos + 12:pos + 12 + caplen], wirelen))
                    n += 1
                elif btype == SHB:
                    if blen < 28:
                        raise damaged(f"section header block of {blen} bytes")
                    major = u16o(p + pos + 12, big)
                    if major != 1:
                        raise damaged(f"section header of unsupported version {major}")
                    section = []
                    last_if = -1
                elif btype == DSB:
                    if blen < 20:
                        raise damaged(f"decryption secrets block of {blen} bytes")
                    stype = u32o(p + pos + 8, big)
                    slen = u32o(p + pos + 12, big)
                    if slen > blen - 20:
                        raise damaged(f"{slen} bytes of secrets in a block of {blen}")
                    secrets.append((stype, buf[pos + 16:pos + 16 + slen]))
                pos = nxt
            self.leave()
            reader._progress(n)
            more = refill(name, fill, need - (end - pos), n)
            if not more:
                if pos == end:
                    return
                raise CaptureError(f"{name}: cut short in the middle of a block after {_packets(n)}", n)
            if not isinstance(more, bytes):
                more = bytes(more)
            buf = buf[pos:] + more if pos < end else more
            pos = 0

    cdef int _record(self, tuple record) except -1:
        """One packet as the reference's records() yields it (ts, linktype, data, wirelen)."""
        ts_obj, linktype, raw, wirelen = record
        cdef bytes data = raw if type(raw) is bytes else bytes(raw)
        self.frame += 1
        self.last_ts = ts_obj
        self.clock(ts_obj, ts_obj)
        if not self.packet(ts_obj, ts_obj, linktype, <const uint8_t*>PyBytes_AS_STRING(data),
                           PyBytes_GET_SIZE(data), wirelen, data):
            self.tick(ts_obj)
        return 0

    def walk_records(self, reader):
        """Any other format: records from the reader, decoded here."""
        self.reader = reader
        for record in reader:
            self._record(record)

    def walk_frames(self, records):
        """Records with their frame numbers given, (frame, ts, linktype, data, wirelen):
        a cluster partition's share of a file (Session.feed_records)."""
        cdef bytes data
        for frame, ts_obj, linktype, raw, wirelen in records:
            data = raw if type(raw) is bytes else bytes(raw)
            self.frame = frame
            self.last_ts = ts_obj
            if not self.packet(ts_obj, ts_obj, linktype, <const uint8_t*>PyBytes_AS_STRING(data),
                               PyBytes_GET_SIZE(data), wirelen, data):
                self.tick(ts_obj)

    def settle(self):
        """Counters kept in C back to their Python owners (once, at the end of the file)."""
        self.leave()
        self.decoder.decoded += self.fast_decoded
        self.session.elsewhere += self.elsewhere
        self.fast_decoded = self.elsewhere = 0
        return self.frame, self.last_ts


def read_file(session, path, progress=None, done_before=0, total=0, partition=None):
    """Session.read_file, compiled: one capture file; an error ends this file only."""
    report = session.begin(path, "<stdin>" if path == "-" else None)
    result = session.result
    loop = Loop(session, partition, progress, done_before, total)
    opened = None
    try:
        with open_capture(path) as reader:
            opened = reader
            report.format, report.compression = reader.format, reader.compression
            if reader.pcap_source is not None:
                loop.walk_pcap(reader, *reader.pcap_source)
            elif reader.pcapng_source is not None:
                loop.walk_pcapng(reader, *reader.pcapng_source)
            else:
                loop.walk_records(reader)
    except AnalyzerError as exc:
        report.error = str(exc)
        result.errors.append(exc)
    finally:
        # As the reference: records cut to KEEP_RECORD_BYTES are a limit hit, counted once per run.
        if opened is not None and opened.records_cut and (partition is None or partition[0] == 0):
            session.table.limits["record_bytes"] += opened.records_cut
        frame, ts = loop.settle()
        if ts is not None:
            result.last_epoch = ts if result.last_epoch is None else max(result.last_epoch, ts)
        report.packets = frame
        result.packets += frame
        session.frame = frame


def feed_records(session, records):
    """Session.feed_records, compiled: records with explicit frame numbers, no clock check
    (a partition holds some of a file's records; the driver checked the clock over all)."""
    loop = Loop(session, None, None, 0, 0)
    loop.check_back = False
    try:
        loop.walk_frames(records)
    finally:
        _frame, ts = loop.settle()
        if ts is not None:
            result = session.result
            result.last_epoch = ts if result.last_epoch is None else max(result.last_epoch, ts)
