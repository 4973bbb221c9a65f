# Community ID (Corelight community-id-spec v1, seed 0) on events and
# connections: the spec's published vector, direction independence, and
# agreement with Wireshark's own implementation (tshark's `communityid`
# post-dissector) on every event of IPv4 and IPv6 sample captures.
from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analyzer.community_id import community_id

SAMPLES = Path(__file__).resolve().parents[1] / "samples" / "captures"
TSHARK = shutil.which("tshark")


def test_published_vector():
    # community-id-spec README, also Suricata's EVE documentation example
    assert community_id("128.232.110.120", 34855, "66.35.250.204", 80) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="
    assert community_id("66.35.250.204", 80, "128.232.110.120", 34855) == "1:LQU9qZlK+B5F3KDmev6m5PMibrg="


def test_not_an_address_gives_nothing():
    assert community_id("", 0, "10.0.0.1", 80) == ""
    assert community_id("10.0.0.1", 1, "::1", 80) == ""


@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535))
def test_both_directions_hash_alike(a, b, pa, pb):
    one = community_id(str(a), pa, str(b), pb)
    assert one == community_id(str(b), pb, str(a), pa)
    assert one.startswith("1:") and len(one) == 2 + 28


@given(st.one_of(st.ip_addresses().map(str), st.ip_addresses(v=6).map(lambda a: a.exploded),
                 st.text(alphabet="0123456789abcdef:.%x", max_size=24), st.text(max_size=8)))
def test_address_bytes_are_ipaddress_ones(text):
    # The fast parse (inet_pton on canonical forms) must accept, refuse and
    # pack exactly as ipaddress does, on odd forms and garbage too.
    import ipaddress

    from analyzer.community_id import _packed

    try:
        expected = ipaddress.ip_address(text).packed
    except ValueError:
        expected = None
    try:
        got = _packed(text)
    except ValueError:
        got = None
    assert got == expected


_ENDPOINT = st.tuples(st.one_of(st.ip_addresses().map(str), st.sampled_from(["", "not-an-ip"])), st.integers(0, 65535))


@given(st.lists(st.tuples(_ENDPOINT, _ENDPOINT), min_size=0, max_size=30).flatmap(
    lambda pairs: st.lists(st.sampled_from(pairs), max_size=60) if pairs else st.just([])))
def test_batch_column_is_the_per_row_hash(rows):
    # The batch column hashes each distinct 4-tuple once: every row must
    # still get its own endpoints' ID, in order, repeats and odd ones included.
    import pyarrow as pa

    from analyzer.community_id import column

    got = column(pa.array([r[0][0] for r in rows], pa.string()), pa.array([r[0][1] for r in rows], pa.int64()),
                 pa.array([r[1][0] for r in rows], pa.string()), pa.array([r[1][1] for r in rows], pa.int64()))
    assert got.to_pylist() == [community_id(c[0], c[1], s[0], s[1]) for c, s in rows]


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.skipif(TSHARK is None, reason="tshark not installed")
@pytest.mark.parametrize("name", ["http_nginx_codes.pcap", "ftp_pyftpdlib_ipv6.pcap", "ws_closes.pcap"])
def test_agrees_with_wireshark_on_every_event_and_connection(tmp_path, name):
    from analyzer.engines.native import run

    capture = SAMPLES / name
    run([str(capture)], tmp_path, lang="en")
    events = rows(tmp_path / "events.csv")
    proc = subprocess.run([TSHARK, "-r", str(capture), "--enable-protocol", "communityid", "-T", "fields",
                           "-e", "frame.number", "-e", "communityid"], capture_output=True, text=True, timeout=120)
    theirs = dict(line.split("\t") for line in proc.stdout.splitlines() if "\t" in line)
    assert events and all(e["community_id"] == theirs[e["frame"]] for e in events)
    conns = rows(tmp_path / "connections.csv")
    ids = {e["connection"]: e["community_id"] for e in events}
    assert conns and all(c["community_id"] == ids[c["connection"]] for c in conns if c["connection"] in ids)
