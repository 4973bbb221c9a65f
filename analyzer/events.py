# Records that cross module boundaries: what dissectors emit, what the flow
# table fills in, and what every report consumes.
#
# A dissector knows only its byte stream: it fills the protocol fields and says
# which direction (0 or 1, as the flow table numbered them) sent the message.
# The flow table then fills the endpoint fields (client/server, connection id)
# with `dataclasses.replace`; events are rare next to packets, so the copy is
# off the hot path.
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

# Directions as the flow table numbers them: 0 is the side that sent the SYN
# (or, without a SYN, the side seen first); 1 is the other side.
ORIG, RESP = 0, 1

# The first columns of events.csv, in the order the output contract fixes.
CONTRACT_COLUMNS = (
    "time", "epoch", "frame", "protocol",
    "client_ip", "client_port", "server_ip", "server_port",
    "code", "text", "request", "host", "latency_ms", "connection",
)
# Columns that follow the contract ones (stable order, documented in README).
EXTRA_COLUMNS = (
    "direction", "inferred", "lines", "substatus", "substatus_source",
    "data_bytes", "flags", "capture", "community_id", "last_frame",
)
# What the catalogue adds to every event (one join on protocol, code, substatus).
ANNOTATION_COLUMNS = ("class", "name", "meaning", "standard")
# Every column of an event batch and of events.csv/jsonl/parquet, in order.
EVENT_COLUMNS = CONTRACT_COLUMNS + EXTRA_COLUMNS + ANNOTATION_COLUMNS
# The Arrow type of each column of an event batch, as data (pyarrow itself is
# imported only where batches are built: dissectors import this module).
# Nullable columns hold null where the CSV has an empty cell.
EVENT_TYPES = {
    "time": "string", "epoch": "float64", "frame": "int64", "protocol": "string",
    "client_ip": "string", "client_port": "int64", "server_ip": "string", "server_port": "int64",
    "code": "int64", "text": "string", "request": "string", "host": "string",
    "latency_ms": "float64", "connection": "string", "direction": "string", "inferred": "bool",
    "lines": "int64", "substatus": "string", "substatus_source": "string", "data_bytes": "int64",
    "flags": "string", "capture": "string", "community_id": "string", "last_frame": "int64",
    "class": "string", "name": "string",
    "meaning": "string", "standard": "bool",
}
# connections.csv: one row per dissected TCP connection (tcp.table.Connection.row).
CONNECTION_COLUMNS = (
    "connection", "protocol", "client_ip", "client_port", "server_ip", "server_port",
    "first_epoch", "last_epoch", "bytes_c2s", "bytes_s2c", "missed_bytes", "gaps", "state",
    "outcome", "capture", "community_id",
)
# Columns the sink derives per batch: `time` from epoch, `community_id`
# (analyzer/community_id.py) from the endpoints.
DERIVED_COLUMNS = ("time", "community_id")
# Columns an engine fills from an (Event, endpoints) pair, in the order of
# `event_values`; the derived ones and the annotation are added per batch.
RAW_COLUMNS = tuple(c for c in EVENT_COLUMNS if c not in DERIVED_COLUMNS and c not in ANNOTATION_COLUMNS)


