# Link, IP and TCP headers: one captured packet in, one TCP segment tuple (or
# None) out.  This is the hot path (every packet of every capture), so it is
# plain Python on bytes: indexing and precompiled struct unpacks, no objects
# per packet beyond the output tuple and the slices it holds.  (scapy's full
# dissection is ~70x slower.)
#
#   Decoder().decode(linktype, data, ts) ->
#       (src, dst, sport, dport, seq, ack, flags, payload, seglen) | None
#
# src/dst are the innermost IP addresses as raw bytes (4 or 16); `seglen` is
# the TCP payload length the IP header claims, which exceeds len(payload)
# when the snaplen cut the packet (the reassembler treats the rest as a gap).
# Ethernet padding and trailers (FCS) are cut by the IP length.
#
# Accounting: every packet that gives no segment adds one to
# `Decoder.skipped[reason]` with a stable lower-case reason ("udp", "arp",
# "truncated-ip-header", "unsupported-linktype-147", ...); `Decoder.decoded`
# counts the segments.  So sum(skipped.values()) + decoded == packets fed,
# with IP fragments counted once: "ipv4-fragment-held" while kept (or once
# their datagram is delivered by its last fragment), moved to
# "ipv4-fragment-expired" / "-evicted" / "-incomplete" (see finish()) when
# their datagram is dropped (ipfrag.py).
#
# Never raises on packet bytes: malformed input is a skip reason.  As a last
# line of defence an IndexError/struct.error is counted as "decode-error"
# (the tests fuzz every link type and require that count to stay zero: a
# nonzero count is a bug to fix, not a packet property).
#
# Covered: Ethernet (VLAN 802.1Q/802.1ad/QinQ at any depth, PPPoE session,
# MPLS, 802.3 + LLC/SNAP), Linux SLL/SLL2, raw IP, BSD null/loop, PPP and
# Cisco HDLC, 802.11 (plain, radiotap, PPI) data frames; IPv4 (options,
# fragments), IPv6 (extension headers, fragments), tunnels IP-in-IP,
# IPv6-in-IPv4, GRE (incl. PPTP's enhanced GRE, ERSPAN), and over UDP:
# VXLAN (4789, Linux's 8472, and on any port when its header is exact),
# Geneve (6081), GTP-U (2152), GRE-in-UDP (4754), Teredo (3544), AYIYA
# (5072); Linux NFLOG (linktype 239, `tcpdump -i nflog:N`).
# Limits (XX): 802.11 fragments and A-MSDUs, MPLS pseudowires, L2TP are
# counted as skips, not decoded; a tunnel on a port other than its own is
# found only for VXLAN.
from __future__ import annotations

import functools
import socket
import struct
from collections import Counter

from analyzer.decode.ipfrag import IPV4_TIMEOUT, IPV6_TIMEOUT, FragmentTable

FIN, SYN, RST, PSH, ACK, URG, ECE, CWR = 1, 2, 4, 8, 16, 32, 64, 128

# Tunnels inside tunnels: real deployments stack 2-3 (GRE in IPsec-less
# MPLS in VLAN...); 8 is generous and stops a crafted loop early.
MAX_ENCAPSULATION_DEPTH = 8
# IPv6 extension headers in one packet: RFC 8200 sets no bound; Linux's
# default limit on options is 8 (net.ipv6.max_*_opts_cnt); 16 headers is
# far beyond anything real.
MAX_IPV6_EXTENSION_HEADERS = 16

# Link types (tcpdump.org/linktypes.html).
LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_PPP = 9
LINKTYPE_RAW_12 = 12        # DLT_RAW on most BSDs
LINKTYPE_RAW_14 = 14        # DLT_RAW on OpenBSD
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51     # PPPoE session header, no Ethernet
LINKTYPE_RAW = 101
LINKTYPE_C_HDLC = 104
LINKTYPE_IEEE802_11 = 105
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IEEE802_11_RADIOTAP = 127
LINKTYPE_PPI = 192
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_NFLOG = 239
LINKTYPE_LINUX_SLL2 = 276

VLAN_TPIDS = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))

# Address families of the BSD null/loop header: AF_INET is 2 everywhere,
# AF_INET6 is 24 (NetBSD, OpenBSD), 28 (FreeBSD), 30 (macOS).
_AF_INET = 2
_AF_INET6 = frozenset((24, 28, 30))

