"""Network traffic status analyzer: which hosts answered what, and what it means.

Library first: `analyzer.analyze(paths, **options)` runs the same pipeline as
`analyzer analyze` and returns its tables as pandas DataFrames.
"""
from __future__ import annotations

from analyzer._version import __version__

__all__ = ["__version__", "analyze"]


def analyze(paths, outdir=None, **options):
    """Analyse capture files; see analyzer.api.analyze."""
    from analyzer.api import analyze as _analyze

    return _analyze(paths, outdir, **options)
