# Which codes count as errors: the severity policy.
#
# A policy holds, per protocol, a list of error selectors and a list of
# expected selectors; a code is an error when it matches an error selector and
# no expected one (expected wins, so `expected = [401]` silences 401 inside the
# default "4xx").  Selectors are data, written the way engineers say them:
#
#   "4xx" / "4yz"      a class by first digit (FTP's RFC 959 notation accepted)
#   "404"              one code
#   "3000-3999"        an inclusive range (WebSocket application codes)
#   "*"                every code
#
# Defaults (issue 6, issue 11): HTTP 4xx+5xx; FTP 4yz+5yz; WebSocket every
# close except the spec's normal ones, 1000 (normal), 1001 (going away) and
# 1005 (a close frame without a status code); the inferred 1006 is an error.
# FTP 6yz is NOT an error by default: RFC 2228's 631-633 are envelopes that
# carry another, protected reply we cannot read, so calling them failures
# would double-count or invent failures.  Sub-status (403.14) is not a policy
# dimension: the parent code decides.
#
# Sources of a policy: `Policy.from_file(path)` reads a small TOML file
#
#     [http]
#     expected = [401, 304]
#     errors = ["4xx", "5xx"]
#     [websocket]
#     expected = [1000, 1001, 1005]
#
# (a table replaces only the keys it names), and `Policy.from_options(expect=
# ["http:401", "websocket:1005"], errors=["http:3xx"])` does the same from
# command-line options, on top of an optional base policy.
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from analyzer import protocols as _registry
from analyzer.errors import UsageError

PROTOCOLS = _registry.EVENT_PROTOCOLS
ALIASES = {"ws": "websocket", "wss": "websocket", "https": "http"}

_CLASS_RE = re.compile(r"^([0-9])(?:xx|yz)$", re.IGNORECASE)
_CODE_RE = re.compile(r"^[0-9]{1,5}$")
_RANGE_RE = re.compile(r"^([0-9]{1,5})\s*-\s*([0-9]{1,5})$")


