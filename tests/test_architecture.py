"""The package layout is the architecture (README "Architecture"): layers import only downwards.

Layers, top to bottom: ``cli`` > ``launch`` > ``planning`` > ``training`` > ``evaluation`` > ``tracking`` >
``models`` > ``data`` > ``config`` > ``core``. A module may import segexp modules of its own layer or below, at
module level only (no function-local segexp imports hide a circle), and the import graph has no cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "segexp"
LAYERS = ["core", "config", "data", "models", "tracking", "evaluation", "training", "planning", "launch", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def segexp_imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module, line, at module level)`` for every ``segexp`` import of ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "segexp":
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "segexp"]
        found += [(n, node.lineno, id(node) in top) for n in names]
    return found


def layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        pytest.fail(f"{module} is outside the layer packages {LAYERS}")
    return LAYERS.index(parts[1])


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if p.parent != PACKAGE}


def test_every_module_lives_in_a_layer_package() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules outside the layer packages: {loose}"


def test_imports_go_down_the_layers_at_module_level() -> None:
    problems = []
    for module, path in MODULES.items():
        for target, line, top_level in segexp_imports(path):
            if not top_level:
                problems.append(f"{module}:{line}: function-local import of {target}")
            elif target != "segexp" and layer(target) > layer(module):
                problems.append(f"{module}:{line}: imports {target} from a higher layer")
    assert problems == []


def test_the_import_graph_has_no_cycle() -> None:
    graph = {m: {t for t, _, _ in segexp_imports(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*stack, node])):
                return cycle
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            assert cycle is None, " -> ".join(cycle)
