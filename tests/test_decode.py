# Decoder tests: every link type and encapsulation built with scapy (test
# side only), fragments, IPv6 extension headers, the skip accounting, and
# fuzzing of every link type (never raises, never hits the "decode-error"
# safety net).
from __future__ import annotations

import struct
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.all import (
    ARP, GRE, ICMP, IP, LLC, SNAP, TCP, UDP, Dot1AD, Dot1Q, Dot11, Ether,
    IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, IPv6ExtHdrRouting,
    IPOption_RR, Loopback, PPPoE, PPP, RadioTap, Raw, fragment, fragment6, raw,
)
from scapy.contrib.erspan import ERSPAN_II
from scapy.contrib.mpls import MPLS
from scapy.layers.inet6 import ICMPv6EchoRequest
from scapy.layers.ipsec import AH, ESP
from scapy.layers.l2 import CookedLinux, CookedLinuxV2
from scapy.layers.vxlan import VXLAN

from analyzer.decode.packets import ACK, FIN, PSH, SYN, Decoder, addr_to_str
from analyzer.errors import CaptureError
from analyzer.decode.ipfrag import PIECE_OVERHEAD, FragmentTable
from analyzer.capture import open_capture

CORPUS = Path(__file__).resolve().parents[1].parent / "shared" / "corpus"

A4, B4 = "10.1.2.3", "192.168.200.9"
A6, B6 = "2001:db8::1", "fe80::abcd"
SEG = TCP(sport=40000, dport=80, seq=0xFFFFFFF0, ack=7, flags="PA") / Raw(b"GET / HTTP/1.1\r\n\r\n")
PAYLOAD = b"GET / HTTP/1.1\r\n\r\n"
TCP4 = IP(src=A4, dst=B4) / SEG
TCP6 = IPv6(src=A6, dst=B6) / SEG


def E(**kw):
    """Ethernet with fixed MACs: scapy would otherwise resolve them (ARP/ND, 1 s)."""
    return Ether(dst="02:00:00:00:00:01", src="02:00:00:00:00:02", **kw)


def decode(linktype, pkt, ts=1.0, dec=None, wirelen=None):
    dec = dec or Decoder()
    data = pkt if isinstance(pkt, bytes) else raw(pkt)
    return dec.decode(linktype, data, ts, wirelen), dec


def assert_segment(got, v6=False, payload=PAYLOAD, seglen=None):
    seg, dec = got
    assert seg is not None, dict(dec.skipped)
    src, dst, sport, dport, seq, ack, flags, data, slen = seg
    assert (addr_to_str(src), addr_to_str(dst)) == ((A6, B6) if v6 else (A4, B4))
    assert (sport, dport, seq, ack, flags) == (40000, 80, 0xFFFFFFF0, 7, PSH | ACK)
    assert data == payload
    assert slen == (len(payload) if seglen is None else seglen)
    assert dec.decoded == 1 and not dec.skipped


def assert_skipped(got, reason):
    seg, dec = got
    assert seg is None
    assert dec.skipped == Counter({reason: 1}) and dec.decoded == 0


# -- Ethernet and friends --------------------------------------------------------

def test_ethernet_ipv4_tcp_fields():
    assert_segment(decode(1, E() / TCP4))


def test_ethernet_ipv6():
    assert_segment(decode(1, E() / TCP6), v6=True)


def test_ethernet_padding_is_trimmed_by_ip_length():
    pkt = raw(E() / IP(src=A4, dst=B4) / TCP(sport=40000, dport=80, seq=0xFFFFFFF0,
                                                 ack=7, flags="PA") / Raw(b"hi"))
    assert len(pkt) < 60
    assert_segment(decode(1, pkt + b"\x00" * (60 - len(pkt)) + b"FCS!"), payload=b"hi")


def test_snaplen_cut_keeps_claimed_length():
    pkt = raw(E() / TCP4)
    assert_segment(decode(1, pkt[:-5]), payload=PAYLOAD[:-5], seglen=len(PAYLOAD))


def test_ip_length_beyond_wire_length_is_bounded_by_wirelen():
    pkt = bytearray(raw(E() / TCP4))
    struct.pack_into("!H", pkt, 16, 9000)                 # IP total length lies
    assert_segment(decode(1, bytes(pkt), wirelen=len(pkt)))
    assert_segment(decode(1, bytes(pkt)), seglen=9000 - 40)


