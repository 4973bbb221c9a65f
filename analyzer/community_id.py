# Community ID flow hashes (Corelight's community-id-spec, version 1), the
# value Zeek (`community_id` in conn.log) and Suricata (`community_id` in EVE)
# write, so one of our events can be looked up in their logs and back.
#
#   sha1(seed:u16 | ip_a | ip_b | proto:u8 | 0:u8 | port_a:u16 | port_b:u16)
#   -> "1:" + base64(digest)
#
# with (ip_a, port_a) the smaller endpoint (addresses compared as network
# byte strings, then ports), so both directions hash alike; integers are
# big-endian; seed 0 is everyone's default.  Every connection we dissect is
# TCP (protocol 6).
#
# Events arrive in Arrow batches: `column()` hashes each distinct
# connection once (a connection's events share their 4-tuple), finding the
# distinct 4-tuples of a batch as integers, not as joined strings.
from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import socket
import struct

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

VERSION = "1"
TCP = 6
DEFAULT_SEED = 0


def community_id(src_ip: str, src_port: int, dst_ip: str, dst_port: int, proto: int = TCP,
                 seed: int = DEFAULT_SEED) -> str:
    """The v1 Community ID of a flow; "" when an address is not IPv4/IPv6 (nothing to hash)."""
    try:
        a = _packed(src_ip)
        b = _packed(dst_ip)
    except ValueError:
        return ""
    if len(a) != len(b):
        return ""
    pa_, pb = int(src_port) & 0xFFFF, int(dst_port) & 0xFFFF
    if (b, pb) < (a, pa_):
        a, b, pa_, pb = b, a, pb, pa_
    digest = hashlib.sha1(struct.pack("!H", seed) + a + b + struct.pack("!BBHH", proto, 0, pa_, pb)).digest()
    return f"{VERSION}:{base64.b64encode(digest).decode('ascii')}"


def _packed(ip: str) -> bytes:
    """The address's network bytes, as ipaddress gives them (ValueError when it is none).

    inet_pton when the text is the address's canonical form (what the flow
    table writes), so both agree by construction; ipaddress otherwise
    (scoped, odd or invalid forms).  ipaddress alone was 2 us of the 5 an ID cost.
    """
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        packed = socket.inet_pton(family, ip)
        if socket.inet_ntop(family, packed) == ip:
            return packed
    except (OSError, ValueError):  # ValueError: an embedded NUL
        pass
    return ipaddress.ip_address(ip).packed


def for_row(row: dict) -> str:
    """The Community ID of a connections.csv row (or any mapping with the endpoint fields).

    Through the cache the event batches use: a connection's events and its
    row ask for the same ID, mostly within a few thousand connections."""
    return _kept(row.get("client_ip", ""), row.get("client_port", 0) or 0,
                 row.get("server_ip", ""), row.get("server_port", 0) or 0)


# Connections whose IDs are kept between batches: a connection's events
# span many batches, its row asks again when it ends (up to CLOSE_LINGER
# later: thousands of connections on a busy service), and an ID costs ~5 us.
# api 2 M: 4,096 missed 34 k of 42 k rows; 16,384 (~3 MB) computes each of
# its 13.6 k 4-tuples once.
_KEPT_IDS = 16384
# A 4-tuple as one int64: (client address, server address) numbered below
# 2**31 together, then two 16-bit ports.
_PORT_BITS = 16


@functools.lru_cache(maxsize=_KEPT_IDS)
def _kept(src_ip: str, src_port: int, dst_ip: str, dst_port: int) -> str:
    return community_id(src_ip, src_port, dst_ip, dst_port)


def _filled(values: pa.Array, empty) -> pa.Array:
    """`values` with `empty` for nulls (the engines give none: then no copy and no call)."""
    return pc.fill_null(values, empty) if values.null_count else values


def column(client_ip: pa.Array, client_port: pa.Array, server_ip: pa.Array, server_port: pa.Array) -> pa.Array:
    """Community IDs of a batch's events, one hash per distinct 4-tuple.

    Each address column is dictionary-encoded and the 4-tuple packed into
    one int64 (address numbers, then the ports), so Arrow finds the distinct
    ones by hashing integers and Python sees each distinct one once.  Joining
    the four columns as text first cost ~4x as much (0.12 us an event).
    """
    if len(client_ip) == 0:
        return pa.array([], pa.string())
    cips, sips = (pc.dictionary_encode(_filled(ips, "")) for ips in (client_ip, server_ip))
    # A port counts by its low 16 bits (community_id masks it), so masking
    # here changes no ID.
    mask = (1 << _PORT_BITS) - 1
    cports, sports = (_filled(ports, 0).to_numpy(zero_copy_only=False).astype(np.int64, copy=False) & mask
                      for ports in (client_port, server_port))
    servers = len(sips.dictionary)
    pairs = cips.indices.to_numpy().astype(np.int64) * servers + sips.indices.to_numpy()
    if len(cips.dictionary) * servers >> 31:
        pairs = pc.dictionary_encode(pa.array(pairs)).indices.to_numpy().astype(np.int64)  # fewer than rows
    tuples = pc.dictionary_encode(pa.array((pairs << (2 * _PORT_BITS)) | (cports << _PORT_BITS) | sports))
    # Any row of a 4-tuple names it (the last one numpy writes).
    where = np.zeros(len(tuples.dictionary), dtype=np.int64)
    where[tuples.indices.to_numpy()] = np.arange(len(pairs))
    client_names, server_names = cips.dictionary.to_pylist(), sips.dictionary.to_pylist()
    hashes = [_kept(client_names[c], p, server_names[s], q) for c, p, s, q in zip(
        cips.indices.to_numpy()[where].tolist(), cports[where].tolist(),
        sips.indices.to_numpy()[where].tolist(), sports[where].tolist())]
    return pa.array(hashes, pa.string()).take(tuples.indices)
