# The catalogue of code meanings: HTTP status codes (with IIS sub-status
# codes), FTP reply codes and WebSocket close codes, in English and Chinese.
#
# Strategy: the meanings are data (catalog/<protocol>.toml, read once with
# tomllib); this module only indexes them and answers questions.  A lookup
# never fails: it tries, in order,
#   exact   the code as asked ("403.14", "530", "1000"),
#   parent  the major code, when a sub-status was asked that is not listed,
#   range   the WebSocket range the code falls in (RFC 6455 §7.4.2),
#   class   the first digit (HTTP 1xx-5xx; FTP 1yz-6yz, where the second
#           digit adds the RFC 959 §4.2 function group),
#   unknown a protocol-specific "not a code we can explain",
# and the answer says which level it came from.
#
# Where the data lives: inside an installed wheel the TOML files sit in the
# package folder analyzer/catalog_data/; in a source checkout they are read
# from the repository's top-level catalog/ directory.  The first that exists
# wins, so a wheel never depends on the checkout.
#
# Limits: codes are read as 1-5 digits with an optional ".N"/"-N" sub-status
# of 1-4 digits; anything else (floats, text) is "unknown", never an error.
# Lookups are cached (they run once per event); the caches are bounded so
# that garbage input cannot grow them without limit.
from __future__ import annotations

import functools
import os
import re
import tomllib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

# The registry imports only the protocol specs, never a dissector, so
# `analyzer explain` stays fast.
from analyzer import protocols as _registry

PROTOCOLS = _registry.EVENT_PROTOCOLS
LEVELS = ("exact", "parent", "range", "class", "unknown")
STATUSES = ("standard", "unofficial", "deprecated", "reserved")
LANGS = ("en", "zh")
_ALIASES = {"https": "http", "ws": "websocket", "wss": "websocket", "ftps": "ftp"}

# One event per response/reply/close calls annotate(); real traffic has a few
# hundred distinct (protocol, code, substatus) keys, so this bound is only
# reached by hostile or random input.
LOOKUP_CACHE_SIZE = 4096

# 65535 is the largest WebSocket close code (2 bytes); five digits cover it.
_CODE_RE = re.compile(r"^\s*(\d{1,5})(?:[.\-](\d{1,4}))?\s*$")
_SUB_RE = re.compile(r"^\s*(?:(\d{1,5})[.\-])?(\d{1,4})\s*$")
# Abbreviations after which ". " does not end a sentence.
_NO_BREAK = ("e.g", "i.e", "etc", "vs", "cf")

_REQUIRED_CODE_KEYS = ("code", "name_en", "name_zh", "status", "reference",
                       "description_en", "description_zh")
_OPTIONAL_CODE_KEYS = ("vendor", "history_en", "history_zh", "rest_hint_en", "rest_hint_zh")


class CatalogError(Exception):
    """The catalogue data itself is malformed (a bug in catalog/*.toml)."""


@dataclass(frozen=True, slots=True)
class Meaning:
    """What a code means, and which level of the lookup answered."""

    protocol: str          # "http" | "ftp" | "websocket"
    code: str              # as asked, normalised: "403.14", "530", "4001"
    level: str             # one of LEVELS
    klass: str             # "4xx", "5yz", or the WebSocket range "4000-4999"
    name_en: str
    name_zh: str
    description_en: str
    description_zh: str
    status: str            # one of STATUSES
    reference: str         # "RFC 9110 §15.5.4", "Microsoft KB 943891", ...
    vendor: str = ""       # whose code it is when status is "unofficial"
    history_en: str = ""   # how the meaning changed over time, if it did
    history_zh: str = ""
    rest_hint_en: str = ""  # how REST APIs use it, if the seeds said
    rest_hint_zh: str = ""

    def name(self, lang: str = "en") -> str:
        return self.name_zh if lang == "zh" and self.name_zh else self.name_en

    def description(self, lang: str = "en") -> str:
        return self.description_zh if lang == "zh" and self.description_zh else self.description_en

    def history(self, lang: str = "en") -> str:
        return self.history_zh if lang == "zh" and self.history_zh else self.history_en

    def rest_hint(self, lang: str = "en") -> str:
        return self.rest_hint_zh if lang == "zh" and self.rest_hint_zh else self.rest_hint_en

    def summary(self, lang: str = "en") -> str:
        """The first sentence of the description: one short phrase per event."""
        return first_sentence(self.description(lang))

    @property
    def is_standard(self) -> bool:
        return self.status == "standard"


