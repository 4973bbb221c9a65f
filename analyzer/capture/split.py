# Cutting captures into pieces that separate tasks can read (cluster mode,
# engines/cluster.py), and reading one piece into columns.
#
# A classic pcap has no index: a record is found only by walking from the
# file header.  To start a task in the middle (RAPCAP's idea, from Clemson's
# Hadoop work) a cut offset is moved forward to the first position where
# VERIFY_RECORDS consecutive record headers parse plausibly -- sub-second
# field below its unit, 0 < captured <= original length, captured within the
# snap length, seconds moving monotone-ish (at most a second back, an hour
# forward) -- and chain exactly (each header where the one before it ends).
# A candidate that fails is not a
# boundary; when none is found within SEARCH_BYTES the cut is dropped and
# the piece before it grows.
#
# The check is a heuristic: a payload can hold bytes that look like eight
# chained records.  So a piece's reader does not stop at its `stop`: it
# finishes the record it is in and reports where it ended, and the cluster
# driver requires each piece to end exactly where the next one starts; a
# file where that fails is read again as one piece (engines/cluster.py).
# Nothing read through a wrong cut can reach the outputs.
#
# pcapng (blocks of several kinds, interfaces declared on the way) and
# compressed files are one piece each: their records come from
# capture/__init__.py's reader, whose memory is bounded, but the piece's
# rows are as large as the file's packets.
#
# A piece's rows (`read_piece`): for every record, its index within the
# piece, timestamp as the engine computes it, link type, captured bytes (cut
# to KEEP_RECORD_BYTES as the readers cut them), wire length and share key
# (engines/native.py's _share_key, the same symmetric key the parallel runs
# use).  The compiled scan (analyzer/_fast/loop.pyx scan_records) walks the
# records and keys what its decoder decodes; everything else is keyed here
# through the Python Decoder.  `scan_records` below is its pure-Python
# equivalent, tested equal.
#
# Damage inside a piece ends the piece with the readers' own message; the
# packet count in it is the file's, which only the driver knows, so the
# message is returned as a template ("{packets}").
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from analyzer.capture.pcap import FILE_HEADER_BYTES, KEEP_RECORD_BYTES, MAGICS, MAX_RECORD_BYTES, parse_header

# Bytes a piece of a classic pcap covers (before its start moves to a boundary).
PIECE_BYTES = 64 * 1024 * 1024
# Consecutive record headers that must parse and chain for a boundary.
VERIFY_RECORDS = 8
# How far past a cut offset a boundary is looked for.
SEARCH_BYTES = 2 * 1024 * 1024
# Bytes read from the file at a time by a piece's reader.
CHUNK_BYTES = 8 * 1024 * 1024
# Plausible steps of the seconds field between consecutive records.
BACK_SECONDS, FORWARD_SECONDS = 1, 3600

ROW_SCHEMA = pa.schema([
    ("file", pa.int32()), ("piece", pa.int32()), ("index", pa.int64()), ("ts", pa.float64()),
    ("linktype", pa.int32()), ("data", pa.binary()), ("wirelen", pa.int64()), ("key", pa.int32()),
    ("ports", pa.int64()),  # sport << 16 | dport of TCP between one host and itself, else -1 (FTP routes)
])


@dataclass(frozen=True, slots=True)
class Piece:
    """What one decode task reads: a byte range of a classic pcap, or a whole file."""

    file: int        # index of the file in the run's inputs
    piece: int       # index of the piece within its file
    path: str
    start: int = 0   # first byte of the first record (split pieces)
    stop: int = 0    # where the next piece starts (the file's size for the last)
    whole: bool = True  # read through capture.open_capture (pcapng, compressed, small or unsplit)


@dataclass
class PieceRead:
    """What reading a piece found, besides its rows (small: it goes to the driver)."""

    file: int
    piece: int
    count: int = 0
    first_ts: float | None = None
    last_ts: float | None = None
    end: int = 0                 # byte offset after the last record read (split pieces)
    records_cut: int = 0         # records longer than KEEP_RECORD_BYTES, kept cut
    format: str = ""
    compression: str | None = None
    error: str = ""              # the readers' message; "{packets}" stands for the file's count
    error_kind: str = ""         # "capture" (damage) or "input" (cannot be read at all)
    packets_before_error: int = 0  # records of this piece read before the damage
    jumps: list = field(default_factory=list)  # (index, ts, newest): the clock went backwards (from -inf)
    newest: float = float("-inf")  # the clock check's state after the piece, started from -inf


