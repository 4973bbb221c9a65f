"""Fixtures shared by the test files.

`implementation` runs a test of events once per packet loop: the pure-Python
reference (engines/native.py) and the compiled one (analyzer/_fast), as
multidict's and aiohttp's test suites run C and Python side by side.  The
compiled run is skipped, with the reason, when the extension is not built
(`python setup.py build_ext --inplace`, which tests/setup-and-run.sh does).
"""
from __future__ import annotations

import pytest


@pytest.fixture(params=["python", "compiled"])
def implementation(request):
    from analyzer import _fast

    if request.param == "compiled" and not _fast.available():
        pytest.skip("the compiled fast path is not built (python setup.py build_ext --inplace)")
    _fast.use(request.param)
    try:
        yield request.param
    finally:
        _fast.use(None)
