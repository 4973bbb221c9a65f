#!/usr/bin/env python3
# Coverage-guided fuzzing of the sans-IO entry points with atheris
# (libFuzzer for Python), on demand: `pip install '.[fuzz]'`, then
#
#   python benchmarks/fuzz_atheris.py -max_total_time=300 [corpus_dir]
#
# One input drives one entry point, chosen by its first byte:
#   0  the packet decoder, any link type          -> a segment or None
#   1  the pcap / pcapng readers over the bytes   -> records, or CaptureError/InputError
#   2  each protocol's detector and dissector, the rest split into
#      deliveries, gaps and ends by the input     -> events
#   3  the zstd frame walker                      -> never raises
# The invariant (h11's): the documented result or the documented error;
# any other exception is a finding, and libFuzzer saves the input that
# raised it (crash-*) for `python benchmarks/fuzz_atheris.py crash-...`.
# Memory and time are bounded per input by libFuzzer's -rss_limit_mb and
# -timeout (defaults set below: 300 MB, 10 s).
from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

try:
    import atheris
except ImportError:  # an optional tool
    sys.exit("fuzz_atheris: atheris is not installed (pip install '.[fuzz]'); "
             "python benchmarks/fuzz.py runs the mutation harness without it")

with atheris.instrument_imports(include=["analyzer"]):
    from analyzer.capture import pcap, pcapng
    from analyzer.capture.compression import ZstdFrames, chunk_reader
    from analyzer.decode.packets import Decoder
    from analyzer.errors import CaptureError, InputError
    from analyzer.protocols import all_protocols

    SPECS = all_protocols()
    # Dissector modules are imported when a dissector is first made: make one
    # of each here so that they are instrumented too.
    for _spec in SPECS:
        _spec.dissector(server_direction=1, midstream=False)
        _spec.detect(b"", b"", False, False)

LINKTYPES = (0, 1, 9, 12, 14, 50, 51, 101, 104, 105, 108, 113, 127, 192, 228, 229, 276)


def _decoder(fdp) -> None:
    linktype = LINKTYPES[fdp.ConsumeIntInRange(0, len(LINKTYPES) - 1)]
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    dec = Decoder()
    dec.decode(linktype, data, 1.0, len(data) + fdp.ConsumeIntInRange(0, 3) if data else None)
    assert not dec.skipped["decode-error"], data.hex()


def _reader(fdp) -> None:
    data = fdp.ConsumeBytes(fdp.remaining_bytes())
    fill = chunk_reader(io.BytesIO(data[24:] if data[:4] in pcap.MAGICS else data[12:]), None)
    try:
        if data[:4] in pcap.MAGICS and len(data) >= 24:
            gen = pcap.records("x", pcap.parse_header(data), b"", fill, lambda n: None)
        elif data[:4] == b"\x0a\x0d\x0d\x0a" and len(data) >= 12 and pcapng.byte_order(data[8:12]):
            gen = pcapng.records("x", data[:12], fill, lambda n: None, [], [])
        else:
            return
        for _record in gen:
            pass
    except (CaptureError, InputError):
        pass


def _dissector(fdp) -> None:
    spec = SPECS[fdp.ConsumeIntInRange(0, len(SPECS) - 1)]
    a = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    b = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    spec.detect(a, b, fdp.ConsumeBool(), fdp.ConsumeBool())
    d = spec.dissector(server_direction=fdp.ConsumeIntInRange(0, 1), midstream=fdp.ConsumeBool())
    ts = 1.0
    for frame in range(1, 200):
        if not fdp.remaining_bytes():
            break
        what = fdp.ConsumeIntInRange(0, 9)
        direction = fdp.ConsumeIntInRange(0, 1)
        ts += 0.001
        if what <= 6:
            d.feed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 512)), direction, ts, frame)
        elif what <= 8:
            d.gap(fdp.ConsumeIntInRange(1, 1 << 20), direction, ts, frame)
        else:
            d.end(direction, ts, frame, fdp.ConsumeBool())
    d.close(ts + 1)
    d.outcome()


def _zstd(fdp) -> None:
    walker = ZstdFrames()
    while fdp.remaining_bytes():
        walker.feed(fdp.ConsumeBytes(fdp.ConsumeIntInRange(1, 64)))
    _ = walker.at_boundary


TARGETS = (_decoder, _reader, _dissector, _zstd)


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)](fdp)


def main() -> None:
    argv = list(sys.argv)
    if not any(a.startswith("-rss_limit_mb") for a in argv):
        argv.append("-rss_limit_mb=300")
    if not any(a.startswith("-timeout") for a in argv):
        argv.append("-timeout=10")
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
