"""The package layout is the architecture (README "Architecture"): layers import only downwards.

Layers, top to bottom: ``cli`` > ``launch`` > ``planning`` > ``training`` > ``evaluation`` > ``tracking`` >
``models`` > ``data`` > ``config`` > ``core``. A module may import segexp modules of its own layer or below, at
module level only (no function-local segexp imports hide a circle), and the import graph has no cycle.

Inside ``data`` the sub-packages are stages, in the same way: ``io`` < ``phantom`` < ``runtime`` < ``prepare``
(``segexp/data/__init__.py``). ``io`` imports no other stage; ``runtime`` never imports ``prepare``; of
``prepare``, only ``check`` imports ``runtime`` (it lists and reads a dataset exactly as training does).
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
DATA_STAGES = ["io", "phantom", "runtime", "prepare"]
#: The modules of a later stage that may import ``runtime`` (the dataset check reads as training does).
RUNTIME_IMPORTERS_OUTSIDE = {"segexp.data.prepare.check"}


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


def data_stage(module: str) -> int:
    parts = module.split(".")
    if len(parts) < 3 or parts[2] not in DATA_STAGES:
        pytest.fail(f"{module} is outside the data stages {DATA_STAGES}")
    return DATA_STAGES.index(parts[2])


def test_every_data_module_lives_in_a_stage_package() -> None:
    loose = sorted(p.name for p in (PACKAGE / "data").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"modules of segexp/data outside its stage packages: {loose}"


def test_data_stages_import_only_their_own_stage_or_earlier() -> None:
    problems = []
    for module, path in MODULES.items():
        if not module.startswith("segexp.data."):
            continue
        for target, line, _ in segexp_imports(path):
            if target == "segexp.data" or not target.startswith("segexp.data."):
                continue
            if data_stage(target) > data_stage(module):
                problems.append(f"{module}:{line}: imports {target} from a later data stage")
            elif (
                target.startswith("segexp.data.runtime")
                and not module.startswith("segexp.data.runtime")
                and module not in RUNTIME_IMPORTERS_OUTSIDE
            ):
                problems.append(f"{module}:{line}: imports {target}; only {RUNTIME_IMPORTERS_OUTSIDE} may")
    assert problems == []
