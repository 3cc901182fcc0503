"""The package's import graph: no cycle, and every import goes to the same layer or one below.

Every module under geosearch/ is parsed with ``ast`` (no import runs); every ``import`` and
``from ... import`` of a geosearch module counts, wherever it stands (inside functions and
``if TYPE_CHECKING:`` blocks too). The layers, lowest first (README "How it works" walks
them in the same order):

 0 foundation  errors, version, formats, dates, config, pixels (Window, RawTile)
 1 readers     products, sources
 2 bands       embeddings, bands, orientation
 3 features    features/ (one module per extractor, fusion)
 4 store       geopackage, session_store, store
 5 index       index
 6 catalog     catalog (a database opened for work: store + manifest + fusion)
 7 search      request, classifier, feedback, register, locate, copies, search
 8 output      render, maps, coverage
 9 engines     engines/ (registry, shared writer, local, spark)
10 commands    ingest, batch, sessions, check, migrate, detection, chips
11 api         api, geosearch (the package: its public names)
12 front ends  cli, __main__, serve/

A new module gets a line in LAYERS: the test fails for a module without one.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "geosearch"
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("errors", "version", "formats", "dates", "config", "pixels")),
    ("readers", ("products", "sources")),
    ("bands", ("embeddings", "bands", "orientation")),
    ("features", ("features",)),
    ("store", ("geopackage", "session_store", "store")),
    ("index", ("index",)),
    ("catalog", ("catalog",)),
    ("search", ("request", "classifier", "feedback", "register", "locate", "copies", "search")),
    ("output", ("render", "maps", "coverage")),
    ("engines", ("engines",)),
    (
        "commands",
        ("ingest", "batch", "sessions", "check", "migrate", "changes", "detection", "chips"),
    ),
    ("api", ("api", "")),
    ("front ends", ("cli", "__main__", "serve")),
]


def module_names() -> dict[str, Path]:
    """Dotted name of every module in the package (a package by its ``__init__``)."""
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that module ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0]
                base = f"{anchor}.{base}" if base else anchor
            # ``from geosearch import api`` imports the module geosearch.api
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]  # fmt: skip
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def layer_of(name: str) -> int:
    relative = name.removeprefix("geosearch").removeprefix(".")
    for number, (_, members) in enumerate(LAYERS):
        for member in members:
            if relative == member or (member and relative.startswith(member + ".")):
                return number
    raise AssertionError(f"{name} has no layer: add it to LAYERS in {__file__}")


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def test_every_import_goes_to_its_own_layer_or_below():
    graph = import_graph()
    upward = [
        f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(name)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    state: dict[str, str] = {}  # "open" while on the path, "done" once explored

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                return [*path, name, target]
            if target not in state and (cycle := visit(target, [*path, name])):
                return cycle
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state and (cycle := visit(name, [])):
            start = cycle.index(cycle[-1])
            raise AssertionError("import cycle: " + " -> ".join(cycle[start:]))


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "geosearch.serve" in graph["geosearch.cli"]  # ``serve`` imports it in the function
    assert "geosearch.batch" in graph["geosearch.api"]


def test_the_store_reads_no_imagery():
    graph = import_graph()
    for name in ("geosearch.geopackage", "geosearch.session_store", "geosearch.store"):
        assert not graph[name] & {"geosearch.sources", "geosearch.products"}, name
