# The compiled fast path (analyzer/_fast/loop.pyx) as an optional extension:
# everything else is declared in pyproject.toml.
#
# Cython comes from the build requirements; the C compiler from the system.
# Without a compiler (or with ANALYZER_NO_EXTENSIONS=1 at build time) the
# install still succeeds, with a warning, and the analyzer runs its
# pure-Python loop (analyzer/_fast/__init__.py tells the user once).
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCE = "analyzer/_fast/loop.pyx"  # and http_head.pyx, rows.pyx, csv_rows.pyx, http_conn.pyx beside it
# Twins: pure-Python reference modules compiled as they are, under another
# name (as aiohttp builds _websocket/reader_c from reader_py.py), so the
# logic cannot drift; analyzer/_fast/__init__.py selects them.
TWINS = {
    "analyzer._fast.http_dissector": "analyzer/protocols/http/dissector.py",
}
NO_EXTENSIONS = any(os.environ.get(n, "").strip() not in ("", "0")
                    for n in ("ANALYZER_NO_EXTENSIONS", "ANALYZER_PURE_PYTHON"))


class OptionalBuildExt(build_ext):
    """build_ext that warns instead of failing: the extension is a speed-up, not a need."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - no compiler, no headers, Cython error
            self._skipped(exc)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            self._skipped(exc)

    @staticmethod
    def _skipped(exc):
        print(f"warning: the compiled fast path was not built ({exc}); "
              "the analyzer will run its pure-Python loop", file=sys.stderr)


def extensions():
    if NO_EXTENSIONS:
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        print("warning: Cython is missing; the compiled fast path is not built", file=sys.stderr)
        return []
    loop = cythonize([Extension("analyzer._fast.loop", [SOURCE], extra_compile_args=["-O2"]),
                      Extension("analyzer._fast.http_head", ["analyzer/_fast/http_head.pyx"],
                                extra_compile_args=["-O2"]),
                      Extension("analyzer._fast.rows", ["analyzer/_fast/rows.pyx"], extra_compile_args=["-O2"]),
                      Extension("analyzer._fast.csv_rows", ["analyzer/_fast/csv_rows.pyx"],
                                extra_compile_args=["-O2"]),
                      Extension("analyzer._fast.http_conn", ["analyzer/_fast/http_conn.pyx"],
                                extra_compile_args=["-O2"])],
                     compiler_directives={"language_level": "3"}, build_dir="build/cython", quiet=True)
    # annotation_typing off: a twin keeps Python's semantics exactly (an
    # annotation is documentation there, not a C type check).
    twins = cythonize([Extension(name, [path], extra_compile_args=["-O2"]) for name, path in TWINS.items()],
                      compiler_directives={"language_level": "3", "annotation_typing": False},
                      build_dir="build/cython", quiet=True)
    return loop + twins


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
