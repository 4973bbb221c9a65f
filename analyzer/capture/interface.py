# Packets from a network interface, as they pass (Linux only).
#
#   with LiveSource("lo", "tcp port 8080") as src:
#       for ts, linktype, data, wirelen in src.read_ready():
#           ...
#       src.fileno()          # select() on it to wait for the next packets
#       src.kernel_stats()    # (received by the filter, dropped by the kernel)
#
# Strategy: scapy opens the AF_PACKET socket (L2ListenSocket: bound to one
# interface, BPF filter compiled by libpcap and attached in the kernel, so
# filtered-out packets never reach Python, promiscuous mode on request).
# Packets are then read here with recvmsg_into on that socket into one
# preallocated buffer: scapy never dissects a packet, and each packet costs
# one system call and one copy of its bytes.  The output is the tuple the file
# readers yield, so the same decode -> reassembly -> dissectors path follows.
#
# What the kernel tells us, and what we do with it (as libpcap does):
#   * Loopback: a packet socket sees every packet on a loopback device twice,
#     as PACKET_OUTGOING when sent and PACKET_HOST when received (the device
#     sends to itself).  The outgoing copy is dropped and counted in
#     `duplicates`.  On other devices the outgoing copy is the only copy of
#     what this host sends, so it is kept.
#   * Timestamps: the kernel's receive time (SO_TIMESTAMPNS ancillary data).
#   * VLAN tags the NIC stripped (PACKET_AUXDATA) are put back into the frame,
#     and the original length comes from the same auxdata.
#   * Drops: PACKET_STATISTICS is read-and-reset by the kernel, so it is
#     accumulated here; the kernel counts both copies of a loopback packet.
#
# Errors (raised by the constructor, before any packet is read):
#   UsageError        unknown interface (message lists the real ones), a BPF
#                     expression libpcap cannot compile (its message), an
#                     interface whose link layer we do not decode
#   PermissionDenied  no CAP_NET_RAW (message says how to grant it)
#   MissingTool       libpcap is not installed (it compiles the filter)
# Reading raises InputError when the interface goes away mid-capture.
#
# Limits: one interface at a time (no "any": it mixes link layers); packets
# longer than SNAPLEN are cut (wirelen keeps their length); throughput is
# that of one system call per packet (see the soak figures in the README),
# well below an mmap ring's.
from __future__ import annotations

import os
import socket
import struct
import time

from analyzer.errors import InputError, MissingTool, PermissionDenied, UsageError

# tcpdump's default snapshot length (MAXIMUM_SNAPLEN in tcpdump/netdissect.h);
# the loopback MTU is 65536, so nothing real on lo is cut.
SNAPLEN = 262144
# Socket receive buffer.  scapy asks for 64 KiB, which overflows in a few
# milliseconds of loopback traffic; libpcap's default buffer is 2 MiB, we ask
# for more because Python drains the socket slower than libpcap does.
RCVBUF_BYTES = 16 * 1024 * 1024
# Packets returned by one read_ready() call: the caller checks its clock and
# its stop flag between batches.
BATCH_PACKETS = 512

SOL_PACKET = 263             # <linux/socket.h>
PACKET_AUXDATA = 8           # <linux/if_packet.h>
PACKET_STATISTICS = 6
PACKET_OUTGOING = 4          # sll_pkttype of a packet this host sent
SO_TIMESTAMPNS = 35          # <asm-generic/socket.h>; SCM_TIMESTAMPNS is the same number
SO_RCVBUFFORCE = 33          # root may exceed net.core.rmem_max
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100
# struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
_AUXDATA = struct.Struct("=IIIHHHH")
_TIMESPEC = struct.Struct("=qq")
_STATS = struct.Struct("=II")  # struct tpacket_stats: tp_packets, tp_drops
_ANCILLARY_BYTES = socket.CMSG_SPACE(_AUXDATA.size) + socket.CMSG_SPACE(_TIMESPEC.size) + 64

ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
# Device type (/sys/class/net/X/type, ARPHRD_*) -> (pcap LINKTYPE of the
# frames a raw packet socket returns, libpcap DLT to compile the filter for,
# name).  Loopback frames carry an Ethernet header with zero addresses.
LINK_LAYERS = {
    ARPHRD_ETHER: (1, 1, "Ethernet"),
    ARPHRD_LOOPBACK: (1, 1, "Ethernet (loopback)"),
    768: (101, 12, "raw IP (IP-in-IP tunnel)"),     # ARPHRD_TUNNEL
    769: (101, 12, "raw IP (IPv6 tunnel)"),         # ARPHRD_TUNNEL6
    776: (101, 12, "raw IP (SIT tunnel)"),          # ARPHRD_SIT
    65534: (101, 12, "raw IP"),                     # ARPHRD_NONE: tun, wireguard
}

