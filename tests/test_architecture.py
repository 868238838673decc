"""The shape of the house, checked from the code's own imports: no circles, dependencies one way."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("qcore", "dashboard", "board_agent")
# the engine's layers, lowest first: a module may import its own layer and the ones before it
LAYERS = ("qtyping", "defaults", "serialize", "recipes", "quiet", "tflite", "inputs", "engines", "repair", "explain", "store",
          "lab", "boards", "jobs", "cli")
# modules that compute and return values: they never see the store
ENGINE_PACKAGES = ("qcore.inputs", "qcore.tflite", "qcore.engines", "qcore.repair", "qcore.explain")


def _modules() -> dict[str, Path]:
    found = {}
    for pkg in PACKAGES:
        for f in (REPO / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = f
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> Iterator[tuple[str, int]]:
    """Every project module `module` imports (anywhere in the file, inside functions too), with the line."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            resolved = _resolve(target)
            # a package's __init__ importing its own submodules, or a submodule its package, is not an edge
            if resolved and resolved != module and not resolved.startswith(module + ".") \
                    and not module.startswith(resolved + "."):
                yield resolved, node.lineno


def _graph() -> dict[str, set[str]]:
    return {m: {t for t, _ in _imports(m)} for m in MODULES}


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    assert _circles(_graph()) == []


def test_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "qcore" or len(parts) < 2 or parts[1] not in LAYERS:
        return None
    return LAYERS.index(parts[1])


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("qcore.")))
def test_qcore_depends_downwards(module: str) -> None:
    mine = _layer(module)
    if mine is None:
        return
    upward = [f"{t} (line {line})" for t, line in _imports(module)
              if (theirs := _layer(t)) is not None and theirs > mine]
    assert not upward, f"{module} imports a layer above it: {upward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith(ENGINE_PACKAGES)))
def test_engine_modules_never_import_the_store(module: str) -> None:
    assert not [t for t, _ in _imports(module) if t.startswith("qcore.store")]


def test_qcore_never_imports_streamlit_and_the_agent_imports_neither() -> None:
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                  and not n.level}
        if module.startswith("qcore"):
            assert "streamlit" not in names, module
        if module.startswith("board_agent"):
            # numpy comes with the board's TFLite runtime; nothing else beyond the standard library
            assert not names & {"qcore", "dashboard", "tensorflow", "streamlit", "duckdb", "pandas", "requests"}, module
