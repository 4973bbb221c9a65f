# What part of a run's traffic the outputs keep: --protocol, --server
# IP[:PORT] and --since/--until, as tshark/Zeek users narrow a capture.
#
# Strategy: the engines dissect everything (an FTP data channel or an HTTP
# upgrade needs its whole connection), and the selection is applied where
# events become batches: `Selected` wraps each consumer (events.csv, the
# statistics, the API's copy) and hands it only the rows that match -- one
# vectorised Arrow filter per batch.  Connection rows for the statistics are
# selected with the same rules (`keeps_connection`), on their server and on
# the overlap of their lifetime with [since, until).
#
# Limits: connections.csv and anomalies.csv keep every connection and
# anomaly (they describe what was read); a time window keeps an event by the
# time of its first byte.
from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc

from analyzer.errors import UsageError


@dataclass(frozen=True)
class Selection:
    protocols: frozenset = frozenset()          # empty: every protocol
    servers: tuple = ()                         # ((ip, port or None), ...); empty: every server
    since: float | None = None                  # epoch seconds, inclusive
    until: float | None = None                  # epoch seconds, exclusive

    def __bool__(self) -> bool:
        return bool(self.protocols or self.servers or self.since is not None or self.until is not None)

    def describe(self) -> dict:
        """For summary.json and the report header: what was kept."""
        out = {}
        if self.protocols:
            out["protocols"] = sorted(self.protocols)
        if self.servers:
            out["servers"] = [ip if port is None else f"{ip}:{port}" for ip, port in self.servers]
        if self.since is not None:
            out["since"] = _iso(self.since)
        if self.until is not None:
            out["until"] = _iso(self.until)
        return out

    def mask(self, batch: pa.RecordBatch) -> pa.Array:
        """True for the rows of an event batch that the selection keeps."""
        keep = pa.array([True] * batch.num_rows)
        if self.protocols:
            keep = pc.and_(keep, pc.is_in(batch.column("protocol"), pa.array(sorted(self.protocols))))
        if self.servers:
            ip, port = batch.column("server_ip"), batch.column("server_port")
            any_server = pa.array([False] * batch.num_rows)
            for want_ip, want_port in self.servers:
                hit = pc.equal(ip, want_ip)
                if want_port is not None:
                    hit = pc.and_(hit, pc.equal(port, want_port))
                any_server = pc.or_(any_server, pc.fill_null(hit, False))
            keep = pc.and_(keep, any_server)
        epoch = batch.column("epoch")
        if self.since is not None:
            keep = pc.and_(keep, pc.fill_null(pc.greater_equal(epoch, self.since), False))
        if self.until is not None:
            keep = pc.and_(keep, pc.fill_null(pc.less(epoch, self.until), False))
        return keep

    def keeps_connection(self, row: dict) -> bool:
        """The same rules for one connection row (tcp.table.Connection.row)."""
        if self.protocols and row.get("protocol") not in self.protocols and not (
                "websocket" in self.protocols and row.get("protocol") == "http"):
            return False  # an upgraded connection is listed as http but holds the WebSocket
        if self.servers and not any(row.get("server_ip") == ip and (port is None or row.get("server_port") == port)
                                    for ip, port in self.servers):
            return False
        first, last = _float(row.get("first_epoch")), _float(row.get("last_epoch"))
        if self.since is not None and last is not None and last < self.since:
            return False
        if self.until is not None and first is not None and first >= self.until:
            return False
        return True


class Selected:
    """A consumer that passes on only the selected rows of each batch."""

    def __init__(self, inner, selection: Selection) -> None:
        self.inner = inner
        self.selection = selection

    def write(self, batch: pa.RecordBatch) -> None:
        kept = batch.filter(self.selection.mask(batch))
        if kept.num_rows:
            self.inner.write(kept)

    def __getattr__(self, name):  # flush, commit, abort, rows, table(), ...
        return getattr(self.inner, name)


def parse_server(text: str) -> tuple[str, int | None]:
    """"10.0.0.1", "10.0.0.1:8080", "[2001:db8::1]:443" or "2001:db8::1" -> (ip, port or None)."""
    value = text.strip()
    port = None
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise UsageError(f"--server {text!r}: expected IP, IP:PORT or [IPv6]:PORT")
        value, port = host, rest[1:] or None
    elif value.count(":") == 1:
        value, port = value.split(":")
    try:
        ip = str(ipaddress.ip_address(value))
    except ValueError:
        raise UsageError(f"--server {text!r}: {value!r} is not an IP address") from None
    if port is not None:
        if not str(port).isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"--server {text!r}: port must be 1-65535")
        port = int(port)
    return ip, port


def parse_time(text: str, option: str) -> float:
    """Epoch seconds, or ISO 8601 (UTC unless an offset is given), e.g. 2024-05-01T08:00:00Z."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected ISO 8601 (2024-05-01T08:00:00Z) or epoch seconds") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def make_selection(protocols=(), servers=(), since=None, until=None) -> Selection:
    from analyzer.protocols import EVENT_PROTOCOLS

    unknown = sorted(set(protocols) - set(EVENT_PROTOCOLS))
    if unknown:
        raise UsageError(f"--protocol {unknown[0]!r}: choose from {', '.join(EVENT_PROTOCOLS)}")
    start = parse_time(since, "--since") if isinstance(since, str) else since
    end = parse_time(until, "--until") if isinstance(until, str) else until
    if start is not None and end is not None and end <= start:
        raise UsageError("--until must be later than --since")
    return Selection(frozenset(protocols), tuple(parse_server(s) for s in servers), start, end)


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _iso(epoch: float) -> str:
    try:
        return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):
        return str(epoch)