def test_tso_zero_total_length_uses_captured_length():
    pkt = bytearray(raw(E() / TCP4))
    struct.pack_into("!H", pkt, 16, 0)
    assert_segment(decode(1, bytes(pkt)))


def test_ipv4_options_and_tcp_options():
    pkt = E() / IP(src=A4, dst=B4, options=[IPOption_RR(routers=["1.1.1.1"])]) / \
        TCP(sport=40000, dport=80, seq=0xFFFFFFF0, ack=7, flags="PA",
            options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1, 2))]) / Raw(PAYLOAD)
    assert_segment(decode(1, pkt))


@pytest.mark.parametrize("tags", [
    [Dot1Q(vlan=0)],
    [Dot1Q(vlan=10)],
    [Dot1AD(vlan=100), Dot1Q(vlan=10)],
    [Dot1AD(vlan=1), Dot1Q(vlan=2), Dot1Q(vlan=3)],
])
def test_vlan_tags_any_depth(tags):
    pkt = E()
    for tag in tags:
        pkt = pkt / tag
    assert_segment(decode(1, pkt / TCP4))


def test_vlan_9100_tpid():
    pkt = raw(E(type=0x9100) / Dot1Q(vlan=5) / TCP4)
    assert_segment(decode(1, pkt))


@pytest.mark.parametrize("inner, proto, v6", [(TCP4, 0x0021, False), (TCP6, 0x0057, True)])
def test_pppoe_session(inner, proto, v6):
    pkt = E() / PPPoE(sessionid=7) / PPP(proto=proto) / inner
    assert_segment(decode(1, pkt), v6=v6)


def test_pppoe_non_ip():
    pkt = E() / PPPoE(sessionid=7) / PPP(proto=0xC021) / Raw(b"\x01\x01\x00\x04")
    assert_skipped(decode(1, pkt), "ppp-proto-0xc021")


@pytest.mark.parametrize("inner, v6", [(TCP4, False), (TCP6, True)])
def test_mpls_label_stack(inner, v6):
    pkt = E(type=0x8847) / MPLS(label=16, s=0) / MPLS(label=17, s=1) / inner
    assert_segment(decode(1, pkt), v6=v6)


def test_802_3_llc_snap():
    pkt = Ether(dst="01:02:03:04:05:06", type=len(raw(TCP4)) + 8) / LLC() / SNAP(code=0x0800) / TCP4
    assert_segment(decode(1, pkt))


@pytest.mark.parametrize("pkt, reason", [
    (E() / ARP(), "arp"),
    (E() / IP(src=A4, dst=B4) / UDP() / Raw(b"x"), "udp"),
    (E() / IP(src=A4, dst=B4) / ICMP(), "icmp"),
    (E() / IPv6(src=A6, dst=B6) / ICMPv6EchoRequest(), "icmpv6"),
    (E(type=0x88CC) / Raw(b"\x02\x07"), "lldp"),
    (E(type=0x8137) / Raw(b"\xff\xff"), "ipx"),
    (E(type=0x1234) / Raw(b"??"), "other-ethertype-0x1234"),
    (E() / IP(src=A4, dst=B4, proto=253) / Raw(b"x"), "other-ip-proto-253"),
    (E() / IP(src=A4, dst=B4) / ESP(spi=1), "esp"),
    (E() / IPv6(src=A6, dst=B6, nh=59), "ipv6-no-next-header"),
    (E() / IPv6(src=A6, dst=B6) / ESP(spi=1), "esp"),
    (Ether(dst="01:80:c2:00:00:00", type=38) / LLC(dsap=0x42, ssap=0x42), "stp"),
    (b"\x00" * 10, "truncated-ethernet"),
    (raw(E() / TCP4)[:30], "truncated-ip-header"),
    (raw(E() / TCP4)[:40], "truncated-tcp-header"),
    (raw(E() / TCP6)[:50], "truncated-ip-header"),
    (raw(E(type=0x0800) / IPv6()), "bad-ip-version"),
])
def test_non_tcp_reasons(pkt, reason):
    assert_skipped(decode(1, pkt), reason)


def test_bad_tcp_data_offset():
    assert_skipped(decode(1, E() / IP(src=A4, dst=B4) / TCP(dataofs=3)), "bad-tcp-header-length")
    assert_skipped(decode(1, E() / IP(src=A4, dst=B4) / TCP(dataofs=15)), "bad-tcp-header-length")


