#!/usr/bin/env python3
# Benchmark: a SYN flood against the connection table (issue 11's target: a
# capture of 1,000,000 SYNs from distinct ports finishes in under a minute,
# peak RSS under 300 MB, summary.json naming the limit that was hit).
#
# The capture is built here with struct (classic pcap, Ethernet/IPv4/TCP SYN,
# no payload) into a temporary file: distinct (source IP, source port) pairs
# over a few source IPs, one destination, 1 µs apart, so that every SYN opens
# a new connection and nothing ever times out.  The analyzer runs in a child
# process (`python -m analyzer analyze FILE -o OUT -j 1 -q`); its wall time,
# peak RSS (ru_maxrss of the child from wait4) and summary.json's limits_hit
# are printed.
#
#   python benchmarks/synflood.py [--syns 1000000] [--keep DIR]
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PORTS = range(1024, 65536)


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def write_capture(path: Path, syns: int) -> None:
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    dst = bytes([192, 0, 2, 80])
    per_ip = len(PORTS)
    with open(path, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i in range(syns):
            n, port = divmod(i, per_ip)
            src = bytes([10, (n >> 8) & 0xFF, n & 0xFF, 1])
            sport = PORTS[port]
            tcp = struct.pack("!HHIIBBHHH", sport, 80, i * 7919 & 0xFFFFFFFF, 0, 5 << 4, 0x02, 64240, 0, 0)
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), i & 0xFFFF, 0, 64, 6, 0, src, dst)
            ip = ip[:10] + struct.pack("!H", _checksum(ip)) + ip[12:]
            frame = eth + ip + tcp
            ts = 1_700_000_000_000_000 + i      # 1 µs apart
            f.write(struct.pack("<IIII", ts // 1_000_000, ts % 1_000_000, len(frame), len(frame)))
            f.write(frame)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--syns", type=int, default=1_000_000)
    ap.add_argument("--keep", help="write the capture and the output here instead of a temp dir")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep) if args.keep else Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        pcap, out = base / f"synflood_{args.syns}.pcap", base / "out"
        t0 = time.perf_counter()
        write_capture(pcap, args.syns)
        print(f"capture: {args.syns} SYNs, {pcap.stat().st_size / 1e6:.1f} MB, built in {time.perf_counter() - t0:.1f} s")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, "-m", "analyzer", "analyze", str(pcap), "-o", str(out), "-j", "1", "-q"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        print(f"exit status {code}; wall {wall:.1f} s; peak RSS {usage.ru_maxrss / 1024:.0f} MB; "
              f"CPU {usage.ru_utime + usage.ru_stime:.1f} s")
        print("limits_hit:", json.dumps(_find(summary, "limits_hit")))
        return code


def _find(obj, key):
    """A key wherever summary.json nests it."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        for v in obj.values():
            found = _find(v, key)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    sys.exit(main())
