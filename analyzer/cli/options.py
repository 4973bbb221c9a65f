# Option helpers shared by the commands (analyze, live): here rather than in
# cli/__init__.py so that cli/live.py does not import the module that imports
# it (an import cycle).
from __future__ import annotations


def engine_options(args) -> dict:
    """--engine / --tls-keylog / --decode-as, for run_and_report."""
    from analyzer.errors import UsageError

    if args.engine != "tshark" and (args.tls_keylog or args.decode_as):
        raise UsageError("--tls-keylog and --decode-as need --engine tshark")
    decode_as = None
    if args.decode_as:
        from analyzer.engines.tshark import parse_decode_as

        decode_as = parse_decode_as(args.decode_as)
    return {"engine": args.engine, "keylog": args.tls_keylog, "decode_as": decode_as}
