# The `explain` and `catalog` subcommands: a thin layer over analyzer.meaning.catalog.
#
# The main CLI calls register(subparsers); each handler takes the parsed
# args and returns an exit status.  `python -m analyzer.cli.catalog` runs the
# two commands on their own (useful before the main CLI exists, and in tests).
#
# Which protocol a bare number means when --protocol is not given: a code
# with a sub-status ("403.14", "500-12") is HTTP (only IIS has them); a
# number from 1000 to 4999 is a WebSocket close code (no HTTP or FTP code
# has four digits); anything else is HTTP, and the answer mentions FTP when
# FTP also defines that number (HTTP 421 and FTP 421 differ).
from __future__ import annotations

import argparse
import csv
import json
import re
import os
import sys

from analyzer.meaning import catalog
from analyzer.errors import ExitStatus

_LABELS = {
    "en": {
        "level": "answered by", "class": "class", "status": "status", "vendor": "vendor",
        "reference": "reference", "history": "history", "rest": "REST APIs",
        "also": "{display} also defines {code}: {name} (see --protocol {protocol}).",
        "levels": {"exact": "exact entry", "parent": "parent code (sub-status not listed)",
                   "range": "range", "class": "class (code not listed)", "unknown": "unknown code"},
        "statuses": {"standard": "standard", "unofficial": "unofficial",
                     "deprecated": "deprecated", "reserved": "reserved"},
        "invalid": "analyzer explain: {code!r} is not a code; give digits such as 404, 403.14, 500-12 or 1006",
    },
    "zh": {
        "level": "匹配级别", "class": "类别", "status": "状态", "vendor": "厂商",
        "reference": "参考", "history": "历史", "rest": "REST API 用法",
        "also": "{display} 也定义了 {code}：{name}（见 --protocol {protocol}）。",
        "levels": {"exact": "精确条目", "parent": "父状态码（未收录该子状态）",
                   "range": "范围", "class": "类别（未收录该代码）", "unknown": "未知代码"},
        "statuses": {"standard": "标准", "unofficial": "非官方",
                     "deprecated": "已弃用", "reserved": "保留"},
        "invalid": "analyzer explain: {code!r} 不是状态码；请给出数字，如 404、403.14、500-12 或 1006",
    },
}
_DISPLAY = {"http": "HTTP", "ftp": "FTP", "websocket": "WebSocket"}

EXPLAIN_EPILOG = """examples:
  analyzer explain 403.14                 IIS sub-status (HTTP)
  analyzer explain --protocol ftp 530     FTP reply
  analyzer explain 4001                   WebSocket 4000-4999 range
  analyzer explain --lang zh --json 421   Chinese, machine-readable
"""
CATALOG_EPILOG = """examples:
  analyzer catalog --protocol websocket
  analyzer catalog --format csv --lang zh > codes.csv
  analyzer catalog --protocol ftp --format json
"""


_REST_LABEL = re.compile(r"^\s*REST\s*APIs?\s*(用法)?\s*[:：]\s*", re.IGNORECASE)