# Non-IP payloads get their own stable reason; anything else is
# "other-ethertype-0xNNNN" / "other-ip-proto-N".
ETHERTYPE_NAMES = {
    0x0806: "arp", 0x8035: "rarp", 0x8137: "ipx", 0x8138: "ipx",
    0x88CC: "lldp", 0x888E: "eapol", 0x8863: "pppoe-discovery",
    0x88E5: "macsec", 0x8809: "slow-protocols", 0x88F7: "ptp",
    0x9000: "ethernet-loopback", 0x0842: "wake-on-lan", 0x8906: "fcoe",
    0x8914: "fcoe-init", 0x893A: "ieee1905", 0x890D: "802.11-tdls",
    0x88C7: "rsn-preauth", 0x809B: "appletalk", 0x80F3: "aarp",
    0x6003: "decnet", 0x88E1: "homeplug", 0x8874: "broadcom-tag",
    0x22F3: "trill", 0x88A4: "ethercat", 0x8892: "profinet",
    0x88B5: "local-experimental", 0x88B6: "local-experimental",
    0x8808: "ethernet-flow-control", 0x88BA: "iec61850-sv",
    0x88B8: "goose", 0x8902: "cfm", 0x894F: "nsh", 0x22EA: "srp",
    0x88E7: "pbb", 0x88D9: "lltd", 0x9003: "ethernet-loopback",
}
IP_PROTO_NAMES = {
    1: "icmp", 2: "igmp", 17: "udp", 58: "icmpv6", 50: "esp",
    59: "ipv6-no-next-header", 89: "ospf", 103: "pim", 112: "vrrp",
    132: "sctp", 136: "udplite", 115: "l2tp", 33: "dccp", 88: "eigrp",
    46: "rsvp", 8: "egp", 9: "igp", 124: "isis", 94: "ipip-ka9q",
    108: "ipcomp", 97: "etherip", 113: "pgm", 255: "reserved",
}

_IP4 = struct.Struct("!2xHHHxB2x4s4s").unpack_from   # tot, id, frag, proto, src, dst
_TCP = struct.Struct("!HHIIBB").unpack_from          # ports, seq, ack, offset, flags
_ETH_IP4_TCP = struct.Struct("!2xHHHxB2x4s4sHHIIBB").unpack_from

# Without the wire length, IP lengths are trusted up to their 16-bit maximum
# (IPv6 jumbograms aside, which use the captured length anyway).
_UNKNOWN_CUT = 1 << 32

_VXLAN_PORT = 4789   # IANA; also what tshark dissects by default
# UDP ports of the tunnels decoded (IANA, except Linux's pre-IANA VXLAN 8472).
_VXLAN_PORTS = frozenset((4789, 8472))
_GENEVE_PORT = 6081
_GTPU_PORT = 2152
_GRE_UDP_PORT = 4754
_TEREDO_PORT = 3544
_AYIYA_PORT = 5072
_TUNNEL_PORTS = _VXLAN_PORTS | {_GENEVE_PORT, _GTPU_PORT, _GRE_UDP_PORT, _TEREDO_PORT, _AYIYA_PORT}
# NFLOG (linux/netfilter/nfnetlink_log.h): TLV type of the packet itself.
_NFULA_PAYLOAD = 9


@functools.lru_cache(maxsize=4096)
def addr_to_str(b: bytes) -> str:
    """Dotted IPv4, RFC 5952 IPv6 (as tshark prints them), else hex.

    Cached: a connection asks for its two addresses several times (its
    events' endpoints, its ID, its row) and a capture's hosts repeat."""
    if len(b) == 4:
        return socket.inet_ntop(socket.AF_INET, b)
    if len(b) == 16:
        return socket.inet_ntop(socket.AF_INET6, b)
    return b.hex()