def test_bad_ip_header_length():
    pkt = bytearray(raw(E() / TCP4))
    pkt[14] = 0x43
    assert_skipped(decode(1, bytes(pkt)), "bad-ip-header-length")


def test_tcp_flags_byte():
    for flags, want in (("S", SYN), ("SA", SYN | ACK), ("FA", FIN | ACK), ("R", 4),
                        ("UEC", 32 | 64 | 128)):
        seg, _ = decode(1, E() / IP() / TCP(flags=flags))
        assert seg[6] == want


def test_sequence_numbers_are_unsigned_32_bit():
    seg, _ = decode(1, E() / IP() / TCP(seq=0xFFFFFFFF, ack=0x80000000))
    assert (seg[4], seg[5]) == (0xFFFFFFFF, 0x80000000)


# -- other link types ----------------------------------------------------------

def test_linux_sll_and_sll2():
    assert_segment(decode(113, CookedLinux(proto=0x0800) / TCP4))
    assert_segment(decode(113, CookedLinux(proto=0x86DD) / TCP6), v6=True)
    assert_segment(decode(276, CookedLinuxV2(proto=0x0800) / TCP4))
    assert_segment(decode(276, CookedLinuxV2(proto=0x8100) / Dot1Q() / TCP4))
    assert_skipped(decode(113, CookedLinux(lladdrtype=824, proto=0) / Raw(b"nl")), "netlink")


@pytest.mark.parametrize("linktype", [12, 14, 101])
def test_raw_ip_either_version(linktype):
    assert_segment(decode(linktype, TCP4))
    assert_segment(decode(linktype, TCP6), v6=True)


def test_raw_ipv4_and_ipv6_only_types():
    assert_segment(decode(228, TCP4))
    assert_segment(decode(229, TCP6), v6=True)
    assert_skipped(decode(228, TCP6), "bad-ip-version")
    assert_skipped(decode(229, TCP4), "bad-ip-version")


@pytest.mark.parametrize("af", [2, 24, 28, 30])
@pytest.mark.parametrize("order", ["little", "big"])
def test_bsd_null_either_byte_order(af, order):
    inner = TCP4 if af == 2 else TCP6
    assert_segment(decode(0, af.to_bytes(4, order) + raw(inner)), v6=af != 2)


def test_bsd_loop_network_order_and_unknown_family():
    assert_segment(decode(108, (2).to_bytes(4, "big") + raw(TCP4)))
    assert_skipped(decode(0, (7).to_bytes(4, "little") + raw(TCP4)), "null-family-7")
    assert_segment(decode(0, raw(Loopback(type=2) / TCP4)))


def test_ppp_and_cisco_hdlc():
    assert_segment(decode(9, b"\xff\x03\x00\x21" + raw(TCP4)))
    assert_segment(decode(50, b"\x00\x57" + raw(TCP6)), v6=True)
    assert_segment(decode(104, b"\x0f\x00\x08\x00" + raw(TCP4)))


def test_unsupported_linktype():
    assert_skipped(decode(147, raw(TCP4)), "unsupported-linktype-147")


# -- 802.11 --------------------------------------------------------------------

LLC_SNAP_IP = b"\xaa\xaa\x03\x00\x00\x00\x08\x00"


def wlan(subtype=0, fcflags=0, qos=None, htc=False):
    pkt = Dot11(type=2, subtype=subtype, FCfield=fcflags, addr1="00:00:00:00:00:01",
                addr2="00:00:00:00:00:02", addr3="00:00:00:00:00:03",
                addr4="00:00:00:00:00:04" if fcflags & 3 == 3 else None)
    out = raw(pkt)
    if fcflags & 3 != 3:
        out = out[:24]
    if qos is not None:
        out += bytes([qos, 0])
    if htc:
        out += b"\x00\x00\x00\x00"
    return out


def test_plain_80211_data_frame():
    assert_segment(decode(105, wlan() + LLC_SNAP_IP + raw(TCP4)))


@pytest.mark.parametrize("fcflags", [0x01, 0x02, 0x03])
def test_80211_to_from_ds_and_qos(fcflags):
    assert_segment(decode(105, wlan(8, fcflags, qos=0) + LLC_SNAP_IP + raw(TCP4)))


