# Capability: explain every HTTP / FTP / WebSocket code, in English and Chinese.
#
# Covers the catalogue data (catalog/*.toml), the lookup and annotation API
# (analyzer.meaning.catalog), the `explain` / `catalog` subcommands
# (analyzer.cli.catalog) and IIS sub-status detection from error pages
# (analyzer.protocols.http.iis).
#
# The seed catalogues (../shared/seeds/*.txt) are the users' request: every
# code they name must have a complete entry.  When ../shared is present the
# codes are extracted from the seeds themselves, and the checked-in
# tests/seed_codes.txt must equal that extraction; without ../shared the
# checked-in list stands in.  Regenerate the list with
#     python tests/test_catalog.py --write-seed-codes
from __future__ import annotations

import argparse
import gzip
import io
import json
import re
import subprocess
import sys
import tomllib
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

if __name__ == "__main__":      # run as a script to regenerate seed_codes.txt
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analyzer.meaning import catalog  # noqa: E402

from analyzer.cli import catalog as catalog_cli  # noqa: E402
from analyzer.protocols.http import iis  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "seeds"
SEED_CODES_FILE = Path(__file__).with_name("seed_codes.txt")
CATALOG_DIR = REPO / "catalog"

CJK = re.compile(r"[\u3400-\u9fff]")
# Accepted reference forms, joined by "; ".
REFERENCE_PART = re.compile(
    r"^(?:RFC \d{3,4}(?: §\d+(?:\.\d+)*)?"
    r"|IANA (?:HTTP Status Code|WebSocket Close Code Number) Registry"
    r"|Microsoft KB \d{6}"
    r"|(?:Microsoft|nginx|Cloudflare|AWS|Esri) docs: \S.*"
    r"|Wikipedia: List of HTTP status codes \(unofficial codes\))$")


# ---------------------------------------------------------------- seed extraction

# A heading naming one of these starts a section; the first match wins.
_SECTION_WORDS = (("websocket", "websocket"), ("rest api", "rest"), ("ftp", "ftp"), ("http", "http"))
_STOP_WORDS = ("参考资料", "推荐阅读")       # references / "recommended reading" junk
_REST_FTP = {"331", "332", "530"}           # FTP replies the REST lists mix in
_PREFIX = re.compile(r"^(?:[-*•|>\s]|HTTP\s+|Error\s+)+", re.I)
_CODE3 = re.compile(r"^(\d{3})(?:[.-](\d{1,3}))?(?:/(\d{3}))?(?!\d)")
_WS = re.compile(r"^(\d{1,4})(?:\s*[–-]\s*(\d{1,4}))?(?!\d)")
_SERIES = re.compile(r"^(\d)00\s+Series", re.I)


def _section(line: str) -> str | None:
    stripped = line.strip().lstrip("#").strip()
    if not stripped or (len(stripped) > 40 and not line.lstrip().startswith("#")):
        return None
    low = stripped.lower()
    if sum(word in low for word, _ in _SECTION_WORDS if word != "rest api") > 1:
        return None        # a title naming several protocols starts no section
    if any(word in stripped for word in _STOP_WORDS):
        return "stop"
    for word, name in _SECTION_WORDS:
        if word in low:
            return name
    return None