class Decoder:
    """Stateful only for IP fragments; one per capture run."""

    def __init__(self) -> None:
        self.skipped: Counter = Counter()
        self.decoded = 0
        self._cut = _UNKNOWN_CUT   # bytes of this packet on the wire but not captured
        self._frag4 = FragmentTable(self.skipped, "ipv4", IPV4_TIMEOUT)
        self._frag6 = FragmentTable(self.skipped, "ipv6", IPV6_TIMEOUT)
        self._links = {
            LINKTYPE_NULL: self._null,
            LINKTYPE_LOOP: self._loop,
            LINKTYPE_LINUX_SLL: self._sll,
            LINKTYPE_LINUX_SLL2: self._sll2,
            LINKTYPE_RAW: self._raw,
            LINKTYPE_RAW_12: self._raw,
            LINKTYPE_RAW_14: self._raw,
            LINKTYPE_IPV4: self._raw4,
            LINKTYPE_IPV6: self._raw6,
            LINKTYPE_IEEE802_11: self._wlan_plain,
            LINKTYPE_IEEE802_11_RADIOTAP: self._radiotap,
            LINKTYPE_PPI: self._ppi,
            LINKTYPE_PPP: self._ppp_link,
            LINKTYPE_PPP_HDLC: self._ppp_link,
            LINKTYPE_PPP_ETHER: self._ppp_ether,
            LINKTYPE_C_HDLC: self._chdlc,
            LINKTYPE_NFLOG: self._nflog,
        }

    # -- public ----------------------------------------------------------

    def decode(self, linktype: int, data: bytes, ts: float, wirelen: int | None = None):
        """The TCP segment in `data`, or None (and a reason counted).

        `wirelen` (the record's original length), when given, bounds IP
        lengths that claim more than was on the wire, as Wireshark does;
        without it a bogus IP length makes `seglen` too large.
        """
        if wirelen is None:
            self._cut = _UNKNOWN_CUT
        else:
            cut = wirelen - len(data)
            self._cut = cut if cut > 0 else 0
        try:
            if linktype == 1:
                # Fast path, Ethernet + IPv4 without options or fragmentation
                # + TCP: one unpack for both headers.  Anything unusual falls
                # through to the general path, which gives the same answer
                # here (a property test checks it).
                if len(data) >= 54 and data[12] == 8 and data[13] == 0 and data[14] == 0x45:
                    (tot, _id, frag, proto, src, dst,
                     sport, dport, seq, ack, doff, flags) = _ETH_IP4_TCP(data, 14)
                    if proto == 6 and tot >= 40 and doff >= 0x50 and not frag & 0x3FFF:
                        n = len(data)
                        end = 14 + tot
                        if end > n and end > n + self._cut:
                            end = n + self._cut
                        p = 34 + ((doff >> 4) << 2)
                        if p <= end and p <= n:
                            self.decoded += 1
                            return (src, dst, sport, dport, seq, ack, flags,
                                    data[p:end if end < n else n], end - p)
                if len(data) < 14:
                    self.skipped["truncated-ethernet"] += 1
                    return None
                et = (data[12] << 8) | data[13]
                if et == 0x0800:
                    return self._ip4(data, 14, ts, 0)
                return self._ethertype(et, data, 14, ts, 0)
            link = self._links.get(linktype)
            if link is None:
                self.skipped[f"unsupported-linktype-{linktype}"] += 1
                return None
            return link(data, ts)
        except (IndexError, struct.error):
            self.skipped["decode-error"] += 1
            return None

    def finish(self) -> None:
        """End of input: datagrams still waiting for fragments are dropped."""
        self._frag4.flush()
        self._frag6.flush()

    @property
    def pending_fragments(self) -> int:
        return len(self._frag4) + len(self._frag6)

    # -- helpers ---------------------------------------------------------

    def _skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        return None

    # -- link layers -----------------------------------------------------

    def _ethernet(self, data: bytes, off: int, ts: float, depth: int):
        if len(data) - off < 14:
            return self._skip("truncated-ethernet")
        et = (data[off + 12] << 8) | data[off + 13]
        return self._ethertype(et, data, off + 14, ts, depth)

    def _ethertype(self, et: int, data: bytes, off: int, ts: float, depth: int):
        # A loop, not recursion: VLAN tags and LLC/SNAP headers announcing
        # another 802.3 length can be stacked as deep as the frame allows,
        # and each costs 4-8 bytes (a 64 KiB frame holds thousands).
        while True:
            while et in VLAN_TPIDS:
                if len(data) - off < 4:
                    return self._skip("truncated-vlan")
                et = (data[off + 2] << 8) | data[off + 3]
                off += 4
            if et > 1500:
                break
            # 802.3 length field: an 802.2 LLC header follows.
            got = self._llc(data, off)
            if got.__class__ is str:
                return self._skip(got)
            et, off = got
        if et == 0x0800:
            return self._ip4(data, off, ts, depth)
        if et == 0x86DD:
            return self._ip6(data, off, ts, depth)
        if et == 0x8864:
            return self._pppoe(data, off, ts, depth)
        if et == 0x8847 or et == 0x8848:
            return self._mpls(data, off, ts, depth)
        if et == 0x6558:     # transparent Ethernet bridging (GRE, VXLAN-like)
            if depth >= MAX_ENCAPSULATION_DEPTH:
                return self._skip("encapsulation-too-deep")
            return self._ethernet(data, off, ts, depth + 1)
        name = ETHERTYPE_NAMES.get(et)
        return self._skip(name or f"other-ethertype-0x{et:04x}")

    @staticmethod
    def _llc(data: bytes, off: int):
        """An 802.2 LLC header at `off`: (ethertype, offset after it) for
        SNAP with an Ethernet OUI, else the skip reason (a str)."""
        if len(data) - off < 3:
            return "truncated-llc"
        dsap = data[off]
        ssap = data[off + 1]
        if dsap == 0xAA and ssap == 0xAA and data[off + 2] == 0x03:
            if len(data) - off < 8:
                return "truncated-llc"
            oui = data[off + 3:off + 6]
            if oui != b"\x00\x00\x00" and oui != b"\x00\x00\xf8":
                return "llc-snap-other-oui"
            return (data[off + 6] << 8) | data[off + 7], off + 8
        if dsap == 0xFF and ssap == 0xFF:
            return "ipx"     # "raw 802.3" Novell framing
        if dsap == 0xE0:
            return "ipx"
        if dsap == 0x42:
            return "stp"
        if dsap == 0xFE:
            return "osi"
        return "llc"

    def _llc_frame(self, data: bytes, off: int, ts: float, depth: int):
        """A frame whose link layer is an LLC header (802.11, SLL protocol 4)."""
        got = self._llc(data, off)
        if got.__class__ is str:
            return self._skip(got)
        return self._ethertype(got[0], data, got[1], ts, depth)

    def _pppoe(self, data: bytes, off: int, ts: float, depth: int):
        if len(data) - off < 8:
            return self._skip("truncated-pppoe")
        return self._ppp(data, off + 6, ts, depth)

    def _ppp(self, data: bytes, off: int, ts: float, depth: int):
        """PPP protocol field (1 byte when compressed, RFC 1661 6.5)."""
        if len(data) - off < 1:
            return self._skip("truncated-ppp")
        proto = data[off]
        if proto & 1:
            off += 1
        else:
            if len(data) - off < 2:
                return self._skip("truncated-ppp")
            proto = (proto << 8) | data[off + 1]
            off += 2
        if proto == 0x0021:
            return self._ip4(data, off, ts, depth)
        if proto == 0x0057:
            return self._ip6(data, off, ts, depth)
        return self._skip(f"ppp-proto-0x{proto:04x}")

    def _ppp_link(self, data: bytes, ts: float):
        # DLT_PPP / PPP in HDLC framing: optional FF 03 address/control.
        off = 2 if data[:2] == b"\xff\x03" else 0
        return self._ppp(data, off, ts, 0)

    def _ppp_ether(self, data: bytes, ts: float):
        return self._pppoe(data, 0, ts, 0)

    def _chdlc(self, data: bytes, ts: float):
        if len(data) < 4:
            return self._skip("truncated-chdlc")
        return self._ethertype((data[2] << 8) | data[3], data, 4, ts, 0)

    def _mpls(self, data: bytes, off: int, ts: float, depth: int):
        n = len(data)
        while True:
            if n - off < 4:
                return self._skip("truncated-mpls")
            bottom = data[off + 2] & 1
            off += 4
            if bottom:
                break
        if n - off < 1:
            return self._skip("truncated-mpls")
        version = data[off] >> 4
        if version == 4:
            return self._ip4(data, off, ts, depth)
        if version == 6:
            return self._ip6(data, off, ts, depth)
        return self._skip("mpls-non-ip")

    def _sll(self, data: bytes, ts: float):
        if len(data) < 16:
            return self._skip("truncated-sll")
        return self._sll_payload((data[2] << 8) | data[3],
                                 (data[14] << 8) | data[15], data, 16, ts)

    def _sll2(self, data: bytes, ts: float):
        if len(data) < 20:
            return self._skip("truncated-sll")
        return self._sll_payload((data[8] << 8) | data[9],
                                 (data[0] << 8) | data[1], data, 20, ts)

    def _sll_payload(self, hatype: int, proto: int, data: bytes, off: int, ts: float):
        # linux/if_arp.h and linux/if_ether.h: the protocol field is an
        # Ethernet type except for these hardware types / pseudo-protocols.
        if hatype == 824:
            return self._skip("netlink")
        if proto == 0x0004:
            return self._llc_frame(data, off, ts, 0)
        if proto == 0x0001:
            return self._skip("ipx")
        if proto == 0x000C or proto == 0x000D:
            return self._skip("can")
        return self._ethertype(proto, data, off, ts, 0)

    def _raw(self, data: bytes, ts: float):
        if not data:
            return self._skip("truncated-ip-header")
        version = data[0] >> 4
        if version == 4:
            return self._ip4(data, 0, ts, 0)
        if version == 6:
            return self._ip6(data, 0, ts, 0)
        return self._skip("bad-ip-version")

    def _raw4(self, data: bytes, ts: float):
        return self._ip4(data, 0, ts, 0)

    def _raw6(self, data: bytes, ts: float):
        return self._ip6(data, 0, ts, 0)

    def _null(self, data: bytes, ts: float):
        # The family is in the capturing host's byte order: whichever order
        # gives a small number is the right one.
        if len(data) < 4:
            return self._skip("truncated-null")
        af = int.from_bytes(data[:4], "little")
        if af > 0xFFFF:
            af = int.from_bytes(data[:4], "big")
        return self._family(af, data, ts)

    def _loop(self, data: bytes, ts: float):
        if len(data) < 4:
            return self._skip("truncated-null")
        return self._family(int.from_bytes(data[:4], "big"), data, ts)

    def _family(self, af: int, data: bytes, ts: float):
        if af == _AF_INET:
            return self._ip4(data, 4, ts, 0)
        if af in _AF_INET6:
            return self._ip6(data, 4, ts, 0)
        if af > 0xFFFF:      # garbage: keep the reason names bounded
            return self._skip("bad-null-family")
        return self._skip(f"null-family-{af}")

    # -- 802.11 ------------------------------------------------------------

    def _radiotap(self, data: bytes, ts: float):
        n = len(data)
        if n < 8:
            return self._skip("truncated-radiotap")
        if data[0] != 0:
            return self._skip("bad-radiotap-version")
        rlen = data[2] | (data[3] << 8)
        if rlen < 8 or rlen > n:
            return self._skip("truncated-radiotap")
        present = int.from_bytes(data[4:8], "little")
        flags = 0
        if present & 0x2:
            # Fields start after the last present word (bit 31 = another
            # word follows) and are aligned to their natural size relative
            # to the start of the header; TSFT (bit 0, 8 bytes) is the only
            # field that can precede Flags (bit 1, 1 byte).
            p = 4
            word = present
            while word & 0x80000000:
                p += 4
                if p + 4 > rlen:
                    return self._skip("truncated-radiotap")
                word = int.from_bytes(data[p:p + 4], "little")
            p += 4
            if present & 0x1:
                p = ((p + 7) & ~7) + 8
            if p >= rlen:
                return self._skip("truncated-radiotap")
            flags = data[p]
        if flags & 0x10:            # frame includes the FCS
            if n - rlen < 4:
                return self._skip("truncated-802.11")
            data = data[:n - 4]
        return self._wlan(data, rlen, ts, flags & 0x20)

    def _wlan_plain(self, data: bytes, ts: float):
        return self._wlan(data, 0, ts, 0)

    def _ppi(self, data: bytes, ts: float):
        if len(data) < 8:
            return self._skip("truncated-ppi")
        plen = data[2] | (data[3] << 8)
        dlt = int.from_bytes(data[4:8], "little")
        if plen < 8 or plen > len(data):
            return self._skip("truncated-ppi")
        if dlt == LINKTYPE_IEEE802_11:
            return self._wlan(data, plen, ts, 0)
        if dlt == LINKTYPE_ETHERNET:
            return self._ethernet(data, plen, ts, 0)
        return self._skip(f"unsupported-ppi-linktype-{dlt}")

    def _wlan(self, data: bytes, off: int, ts: float, datapad: int):
        n = len(data)
        if n - off < 2:
            return self._skip("truncated-802.11")
        fc0 = data[off]
        fc1 = data[off + 1]
        if fc0 & 3:
            return self._skip("bad-802.11-version")
        if (fc0 >> 2) & 3 != 2:
            return self._skip("802.11-non-data")
        subtype = fc0 >> 4
        if subtype & 4:
            return self._skip("802.11-null-data")     # no frame body
        hl = 30 if fc1 & 3 == 3 else 24               # ToDS+FromDS: 4 addresses
        qos = subtype & 8
        if qos:
            hl += 2
            if fc1 & 0x80:                            # +HT Control
                hl += 4
        if datapad:
            hl = (hl + 3) & ~3
        if n - off < hl:
            return self._skip("truncated-802.11")
        if fc1 & 0x40:
            return self._skip("802.11-protected")
        if fc1 & 0x04 or data[off + 22] & 0x0F:       # more-fragments, fragment number
            return self._skip("802.11-fragment")
        if qos and data[off + (30 if fc1 & 3 == 3 else 24)] & 0x80:
            return self._skip("802.11-amsdu")         # QoS control: A-MSDU present
        p = off + hl
        if n - p < 8:
            return self._skip("truncated-llc")
        return self._llc_frame(data, p, ts, 0)

    # -- IP ----------------------------------------------------------------

    def _ip4(self, data: bytes, off: int, ts: float, depth: int):
        n = len(data)
        if n - off < 20:
            return self._skip("truncated-ip-header")
        vihl = data[off]
        if vihl >> 4 != 4:
            return self._skip("bad-ip-version")
        ihl = (vihl & 15) << 2
        if ihl < 20:
            return self._skip("bad-ip-header-length")
        if n - off < ihl:
            return self._skip("truncated-ip-header")
        tot, ident, frag, proto, src, dst = _IP4(data, off)
        if tot == 0:
            end = n          # TCP segmentation offload: length left to the NIC
        elif tot < ihl:
            return self._skip("bad-ip-total-length")
        else:
            end = off + tot
            if end > n and end > n + self._cut:
                end = n + self._cut    # the IP length lies: trust the wire length
        start = off + ihl
        if frag & 0x3FFF:    # more-fragments set or offset nonzero
            if end > n:
                return self._skip("ipv4-fragment-truncated")
            got = self._frag4.add((src, dst, ident, proto), (frag & 0x1FFF) << 3,
                                  frag & 0x2000, data[start:end], ts)
            if got.__class__ is str:
                return self._skip(got)
            data = got[0]
            start = 0
            n = end = len(data)
        if proto == 6:
            # Inlined _tcp: this is the path nearly every packet takes.
            avail = n if end > n else end
            if avail - start < 20:
                return self._skip("truncated-tcp-header")
            sport, dport, seq, ack, doff, flags = _TCP(data, start)
            p = start + ((doff >> 4) << 2)
            if p > avail or doff < 0x50:
                if doff < 0x50 or p > end:
                    return self._skip("bad-tcp-header-length")
                return self._skip("truncated-tcp-header")
            self.decoded += 1
            return (src, dst, sport, dport, seq, ack, flags, data[p:avail], end - p)
        return self._transport(proto, src, dst, data, start, end, ts, depth)

    def _ip6(self, data: bytes, off: int, ts: float, depth: int):
        n = len(data)
        if n - off < 40:
            return self._skip("truncated-ip-header")
        if data[off] >> 4 != 6:
            return self._skip("bad-ip-version")
        plen = (data[off + 4] << 8) | data[off + 5]
        nh = data[off + 6]
        src = data[off + 8:off + 24]
        dst = data[off + 24:off + 40]
        p = off + 40
        # Payload length 0: a jumbogram (RFC 2675) or segmentation offload;
        # either way the capture length is all we have.
        end = p + plen if plen else n
        if end > n and end > n + self._cut:
            end = n + self._cut        # the IP length lies: trust the wire length
        for _ in range(MAX_IPV6_EXTENSION_HEADERS):
            if nh == 6:
                return self._tcp(src, dst, data, p, end)
            if nh == 0 or nh == 43 or nh == 60 or nh == 135 or nh == 139 or nh == 140 \
                    or nh == 253 or nh == 254:
                # Hop-by-hop, routing, destination options, mobility, HIP,
                # shim6, experiments: RFC 6564 uniform format.
                if min(n, end) - p < 8:
                    return self._skip("truncated-ipv6-extension-header")
                nh, p = data[p], p + ((data[p + 1] + 1) << 3)
                continue
            if nh == 51:     # AH: length in 4-byte units minus 2 (RFC 4302)
                if min(n, end) - p < 8:
                    return self._skip("truncated-ipv6-extension-header")
                nh, p = data[p], p + ((data[p + 1] + 2) << 2)
                continue
            if nh == 44:
                if min(n, end) - p < 8:
                    return self._skip("truncated-ipv6-extension-header")
                inner = data[p]
                fo = (data[p + 2] << 8) | data[p + 3]
                ident = data[p + 4:p + 8]
                p += 8
                offset = fo & 0xFFF8
                more = fo & 1
                if offset == 0 and not more:    # atomic fragment (RFC 6946)
                    nh = inner
                    continue
                if end > n or p > end:
                    return self._skip("ipv6-fragment-truncated")
                got = self._frag6.add((src, dst, ident), offset, more,
                                      data[p:end], ts, inner)
                if got.__class__ is str:
                    return self._skip(got)
                data, nh = got
                n = end = len(data)
                p = 0
                continue
            return self._transport(nh, src, dst, data, p, end, ts, depth)
        return self._skip("too-many-ipv6-extension-headers")

    def _transport(self, proto: int, src: bytes, dst: bytes, data: bytes,
                   start: int, end: int, ts: float, depth: int):
        # IPsec AH headers (RFC 4302) can be chained as long as the datagram
        # allows (a 64 KiB datagram holds 5,000 of them): a loop, not recursion.
        while proto == 51:
            if min(len(data), end) - start < 8:
                return self._skip("truncated-ah")
            proto, start = data[start], start + ((data[start + 1] + 2) << 2)
        if proto == 6:
            return self._tcp(src, dst, data, start, end)
        if proto == 17:
            return self._udp(data, start, end, ts, depth)
        if proto == 4 or proto == 41 or proto == 47:
            if depth >= MAX_ENCAPSULATION_DEPTH:
                return self._skip("encapsulation-too-deep")
            if proto == 4:
                return self._ip4(data, start, ts, depth + 1)
            if proto == 41:
                return self._ip6(data, start, ts, depth + 1)
            return self._gre(data, start, end, ts, depth + 1)
        name = IP_PROTO_NAMES.get(proto)
        return self._skip(name or f"other-ip-proto-{proto}")

    def _tcp(self, src: bytes, dst: bytes, data: bytes, start: int, end: int):
        n = len(data)
        avail = n if end > n else end
        if avail - start < 20:
            return self._skip("truncated-tcp-header")
        sport, dport, seq, ack, doff, flags = _TCP(data, start)
        p = start + ((doff >> 4) << 2)
        if p > avail or doff < 0x50:
            if doff < 0x50 or p > end:
                return self._skip("bad-tcp-header-length")
            return self._skip("truncated-tcp-header")
        self.decoded += 1
        return (src, dst, sport, dport, seq, ack, flags, data[p:avail], end - p)

    def _udp(self, data: bytes, start: int, end: int, ts: float, depth: int):
        avail = min(len(data), end)
        if avail - start < 8:
            return self._skip("udp")
        sport = (data[start] << 8) | data[start + 1]
        dport = (data[start + 2] << 8) | data[start + 3]
        p = start + 8
        port = dport if dport in _TUNNEL_PORTS else sport if sport in _TUNNEL_PORTS else 0
        if port == 0:
            # VXLAN behind ERSPAN or on a port of its own choosing: only an
            # exact header (RFC 7348: flags 0x08, reserved bytes zero) with
            # an IP or VLAN frame inside.
            if avail - p >= 22 and data[p] == 0x08 and data[p + 1:p + 4] == b"\0\0\0" and data[p + 7] == 0 \
                    and data[p + 20:p + 22] in (b"\x08\x00", b"\x86\xdd", b"\x81\x00"):
                port = _VXLAN_PORT
            else:
                return self._skip("udp")
        if depth >= MAX_ENCAPSULATION_DEPTH:
            return self._skip("encapsulation-too-deep")
        depth += 1
        if port in _VXLAN_PORTS or port == _VXLAN_PORT:
            if avail - p < 8 or not data[p] & 0x08:
                return self._skip("vxlan-malformed")
            return self._ethernet(data, p + 8, ts, depth)
        if port == _GENEVE_PORT:
            # RFC 8926 section 3.4: Ver(2) OptLen(6) O C Rsvd(6) Protocol(16) VNI(24) Rsvd(8), options.
            if avail - p < 8 or data[p] >> 6:
                return self._skip("geneve-malformed")
            proto = (data[p + 2] << 8) | data[p + 3]
            return self._ethertype(proto, data, p + 8 + ((data[p] & 0x3F) << 2), ts, depth)
        if port == _GTPU_PORT:
            return self._gtpu(data, p, avail, ts, depth)
        if port == _GRE_UDP_PORT:
            return self._gre(data, p, end, ts, depth)          # RFC 8086
        if port == _TEREDO_PORT:
            return self._teredo(data, p, avail, ts, depth)
        return self._ayiya(data, p, avail, ts, depth)

    def _gtpu(self, data: bytes, p: int, avail: int, ts: float, depth: int):
        """3GPP TS 29.281 section 5: a G-PDU carries one user IP packet."""
        if avail - p < 8:
            return self._skip("truncated-gtp-u")
        flags, mtype = data[p], data[p + 1]
        if flags >> 5 != 1 or not flags & 0x10:
            return self._skip("gtp-u-malformed")
        if mtype != 0xFF:
            return self._skip("gtp-u-signalling")   # echo, error indication, end marker
        q = p + 8
        if flags & 0x07:                             # E, S or PN: 4 more bytes
            if avail - q < 4:
                return self._skip("truncated-gtp-u")
            nxt = data[q + 3]
            q += 4
            hops = 0
            while flags & 0x04 and nxt:              # extension headers, each length x 4 bytes
                if avail - q < 4 or hops >= MAX_ENCAPSULATION_DEPTH:
                    return self._skip("truncated-gtp-u")
                length = data[q] << 2
                if length == 0 or avail - q < length:
                    return self._skip("gtp-u-malformed")
                nxt = data[q + length - 1]
                q += length
                hops += 1
        return self._ip_any(data, q, ts, depth, "gtp-u-non-ip")

    def _teredo(self, data: bytes, p: int, avail: int, ts: float, depth: int):
        """RFC 4380 section 5.1.1: IPv6 in UDP, after optional authentication
        (0x0001) and origin indication (0x0000) headers."""
        if avail - p >= 4 and data[p] == 0 and data[p + 1] == 1:      # authentication
            p += 13 + data[p + 2] + data[p + 3]
        if avail - p >= 8 and data[p] == 0 and data[p + 1] == 0:      # origin indication
            p += 8
        if avail - p < 40 or data[p] >> 4 != 6:
            return self._skip("teredo-non-ipv6")    # bubbles and qualification packets
        return self._ip6(data, p, ts, depth)

    def _ayiya(self, data: bytes, p: int, avail: int, ts: float, depth: int):
        """AYIYA (draft-massar-v6ops-ayiya): a header of 8 bytes + identity +
        signature, then the packet its next-header field names."""
        if avail - p < 8:
            return self._skip("truncated-ayiya")
        q = p + 8 + (1 << (data[p] >> 4)) + ((data[p + 1] >> 4) << 2)
        nh = data[p + 3]
        if nh == 41:
            return self._ip6(data, q, ts, depth)
        if nh == 4:
            return self._ip4(data, q, ts, depth)
        return self._skip("ayiya-non-ip")

    def _ip_any(self, data: bytes, p: int, ts: float, depth: int, reason: str):
        if len(data) - p < 1:
            return self._skip(reason)
        version = data[p] >> 4
        if version == 4:
            return self._ip4(data, p, ts, depth)
        if version == 6:
            return self._ip6(data, p, ts, depth)
        return self._skip(reason)

    def _nflog(self, data: bytes, ts: float):
        """Linux NFLOG: family, version, resource id, then TLVs (length and
        type in host byte order, little-endian on every host we meet; padded
        to 4 bytes) of which NFULA_PAYLOAD is the IP packet."""
        n = len(data)
        if n < 4:
            return self._skip("truncated-nflog")
        p = 4
        while n - p >= 4:
            length = data[p] | (data[p + 1] << 8)
            kind = (data[p + 2] | (data[p + 3] << 8)) & 0x7FFF
            if length < 4:
                return self._skip("nflog-malformed")
            if kind == _NFULA_PAYLOAD:
                body = data[p + 4:p + length]
                return self._ip_any(body, 0, ts, 0, "nflog-non-ip")
            p += (length + 3) & ~3
        return self._skip("nflog-no-payload")

    def _gre(self, data: bytes, start: int, end: int, ts: float, depth: int):
        avail = min(len(data), end)
        if avail - start < 4:
            return self._skip("truncated-gre")
        flags = (data[start] << 8) | data[start + 1]
        proto = (data[start + 2] << 8) | data[start + 3]
        version = flags & 7
        p = start + 4
        if version == 0:                       # RFC 2784 / 2890 (and 1701)
            if flags & 0x4000:
                return self._skip("gre-source-routing")
            if flags & 0x8000:
                p += 4                         # checksum + reserved
            if flags & 0x2000:
                p += 4                         # key
            if flags & 0x1000:
                p += 4                         # sequence number
        elif version == 1:                     # RFC 2637 enhanced GRE (PPTP)
            p += 4                             # key: payload length + call id
            if flags & 0x1000:
                p += 4
            if flags & 0x0080:
                p += 4                         # acknowledgment number
            if proto != 0x880B:
                return self._skip(f"gre-proto-0x{proto:04x}")
            if p >= avail:
                return self._skip("gre-no-payload")   # a bare acknowledgment
            if data[p:p + 2] == b"\xff\x03":
                p += 2
            return self._ppp(data, p, ts, depth)
        else:
            return self._skip("gre-bad-version")
        if p > avail:
            return self._skip("truncated-gre")
        if proto == 0x88BE:                    # ERSPAN II (I when no sequence)
            if flags & 0x1000:
                p += 8
            return self._ethernet(data, p, ts, depth)
        if proto == 0x22EB:                    # ERSPAN III
            if avail - p < 12:
                return self._skip("truncated-gre")
            p += 20 if data[p + 11] & 1 else 12   # optional platform subheader
            return self._ethernet(data, p, ts, depth)
        return self._ethertype(proto, data, p, ts, depth)