def test_80211_qos_with_ht_control():
    assert_segment(decode(105, wlan(8, 0x01 | 0x80, qos=0, htc=True) + LLC_SNAP_IP + raw(TCP4)))


def test_radiotap_with_fcs_flag():
    rt = raw(RadioTap(present="TSFT+Flags+Rate", Flags="FCS", Rate=2, mac_timestamp=5))
    pkt = rt + wlan(8, 0x02, qos=0) + LLC_SNAP_IP + raw(TCP4) + b"\xde\xad\xbe\xef"
    seg, dec = decode(127, pkt)
    assert_segment((seg, dec))
    # TSO-style IP length 0: only the radiotap flag can cut the FCS.
    cut = bytearray(pkt)
    at = len(rt) + 26 + 8 + 2
    cut[at:at + 2] = b"\x00\x00"
    assert_segment(decode(127, bytes(cut)))


def test_radiotap_extended_present_words_and_datapad():
    # present word 0: TSFT + Flags + Ext; word 1: nothing; TSFT aligned to 8.
    hdr = struct.pack("<BBHII", 0, 0, 0, 0x80000003, 0)
    hdr += b"\x00" * (-len(hdr) % 8) + struct.pack("<Q", 1) + bytes([0x10 | 0x20])
    hdr = hdr + b"\x00" * (-len(hdr) % 4)
    hdr = hdr[:2] + struct.pack("<H", len(hdr)) + hdr[4:]
    body = wlan(8, 0x01, qos=0) + b"\x00\x00" + LLC_SNAP_IP + raw(TCP4)   # pad 26 -> 28
    assert_segment(decode(127, hdr + body + b"FCS!"))


@pytest.mark.parametrize("frame, reason", [
    (raw(Dot11(type=0, subtype=8)) + b"\x00" * 12, "802.11-non-data"),
    (raw(Dot11(type=1, subtype=13)), "802.11-non-data"),
    (wlan(4), "802.11-null-data"),
    (wlan(12, qos=0), "802.11-null-data"),
    (wlan(0, 0x41) + b"\x00" * 40, "802.11-protected"),
    (wlan(0, 0x04) + LLC_SNAP_IP + raw(TCP4), "802.11-fragment"),
    (wlan(8, 0x01, qos=0x80) + LLC_SNAP_IP + raw(TCP4), "802.11-amsdu"),
    (wlan(0)[:20], "truncated-802.11"),
])
def test_80211_skips(frame, reason):
    assert_skipped(decode(105, frame), reason)
    assert_skipped(decode(127, raw(RadioTap()) + frame), reason)


def test_ppi_80211():
    body = wlan() + LLC_SNAP_IP + raw(TCP4)
    assert_segment(decode(192, struct.pack("<BBHI", 0, 0, 8, 105) + body))


# -- tunnels -------------------------------------------------------------------

@pytest.mark.parametrize("outer", [
    IP(src="1.1.1.1", dst="2.2.2.2") / TCP4,
    IP(src="1.1.1.1", dst="2.2.2.2") / TCP6,
    IPv6(src="::1", dst="::2") / TCP4,
    IP(src="1.1.1.1", dst="2.2.2.2") / GRE() / TCP4,
    IP(src="1.1.1.1", dst="2.2.2.2") / GRE(chksum_present=1, key_present=1, key=9,
                                          seqnum_present=1, sequence_number=3) / TCP4,
    IP(src="1.1.1.1", dst="2.2.2.2") / GRE(proto=0x86DD) / TCP6,
    IP(src="1.1.1.1", dst="2.2.2.2") / GRE(proto=0x6558) / E() / TCP4,
    IP(src="1.1.1.1", dst="2.2.2.2") / GRE(seqnum_present=1) / ERSPAN_II() / E() / TCP4,
    IP(src="1.1.1.1", dst="2.2.2.2") / UDP(sport=5555, dport=4789) / VXLAN(vni=3) / E() / TCP4,
    IP(src="1.1.1.1", dst="2.2.2.2") / GRE() / IP(src="3.3.3.3", dst="4.4.4.4") / GRE() / TCP4,
])
def test_tunnels_reach_innermost_tcp(outer):
    v6 = IPv6 in outer and outer[IPv6].src == A6
    assert_segment(decode(1, E() / outer), v6=v6)