PRIVILEGE_HINT = ("live capture needs root or CAP_NET_RAW: run as root or "
                  "`setcap cap_net_raw,cap_net_admin+eip $(readlink -f $(which python3))`")


def interfaces() -> list[dict]:
    """The host's network interfaces: index, name, link layer, state, MTU."""
    out = []
    try:
        pairs = socket.if_nameindex()
    except OSError:
        pairs = []
    for index, name in sorted(pairs):
        base = f"/sys/class/net/{name}"
        hatype = _read_int(f"{base}/type")
        flags = _read_int(f"{base}/flags", 16) or 0
        layer = LINK_LAYERS.get(hatype)
        out.append({
            "index": index, "name": name, "type": hatype,
            "link": layer[2] if layer else f"unsupported (ARPHRD {hatype})",
            "supported": layer is not None,
            # carrier, not IFF_RUNNING: containers' lo and veth often leave RUNNING unset.
            "up": bool(flags & 0x1), "carrier": _read_int(f"{base}/carrier") == 1, "loopback": bool(flags & 0x8),
            "mtu": _read_int(f"{base}/mtu"),
        })
    return out


def _read_int(path: str, base: int = 10) -> int | None:
    try:
        with open(path) as fh:
            return int(fh.read().strip(), base)
    except (OSError, ValueError):
        return None


def link_layer(iface: str) -> tuple[int, int, str]:
    """(linktype, dlt, name) for `iface`; UsageError when unknown or not decodable."""
    names = [i["name"] for i in interfaces()]
    if iface not in names:
        raise UsageError(f"no such interface: {iface!r}; interfaces here: {', '.join(names) or 'none'} "
                         f"(see `analyzer live --list-interfaces`)")
    hatype = _read_int(f"/sys/class/net/{iface}/type")
    layer = LINK_LAYERS.get(hatype)
    if layer is None:
        raise UsageError(f"interface {iface!r} has a link layer we do not decode (ARPHRD {hatype}); "
                         f"capture on an Ethernet, loopback or tunnel interface")
    return layer


def check_filter(expression: str, dlt: int) -> None:
    """Compile `expression` with libpcap for link type `dlt`; UsageError with its message."""
    try:
        from scapy.arch.common import compile_filter
        from scapy.error import Scapy_Exception
    except ImportError as exc:  # pragma: no cover - scapy is a dependency
        raise MissingTool(f"scapy is needed for live capture ({exc})") from None
    try:
        compile_filter(expression, linktype=dlt)
    except ImportError:
        raise MissingTool("compiling a capture filter needs libpcap "
                          "(Debian/Ubuntu: apt install libpcap0.8)") from None
    except Scapy_Exception as exc:
        raise UsageError(f"invalid capture filter: {_pcap_message(exc, expression)}") from None


def _pcap_message(exc: Exception, expression: str) -> str:
    # scapy says "Failed to compile filter expression 'X' (libpcap's words)";
    # the expression is shown once, then libpcap's own explanation.
    text = str(exc)
    start, end = text.rfind("("), text.rfind(")")
    detail = text[start + 1:end] if 0 <= start < end else text
    return f"{expression!r}: {detail}"