@dataclass(frozen=True, slots=True)
class Selector:
    """One matching rule: kind is "class", "code", "range" or "all"."""

    kind: str
    low: int = 0
    high: int = 0
    text: str = ""

    def mask(self, codes: np.ndarray) -> np.ndarray:
        if self.kind == "all":
            return np.ones(codes.shape, dtype=bool)
        if self.kind == "class":
            return (codes // 100) == self.low
        return (codes >= self.low) & (codes <= self.high)

    def matches(self, code: int) -> bool:
        return bool(self.mask(np.asarray([code]))[0])


def parse_selector(value) -> Selector:
    """Parse "4xx", "5yz", 404, "404", "3000-3999" or "*"; UsageError otherwise."""
    if isinstance(value, bool):
        raise UsageError(f"bad code selector {value!r}: expected e.g. 404, \"4xx\", \"3000-3999\" or \"*\"")
    if isinstance(value, int):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise UsageError(f"bad code selector {value!r}: expected e.g. 404, \"4xx\", \"3000-3999\" or \"*\"")
    if text in ("*", "all"):
        return Selector("all", text="*")
    if m := _CLASS_RE.match(text):
        return Selector("class", int(m.group(1)), int(m.group(1)), text.lower())
    if _CODE_RE.match(text):
        return Selector("code", int(text), int(text), str(int(text)))
    if m := _RANGE_RE.match(text):
        low, high = int(m.group(1)), int(m.group(2))
        if low <= high:
            return Selector("range", low, high, f"{low}-{high}")
    raise UsageError(f"bad code selector {value!r}: expected e.g. 404, \"4xx\", \"3000-3999\" or \"*\"")


def normalise_protocol(name: str) -> str:
    proto = ALIASES.get(name.strip().lower(), name.strip().lower())
    if proto not in PROTOCOLS:
        raise UsageError(f"unknown protocol {name!r}: expected one of {', '.join(PROTOCOLS)}")
    return proto


@dataclass(frozen=True, slots=True)
class ProtocolRule:
    errors: tuple[Selector, ...]
    expected: tuple[Selector, ...] = ()

    def mask(self, codes: np.ndarray) -> np.ndarray:
        hit = np.zeros(codes.shape, dtype=bool)
        for sel in self.errors:
            hit |= sel.mask(codes)
        for sel in self.expected:
            hit &= ~sel.mask(codes)
        return hit


def _rule(errors: Iterable, expected: Iterable = ()) -> ProtocolRule:
    return ProtocolRule(tuple(parse_selector(s) for s in errors), tuple(parse_selector(s) for s in expected))


# Each protocol's spec holds its defaults (analyzer/protocols/<name>/__init__.py).
DEFAULT_RULES = {
    spec.name: _rule(spec.default_errors, spec.default_expected)
    for spec in _registry.all_protocols() if spec.event_protocol
}


@dataclass(frozen=True)
class Policy:
    rules: Mapping[str, ProtocolRule] = field(default_factory=lambda: dict(DEFAULT_RULES))

    @classmethod
    def default(cls) -> "Policy":
        return cls(dict(DEFAULT_RULES))

    def is_error(self, protocol: str, code: int) -> bool:
        rule = self.rules.get(protocol)
        return bool(rule is not None and rule.mask(np.asarray([int(code)]))[0])

    def error_mask(self, protocols, codes) -> np.ndarray:
        """Vectorised `is_error` over parallel sequences (pandas Series or arrays)."""
        protos = np.asarray(protocols, dtype=object)
        codes = np.asarray(codes, dtype=np.int64)
        out = np.zeros(codes.shape, dtype=bool)
        for proto, rule in self.rules.items():
            sel = protos == proto
            if sel.any():
                out[sel] = rule.mask(codes[sel])
        return out

    def describe(self) -> dict:
        return {
            proto: {"errors": [s.text for s in rule.errors], "expected": [s.text for s in rule.expected]}
            for proto, rule in self.rules.items()
        }

    @classmethod
    def from_mapping(cls, data: Mapping, base: "Policy | None" = None, where: str = "policy") -> "Policy":
        rules = dict((base or cls.default()).rules)
        for name, table in data.items():
            proto = normalise_protocol(str(name))
            if not isinstance(table, Mapping):
                raise UsageError(f"{where}: [{name}] must be a table with 'errors' and/or 'expected'")
            unknown = set(table) - {"errors", "expected"}
            if unknown:
                raise UsageError(f"{where}: [{name}] has unknown key(s) {', '.join(sorted(unknown))}; allowed: errors, expected")
            old = rules[proto]
            errors = old.errors
            expected = old.expected
            for key in ("errors", "expected"):
                if key in table and not isinstance(table[key], list):
                    raise UsageError(f"{where}: [{name}] {key} must be a list, e.g. {key} = [401, \"3xx\"]")
            if "errors" in table:
                errors = tuple(parse_selector(s) for s in table["errors"])
            if "expected" in table:
                expected = tuple(parse_selector(s) for s in table["expected"])
            rules[proto] = ProtocolRule(errors, expected)
        return cls(rules)

    @classmethod
    def from_file(cls, path: str | Path, base: "Policy | None" = None) -> "Policy":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise UsageError(f"cannot read severity policy {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"severity policy {path} is not valid TOML: {exc}") from None
        return cls.from_mapping(data, base, where=str(path))

    @classmethod
    def from_options(cls, expect: Iterable[str] = (), errors: Iterable[str] = (), base: "Policy | None" = None) -> "Policy":
        """`expect`/`errors` items are "PROTO:SEL[,SEL...]"; they add to the base lists."""
        policy = base or cls.default()
        rules = dict(policy.rules)
        for key, items in (("expected", expect), ("errors", errors)):
            for item in items:
                proto, sep, sels = str(item).partition(":")
                if not sep or not sels.strip():
                    raise UsageError(f"bad --{'expect' if key == 'expected' else 'error'} value {item!r}: expected PROTO:CODE, e.g. http:401")
                proto = normalise_protocol(proto)
                new = tuple(parse_selector(s) for s in sels.split(","))
                old = rules[proto]
                if key == "expected":
                    rules[proto] = ProtocolRule(old.errors, old.expected + new)
                else:
                    rules[proto] = ProtocolRule(old.errors + new, old.expected)
        return cls(rules)


def make_policy(policy=None, expect=()) -> Policy:
    """--policy FILE (or a ready Policy) plus --expect PROTO:CODE options."""
    if isinstance(policy, Policy):
        base = policy
    elif policy:
        base = Policy.from_file(policy)
    else:
        base = Policy.default()
    return Policy.from_options(expect=list(expect or ()), base=base)