def register(subparsers) -> None:
    explain = subparsers.add_parser(
        "explain", help="explain an HTTP status, FTP reply or WebSocket close code",
        description="Explain what a code means, in English or Chinese, and say which "
                    "level of the catalogue answered (exact, parent, range, class, unknown).",
        epilog=EXPLAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    explain.add_argument("code", help="e.g. 404, 403.14, 500-12, 530, 1006, 4001")
    explain.add_argument("--protocol", choices=catalog.PROTOCOLS,
                         help="default: HTTP, or WebSocket for 1000-4999")
    explain.add_argument("--lang", choices=catalog.LANGS,
                         help="output language (default from LC_ALL/LC_MESSAGES/LANG)")
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.set_defaults(func=explain_command)

    listing = subparsers.add_parser(
        "catalog", help="list the catalogue of code meanings",
        description="List every catalogued code (and WebSocket range) with its class, "
                    "name, status and source.",
        epilog=CATALOG_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    listing.add_argument("--protocol", choices=catalog.PROTOCOLS, help="only this protocol")
    listing.add_argument("--format", choices=("table", "csv", "json"), default="table",
                         help="table (default, for people), csv or json")
    listing.add_argument("--lang", choices=catalog.LANGS,
                         help="language of names (default from the locale)")
    listing.set_defaults(func=catalog_command)


def infer_protocol(major: int, minor: int | None) -> str:
    if minor is not None:
        return "http"
    if 1000 <= major <= 4999:
        return "websocket"
    return "http"


def _as_dict(meaning: catalog.Meaning, lang: str) -> dict:
    data = {field: getattr(meaning, field) for field in meaning.__slots__}
    data["name"] = meaning.name(lang)
    data["description"] = meaning.description(lang)
    data["standard"] = meaning.is_standard
    return data


def explain_command(args) -> int:
    lang = args.lang or catalog.default_lang()
    text = _LABELS[lang]
    parsed = catalog.parse_code(args.code)
    if parsed is None:
        print(text["invalid"].format(code=args.code), file=sys.stderr)
        return int(ExitStatus.USAGE)
    protocol = args.protocol or infer_protocol(*parsed)
    meaning = catalog.lookup(protocol, args.code)

    also = []
    if args.protocol is None and parsed[1] is None:
        for other in catalog.PROTOCOLS:
            if other != protocol:
                candidate = catalog.lookup(other, args.code)
                if candidate.level == "exact":
                    also.append(candidate)

    if args.json:
        data = _as_dict(meaning, lang)
        data["also"] = [{"protocol": m.protocol, "code": m.code, "name": m.name(lang)} for m in also]
        print(json.dumps(data, ensure_ascii=False, indent=2))
        return int(ExitStatus.OK)

    out = [f"{_DISPLAY.get(meaning.protocol, meaning.protocol)} {meaning.code} — {meaning.name(lang)}"]
    out.append(f"  {text['level']}: {text['levels'][meaning.level]}")
    if meaning.klass:
        name = catalog.class_name(meaning.protocol, meaning.klass, lang)
        out.append(f"  {text['class']}: {meaning.klass}" + (f" ({name})" if name else ""))
    status = text["statuses"].get(meaning.status, meaning.status)
    if meaning.vendor:
        status += f" ({text['vendor']}: {meaning.vendor})"
    if meaning.level != "unknown":
        out.append(f"  {text['status']}: {status}")
    if meaning.reference:
        out.append(f"  {text['reference']}: {meaning.reference}")
    out.append("")
    out.append(meaning.description(lang))
    if meaning.history(lang):
        out.append("")
        out.append(f"{text['history']}: {meaning.history(lang)}")
    if meaning.rest_hint(lang):
        out.append("")
        # Some catalogue hints already open with their own "REST APIs:" label.
        hint = _REST_LABEL.sub("", meaning.rest_hint(lang))
        out.append(f"{text['rest']}: {hint}")
    for other in also:
        out.append("")
        out.append(text["also"].format(display=_DISPLAY[other.protocol], protocol=other.protocol,
                                       code=other.code, name=other.name(lang)))
    print("\n".join(out))
    return int(ExitStatus.OK)


_COLUMNS = ("protocol", "code", "class", "name", "status", "vendor", "reference")


def _row(meaning: catalog.Meaning, lang: str) -> list[str]:
    return [meaning.protocol, meaning.code, meaning.klass, meaning.name(lang),
            meaning.status, meaning.vendor, meaning.reference]


def catalog_command(args) -> int:
    lang = args.lang or catalog.default_lang()
    items = catalog.entries(args.protocol)
    if args.format == "json":
        print(json.dumps([_as_dict(m, lang) for m in items], ensure_ascii=False, indent=2))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(list(_COLUMNS) + ["description"])
        for meaning in items:
            writer.writerow(_row(meaning, lang) + [meaning.description(lang)])
    else:
        from rich.console import Console   # heavy import kept at the edge
        from rich.table import Table

        table = Table(show_lines=False)
        for column in _COLUMNS:
            table.add_column(column, overflow="fold")
        for meaning in items:
            table.add_row(*_row(meaning, lang))
        # Piped output gets a wide, colourless table instead of 80 columns.
        console = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200,
                          no_color=not sys.stdout.isatty())
        console.print(table)
    return int(ExitStatus.OK)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="analyzer", description="Explain and list code meanings.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:
        # `... | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(main())