def test_pptp_enhanced_gre():
    gre = struct.pack("!HHHH", 0x3001, 0x880B, 0, 1) + struct.pack("!I", 5)   # key + seq
    pkt = raw(IP(src="1.1.1.1", dst="2.2.2.2", proto=47)) + gre + b"\xff\x03\x00\x21" + raw(TCP4)
    pkt = bytearray(pkt)
    struct.pack_into("!H", pkt, 2, len(pkt))
    assert_segment(decode(101, bytes(pkt)))


def test_ah_then_tcp():
    assert_segment(decode(1, E() / IP(src=A4, dst=B4) / AH(nh=6, payloadlen=4, icv=b"\x00" * 12) / SEG))
    assert_segment(decode(1, E() / IPv6(src=A6, dst=B6) / AH(nh=6, payloadlen=4, icv=b"\x00" * 12) / SEG),
                   v6=True)


def test_encapsulation_depth_is_bounded():
    pkt = TCP4
    for _ in range(12):
        pkt = IP(src="1.1.1.1", dst="2.2.2.2") / pkt
    assert_skipped(decode(101, pkt), "encapsulation-too-deep")


# -- IPv6 extension headers ------------------------------------------------------

def test_ipv6_extension_header_chain():
    mobility = bytes([6, 0, 0, 0, 0, 0, 0, 0])    # generic: next header TCP, length 0
    pkt = raw(IPv6(src=A6, dst=B6, nh=0) / IPv6ExtHdrHopByHop(nh=43) /
              IPv6ExtHdrRouting(nh=60) / IPv6ExtHdrDestOpt(nh=135)) + mobility + raw(SEG)
    pkt = bytearray(pkt)
    struct.pack_into("!H", pkt, 4, len(pkt) - 40)
    assert_segment(decode(229, bytes(pkt)), v6=True)


def test_ipv6_atomic_fragment():
    assert_segment(decode(229, IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=1, m=0, offset=0) / SEG), v6=True)


def test_ipv6_too_many_extension_headers():
    pkt = IPv6(src=A6, dst=B6)
    for _ in range(20):
        pkt = pkt / IPv6ExtHdrDestOpt()
    assert_skipped(decode(229, pkt / SEG), "too-many-ipv6-extension-headers")


# -- fragments -------------------------------------------------------------------

BIG = IP(src=A4, dst=B4, id=77) / TCP(sport=40000, dport=80, seq=0xFFFFFFF0, ack=7, flags="PA") / \
    Raw(bytes(range(256)) * 8)
BIG6 = IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(id=99) / \
    TCP(sport=40000, dport=80, seq=0xFFFFFFF0, ack=7, flags="PA") / Raw(bytes(range(256)) * 8)


def frags4(order=None):
    parts = [raw(f) for f in fragment(BIG, fragsize=400)]
    return [parts[i] for i in order] if order else parts


def frags6(order=None):
    parts = [raw(f) for f in fragment6(BIG6, 600)]
    return [parts[i] for i in order] if order else parts


def feed(dec, linktype, packets, t0=1.0, step=0.1):
    return [dec.decode(linktype, p, t0 + i * step) for i, p in enumerate(packets)]


def check_reassembled(results, v6=False):
    segs = [r for r in results if r is not None]
    assert len(segs) == 1 and results[-1] is segs[0]
    assert segs[0][7] == bytes(range(256)) * 8 and segs[0][8] == 2048
    assert addr_to_str(segs[0][0]) == (A6 if v6 else A4)


@pytest.mark.parametrize("order", [None, [5, 4, 3, 2, 1, 0], [2, 0, 5, 1, 4, 3]])
def test_ipv4_fragments_any_order(order):
    dec = Decoder()
    packets = frags4(order)
    assert len(packets) == 6
    check_reassembled(feed(dec, 101, packets))
    assert dec.skipped == Counter({"ipv4-fragment-held": 5})
    assert dec.pending_fragments == 0


def test_ipv4_overlapping_fragments_first_wins():
    dec = Decoder()
    parts = frags4()
    evil = bytearray(parts[1])
    evil[20:] = b"X" * (len(evil) - 20)       # same offset, other bytes, sent first
    results = feed(dec, 101, [parts[0], bytes(evil), parts[1]] + parts[2:])
    seg = [r for r in results if r][0]
    assert b"X" * 100 in seg[7]
    # Duplicates are harmless too.
    dec = Decoder()
    check_reassembled(feed(dec, 101, [parts[0], parts[0]] + parts[1:]))
    assert dec.skipped["ipv4-fragment-held"] == 6