def plan(paths: list[str], piece_bytes: int = PIECE_BYTES, unsplit=frozenset()) -> list[Piece]:
    """The pieces of every input, in file order then byte order."""
    out: list[Piece] = []
    for i, path in enumerate(paths):
        cuts = None if i in unsplit else cuts_of(path, piece_bytes)
        if not cuts:
            out.append(Piece(i, 0, path))
            continue
        for k, (start, stop) in enumerate(zip(cuts, cuts[1:])):
            out.append(Piece(i, k, path, start, stop, whole=False))
    return out


def cuts_of(path: str, piece_bytes: int) -> list[int] | None:
    """Boundaries [24, b1, ..., size] of a plain classic pcap (one range when it is
    not worth cutting: the compiled record scan reads it), else None."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(FILE_HEADER_BYTES)
            if size <= FILE_HEADER_BYTES or len(head) < FILE_HEADER_BYTES or head[:4] not in MAGICS:
                return None  # pcapng, compressed, tiny or not a capture: the reader decides
            header = parse_header(head)
            cuts = [FILE_HEADER_BYTES]
            offset = FILE_HEADER_BYTES + piece_bytes
            while offset < size - piece_bytes // 2:
                found = boundary(f, header, offset, size)
                if found is not None and cuts[-1] < found < size:
                    cuts.append(found)
                    offset = found + piece_bytes
                else:
                    offset += piece_bytes
    except OSError:
        return None
    cuts.append(size)
    return cuts


def _limit(header) -> int:
    return min(header.snaplen, KEEP_RECORD_BYTES) if header.snaplen else KEEP_RECORD_BYTES


def boundary(f, header, offset: int, size: int) -> int | None:
    """The first verified record start at or after `offset` (within SEARCH_BYTES), or None."""
    limit = _limit(header)
    f.seek(offset)
    buf = f.read(SEARCH_BYTES + VERIFY_RECORDS * (16 + limit))
    unpack = struct.Struct(header.byte_order + "IIII").unpack_from
    units = header.units
    for p in range(min(SEARCH_BYTES, len(buf) - 16 + 1)):
        if verified(buf, p, offset, size, unpack, units, limit):
            return offset + p
    return None


def verified(buf: bytes, p: int, base: int, size: int, unpack, units: int, limit: int) -> bool:
    """True when VERIFY_RECORDS plausible headers chain from buf[p] (so no cut falls
    among a file's last few records, where a short chain would prove little)."""
    pos = p
    prev = None
    for _ in range(VERIFY_RECORDS):
        if pos + 16 > len(buf):
            return False
        sec, frac, incl, orig = unpack(buf, pos)
        if frac >= units or not 0 < incl <= orig or incl > limit:
            return False
        if prev is not None and not prev - BACK_SECONDS <= sec <= prev + FORWARD_SECONDS:
            return False
        prev = sec
        pos += 16 + incl
        if base + pos > size:
            return False
    return True


# -- reading a piece ---------------------------------------------------------

def scan_records(buf: bytes, pos: int, limit: int, big: bool, linktype: int, keep: int):
    """Pure-Python equivalent of analyzer/_fast/loop.pyx scan_records (same return value);
    keys come from decode/packets.py's Decoder (-1 where it makes no segment)."""
    from analyzer.decode.packets import Decoder
    from analyzer.engines.native import _share_key

    decoder = Decoder()
    unpack = struct.Struct((">" if big else "<") + "IIII").unpack_from
    limit = min(limit, len(buf))
    fields, data, offsets, keys, ports = [], [], [0], [], []
    used = 0
    while pos + 16 <= limit:
        sec, frac, incl, orig = unpack(buf, pos)
        if incl > keep or pos + 16 + incl > limit:
            break
        record = buf[pos + 16:pos + 16 + incl]
        fields.append((sec, frac, incl, orig))
        data.append(record)
        used += incl
        offsets.append(used)
        seg = decoder.decode(linktype, record, 0.0, orig)
        keys.append(-1 if seg is None else _share_key(seg))
        ports.append(-1 if seg is None else _seg_ports(seg))
        pos += 16 + incl
    return (pos, len(fields), np.array(fields, dtype=np.uint32).reshape(-1, 4).tobytes(), b"".join(data),
            np.array(offsets, dtype=np.int32).tobytes(), np.array(keys, dtype=np.int32).tobytes(),
            np.array(ports, dtype=np.int64).tobytes())


def _seg_ports(seg) -> int:
    """sport << 16 | dport when both ends are one host (loopback), else -1."""
    return (seg[2] << 16) | seg[3] if seg[0] == seg[1] else -1


def loose_key(linktype: int, data: bytes) -> int:
    """A key for a packet no decoder makes a segment of (not TCP, a fragment still
    waiting, damaged): its IP address pair when one is found, else 0.  Fragments
    of one datagram thus meet (and their datagram's connection, unless both ends
    are one host); other packets are only counted, wherever they go."""
    try:
        off = _ip_offset(linktype, data)
        if off is None:
            return 0
        version = data[off] >> 4
        if version == 4 and len(data) >= off + 20:
            src, dst = data[off + 12:off + 16], data[off + 16:off + 20]
        elif version == 6 and len(data) >= off + 40:
            src, dst = data[off + 8:off + 24], data[off + 24:off + 40]
        else:
            return 0
    except IndexError:
        return 0
    return src[-2] + src[-1] + dst[-2] + dst[-1] if src != dst else 0


def _ip_offset(linktype: int, data: bytes) -> int | None:
    if linktype == 1:
        off, et = 14, (data[12] << 8) | data[13]
        while et in (0x8100, 0x88A8, 0x9100, 0x9200):
            et = (data[off + 2] << 8) | data[off + 3]
            off += 4
        return off if et in (0x0800, 0x86DD) else None
    if linktype == 113:
        return 16 if ((data[14] << 8) | data[15]) in (0x0800, 0x86DD) else None
    if linktype == 276:
        return 20 if ((data[0] << 8) | data[1]) in (0x0800, 0x86DD) else None
    if linktype in (101, 12, 14, 228, 229):
        return 0
    if linktype in (0, 108):
        return 4
    return None


class _Rows:
    """A piece's rows as they are read, then one Arrow table."""

    def __init__(self, piece: Piece) -> None:
        self.piece = piece
        self.ts: list[np.ndarray] = []
        self.linktypes: list[np.ndarray] = []
        self.data: list[pa.Array] = []
        self.wirelen: list[np.ndarray] = []
        self.keys: list[np.ndarray] = []
        self.ports: list[np.ndarray] = []
        self.count = 0

    def add(self, ts, linktype, data: pa.Array, wirelen, keys, ports) -> None:
        self.ts.append(np.asarray(ts, dtype=np.float64))
        self.linktypes.append(np.asarray(linktype, dtype=np.int32))
        self.data.append(data)
        self.wirelen.append(np.asarray(wirelen, dtype=np.int64))
        self.keys.append(np.asarray(keys, dtype=np.int32))
        self.ports.append(np.asarray(ports, dtype=np.int64))
        self.count += len(data)

    def table(self) -> pa.Table:
        n = self.count
        cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
        data = pa.chunked_array(self.data, pa.binary()) if self.data else pa.chunked_array([], pa.binary())
        columns = [pa.array(np.full(n, self.piece.file, np.int32)), pa.array(np.full(n, self.piece.piece, np.int32)),
                   pa.array(np.arange(n, dtype=np.int64)), pa.array(cat(self.ts, np.float64)),
                   pa.array(cat(self.linktypes, np.int32)), data.combine_chunks() if n else pa.array([], pa.binary()),
                   pa.array(cat(self.wirelen, np.int64)), pa.array(cat(self.keys, np.int32)),
                   pa.array(cat(self.ports, np.int64))]
        return pa.Table.from_arrays(columns, schema=ROW_SCHEMA)


def _fix_keys(keys: np.ndarray, ports: np.ndarray, linktypes, data: pa.Array, ts, wirelen, decoder):
    """Keys (and ports) the C decoder left (-1) from the Python Decoder's segment, else loose_key."""
    from analyzer.engines.native import _share_key

    todo = np.flatnonzero(keys < 0)
    if len(todo):
        keys, ports = keys.copy(), ports.copy()
        for i in todo.tolist():
            record = data[i].as_py()
            linktype = int(linktypes[i]) if np.ndim(linktypes) else int(linktypes)
            seg = decoder.decode(linktype, record, float(ts[i]), int(wirelen[i]))
            if seg is not None:
                keys[i], ports[i] = _share_key(seg), _seg_ports(seg)
            else:
                keys[i], ports[i] = loose_key(linktype, record), -1
    return keys, ports


def read_piece(piece: Piece) -> tuple[pa.Table, PieceRead]:
    """A piece's rows (ROW_SCHEMA) and what reading it found (see the module comment)."""
    if piece.whole:
        table, info = _read_whole(piece)
    else:
        table, info = _read_range(piece)
    _clock(table.column("ts").to_numpy(), info)
    if info.count:
        ts = table.column("ts")
        info.first_ts, info.last_ts = ts[0].as_py(), ts[info.count - 1].as_py()
    return table, info


def _read_whole(piece: Piece):
    from analyzer.capture import open_capture
    from analyzer.decode.packets import Decoder
    from analyzer.errors import AnalyzerError, CaptureError
    from analyzer import _fast

    info = PieceRead(piece.file, piece.piece)
    rows = _Rows(piece)
    keyer = _fast.compiled("share_key") or _py_share_key
    decoder = Decoder()
    ts_l, lt_l, data_l, wl_l, key_l, port_l = [], [], [], [], [], []

    def flush():
        if data_l:
            data = pa.array(data_l, pa.binary())
            keys, ports = _fix_keys(np.array(key_l, np.int32), np.array(port_l, np.int64), np.array(lt_l, np.int32),
                                    data, ts_l, wl_l, decoder)
            rows.add(ts_l, lt_l, data, wl_l, keys, ports)
            for part in (ts_l, lt_l, data_l, wl_l, key_l, port_l):
                part.clear()

    try:
        with open_capture(piece.path) as reader:
            info.format, info.compression = reader.format, reader.compression
            try:
                for ts, linktype, raw, wirelen in reader:
                    data = raw if type(raw) is bytes else bytes(raw)
                    ts_l.append(ts)
                    lt_l.append(linktype)
                    data_l.append(data)
                    wl_l.append(wirelen)
                    keyed = keyer(linktype, data, wirelen)
                    key_l.append(-1 if keyed is None else keyed[0])
                    port_l.append(-1 if keyed is None else keyed[1])
                    if len(data_l) >= 65536:
                        flush()
            finally:
                info.records_cut = reader.records_cut
    except AnalyzerError as exc:
        info.error = str(exc).replace("{", "{{").replace("}", "}}")
        info.error_kind = "capture" if isinstance(exc, CaptureError) else "input"
        info.packets_before_error = getattr(exc, "packets_read", 0)
    flush()
    info.count = rows.count
    return rows.table(), info


def _py_share_key(linktype: int, data: bytes, wirelen: int):
    return None  # the Python Decoder keys every packet (_fix_keys)


def _read_range(piece: Piece):
    from analyzer import _fast
    from analyzer.decode.packets import Decoder

    info = PieceRead(piece.file, piece.piece, format="pcap")
    rows = _Rows(piece)
    scan = _fast.compiled("scan_records") or scan_records
    decoder = Decoder()
    name = piece.path
    with open(piece.path, "rb") as f:
        header = parse_header(f.read(FILE_HEADER_BYTES))
        size = os.fstat(f.fileno()).st_size
        big = header.byte_order == ">"
        units = header.units
        linktype = header.linktype
        f.seek(piece.start)
        at = piece.start          # file offset of buf[0]
        buf = f.read(CHUNK_BYTES)
        pos = 0
        n = 0
        while at + pos < piece.stop:
            end, taken, fields, data, offsets, keys, ports = scan(buf, pos, len(buf), big, linktype, KEEP_RECORD_BYTES)
            if taken:
                offs = np.frombuffer(offsets, dtype=np.int32)
                # Records that start at or after `stop` are the next piece's.
                starts = at + pos + 16 * np.arange(taken, dtype=np.int64) + offs[:taken]
                mine = int(np.searchsorted(starts, piece.stop, side="left"))
                if mine < taken:
                    end = int(starts[mine] - at)
                    taken = mine
                    fields, keys, ports = fields[:16 * taken], keys[:4 * taken], ports[:8 * taken]
                    offsets = offsets[:4 * (taken + 1)]
                if taken:
                    hdr = np.frombuffer(fields, dtype=np.uint32).reshape(-1, 4)
                    arr = pa.Array.from_buffers(pa.binary(), taken, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
                    ts = _times(hdr[:, 0], hdr[:, 1], units)
                    wirelen = hdr[:, 3].astype(np.int64)
                    keys, ports = _fix_keys(np.frombuffer(keys, dtype=np.int32), np.frombuffer(ports, dtype=np.int64),
                                            linktype, arr, ts, wirelen, decoder)
                    rows.add(ts, np.full(taken, linktype, np.int32), arr, wirelen, keys, ports)
                    n += taken
                pos = end
                if at + pos >= piece.stop:
                    break
            # Not a whole record in the buffer here: more bytes, a long record, or damage.
            left = len(buf) - pos
            if left >= 16:
                sec, frac, incl, orig = struct.unpack_from(header.byte_order + "IIII", buf, pos)
                if incl > KEEP_RECORD_BYTES:  # scan_records leaves every such record here
                    if incl > MAX_RECORD_BYTES:
                        info.error = (f"{name}: damaged record after {{packets}}: it claims "
                                      f"{incl} captured bytes (more than {MAX_RECORD_BYTES})")
                        break
                    # Read through, keep the first KEEP_RECORD_BYTES (as capture/pcap.py does).
                    record_end = at + pos + 16 + incl
                    if record_end > size:
                        info.error = f"{name}: cut short in the middle of a packet after {{packets}}"
                        break
                    kept = buf[pos + 16:pos + 16 + KEEP_RECORD_BYTES]
                    if len(kept) < KEEP_RECORD_BYTES:
                        f.seek(at + pos + 16 + len(kept))
                        kept += f.read(KEEP_RECORD_BYTES - len(kept))
                    info.records_cut += 1
                    arr = pa.array([kept], pa.binary())
                    ts = _times(np.array([sec], np.uint32), np.array([frac], np.uint32), units)
                    wirelen = np.array([max(orig, incl)], np.int64)
                    keyed = _key_one(linktype, kept, int(wirelen[0]))
                    keys, ports = _fix_keys(np.array([keyed[0]], np.int32), np.array([keyed[1]], np.int64), linktype,
                                            arr, ts, wirelen, decoder)
                    rows.add(ts, np.array([linktype], np.int32), arr, wirelen, keys, ports)
                    n += 1
                    f.seek(record_end)
                    at, pos, buf = record_end, 0, f.read(CHUNK_BYTES)
                    continue
            more = f.read(max(CHUNK_BYTES, (16 + incl if left >= 16 else 16)))
            if not more:
                if left:
                    what = "a packet header" if left < 16 else "a packet"
                    info.error = f"{name}: cut short in the middle of {what} after {{packets}}"
                break
            at += pos
            buf = buf[pos:] + more
            pos = 0
        info.end = at + pos
    if info.error:
        info.error_kind = "capture"
        info.packets_before_error = n
    info.count = rows.count
    return rows.table(), info


def _key_one(linktype: int, data: bytes, wirelen: int) -> int:
    from analyzer import _fast

    keyer = _fast.compiled("share_key")
    keyed = keyer(linktype, data, wirelen) if keyer is not None else None
    return (-1, -1) if keyed is None else keyed


def _times(sec: np.ndarray, frac: np.ndarray, units: int) -> np.ndarray:
    """(sec * units + frac) / units, correctly rounded, as capture/pcap.py computes it."""
    if units == 1_000_000:
        # Both terms exact in a double (below 2**53); one division rounds once.
        return (sec.astype(np.float64) * 1e6 + frac.astype(np.float64)) / 1e6
    return np.array([(s * units + f) / units for s, f in zip(sec.tolist(), frac.tolist())], dtype=np.float64)


def _clock(ts: np.ndarray, info: PieceRead) -> None:
    """The engine's check for capture time going backwards (native.py
    BACKWARDS_SECONDS), over this piece from a state of -inf."""
    from analyzer.engines.native import BACKWARDS_SECONDS

    if not len(ts):
        return
    running = np.maximum.accumulate(ts)
    if not (ts < running - BACKWARDS_SECONDS).any():
        info.newest = float(running[-1])
        return
    info.newest, info.jumps = clock_from(ts.tolist(), float("-inf"))


def clock_from(ts: list, newest: float) -> tuple[float, list]:
    """The clock check over `ts` from state `newest`: (state after, [(index, ts, newest before)])."""
    from analyzer.engines.native import BACKWARDS_SECONDS

    jumps = []
    for i, t in enumerate(ts):
        if t > newest:
            newest = t
        elif t < newest - BACKWARDS_SECONDS:
            jumps.append((i, t, newest))
            newest = t
    return newest, jumps


# -- FTP data channels between one host and itself ----------------------------
#
# The share key keeps a host pair together, so an FTP data connection meets
# its control connection -- except when both ends are one host (loopback),
# where the ports decide and the two connections have none in common.  So
# each piece also lists the data ports its loopback packets announce (a line
# starting 227 or 229 from a server, PORT or EPRT from a client, parsed as
# the FTP dissector parses them), with the announcing connection's key, in a
# pre-pass over the pieces (`announce_piece`: a record walk that copies
# nothing, before any decode task, so that no decoded rows wait for it);
# `routes` joins every control key with the ports it announced (and keys
# announcing the same port with each other), and `rekey` gives a loopback
# packet that uses an announced port, or belongs to a control connection,
# its group's key before the shuffle.  A group holds the control
# connections' own ports too (so one FTP server's sessions on a host are one
# group).  Moving more connections together is always safe; missed are an
# announcement split across two TCP segments and a data connection whose
# other port belongs to another group (an ephemeral port equal to another
# session's): such a data connection is dissected apart from its control,
# as in a parallel run.

_CANDIDATE = r"\d{1,3},\d{1,3},\d{1,3},\d{1,3},\d{1,3},\d{1,3}|\([!-~]{3}\d{1,5}[!-~]\)|[Ee][Pp][Rr][Tt] "
_EPRT_RE = re.compile(rb"([!-~])[12]\1[0-9A-Fa-f.:]+\1(\d{1,5})\1")


def data_ports(payload: bytes) -> list[int]:
    """The FTP data ports a payload's lines announce, parsed as the FTP dissector parses them."""
    from analyzer.protocols.ftp.dissector import parse_epsv, parse_host_port

    out = []
    for line in payload.split(b"\n"):
        line = line.lstrip()
        head = line[:4].upper()
        port = None
        if head[:3] == b"227" or head == b"PORT":
            found = parse_host_port(line)
            port = found[1] if found else None
        elif head[:3] == b"229":
            port = parse_epsv(line)
        elif head == b"EPRT":
            m = _EPRT_RE.search(line)
            port = int(m.group(2)) if m and 0 < int(m.group(2)) < 65536 else None
        if port is not None:
            out.append(port)
    return out


def ftp_lines(buf: bytes, pos: int, limit: int, big: bool, linktype: int, keep: int):
    """Pure-Python equivalent of analyzer/_fast/loop.pyx ftp_lines: (position after the
    last record walked, [(key, ports, payload)], [] -- the compiled one lists there the
    records its decoder leaves to the Python one, as (offset, captured, original))."""
    from analyzer.decode.packets import Decoder
    from analyzer.engines.native import _share_key

    decoder = Decoder()
    unpack = struct.Struct((">" if big else "<") + "IIII").unpack_from
    limit = min(limit, len(buf))
    found = []
    while pos + 16 <= limit:
        _sec, _frac, incl, orig = unpack(buf, pos)
        if incl > keep or pos + 16 + incl > limit:
            break
        seg = decoder.decode(linktype, buf[pos + 16:pos + 16 + incl], 0.0, orig)
        if _has_ftp_line(seg):
            found.append((_share_key(seg), _seg_ports(seg), seg[7]))
        pos += 16 + incl
    return pos, found, []


def _has_ftp_line(seg) -> bool:
    if seg is None or not seg[7] or seg[0] != seg[1]:
        return False
    for line in seg[7].split(b"\n"):
        head = line.lstrip()[:4].upper()
        if head[:3] in (b"227", b"229") or head in (b"PORT", b"EPRT"):
            return True
    return False


def announced_ports(table: pa.Table) -> list[tuple[int, int, int]]:
    """(control key, its ports, port) for every FTP data port a loopback packet of `table` announces."""
    from analyzer.decode.packets import Decoder

    loop = pc.not_equal(table.column("ports"), -1)
    if not pc.any(loop).as_py():
        return []
    rows = table.filter(loop)
    rows = rows.filter(pc.match_substring_regex(rows.column("data"), _CANDIDATE))
    out = []
    decoder = Decoder()
    for linktype, data, ts, wirelen, key, ports in zip(*(rows.column(c).to_pylist()
                                                        for c in ("linktype", "data", "ts", "wirelen", "key", "ports"))):
        seg = decoder.decode(linktype, data, ts, wirelen)
        if seg is not None:
            out.extend((key, ports, port) for port in data_ports(seg[7]))
    return out


def announce_piece(piece: Piece) -> list[tuple[int, int, int]]:
    """The pre-pass over a piece: (control key, its ports, data port) of its loopback FTP lines."""
    from analyzer import _fast

    if piece.whole:
        return announced_ports(read_piece(piece)[0])
    from analyzer.decode.packets import Decoder
    from analyzer.engines.native import _share_key

    walk = _fast.compiled("ftp_lines") or ftp_lines
    decoder = Decoder()
    out = []
    with open(piece.path, "rb") as f:
        header = parse_header(f.read(FILE_HEADER_BYTES))
        big, linktype = header.byte_order == ">", header.linktype
        f.seek(piece.start)
        at, pos, buf = piece.start, 0, f.read(CHUNK_BYTES)
        while at + pos < piece.stop:
            pos, found, rest = walk(buf, pos, len(buf), big, linktype, KEEP_RECORD_BYTES)
            for offset, incl, orig in rest:
                seg = decoder.decode(linktype, buf[offset + 16:offset + 16 + incl], 0.0, orig)
                if _has_ftp_line(seg):
                    found.append((_share_key(seg), _seg_ports(seg), seg[7]))
            out.extend((key, ports, port) for key, ports, payload in found for port in data_ports(payload))
            if at + pos >= piece.stop:
                break
            left = len(buf) - pos
            incl = struct.unpack_from(header.byte_order + "I", buf, pos + 8)[0] if left >= 16 else 0
            if incl > KEEP_RECORD_BYTES:  # an oversized record holds no FTP line worth a read: skipped
                at += pos + 16 + incl
                f.seek(at)
                pos, buf = 0, f.read(CHUNK_BYTES)
                if not buf:
                    break
                continue
            more = f.read(max(CHUNK_BYTES, 16 + incl))
            if not more:
                break
            at, buf, pos = at + pos, buf[pos:] + more, 0
    return out


@dataclass
class Routes:
    """Loopback FTP groups: announced port -> group key, control key -> group key."""

    ports: dict = field(default_factory=dict)
    keys: dict = field(default_factory=dict)


def routes(announced: list) -> Routes:
    """Join control keys and the ports they announced (`announce_piece`'s lists, union-find);
    each group's key is its smallest."""
    parent: dict = {}

    def find(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(x, y):
        a, b = find(x), find(y)
        if a != b:
            parent[max(a, b)] = min(a, b)

    for found in announced:
        for key, ports, port in found:
            # The control connection's own ports too: a connection using one of
            # them (or an announced one) can then be in one group only.
            for p in (port, ports >> 16, ports & 0xFFFF):
                union(("k", key), ("p", p))
    groups: dict = {}
    for node in list(parent):
        groups.setdefault(find(node), []).append(node)
    out = Routes()
    for members in groups.values():
        rep = min(v for kind, v in members if kind == "k")
        for kind, v in members:
            (out.keys if kind == "k" else out.ports)[v] = rep
    return out


def rekey(frame, found: Routes):
    """A decode task's rows (pandas) with loopback FTP connections moved to their group's key."""
    import pandas as pd

    if not found.ports or not len(frame):
        return frame
    ports = frame["ports"].to_numpy(dtype=np.int64)
    loop = ports >= 0
    if not loop.any():
        return frame
    keys = frame["key"].to_numpy(dtype=np.int64)
    sport = pd.Series(ports[loop] >> 16).map(found.ports)
    dport = pd.Series(ports[loop] & 0xFFFF).map(found.ports)
    own = pd.Series(keys[loop]).map(found.keys)
    moved = sport.fillna(dport).fillna(own).fillna(pd.Series(keys[loop])).to_numpy(dtype=np.int64)
    keys = keys.copy()
    keys[loop] = moved
    return frame.assign(key=pd.array(keys.astype(np.int32), dtype=pd.ArrowDtype(pa.int32())))
