"""Dependencies run one way: no module of analyzer/ imports a module that
imports it back (directly or through others), counting imports inside
functions too, since a lazy import is still a dependency."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "analyzer"

# Cycles allowed for now, each as the modules it runs through; the edges
# among them are ignored by test_no_import_cycles.
KNOWN_CYCLES: set[tuple[str, ...]] = set()  # none: keep it that way
# Dissectors that still import the meaning layer: none.
KNOWN_MEANING_IMPORTS: set[str] = set()


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                edges.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                edges.add(sub if sub in known else target)
    # Edges go to the module named; the parent packages an import also runs
    # are not counted (every module would otherwise depend on analyzer/__init__).
    out = set()
    for e in edges:
        if e in known and e != name:
            out.add(e)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def components(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return comps


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """One cycle path through each strongly connected component."""
    return [_path(g, comp) for comp in components(g)]


def _path(g, comp: list[str]) -> list[str]:
    """A cycle through comp's first module, by breadth-first search inside comp."""
    start, members = comp[0], set(comp)
    prev, frontier = {start: None}, [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v] & members):
                if w == start:
                    path = [v]
                    while prev[path[-1]] is not None:
                        path.append(prev[path[-1]])
                    return [start] + path[::-1][1:] + [start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return comp


def test_the_walk_sees_lazy_imports():
    g = graph()
    assert "analyzer.engines.parallel" in g["analyzer.engines"]   # imported inside run()


def _without_known(g: dict[str, set[str]]) -> dict[str, set[str]]:
    g = {k: set(v) for k, v in g.items()}
    for cycle in KNOWN_CYCLES:
        for a in cycle:
            g[a] -= set(cycle)
    return g


def test_no_import_cycles():
    found = cycles(_without_known(graph()))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_known_cycles_are_still_real():
    # An exception that no longer happens is removed from KNOWN_CYCLES.
    comps = [set(c) for c in components(graph())]
    for cycle in KNOWN_CYCLES:
        assert any(set(cycle) <= comp for comp in comps), cycle


def test_dissectors_do_not_import_meaning():
    # A dissector turns bytes into messages; what a code means is the
    # caller's business (the catalogue may not even be installed).
    g = graph()
    bad = {m: sorted(e for e in deps if e.startswith("analyzer.meaning"))
           for m, deps in g.items() if m.startswith("analyzer.protocols") and m not in KNOWN_MEANING_IMPORTS}
    assert not {m: e for m, e in bad.items() if e}


def test_every_package_is_installed():
    # pyproject.toml lists the packages by hand: a new one left out installs
    # an analyzer that fails on import (the tests, run from the tree, would not see it).
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob("__init__.py")}
    assert found - listed == set()