def test_fragment_table_partial_overlaps_keep_first_bytes():
    skipped = Counter()
    table = FragmentTable(skipped, "ipv4", 30.0)
    key = ("k",)
    assert table.add(key, 0, True, b"A" * 16, 0.0) == "ipv4-fragment-held"
    assert table.add(key, 32, True, b"C" * 16, 0.0) == "ipv4-fragment-held"
    assert table.add(key, 8, True, b"b" * 32, 0.0) == "ipv4-fragment-held"   # fills 16..32
    assert table.pending_bytes == 48 + 3 * PIECE_OVERHEAD                    # memory: three pieces
    payload, _ = table.add(key, 40, False, b"d" * 16, 0.0)                   # adds 48..56
    assert payload == b"A" * 16 + b"b" * 16 + b"C" * 16 + b"d" * 8
    assert table.pending_bytes == 0 and len(table) == 0


def test_fragment_table_first_last_fragment_fixes_length():
    table = FragmentTable(Counter(), "ipv6", 60.0)
    table.add(1, 8, False, b"x" * 8, 0.0)        # datagram ends at 16
    table.add(1, 8, False, b"y" * 24, 0.0)       # a longer "last" fragment: clipped
    assert table.add(1, 0, True, b"z" * 8, 0.0, info=17) == (b"z" * 8 + b"x" * 8, 17)
    assert table.add(2, 0, True, b"q" * 65536, 0.0) == "ipv6-fragment-too-big"


def test_ipv4_fragments_expire_after_timeout():
    dec = Decoder()
    parts = frags4()
    results = feed(dec, 101, parts[:3], t0=0.0) + feed(dec, 101, parts[3:], t0=100.0)
    assert not any(results)
    assert dec.skipped["ipv4-fragment-expired"] == 3
    dec.finish()
    assert dec.skipped == Counter({"ipv4-fragment-expired": 3, "ipv4-fragment-incomplete": 3})


def test_ipv4_fragment_limits_evict_oldest():
    dec = Decoder()
    dec._frag4.max_datagrams = 2
    for ident in range(5):
        dec.decode(101, raw(fragment(IP(src=A4, dst=B4, id=ident) / TCP() / Raw(b"z" * 800),
                                     fragsize=400)[0]), 1.0)
    assert dec.skipped == Counter({"ipv4-fragment-evicted": 3, "ipv4-fragment-held": 2})
    assert dec.pending_fragments == 2


def test_truncated_fragment_is_refused():
    dec = Decoder()
    assert dec.decode(101, frags4()[0][:100], 1.0) is None
    assert dec.skipped == Counter({"ipv4-fragment-truncated": 1})


@pytest.mark.parametrize("order", [None, [3, 2, 1, 0], [1, 3, 0, 2]])
def test_ipv6_fragments_any_order(order):
    dec = Decoder()
    packets = frags6(order)
    assert len(packets) == 4
    check_reassembled(feed(dec, 229, packets), v6=True)
    assert dec.skipped == Counter({"ipv6-fragment-held": 3})


def test_ipv6_fragments_expire_after_60s():
    dec = Decoder()
    parts = frags6()
    feed(dec, 229, parts[:2], t0=0.0)
    feed(dec, 229, parts[2:3], t0=59.0)
    assert dec.skipped == Counter({"ipv6-fragment-held": 3})
    assert dec.decode(229, parts[3], 61.0) is None      # too late: a new datagram
    assert dec.skipped == Counter({"ipv6-fragment-expired": 3, "ipv6-fragment-held": 1})


def test_fragmented_tunnel_payload():
    inner = IP(src="1.1.1.1", dst="2.2.2.2", id=5) / TCP4 / Raw(b"!" * 1500)
    dec = Decoder()
    results = feed(dec, 1, [raw(E() / f) for f in fragment(inner, fragsize=512)])
    assert results[-1] is not None and addr_to_str(results[-1][0]) == A4
    assert results[-1][7] == PAYLOAD + b"!" * 1500


# -- accounting and robustness -----------------------------------------------------