# Not frozen: a frozen dataclass sets each field through object.__setattr__,
# which made building an Event 5x dearer (15 against 3 us measured) on the
# per-message path.  Nothing changes an Event once its dissector has
# returned it (the HTTP dissector makes a response's Event at its head and
# completes last_frame and substatus when the body ends); the flow table
# passes its endpoints beside it.
@dataclass(slots=True)
class Event:
    """One response (HTTP), reply (FTP) or close (WebSocket) seen on the wire."""

    protocol: str          # "http" | "ftp" | "websocket"
    code: int              # status / reply / close code (1005, 1006 may be inferred)
    text: str              # reason phrase / reply text (first line) / close reason
    request: str           # "METHOD URI", "CMD ARG" or the WebSocket handshake; "" if unseen
    epoch: float           # time of the packet holding the first byte of the message
    frame: int             # 1-based number of that packet across the whole run
    sender: int            # direction (ORIG/RESP) that sent this message
    host: str = ""         # HTTP Host header of the request
    latency_ms: float | None = None   # first request byte -> first response byte
    direction: str = ""    # websocket: "client->server" | "server->client"
    inferred: bool = False  # websocket 1005/1006 not carried on the wire as such
    lines: int | None = None  # ftp: number of lines in the reply
    substatus: str = ""    # IIS sub-status (e.g. "403.14") when proven by the body
    substatus_source: str = ""  # where substatus came from ("body")
    data_bytes: int | None = None  # ftp: bytes moved on the data connection for this command
    flags: tuple[str, ...] = ()     # named anomalies attached to this event
    # The packet holding the message's last byte (end of an HTTP body, an FTP
    # reply's final line, a whole close frame): the frame Wireshark reports
    # the message in.  None when the message never ended in the capture.
    last_frame: int | None = None
    # Filled by the flow table.
    client_ip: str = ""
    client_port: int = 0
    server_ip: str = ""
    server_port: int = 0
    connection: str = ""
    capture: str = ""      # file the frame number counts in (several files per run)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Odd traffic is data: a stable name per condition, counted and reported."""

    name: str              # e.g. "http_response_without_request", "tcp_flow_buffer_limit"
    epoch: float
    frame: int
    detail: str = ""
    connection: str = ""   # filled by the flow table


@dataclass(frozen=True, slots=True)
class Expectation:
    """A connection a dissector announced (e.g. an FTP data channel).

    `host` None means "the peer that sent the announcement" (EPSV: the
    server's own address; EPRT/PORT always carry one).  The flow table
    resolves it, and marks the matching connection, when it appears, with
    `kind` so that no dissector is tried on it.  `owner` is the dissector
    that asked; it receives `on_data(nbytes, ts)` for every payload byte
    of that connection.
    """

    kind: str              # "ftp-data"
    host: str | None       # address the data connection goes to (responder)
    port: int              # port the data connection goes to (responder)
    owner: object = field(default=None, compare=False, repr=False)


class BatchConsumer:
    """What engines/sink.py hands event batches to: `write(batch)` for each
    Arrow record batch, `flush()` when a live report is due, `commit()` at
    the end of the run, `abort()` when it failed.  A consumer that keeps no
    files needs only `write`."""

    def write(self, batch) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        pass

    def commit(self) -> None:
        pass

    def abort(self) -> None:
        pass


def with_endpoints(ev: Event, ends: tuple) -> Event:
    """The event with the flow table's endpoint fields filled in."""
    cip, cport, sip, sport, cid, capture = ends
    return replace(ev, client_ip=cip, client_port=cport, server_ip=sip, server_port=sport,
                   connection=cid, capture=capture)


def event_values(ev: Event, ends: tuple) -> tuple:
    """The RAW_COLUMNS values of one event: raw wire strings, nothing neutralised."""
    cip, cport, sip, sport, cid, capture = ends
    return (ev.epoch, ev.frame, ev.protocol, cip, cport, sip, sport, ev.code, ev.text, ev.request, ev.host,
            ev.latency_ms, cid, ev.direction, ev.inferred, ev.lines, ev.substatus, ev.substatus_source,
            ev.data_bytes, ";".join(ev.flags), capture, ev.last_frame)


def endpoint_label(ip: str, port: int) -> str:
    """"ip:port", an IPv6 address in brackets as in a URL ("[::1]:8080")."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def side_label(sender: int, server_direction: int) -> str:
    return "server->client" if sender == server_direction else "client->server"


_SECOND = [None, ""]


def iso_time(epoch: float) -> str:
    """ISO-8601 UTC with microseconds; the formatted second is cached (hot path)."""
    try:
        whole = int(epoch // 1)
        micros = int(round((epoch - whole) * 1_000_000))
        if micros >= 1_000_000:
            whole, micros = whole + 1, micros - 1_000_000
        if _SECOND[0] != whole:
            _SECOND[0] = whole
            # isoformat, not strftime("%Y"): the C library writes year 999 as "999",
            # ISO 8601 (and events.csv's time column) as "0999".
            _SECOND[1] = datetime.fromtimestamp(whole, timezone.utc).isoformat(timespec="seconds")[:19]
        return f"{_SECOND[1]}.{micros:06d}Z"
    except (ValueError, OverflowError, OSError):
        _SECOND[0] = None
        return ""  # a timestamp no calendar holds (corrupt capture); epoch keeps the value
