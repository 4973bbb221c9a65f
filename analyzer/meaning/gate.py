# The CI gate: `--fail-on EXPR` thresholds over the finished statistics.
#
#   EXPR      := PROTO "." SELECTOR OP NUMBER ["%"]
#   PROTO     := http | ftp | websocket (alias ws)
#   SELECTOR  := errors            events the severity policy calls errors
#              | Dxx | Dyz         a class by first digit (HTTP/FTP; FTP accepts both spellings)
#              | CODE              one code (404, 530, 1006)
#              | CODE.SUB          an IIS sub-status proven by the body (403.14)
#   OP        := > | >= | < | <= | == | !=
#
# Without `%` the number is a count of events; with `%` it is a percentage of
# that protocol's events (0 % when the protocol has no events, so a rate rule
# never fires on a capture without that protocol: gate on `http.errors>=0`-style
# counts if absence itself matters).  A rule "fires" when its comparison is
# true; `evaluate` returns one human-readable reason per fired rule, and the
# CLI exits with ExitStatus.THRESHOLD when the list is not empty.
from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Iterable

from analyzer.errors import UsageError
from analyzer.meaning.severity import normalise_protocol

OPERATORS = {">=": operator.ge, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
             ">": operator.gt, "<": operator.lt}

_EXPR_RE = re.compile(
    r"^\s*(?P<proto>[A-Za-z]+)\s*\.\s*(?P<sel>[A-Za-z0-9.]+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<value>[0-9]+(?:\.[0-9]+)?)\s*(?P<pct>%)?\s*$")
_CLASS_RE = re.compile(r"^([1-6])(?:xx|yz)$", re.IGNORECASE)
_CODE_RE = re.compile(r"^[0-9]{1,5}$")
_SUB_RE = re.compile(r"^([0-9]{3})\.([0-9]{1,3})$")
_HINT = "expected PROTO.SELECTOR OP VALUE[%], e.g. http.5xx>1%, websocket.1006>0, ftp.530>=10"


@dataclass(frozen=True, slots=True)
class Rule:
    text: str          # the expression as given, for messages
    protocol: str      # http | ftp | websocket
    kind: str          # errors | class | code | substatus
    selector: str      # "errors", "5", "530", "403.14"
    op: str
    value: float
    percent: bool


def parse(expr: str) -> Rule:
    m = _EXPR_RE.match(expr or "")
    if not m:
        raise UsageError(f"bad --fail-on {expr!r}: {_HINT}")
    try:
        proto = normalise_protocol(m.group("proto"))
    except UsageError as exc:
        raise UsageError(f"bad --fail-on {expr!r}: {exc}") from None
    sel = m.group("sel")
    value = float(m.group("value"))
    percent = m.group("pct") is not None
    if percent and value > 100:
        raise UsageError(f"bad --fail-on {expr!r}: a percentage is at most 100%")
    if sel.lower() == "errors":
        kind, selector = "errors", "errors"
    elif c := _CLASS_RE.match(sel):
        if proto == "websocket":
            raise UsageError(f"bad --fail-on {expr!r}: WebSocket close codes have no Nxx classes; use a code (1006) or errors")
        if proto == "http" and c.group(1) == "6":
            raise UsageError(f"bad --fail-on {expr!r}: HTTP classes are 1xx-5xx")
        kind, selector = "class", c.group(1)
    elif _CODE_RE.match(sel):
        code = int(sel)
        low, high = {"http": (100, 999), "ftp": (100, 699), "websocket": (0, 4999)}[proto]
        if not low <= code <= high:
            raise UsageError(f"bad --fail-on {expr!r}: {proto} codes are {low}-{high}")
        kind, selector = "code", str(code)
    elif proto == "http" and _SUB_RE.match(sel):
        kind, selector = "substatus", sel
    else:
        raise UsageError(f"bad --fail-on {expr!r}: unknown selector {sel!r}; {_HINT}")
    return Rule(expr.strip(), proto, kind, selector, m.group("op"), value, percent)


def measure(rule: Rule, result) -> tuple[int, int]:
    """(matching events, all events of the rule's protocol) in a StatsResult."""
    proto = result.summary.get("protocols", {}).get(rule.protocol, {})
    total = int(proto.get("events", 0))
    if rule.kind == "errors":
        return int(proto.get("errors", 0)), total
    codes = {int(c): int(n) for c, n in proto.get("codes", {}).items()}
    if rule.kind == "class":
        digit = int(rule.selector)
        return sum(n for c, n in codes.items() if c // 100 == digit and c < 1000), total
    if rule.kind == "code":
        return codes.get(int(rule.selector), 0), total
    sub = result.substatus
    if not len(sub):
        return 0, total
    rows = sub[(sub["protocol"] == rule.protocol) & (sub["substatus"] == rule.selector)]
    return int(rows["count"].sum()), total


def evaluate(rules: Iterable[Rule], result) -> list[str]:
    reasons = []
    for rule in rules:
        count, total = measure(rule, result)
        if rule.percent:
            observed = 100.0 * count / total if total else 0.0
            shown = f"{observed:.2f}%"
        else:
            observed = float(count)
            shown = str(count)
        if OPERATORS[rule.op](observed, rule.value):
            what = "error" if rule.kind == "errors" else rule.selector + ("xx" if rule.kind == "class" else "")
            reasons.append(f"--fail-on {rule.text}: {shown} ({count} {what} of {total} {rule.protocol} events)")
    return reasons