class LiveSource:
    """An open capture on one interface; see the module comment."""

    def __init__(self, iface: str, bpf: str | None = None, *, promisc: bool = True) -> None:
        self.iface = iface
        self.filter = bpf or ""
        self.linktype, dlt, self.link_name = link_layer(iface)
        if bpf:
            check_filter(bpf, dlt)
        self.duplicates = 0        # loopback PACKET_OUTGOING copies dropped
        self.packets = 0           # packets returned
        self.truncated = 0         # packets longer than SNAPLEN
        self._kernel = [0, 0]      # accumulated tp_packets, tp_drops
        self._scapy = self._open(promisc)
        self._sock: socket.socket = self._scapy.ins
        self._buf = bytearray(SNAPLEN)
        self._bufs = [memoryview(self._buf)]
        self._fd = self._sock.fileno()
        self.kernel_stats()  # start counting from now (the open itself saw nothing of ours)

    def _open(self, promisc: bool):
        try:
            from scapy.arch.linux import L2ListenSocket
            from scapy.error import Scapy_Exception
        except ImportError as exc:  # pragma: no cover - scapy is a dependency
            raise MissingTool(f"scapy is needed for live capture ({exc})") from None
        try:
            sock = L2ListenSocket(iface=self.iface, filter=self.filter or None, promisc=promisc)
        except PermissionError:
            raise PermissionDenied(PRIVILEGE_HINT) from None
        except Scapy_Exception as exc:
            raise UsageError(f"invalid capture filter: {_pcap_message(exc, self.filter)}") from None
        except OSError as exc:
            if exc.errno in (1, 13):  # EPERM, EACCES
                raise PermissionDenied(PRIVILEGE_HINT) from None
            raise InputError(f"cannot capture on {self.iface}: {exc.strerror or exc}") from None
        try:
            sock.ins.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF_BYTES)
        except OSError:
            sock.ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF_BYTES)
        return sock

    def fileno(self) -> int:
        return self._fd

    def read_ready(self, limit: int = BATCH_PACKETS) -> list[tuple[float, int, bytes, int]]:
        """Packets already received (at most `limit`), without waiting."""
        out = []
        recv = self._sock.recvmsg_into
        bufs, buf, linktype = self._bufs, self._buf, self.linktype
        dontwait = socket.MSG_DONTWAIT
        while len(out) < limit:
            try:
                n, ancillary, _flags, addr = recv(bufs, _ANCILLARY_BYTES, dontwait)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                raise InputError(f"capture on {self.iface} stopped: {exc.strerror or exc}") from None
            if addr[2] == PACKET_OUTGOING and addr[3] == ARPHRD_LOOPBACK:
                self.duplicates += 1
                continue
            ts = None
            wirelen = n
            data = bytes(buf[:n])
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(payload)
                    ts = sec + nsec / 1e9
                elif level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= _AUXDATA.size:
                    status, wirelen, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(payload)
                    if status & TP_STATUS_VLAN_VALID and linktype == 1 and n >= 12:
                        tag = struct.pack("!HH", tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q, tci)
                        data = data[:12] + tag + data[12:]
                        wirelen += 4
            if wirelen > n:
                self.truncated += 1
            out.append((time.time() if ts is None else ts, linktype, data, max(wirelen, len(data))))
        self.packets += len(out)
        return out

    def kernel_stats(self) -> tuple[int, int]:
        """(packets that passed the filter, packets the kernel dropped) since the open."""
        try:
            raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _STATS.size)
        except OSError:
            return tuple(self._kernel)
        got, dropped = _STATS.unpack(raw)
        self._kernel[0] += got
        self._kernel[1] += dropped
        return tuple(self._kernel)

    def close(self) -> None:
        scapy_sock, self._scapy = getattr(self, "_scapy", None), None
        if scapy_sock is not None:
            scapy_sock.close()

    def __enter__(self) -> "LiveSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PcapWriter:
    """Classic pcap (µs timestamps) written as packets come, for `-w FILE`.

    The file is readable up to the last flush() at any time; a run that is
    killed leaves at most a cut last record, which our reader reports as a
    damaged capture after every good packet.
    """

    def __init__(self, path: str | os.PathLike, linktype: int, snaplen: int = SNAPLEN) -> None:
        try:
            self._fh = open(path, "wb")
        except OSError as exc:
            raise InputError(f"{path}: cannot write ({exc.strerror or exc})") from None
        self.path = path
        self.packets = 0
        # pcap-savefile(5): magic, version 2.4, thiszone, sigfigs, snaplen, network
        self._fh.write(struct.pack("=IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype))
        self._record = struct.Struct("=IIII").pack

    def write(self, ts: float, data: bytes, wirelen: int) -> None:
        sec = int(ts)
        usec = int(round((ts - sec) * 1_000_000))
        if usec >= 1_000_000:
            sec, usec = sec + 1, usec - 1_000_000
        self._fh.write(self._record(sec, usec, len(data), wirelen))
        self._fh.write(data)
        self.packets += 1

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