def extract_seed_codes(text: str) -> set[tuple[str, str]]:
    """(protocol, code) pairs a seed names.

    A code is the number that starts a list item, table cell or line ("- 403.14
    - ...", "| 1000 | ...", "HTTP 500-12 ...", "302/307 ..."), read in the
    section (HTTP, REST API, FTP, WebSocket) the nearest heading names; a file
    that names none is an HTTP list.  "500-12" becomes "500.12"; WebSocket
    ranges stay "4000-4999"; FTP's "600 Series" is the class "6yz".
    """
    found: set[tuple[str, str]] = set()
    section: str | None = "http"
    for raw_line in text.splitlines():
        line = raw_line.replace("<del>", "").replace("</del>", "")
        code_seen = False
        for piece in re.split(r"•|(?=HTTP \d{3}[ .-])", line):
            body = _PREFIX.sub("", piece).strip()
            if section in ("http", "rest", "ftp"):
                series = _SERIES.match(body)
                if series and section == "ftp":
                    found.add(("ftp", f"{series.group(1)}yz"))
                    code_seen = True
                    continue
                match = _CODE3.match(body)
                if match:
                    code_seen = True
                    major, minor, second = match.groups()
                    for code in filter(None, (major, second)):
                        protocol = "ftp" if section == "ftp" or (section == "rest" and code in _REST_FTP) else "http"
                        text_code = f"{major}.{int(minor)}" if (minor is not None and code == major) else code
                        found.add((protocol, text_code))
            elif section == "websocket":
                match = _WS.match(body)
                if match:
                    code_seen = True
                    low, high = match.groups()
                    found.add(("websocket", f"{int(low)}-{int(high)}" if high else str(int(low))))
        if not code_seen:
            new = _section(line)
            if new == "stop":
                section = None
            elif new:
                section = new
    return found


def _sort_key(item: tuple[str, str]):
    protocol, code = item
    numbers = [int(part) if part.isdigit() else -1 for part in re.split(r"[.\-]|(?<=\d)(?=yz)", code)]
    return catalog.PROTOCOLS.index(protocol), numbers, code


