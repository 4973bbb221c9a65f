#!/usr/bin/env python3
"""Golden events of the sample captures: samples/captures/<name>.events.csv.

`python3 samples/golden.py --write` regenerates them from the analyzer (never
edit them by hand); without --write it compares and lists the captures whose
events changed.  Meanings are written in English so the files do not depend
on the locale of whoever regenerates them.  tests/test_samples.py runs the
comparison.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO / "samples" / "captures"
NEWLINE = b"\n"
sys.path.insert(0, str(REPO))


def captures() -> list[Path]:
    return sorted(p for p in CAPTURES.iterdir() if p.suffix in (".pcap", ".pcapng"))


def golden_path(capture: Path) -> Path:
    return capture.with_suffix(".events.csv")


def analyse(capture: Path, workdir: Path) -> bytes:
    from analyzer.engines.native import run

    out = workdir / capture.stem
    run([str(capture)], out, lang="en")
    return (out / "events.csv").read_bytes()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     epilog="example: python3 samples/golden.py --write")
    parser.add_argument("--write", action="store_true", help="rewrite the golden files")
    args = parser.parse_args(argv)
    changed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for capture in captures():
            text = analyse(capture, Path(tmp))
            target = golden_path(capture)
            if args.write:
                target.write_bytes(text)
                print(f"{target.name}: {text.count(NEWLINE) - 1} events")
            elif not target.exists() or target.read_bytes() != text:
                changed += 1
                print(f"{capture.name}: events differ from {target.name}")
    return 1 if changed else 0


if __name__ == "__main__":
    sys.exit(main())
