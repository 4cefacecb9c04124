"""The package's imports flow one way: no cycle between asr modules, counting imports inside functions.

Every ``import``/``from ... import`` in asr/ is read with ``ast`` (inside functions, methods and
``if TYPE_CHECKING`` blocks too: a lazy import is still a dependency). ``from asr import x`` counts as
an import of the submodule ``asr.x`` when there is one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "asr"


def _modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The asr module that importing ``name`` loads (``asr.a.b.f`` -> ``asr.a.b``), or None."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the asr modules it imports anywhere in its source (the package itself excluded)."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        base = name if is_package else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base.split(".")[: len(base.split(".")) - node.level + 1]
                    mod = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                targets = [f"{mod}.{a.name}" for a in node.names]
            for target in targets:
                dep = _resolve(target, modules)
                # "import asr" / "from asr import checkpoint": the package's __init__ is not a layer.
                if dep is not None and dep != name and dep != "asr":
                    deps.add(dep)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_checker_sees_a_cycle_through_a_function_level_import(tmp_path):
    fake = tmp_path / "asr"
    (fake / "sub").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "sub" / "__init__.py").write_text("")
    (fake / "a.py").write_text("from asr.b import f\n")
    (fake / "b.py").write_text("def f():\n    from asr.sub import c\n")
    (fake / "sub" / "c.py").write_text("from ..a import x\n")
    modules = _modules(fake)
    cycle = find_cycle(import_graph(modules))
    assert cycle is not None and set(cycle) == {"asr.a", "asr.b", "asr.sub.c"}
    (fake / "sub" / "c.py").write_text("import os\n")
    assert find_cycle(import_graph(modules)) is None


def test_no_import_cycle_in_asr():
    graph = import_graph(_modules())
    assert "asr.decoding" in graph and graph["asr.transcribe"] >= {"asr.inference"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("upper,lower", [
    ("asr.decode_manifest", "asr.inference"),
    ("asr.transcribe", "asr.inference"),
    ("asr.inference", "asr.decoding"),
    ("asr.decoding", "asr.align"),
])
def test_layers_point_down(upper, lower):
    """model <- decoding <- inference <- transcribe / decode_manifest <- cli, and nothing upward."""
    graph = import_graph(_modules())
    assert lower in graph[upper]
    order = ["asr.align", "asr.decoding", "asr.inference", "asr.transcribe", "asr.decode_manifest", "asr.cli"]
    for i, name in enumerate(order):
        above = set(order[i + 1:]) - ({"asr.decode_manifest"} if name == "asr.transcribe" else set())
        assert not graph[name] & above, f"{name} imports {graph[name] & above}"


def test_package_exports_no_name_that_hides_a_submodule():
    import asr

    submodules = {n.rpartition(".")[2] for n in _modules() if n.count(".") == 1}
    assert not set(asr.__all__) & submodules
    from asr import transcribe  # noqa: F401  (binds the submodule as an attribute of the package)

    assert type(asr.transcribe).__name__ == "module" and callable(asr.transcribe.transcribe)