def codes_from_seeds() -> list[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in sorted(SEEDS.glob("*.txt")):
        found |= extract_seed_codes(path.read_text(encoding="utf-8"))
    return sorted(found, key=_sort_key)


def codes_from_file() -> list[tuple[str, str]]:
    pairs = []
    for line in SEED_CODES_FILE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            protocol, code = line.split()
            pairs.append((protocol, code))
    return pairs


def seed_codes() -> list[tuple[str, str]]:
    return codes_from_seeds() if SEEDS.is_dir() else codes_from_file()


def write_seed_codes() -> None:
    header = (
        "# Codes named in the five seed catalogues (../shared/seeds/*.txt): PROTOCOL CODE.\n"
        "# Derived by extract_seed_codes() in tests/test_catalog.py; do not edit by hand,\n"
        "# regenerate with:  python tests/test_catalog.py --write-seed-codes\n"
        "# The REST API lists' 331/332/530 are FTP replies and are listed as ftp;\n"
        "# FTP's \"600 Series\" heading is the class 6yz; IIS \"500-12\" is written 500.12.\n")
    lines = [f"{protocol} {code}" for protocol, code in codes_from_seeds()]
    SEED_CODES_FILE.write_text(header + "\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- helpers

def _raw(protocol: str) -> dict:
    return tomllib.loads((CATALOG_DIR / f"{protocol}.toml").read_text(encoding="utf-8"))


def _complete(meaning: catalog.Meaning) -> None:
    for field in ("name_en", "name_zh", "description_en", "description_zh", "status", "reference"):
        assert getattr(meaning, field).strip(), (meaning.protocol, meaning.code, field)
    assert CJK.search(meaning.name_zh) and CJK.search(meaning.description_zh), meaning.code
    assert not CJK.search(meaning.name_en + meaning.description_en), meaning.code
    assert meaning.status in catalog.STATUSES


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog="analyzer")
    catalog_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


# ---------------------------------------------------------------- seeds coverage

@pytest.mark.skipif(not SEEDS.is_dir(), reason="../shared/seeds is absent")
def test_checked_in_seed_codes_match_the_seeds():
    assert codes_from_file() == codes_from_seeds(), "run: python tests/test_catalog.py --write-seed-codes"


def test_seed_list_is_substantial():
    # A broken extractor that finds nothing must not pass the coverage test.
    codes = seed_codes()
    assert len(codes) > 150
    protocols = {protocol for protocol, _ in codes}
    assert protocols == set(catalog.PROTOCOLS)
    for expected in [("http", "403.14"), ("http", "500.12"), ("http", "600"), ("ftp", "530"),
                     ("ftp", "631"), ("websocket", "4000-4999"), ("websocket", "1014"), ("ftp", "6yz")]:
        assert expected in codes


@pytest.mark.parametrize("protocol,code", seed_codes())
def test_every_seed_code_has_a_complete_bilingual_entry(protocol, code):
    if code.endswith("yz"):
        labels = {item.get("class") for item in catalog.classes(protocol)}
        assert code in labels
        assert catalog.lookup(protocol, code[0] + "00").level == "class"
        return
    if protocol == "websocket" and "-" in code:
        ranges = {m.code: m for m in catalog.entries("websocket") if m.level == "range"}
        _complete(ranges[code])
        low = int(code.split("-")[0])
        assert catalog.lookup("websocket", low).klass == code
        return
    meaning = catalog.lookup(protocol, code)
    assert meaning.level == "exact", (protocol, code)
    assert meaning.protocol == protocol and meaning.code == code
    _complete(meaning)


def test_rest_list_codes_go_to_their_own_protocol():
    for code in ("331", "332", "530"):
        ftp = catalog.lookup("ftp", code)
        assert ftp.level == "exact" and ftp.is_standard
        assert ftp.rest_hint_en and CJK.search(ftp.rest_hint_zh)
    assert catalog.lookup("http", 331).level == "class"      # no HTTP 331 exists
    assert catalog.lookup("http", 530).vendor == "Cloudflare"
    assert "FTP" in catalog.lookup("http", 530).rest_hint_en
    # REST usage hints are their own field, not mixed into the description.
    for code in (200, 204, 400, 409, 422, 429):
        meaning = catalog.lookup("http", code)
        assert meaning.rest_hint_en and meaning.rest_hint_zh
        assert meaning.rest_hint_en not in meaning.description_en


# ---------------------------------------------------------------- data well-formed

@pytest.mark.parametrize("protocol", catalog.PROTOCOLS)
def test_data_file_is_well_formed(protocol):
    raw = _raw(protocol)
    assert raw["protocol"] == protocol
    codes = [item["code"] for item in raw["code"]]
    assert len(codes) == len(set(codes)), "duplicate code"
    keys = [tuple(int(p) for p in code.split(".")) for code in codes]
    assert keys == sorted(keys), "codes must stay in numeric order"
    for item in raw["code"]:
        where = (protocol, item["code"])
        for field, value in item.items():
            assert isinstance(value, str) and value.strip() == value and value, (where, field)
        assert item["status"] in catalog.STATUSES, where
        if item["status"] == "unofficial":
            assert item.get("vendor"), ("unofficial code needs its vendor", where)
        if item.get("vendor"):
            assert item["status"] in ("unofficial", "deprecated"), where
        for part in item["reference"].split("; "):
            assert REFERENCE_PART.match(part), (where, part)
        for base in ("history", "rest_hint"):
            assert (base + "_en" in item) == (base + "_zh" in item), (where, base)
        assert item["description_en"] != item["name_en"] and item["description_zh"] != item["name_zh"]
        for suffix in ("en", "zh"):
            assert item["name_" + suffix] not in ("", "TODO")
    for item in raw.get("class", []) + raw.get("range", []):
        for part in item["reference"].split("; "):
            assert REFERENCE_PART.match(part), (protocol, part)


def test_every_entry_loaded_is_complete_and_unique():
    seen = set()
    for meaning in catalog.entries():
        _complete(meaning)
        key = (meaning.protocol, meaning.code)
        assert key not in seen
        seen.add(key)
        if meaning.level == "exact":
            assert meaning.klass, key
    assert len(seen) > 250


def test_readme_names_every_source():
    readme = (CATALOG_DIR / "README.md").read_text(encoding="utf-8")
    sources = set()
    for meaning in catalog.entries():
        for part in meaning.reference.split("; "):
            part = part.split(" §")[0].split(" (")[0]
            # "RFC 959", "Microsoft KB 943891", "IANA ... Registry", or a vendor
            # document's title ("Troubleshooting Cloudflare 5XX errors").
            sources.add(part.split("docs: ", 1)[1] if "docs: " in part else part.split(":")[0])
    assert len(sources) > 25
    for source in sorted(sources):
        assert re.search(re.escape(source) + r"(?!\d)", readme), f"catalog/README.md does not mention {source}"


def test_iis_sub_status_ranges_required_by_the_issue():
    wanted = [f"401.{n}" for n in (1, 2, 3, 4, 5, 7)] + [f"403.{n}" for n in range(1, 21)]
    wanted += [f"404.{n}" for n in range(0, 4)] + ["500.11", "500.12", "500.13", "500.100", "502.1", "502.2"]
    for code in wanted:
        meaning = catalog.lookup("http", code)
        assert meaning.level == "exact" and meaning.vendor == "IIS", code
    # 401.6 is defined nowhere: it must fall back, not be invented.
    assert catalog.lookup("http", "401.6").level == "parent"


def test_full_iana_http_registry_and_vendor_codes():
    iana = ([100, 101, 102, 103, 104] + list(range(200, 209)) + [226] + list(range(300, 309))
            + list(range(400, 419)) + list(range(421, 427)) + [428, 429, 431, 451]
            + list(range(500, 509)) + [510, 511])
    for code in iana:
        meaning = catalog.lookup("http", code)
        assert meaning.level == "exact" and meaning.vendor == "", code
        assert meaning.status in ("standard", "deprecated", "reserved"), code
    vendors = {444: "nginx", 494: "nginx", 495: "nginx", 496: "nginx", 497: "nginx", 499: "nginx",
               449: "Microsoft", 450: "Microsoft", 440: "IIS", 509: "Apache/cPanel"}
    vendors.update({code: "Cloudflare" for code in (520, 521, 522, 523, 524, 525, 526, 527, 530)})
    for code, vendor in vendors.items():
        assert catalog.lookup("http", code).vendor == vendor, code


def test_ftp_and_websocket_coverage():
    for code in (232, 234, 235, 334, 335, 336, 431, 533, 534, 535, 536, 537, 631, 632, 633):
        assert "RFC 2228" in catalog.lookup("ftp", code).reference, code
    for code in (229, 522):
        assert "RFC 2428" in catalog.lookup("ftp", code).reference, code
    for code in range(1000, 1016):
        assert catalog.lookup("websocket", code).level == "exact", code
    ranges = [m.code for m in catalog.entries("websocket") if m.level == "range"]
    for label in ("0-999", "1016-1999", "2000-2999", "3000-3999", "4000-4999"):
        assert label in ranges


# ---------------------------------------------------------------- lookup levels

def test_lookup_levels():
    exact = catalog.lookup("http", "403.14")
    assert (exact.level, exact.code, exact.vendor, exact.klass) == ("exact", "403.14", "IIS", "4xx")

    parent = catalog.lookup("http", "403.99")
    assert (parent.level, parent.code, parent.name_en) == ("parent", "403.99", "Forbidden")
    assert "403.99" in parent.description_en and "403.99" in parent.description_zh
    assert catalog.lookup("http", 403, "99") == parent
    assert catalog.lookup("http", 403, "403.99") == parent
    assert catalog.lookup("http", 403, "404.3").level == "exact"   # other code's sub-status ignored
    assert catalog.lookup("http", 403, "404.3").code == "403"

    dashed = catalog.lookup("http", "500-12")
    assert (dashed.level, dashed.code) == ("exact", "500.12")
    assert catalog.lookup("http", 500, "12") == dashed

    ranged = catalog.lookup("websocket", 4001)
    assert (ranged.level, ranged.klass, ranged.code) == ("range", "4000-4999", "4001")
    assert catalog.lookup("websocket", "1500").klass == "1016-1999"

    ftp_class = catalog.lookup("ftp", 599)
    assert (ftp_class.level, ftp_class.klass) == ("class", "5yz")
    assert "Second digit 9" in ftp_class.description_en and "第二位数字 9" in ftp_class.description_zh
    file_system = catalog.lookup("ftp", 559)
    assert "File system" in file_system.name_en and "x5z" in file_system.description_en
    for digit, word in zip("012345", ("Syntax", "Information", "Connections",
                                      "Authentication", "Unspecified", "File system")):
        assert word in catalog.lookup("ftp", int(f"4{digit}9")).description_en
    assert "RFC 959 §4.2" in file_system.reference

    assert catalog.lookup("http", 299).level == "class"
    for protocol, code in (("http", 799), ("http", 601), ("ftp", 799), ("websocket", 5000),
                           ("http", "garbage"), ("http", ""), ("http", -1), ("smtp", 250)):
        unknown = catalog.lookup(protocol, code)
        assert unknown.level == "unknown" and not unknown.is_standard, (protocol, code)
        assert unknown.name_zh and unknown.description_zh


def test_same_number_differs_by_protocol():
    http, ftp = catalog.lookup("http", 421), catalog.lookup("ftp", 421)
    assert http.name_en == "Misdirected Request"
    assert ftp.name_en.startswith("Service not available")
    assert http.description_en != ftp.description_en and http.klass == "4xx" and ftp.klass == "4yz"
    assert catalog.lookup("HTTPS", 421) == http and catalog.lookup("wss", 1000).code == "1000"


@pytest.mark.parametrize("protocol,code,needle", [
    ("http", 421, "too many connections"),
    ("http", 425, "Unordered Collection"),
    ("http", 426, "TLS/1.0"),
    ("http", 306, "Switch Proxy"),
    ("websocket", 1014, "reserved"),
])
def test_changed_meanings_carry_history(protocol, code, needle):
    meaning = catalog.lookup(protocol, code)
    assert needle in meaning.history_en and CJK.search(meaning.history_zh)


def test_seed_errors_are_resolved_by_the_standard():
    assert "IIS-only" not in catalog.lookup("http", 503).name_en
    assert catalog.lookup("http", 503).is_standard and catalog.lookup("http", 503).vendor == ""
    assert catalog.lookup("http", 306).status == "reserved"
    assert catalog.lookup("http", 507).name_en == "Insufficient Storage"
    assert "superfluous" in catalog.lookup("ftp", 202).name_en


@settings(max_examples=300, deadline=None)
@given(protocol=st.one_of(st.sampled_from(["http", "ftp", "websocket", "WS", ""]), st.text(max_size=8)),
       code=st.one_of(st.integers(min_value=-10**6, max_value=10**6), st.text(max_size=12),
                      st.from_regex(r"\d{1,5}([.\-]\d{1,4})?", fullmatch=True)),
       substatus=st.one_of(st.none(), st.text(max_size=8), st.from_regex(r"\d{1,3}(\.\d{1,3})?", fullmatch=True)))
def test_lookup_never_raises(protocol, code, substatus):
    meaning = catalog.lookup(protocol, code, substatus)
    assert meaning.level in catalog.LEVELS
    assert meaning.name("en") and meaning.name("zh") and meaning.description("zh")


def test_lookup_accepts_unhashable_input_without_raising():
    assert catalog.lookup("http", [403]).level == "unknown"


# ---------------------------------------------------------------- annotation

def test_annotate():
    row = catalog.annotate("http", 403, "403.14", "zh")
    assert row == {"class": "4xx", "name": catalog.lookup("http", "403.14").name_zh,
                   "meaning": catalog.first_sentence(catalog.lookup("http", "403.14").description_zh),
                   "standard": True}
    assert catalog.annotate("http", 403)["name"] == "Forbidden"
    assert catalog.annotate("websocket", 4001)["standard"] is False
    assert catalog.annotate("websocket", 1006)["class"] == "1000-1015"
    assert catalog.annotate("ftp", 530)["standard"] is True
    assert catalog.annotate("http", 404, lang="xx")["meaning"].startswith("The server has no current")
    first = catalog.annotate("http", 200)
    first["name"] = "mutated"
    assert catalog.annotate("http", 200)["name"] == "OK"      # the cache hands out copies


def test_summary_is_one_sentence():
    assert catalog.first_sentence("One thing, e.g. this. Two.") == "One thing, e.g. this."
    assert catalog.first_sentence("第一句。第二句。") == "第一句。"
    for meaning in catalog.entries():
        for lang in catalog.LANGS:
            summary = meaning.summary(lang)
            assert summary and len(summary) <= len(meaning.description(lang))


@pytest.mark.parametrize("env,expected", [
    ({}, "en"),
    ({"LANG": "zh_CN.UTF-8"}, "zh"),
    ({"LANG": "en_US.UTF-8"}, "en"),
    ({"LANG": "en_US.UTF-8", "LC_MESSAGES": "zh_TW.UTF-8"}, "zh"),
    ({"LANG": "zh_CN.UTF-8", "LC_ALL": "C"}, "en"),
    ({"LC_ALL": "zh", "LANG": "en_US"}, "zh"),
    ({"LC_ALL": "", "LANG": "zh_CN"}, "zh"),
])
def test_default_lang(env, expected):
    assert catalog.default_lang(env) == expected


def test_entries_are_stable_and_complete():
    everything = catalog.entries()
    assert everything == catalog.entries()
    assert everything == catalog.entries("http") + catalog.entries("ftp") + catalog.entries("websocket")
    assert catalog.entries("nope") == []


def test_data_comes_from_the_checkout_when_not_packaged():
    source = catalog.data_source()
    assert (source / "http.toml").is_file()


# ---------------------------------------------------------------- CLI

def _cli_args(protocol: str, code: str) -> list[str]:
    if code.endswith("yz"):
        code = code[0] + "00"
    elif "-" in code and protocol == "websocket":
        code = code.split("-")[0]
    return ["explain", "--protocol", protocol, code]


@pytest.mark.parametrize("lang", catalog.LANGS)
def test_explain_answers_every_seed_code(lang, capsys):
    for protocol, code in seed_codes():
        status, out, err = _run(_cli_args(protocol, code) + ["--lang", lang], capsys)
        assert status == 0 and not err, (protocol, code)
        expected = catalog.lookup(protocol, _cli_args(protocol, code)[-1])
        assert expected.name(lang) in out and expected.description(lang) in out
        level_word = catalog_cli._LABELS[lang]["levels"][expected.level]
        assert level_word in out, (protocol, code)


def test_explain_text_output(capsys):
    status, out, _ = _run(["explain", "403.14", "--lang", "en"], capsys)
    assert status == 0
    assert out.splitlines()[0] == "HTTP 403.14 — Forbidden: Directory Listing Denied"
    assert "answered by: exact entry" in out and "vendor: IIS" in out

    status, out, _ = _run(["explain", "4001", "--lang", "en"], capsys)
    assert out.startswith("WebSocket 4001") and "answered by: range" in out and "4000-4999" in out

    status, out, _ = _run(["explain", "530", "--lang", "en"], capsys)
    assert out.startswith("HTTP 530") and "FTP also defines 530: Not logged in" in out

    status, out, _ = _run(["explain", "--protocol", "ftp", "530", "--lang", "zh"], capsys)
    assert out.startswith("FTP 530 — 未登录") and "匹配级别: 精确条目" in out

    status, out, _ = _run(["explain", "799", "--lang", "en"], capsys)
    assert status == 0 and "answered by: unknown code" in out

    status, out, _ = _run(["explain", "500-12", "--lang", "zh"], capsys)
    assert out.startswith("HTTP 500.12")


def test_explain_json(capsys):
    status, out, _ = _run(["explain", "--json", "--lang", "zh", "421"], capsys)
    data = json.loads(out)
    assert status == 0
    assert data["level"] == "exact" and data["name"] == "错误定向的请求"
    assert data["history_en"] and data["standard"] is True
    assert data["also"] == [{"protocol": "ftp", "code": "421", "name": "服务不可用，正在关闭控制连接"}]


@pytest.mark.parametrize("bad", ["abc", "4o4", "403.x", "1.2.3", "-5"])
def test_explain_rejects_non_numeric_input(bad, capsys):
    status, out, err = _run(["explain", "--lang", "en", "--", bad], capsys)
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and repr(bad) in err


def test_catalog_listing_formats(capsys):
    status, out, _ = _run(["catalog", "--format", "csv", "--lang", "zh"], capsys)
    rows = list(__import__("csv").reader(io.StringIO(out)))
    assert status == 0 and rows[0][:3] == ["protocol", "code", "class"]
    assert len(rows) == len(catalog.entries()) + 1
    assert ["http", "403.14", "4xx", "禁止访问：拒绝列出目录"] == rows[[r[1] for r in rows].index("403.14")][:4]

    status, out, _ = _run(["catalog", "--protocol", "ftp", "--format", "json"], capsys)
    data = json.loads(out)
    assert status == 0 and {item["protocol"] for item in data} == {"ftp"}
    assert len(data) == len(catalog.entries("ftp"))

    status, out, _ = _run(["catalog", "--protocol", "websocket", "--lang", "en"], capsys)
    assert status == 0 and "1014" in out and "Bad Gateway" in out and "4000-4999" in out


def test_every_command_has_help_with_examples():
    parser = argparse.ArgumentParser(prog="analyzer")
    subparsers = parser.add_subparsers(dest="command")
    catalog_cli.register(subparsers)
    for name in ("explain", "catalog"):
        text = subparsers.choices[name].format_help()
        assert "examples:" in text and f"analyzer {name}" in text


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "analyzer.cli.catalog", "explain", "403.14", "--lang", "en"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP 403.14 — Forbidden: Directory Listing Denied")
    result = subprocess.run([sys.executable, "-m", "analyzer.cli.catalog", "explain", "nope"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""


# ---------------------------------------------------------------- IIS sub-status

def iis_detailed_page(code: str, reason: str, version: str = "10.0", word: str = "Detailed Error",
                      error_word: str = "Error") -> bytes:
    """The shape of an IIS 7+ detailed error page (head and first section)."""
    return (
        '<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Strict//EN" '
        '"http://www.w3.org/TR/xhtml1/DTD/xhtml1-strict.dtd">\r\n'
        '<html xmlns="http://www.w3.org/1999/xhtml">\r\n<head>\r\n'
        f'<title>IIS {version} {word} - {code} - {reason}</title>\r\n'
        '<style type="text/css">\r\n<!--\r\nbody{margin:0;font-size:.7em;}\r\n-->\r\n</style>\r\n'
        '</head>\r\n<body>\r\n<div id="content">\r\n<div class="content-container">\r\n'
        f'<h3>HTTP {error_word} {code} - {reason}</h3>\r\n'
        '<h4>The Web server is configured to not list the contents of this directory.</h4>\r\n'
        '</div>\r\n<div class="content-container">\r\n<fieldset><h4>Most likely causes:</h4>\r\n'
        '<ul><li>A default document is not configured for the requested URL.</li></ul>\r\n'
        '</fieldset>\r\n</div>\r\n</div>\r\n</body>\r\n</html>\r\n').encode("utf-8")


CLASSIC_IIS6_PAGE = (
    b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN">\r\n<HTML><HEAD>'
    b'<TITLE>You are not authorized to view this page</TITLE></HEAD><BODY>'
    b'<h1>You are not authorized to view this page</h1>'
    b'<p>HTTP Error 403.1 - Forbidden: Execute access is denied.<br>'
    b'Internet Information Services (IIS)</p></BODY></HTML>')

NGINX_404 = (b"<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n"
             b"<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n"
             b"</body>\r\n</html>\r\n")
APACHE_404 = (b'<!DOCTYPE HTML PUBLIC "-//IETF//DTD HTML 2.0//EN">\n<html><head>\n'
              b"<title>404 Not Found</title>\n</head><body>\n<h1>Not Found</h1>\n"
              b"<p>The requested URL was not found on this server.</p>\n</body></html>\n")
# An IIS page for remote clients ("custom errors"): no sub-status anywhere.
IIS_REMOTE_404 = (b"<!DOCTYPE html><html><head><title>404 - File or directory not found.</title></head>"
                  b'<body><div id="header"><h1>Server Error</h1></div><div id="content">'
                  b"<h2>404 - File or directory not found.</h2></div></body></html>")


def test_find_substatus_plain_and_compressed():
    page = iis_detailed_page("403.14", "Forbidden")
    assert iis.find_substatus(403, page) == "403.14"
    assert iis.find_substatus(403, gzip.compress(page), "gzip") == "403.14"
    assert iis.find_substatus(403, gzip.compress(page), "x-gzip") == "403.14"
    assert iis.find_substatus(403, zlib.compress(page), "deflate") == "403.14"
    raw = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    assert iis.find_substatus(403, raw.compress(page) + raw.flush(), "Deflate") == "403.14"
    assert iis.find_substatus(403, page, "identity") == "403.14"
    # A body prefix cut in the middle of the gzip stream still shows the title.
    assert iis.find_substatus(403, gzip.compress(page)[:200], "gzip") == "403.14"


def test_find_substatus_variants():
    zh = iis_detailed_page("404.0", "Not Found", word="详细错误", error_word="错误")
    assert iis.find_substatus(404, zh) == "404.0"
    assert iis.find_substatus(500, iis_detailed_page("500.19", "Internal Server Error", "8.5")) == "500.19"
    assert iis.find_substatus(403, CLASSIC_IIS6_PAGE) == "403.1"


@pytest.mark.parametrize("code,body,encoding", [
    (404, NGINX_404, ""),
    (404, APACHE_404, ""),
    (404, gzip.compress(NGINX_404), "gzip"),
    (404, IIS_REMOTE_404, ""),
    (404, iis_detailed_page("403.14", "Forbidden"), ""),                 # major code differs
    (200, iis_detailed_page("403.14", "Forbidden"), ""),                 # only 4xx/5xx
    (403, iis_detailed_page("403.14", "Forbidden"), "br"),               # cannot decode: give up
    (403, iis_detailed_page("403.14", "Forbidden"), "gzip"),             # claims gzip, is not
    (403, iis_detailed_page("403.14", "Forbidden").replace(b"<h3>HTTP Error 403.14",
                                                           b"<h3>HTTP Error 403.16"), ""),  # disagree
    (403, CLASSIC_IIS6_PAGE.replace(b"Internet Information Services", b"Example Server"), ""),
    (403, b"", ""),
])
def test_find_substatus_refuses_to_guess(code, body, encoding):
    assert iis.find_substatus(code, body, encoding) is None


def test_find_substatus_decompression_is_bounded():
    bomb = gzip.compress(b"\0" * (16 * iis.MAX_DECODED_BYTES) + iis_detailed_page("403.14", "Forbidden"))
    assert iis.find_substatus(403, bomb, "gzip") is None      # marker lies beyond the budget


@settings(max_examples=300, deadline=None)
@given(code=st.integers(min_value=-1000, max_value=100000), body=st.binary(max_size=2048),
       encoding=st.sampled_from(["", "gzip", "deflate", "x-gzip", "br", "gzip, deflate", "identity", "??"]))
def test_find_substatus_never_raises_on_random_bytes(code, body, encoding):
    result = iis.find_substatus(code, body, encoding)
    assert result is None or (result.split(".")[0] == str(code) and result.split(".")[1].isdigit())


def test_a_claimed_sub_status_the_catalogue_does_not_list_is_dropped():
    # The page claims 403.99; the dissector reports the claim, the meaning
    # layer (one join per batch) keeps only sub-statuses the catalogue lists.
    assert iis.find_substatus(403, iis_detailed_page("403.99", "Forbidden")) == "403.99"
    assert catalog.lookup("http", "403.99").level != "exact"
    from analyzer.meaning.annotate import Annotator
    import pyarrow as pa
    cls, name, meaning, standard, sub = Annotator("en").columns(
        pa.array(["http", "http", "http"]), pa.array([403, 403, 403], pa.int64()),
        pa.array(["403.99", "403.14", ""]))
    assert sub.to_pylist() == ["", "403.14", ""]
    plain = catalog.annotate("http", 403, "", "en")
    assert meaning.to_pylist()[0] == plain["meaning"] != meaning.to_pylist()[1]


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-seed-codes"]:
        write_seed_codes()
        print(f"wrote {SEED_CODES_FILE}")
    else:
        print("usage: python tests/test_catalog.py --write-seed-codes")