SAMPLES = [
    (1, raw(E() / TCP4)), (1, raw(E() / Dot1AD() / Dot1Q() / TCP6)),
    (1, raw(E() / PPPoE() / PPP(proto=0x21) / TCP4)),
    (1, raw(E(type=0x8847) / MPLS(s=1) / TCP4)),
    (1, raw(E() / IP() / GRE(key_present=1) / E() / TCP4)),
    (1, raw(E() / IP() / UDP(dport=4789) / VXLAN() / E() / TCP4)),
    (113, raw(CookedLinux(proto=0x0800) / TCP4)), (276, raw(CookedLinuxV2(proto=0x86DD) / TCP6)),
    (101, raw(TCP4)), (12, raw(TCP6)), (14, raw(TCP4)), (228, raw(TCP4)), (229, raw(TCP6)),
    (0, b"\x02\x00\x00\x00" + raw(TCP4)), (108, b"\x00\x00\x00\x1e" + raw(TCP6)),
    (105, wlan(8, 3, qos=0) + LLC_SNAP_IP + raw(TCP4)),
    (127, raw(RadioTap(present="TSFT+Flags", Flags="FCS")) + wlan() + LLC_SNAP_IP + raw(TCP4) + b"FCS!"),
    (192, struct.pack("<BBHI", 0, 0, 8, 105) + wlan() + LLC_SNAP_IP + raw(TCP4)),
    (9, b"\xff\x03\x00\x21" + raw(TCP4)), (104, b"\x0f\x00\x86\xdd" + raw(TCP6)),
    (51, raw(PPPoE() / PPP(proto=0x21) / TCP4)),
    (229, raw(IPv6() / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(m=1) / SEG)),
    (101, frags4()[0]), (101, frags4()[5]),
]
LINKTYPES = sorted({lt for lt, _ in SAMPLES} | {147})


def test_every_sample_decodes():
    for linktype, pkt in SAMPLES[:-3]:
        seg, dec = decode(linktype, pkt)
        assert seg is not None, (linktype, dict(dec.skipped))


@settings(max_examples=1500, deadline=None)
@given(linktype=st.sampled_from(LINKTYPES), data=st.binary(max_size=120))
def test_random_bytes_never_raise(linktype, data):
    dec = Decoder()
    dec.decode(linktype, data, 0.0)
    assert dec.decoded + sum(dec.skipped.values()) == 1
    assert dec.skipped["decode-error"] == 0


@settings(max_examples=1500, deadline=None)
@given(which=st.integers(0, len(SAMPLES) - 1),
       edits=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=4),
       cut=st.integers(0, 2000), ts=st.floats(-1e10, 1e10))
def test_mutated_packets_never_raise(which, edits, cut, ts):
    linktype, pkt = SAMPLES[which]
    data = bytearray(pkt)
    for pos, value in edits:
        data[pos % len(data)] = value
    data = bytes(data[:len(data) - cut % (len(data) + 1)])
    dec = Decoder()
    for _ in range(2):      # twice: a held fragment then its duplicate
        dec.decode(linktype, data, ts)
    dec.finish()
    assert dec.decoded + sum(dec.skipped.values()) == 2
    assert dec.skipped["decode-error"] == 0


ETHERNET_IPV4 = [raw(E() / TCP4), raw(E() / IP(src=A4, dst=B4) / TCP(flags="S")),
                 raw(E() / IP(src=A4, dst=B4) / TCP(options=[("MSS", 1460)]) / Raw(b"x" * 30))]


@settings(max_examples=1500, deadline=None)
@given(which=st.integers(0, len(ETHERNET_IPV4) - 1),
       edits=st.lists(st.tuples(st.integers(12, 80), st.integers(0, 255)), max_size=3),
       cut=st.integers(0, 80), pad=st.binary(max_size=8),
       wirelen=st.one_of(st.none(), st.integers(0, 200)))
def test_ethernet_fast_path_agrees_with_general_path(which, edits, cut, pad, wirelen):
    data = bytearray(ETHERNET_IPV4[which])
    for pos, value in edits:
        data[pos % len(data)] = value
    data = bytes(data[:len(data) - cut % (len(data) + 1)]) + pad
    fast, slow = Decoder(), Decoder()
    got = fast.decode(1, data, 1.0, wirelen)
    slow.decode(113, b"", 1.0, wirelen)          # sets the wire length, skips
    slow.skipped.clear()
    slow._cut = fast._cut
    want = slow._ethernet(data, 0, 1.0, 0)
    assert got == want
    assert (fast.decoded, fast.skipped) == (slow.decoded, slow.skipped)


