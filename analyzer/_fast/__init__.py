# Which implementation of the packet loop runs: the one place that decides.
#
#   compiled  analyzer/_fast/loop.pyx (Cython), built by `pip install` when a
#             C compiler is there; the per-packet work in C (see its header).
#   python    engines/native.py's Session.read_file: the reference, always
#             there, and what the compiled loop is tested against.
#
# As aiohttp does with AIOHTTP_NO_EXTENSIONS, ANALYZER_NO_EXTENSIONS=1 (or
# the name for it, ANALYZER_PURE_PYTHON=1) forces the Python loop;
# it is read when this module is first imported.  A missing build is not an
# error: the Python loop runs, and the CLI says so once on stderr
# (`notice()`).  Tests switch with `use()`.
from __future__ import annotations

import os

SWITCHES = ("ANALYZER_NO_EXTENSIONS", "ANALYZER_PURE_PYTHON")
IMPLEMENTATIONS = ("compiled", "python")

# How much slower the Python loop is than the compiled one, as measured by
# benchmarks/fastpath.py (see README "Speed"): what the notice tells.
PYTHON_SLOWDOWN = "about 2-4x"


def _switched_off() -> bool:
    return any(os.environ.get(name, "").strip() not in ("", "0") for name in SWITCHES)


def _load():
    try:
        from analyzer._fast import loop
    except ImportError as exc:  # not built (no compiler at install time) or built for another Python
        return None, str(exc)
    return loop, ""


_COMPILED, _WHY_NOT = _load()
_forced = "python" if _switched_off() else None


def available() -> bool:
    """True when the compiled loop is built and importable."""
    return _COMPILED is not None


def selected() -> str:
    """"compiled" or "python": what the next Session will run."""
    if _forced is not None:
        return _forced
    return "compiled" if _COMPILED is not None else "python"


def use(name: str | None) -> None:
    """Force an implementation ("compiled", "python"), or None for the default.

    ValueError for "compiled" when it is not built (tests skip on that).
    """
    global _forced
    if name is not None and name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {name!r} (choose from {', '.join(IMPLEMENTATIONS)})")
    if name == "compiled" and _COMPILED is None:
        raise ValueError(f"the compiled loop is not built ({_WHY_NOT})")
    _forced = name


def read_file():
    """The compiled Session.read_file, or None when the Python one is to run."""
    if selected() == "compiled":
        return _COMPILED.read_file
    return None


def notice() -> str:
    """One line for stderr when the compiled loop is missing (not when switched off); else ""."""
    if _COMPILED is not None or _switched_off():
        return ""
    return ("analyzer: the compiled fast path is not built (no C compiler when it was installed?); "
            f"running the pure-Python engine, {PYTHON_SLOWDOWN} slower "
            "(install gcc and python3-dev, then reinstall; ANALYZER_NO_EXTENSIONS=1 hides this)")