def first_sentence(text: str) -> str:
    text = " ".join(text.split())
    for i, ch in enumerate(text):
        if ch in "。！？":
            return text[: i + 1]
        if ch in ".!?" and (i + 1 == len(text) or text[i + 1] == " "):
            word = text[:i].rsplit(" ", 1)[-1].lstrip("(")
            if word.lower() in _NO_BREAK:
                continue
            return text[: i + 1]
    return text


# ---------------------------------------------------------------- loading

@dataclass(frozen=True, slots=True)
class _Table:
    protocol: str
    codes: dict            # canonical code -> Meaning (level "exact"), file order
    ranges: tuple          # ((low, high, Meaning), ...) in file order
    classes: dict          # "4xx" -> raw table
    digits: dict           # FTP second digit "0".."5" -> raw table
    unknown: dict          # raw [unknown] table


def data_source():
    """Where the TOML files are read from: the wheel's copy, else the checkout's."""
    try:
        packaged = resources.files("analyzer") / "catalog_data"
        if packaged.is_dir() and (packaged / "http.toml").is_file():
            return packaged
    except (ModuleNotFoundError, OSError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "catalog"


def _need(table: dict, keys, where: str) -> None:
    for key in keys:
        value = table.get(key)
        if not isinstance(value, str) or not value.strip():
            raise CatalogError(f"{where}: field {key!r} is missing or empty")


def _class_label(protocol: str, major: int, ranges) -> str:
    suffix = _registry.get(protocol).class_suffix
    if suffix:  # by first digit (HTTP 4xx, FTP 4yz)
        return f"{major // 100}{suffix}" if 100 <= major <= 999 else ""
    for low, high, meaning in ranges:
        if low <= major <= high:
            return meaning.klass
    return ""


def _load_table(protocol: str, text: str) -> _Table:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{protocol}.toml: {exc}") from None
    if raw.get("protocol") != protocol:
        raise CatalogError(f"{protocol}.toml: protocol field says {raw.get('protocol')!r}")
    unknown = raw.get("unknown", {})
    _need(unknown, ("name_en", "name_zh", "description_en", "description_zh"), f"{protocol}.toml [unknown]")

    ranges = []
    for item in raw.get("range", []):
        where = f"{protocol}.toml range {item.get('range')!r}"
        _need(item, ("range", "name_en", "name_zh", "status", "reference",
                     "description_en", "description_zh"), where)
        low_text, _, high_text = item["range"].partition("-")
        if not (low_text.isdigit() and high_text.isdigit()) or int(low_text) > int(high_text):
            raise CatalogError(f"{where}: range must read LOW-HIGH")
        meaning = Meaning(
            protocol=protocol, code=item["range"], level="range", klass=item["range"],
            name_en=item["name_en"], name_zh=item["name_zh"],
            description_en=item["description_en"], description_zh=item["description_zh"],
            status=item["status"], reference=item["reference"], vendor=item.get("vendor", ""))
        ranges.append((int(low_text), int(high_text), meaning))

    classes = {}
    for item in raw.get("class", []):
        _need(item, ("class", "name_en", "name_zh", "reference", "description_en", "description_zh"),
              f"{protocol}.toml class {item.get('class')!r}")
        classes[item["class"]] = item
    digits = {}
    for item in raw.get("digit", []):
        _need(item, ("digit", "name_en", "name_zh", "description_en", "description_zh"),
              f"{protocol}.toml digit {item.get('digit')!r}")
        digits[item["digit"]] = item

    codes = {}
    for item in raw.get("code", []):
        where = f"{protocol}.toml code {item.get('code')!r}"
        _need(item, _REQUIRED_CODE_KEYS, where)
        unexpected = set(item) - set(_REQUIRED_CODE_KEYS) - set(_OPTIONAL_CODE_KEYS)
        if unexpected:
            raise CatalogError(f"{where}: unexpected fields {sorted(unexpected)}")
        if item["status"] not in STATUSES:
            raise CatalogError(f"{where}: status {item['status']!r} not in {STATUSES}")
        parsed = parse_code(item["code"])
        if parsed is None or canonical(*parsed) != item["code"]:
            raise CatalogError(f"{where}: not a canonical code")
        if item["code"] in codes:
            raise CatalogError(f"{where}: listed twice")
        codes[item["code"]] = Meaning(
            protocol=protocol, code=item["code"], level="exact",
            klass=_class_label(protocol, parsed[0], ranges),
            **{key: item[key] for key in _REQUIRED_CODE_KEYS if key != "code"},
            **{key: item.get(key, "") for key in _OPTIONAL_CODE_KEYS})
    return _Table(protocol, codes, tuple(ranges), classes, digits, unknown)


@functools.cache
def _tables() -> dict[str, _Table]:
    source = data_source()
    return {protocol: _load_table(protocol, (source / f"{protocol}.toml").read_text(encoding="utf-8"))
            for protocol in PROTOCOLS}


# ---------------------------------------------------------------- parsing

def parse_code(code) -> tuple[int, int | None] | None:
    """(major, minor) from 404, "403.14", "500-12"; None when it is not a code."""
    if isinstance(code, bool):
        code = int(code)
    if isinstance(code, int):
        return (code, None) if 0 <= code <= 99999 else None
    if not isinstance(code, str):
        return None
    match = _CODE_RE.match(code)
    if match is None:
        return None
    return int(match.group(1)), (int(match.group(2)) if match.group(2) is not None else None)


def canonical(major: int, minor: int | None) -> str:
    return str(major) if minor is None else f"{major}.{minor}"


def normalize_protocol(protocol) -> str:
    text = str(protocol).strip().lower() if isinstance(protocol, str) else ""
    return _ALIASES.get(text, text)


def _with_substatus(parsed, substatus):
    """Fold a separate substatus ("14", "403.14", "403-14") into (major, minor)."""
    major, minor = parsed
    if minor is not None or substatus is None:
        return parsed
    if isinstance(substatus, int) and not isinstance(substatus, bool):
        substatus = str(substatus)
    if not isinstance(substatus, str) or not substatus.strip():
        return parsed
    match = _SUB_RE.match(substatus)
    if match is None:
        return parsed
    if match.group(1) is not None and int(match.group(1)) != major:
        return parsed      # a sub-status of another code says nothing about this one
    return major, int(match.group(2))


# ---------------------------------------------------------------- lookup

# Phrases the fallback levels add to the data's own texts.
_FALLBACK = {
    "parent": {
        "en": " (Sub-status {code} is not in the catalogue; this is the meaning of {parent}.)",
        "zh": "（目录中没有子状态 {code}，以上为其父状态码 {parent} 的含义。）",
    },
    "class": {
        "en": " ({code} is not in the catalogue; it is explained by its class.)",
        "zh": "（目录中没有 {code}，以上按其类别解释。）",
    },
    "range": {
        "en": "",
        "zh": "",
    },
    "digit": {
        "en": " Second digit {digit}, {name}: {description}",
        "zh": " 第二位数字 {digit}（{name}）：{description}",
    },
    "no_digit": {
        "en": " Second digit {digit}: RFC 959 assigns no function group to it.",
        "zh": " 第二位数字 {digit}：RFC 959 没有为其指定功能组。",
    },
    "no_protocol": {
        "en": "There is no catalogue for protocol {protocol!r}; known protocols are http, ftp and websocket.",
        "zh": "没有协议 {protocol!r} 的目录；已知协议为 http、ftp 和 websocket。",
    },
}


def _unknown(protocol: str, text: str, table: _Table | None, raw_protocol) -> Meaning:
    if table is None:
        return Meaning(
            protocol=protocol, code=text, level="unknown", klass="",
            name_en="Unknown protocol", name_zh="未知协议",
            description_en=_FALLBACK["no_protocol"]["en"].format(protocol=str(raw_protocol)[:40]),
            description_zh=_FALLBACK["no_protocol"]["zh"].format(protocol=str(raw_protocol)[:40]),
            status="unofficial", reference="")
    raw = table.unknown
    return Meaning(
        protocol=protocol, code=text, level="unknown", klass="",
        name_en=raw["name_en"], name_zh=raw["name_zh"],
        description_en=raw["description_en"], description_zh=raw["description_zh"],
        status="unofficial", reference=raw.get("reference", ""))


def _by_class(table: _Table, major: int, text: str) -> Meaning | None:
    if not 100 <= major <= 999:
        return None
    label = _class_label(table.protocol, major, table.ranges)
    raw = table.classes.get(label)
    if raw is None:
        return None
    name_en, name_zh = raw["name_en"], raw["name_zh"]
    desc_en, desc_zh = raw["description_en"], raw["description_zh"]
    reference = raw["reference"]
    if table.digits:
        digit = str(major)[1]
        info = table.digits.get(digit)
        if info is None:
            desc_en += _FALLBACK["no_digit"]["en"].format(digit=digit)
            desc_zh += _FALLBACK["no_digit"]["zh"].format(digit=digit)
        else:
            name_en += f" / {info['name_en']}"
            name_zh += f" / {info['name_zh']}"
            desc_en += _FALLBACK["digit"]["en"].format(digit=digit, name=info["name_en"],
                                                       description=info["description_en"])
            desc_zh += _FALLBACK["digit"]["zh"].format(digit=digit, name=info["name_zh"],
                                                       description=info["description_zh"])
        if "RFC 959 §4.2" not in reference:
            reference += "; RFC 959 §4.2"
    return Meaning(
        protocol=table.protocol, code=text, level="class", klass=label,
        name_en=name_en, name_zh=name_zh,
        description_en=desc_en + _FALLBACK["class"]["en"].format(code=text),
        description_zh=desc_zh + _FALLBACK["class"]["zh"].format(code=text),
        status="unofficial", reference=reference)


@functools.lru_cache(maxsize=LOOKUP_CACHE_SIZE)
def _lookup(protocol, code, substatus) -> Meaning:
    name = normalize_protocol(protocol)
    table = _tables().get(name)
    parsed = parse_code(code)
    if parsed is None:
        shown = code.strip()[:40] if isinstance(code, str) else repr(code)[:40]
        return _unknown(name, shown, table, protocol)
    major, minor = _with_substatus(parsed, substatus)
    text = canonical(major, minor)
    if table is None:
        return _unknown(name, text, None, protocol)

    found = table.codes.get(text)
    if found is not None:
        return found
    if minor is not None:
        parent = table.codes.get(str(major))
        if parent is not None:
            values = {"code": text, "parent": parent.code}
            return replace(
                parent, code=text, level="parent",
                description_en=parent.description_en + _FALLBACK["parent"]["en"].format(**values),
                description_zh=parent.description_zh + _FALLBACK["parent"]["zh"].format(**values),
                history_en="", history_zh="")
    for low, high, meaning in table.ranges:
        if low <= major <= high:
            return replace(meaning, code=text)
    by_class = _by_class(table, major, text)
    if by_class is not None:
        return by_class
    return _unknown(name, text, table, protocol)


def lookup(protocol: str, code, substatus: str | None = None) -> Meaning:
    """The meaning of `code` for `protocol`; never raises for int/str input.

    `code` may be an int (404), or text: "403.14", "500-12", "4001".
    `substatus` ("14" or "403.14") refines an int code (IIS sub-status).
    """
    try:
        return _lookup(protocol, code, substatus)
    except TypeError:      # unhashable argument: look it up uncached
        return _lookup.__wrapped__(protocol, code, substatus)


@functools.lru_cache(maxsize=LOOKUP_CACHE_SIZE)
def _annotate(protocol, code, substatus, lang) -> tuple:
    lang = lang if lang in LANGS else "en"
    meaning = lookup(protocol, code, substatus or None)
    # `standard` is about the code on the wire: a 403 stays standard even
    # when the body shows an IIS sub-status.
    wire = lookup(protocol, code) if substatus else meaning
    return meaning.klass, meaning.name(lang), meaning.summary(lang), wire.is_standard


def annotate(protocol: str, code: int, substatus: str = "", lang: str = "en") -> dict:
    """The columns one event gains: class, name, meaning (in `lang`), standard."""
    try:
        values = _annotate(protocol, code, substatus, lang)
    except TypeError:
        values = _annotate.__wrapped__(protocol, code, substatus, lang)
    return dict(zip(("class", "name", "meaning", "standard"), values))


def entries(protocol: str | None = None) -> list[Meaning]:
    """Every exact entry (then, for WebSocket, every range), in file order."""
    names = PROTOCOLS if protocol is None else (normalize_protocol(protocol),)
    out: list[Meaning] = []
    for name in names:
        table = _tables().get(name)
        if table is not None:
            out.extend(table.codes.values())
            out.extend(meaning for _, _, meaning in table.ranges)
    return out


def class_name(protocol: str, label: str, lang: str = "en") -> str:
    """Display name of a class label ("4xx", "5yz") or WebSocket range ("4000-4999")."""
    table = _tables().get(normalize_protocol(protocol))
    if table is None or not label:
        return ""
    raw = table.classes.get(label)
    if raw is not None:
        return raw["name_zh"] if lang == "zh" else raw["name_en"]
    for _, _, meaning in table.ranges:
        if meaning.klass == label:
            return meaning.name(lang)
    return ""


def classes(protocol: str) -> list[dict]:
    """The class table (and, for FTP, the second-digit table) as stored."""
    table = _tables().get(normalize_protocol(protocol))
    if table is None:
        return []
    return [dict(item) for item in table.classes.values()] + [dict(item) for item in table.digits.values()]


def default_lang(environ=None) -> str:
    """"zh" when the locale asks for Chinese, else "en".

    The variables are read in POSIX precedence for messages: LC_ALL, then
    LC_MESSAGES, then LANG; the first that is set decides.  A value starting
    with "zh" (zh_CN.UTF-8, zh_TW, zh) selects Chinese.
    """
    env = os.environ if environ is None else environ
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = env.get(var, "")
        if value:
            return "zh" if value.strip().lower().startswith("zh") else "en"
    return "en"