def test_accounting_counts_every_packet():
    dec = Decoder()
    packets = SAMPLES + [(1, raw(E() / ARP())), (147, b"x"), (1, b"")]
    for linktype, pkt in packets:
        dec.decode(linktype, pkt, 1.0)
    assert dec.decoded + sum(dec.skipped.values()) == len(packets)
    dec.finish()
    assert dec.decoded + sum(dec.skipped.values()) == len(packets)
    assert dec.skipped["ipv4-fragment-incomplete"] == 2
    assert dec.skipped["ipv6-fragment-incomplete"] == 1
    assert dec.decoded == len(SAMPLES) - 3


def test_addr_to_str():
    assert addr_to_str(bytes([10, 0, 0, 1])) == "10.0.0.1"
    assert addr_to_str(bytes(15) + b"\x01") == "::1"
    assert addr_to_str(bytes.fromhex("20010db8000000000000000000000001")) == "2001:db8::1"
    assert addr_to_str(bytes(10) + b"\xff\xff\x01\x02\x03\x04") == "::ffff:1.2.3.4"


# -- the shared corpus -------------------------------------------------------------

def _corpus_files():
    return sorted((CORPUS / "captures").glob("*.pcap*")) if CORPUS.exists() else []


@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/corpus absent")
def test_corpus_decodes_with_known_link_types_only():
    files = _corpus_files()
    assert files
    for path in files:
        dec = Decoder()
        try:
            with open_capture(str(path)) as cap:
                for ts, linktype, data, wirelen in cap:
                    dec.decode(linktype, data, ts, wirelen)
        except CaptureError:
            pytest.fail(f"{path.name} reported damaged")
        # The nDPI fuzz capture is damaged on purpose: only its link type counts.
        damage = ("unsupported-linktype", "decode-error") + \
            (() if "fuzz" in path.name else ("truncated-", "bad-"))
        bad = {k: v for k, v in dec.skipped.items() if k.startswith(damage)}
        assert not bad, (path.name, bad)
        assert dec.decoded > 0, path.name


# Frames tshark shows with a TCP layer, per capture, compared frame by frame
# (addresses, ports, raw sequence number, payload length, flags byte) on
# captures covering every link type and encapsulation of the corpus.
DIFF_CAPTURES = ["lwerdna_simple_http_sll2.pcap", "ppp_pcapng_example.pcapng",
                 "zeek_vlan_qinqinq.pcap", "sv_http_ipv6_null.pcap", "ppp_raw_ip.pcap",
                 "zeek_basic_auth_rawip4.pcap", "arkime_80211_http.pcap", "zeek_ftp_ipv6.pcap",
                 "ndpi_quickplay_sll.pcap", "arkime_synthetic.pcap", "zeek_http_vlan0.pcap"]


@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/corpus absent")
@pytest.mark.parametrize("name", DIFF_CAPTURES)
def test_segments_match_tshark(name):
    import shutil
    import subprocess
    if not shutil.which("tshark"):
        pytest.skip("tshark not installed")
    path = CORPUS / "captures" / name
    if not path.exists():
        pytest.skip(f"{name} not in the corpus")
    out = subprocess.run(
        ["tshark", "-n", "-r", str(path), "-o", "tcp.relative_sequence_numbers:FALSE",
         "-Y", "tcp", "-T", "fields", "-e", "frame.number", "-e", "ip.src", "-e", "ipv6.src",
         "-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "tcp.seq", "-e", "tcp.len",
         "-e", "tcp.flags"], capture_output=True, text=True, check=True).stdout
    want = {}
    for line in out.splitlines():
        f = [field.split(",")[-1] for field in line.split("\t")]   # innermost layer
        want[int(f[0])] = (f[1] or f[2], int(f[3]), int(f[4]), int(f[5]), int(f[6]),
                           int(f[7], 16) & 0xFF)
    got = {}
    dec = Decoder()
    with open_capture(str(path)) as cap:
        for frame, (ts, linktype, data, wirelen) in enumerate(cap, 1):
            seg = dec.decode(linktype, data, ts, wirelen)
            if seg:
                got[frame] = (addr_to_str(seg[0]), seg[2], seg[3], seg[4], seg[8], seg[6])
    assert got == want
