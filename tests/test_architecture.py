"""The package's shape, checked: imports point down the layers, no module over 400 lines.

Layers, top to bottom (a module may import its own layer and any layer below it):

    cli.py -> pipeline -> backends | analyzers | report -> recorders | measurements | memory
    -> model | loading | settings | inputs | zoo -> config | findings | errors | units

``zoo`` builds checkpoints with the model and the loaders, so it sits with them; nothing below
the pipeline imports it. ARCHITECTURE.md draws the same picture in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "workbench"
MAX_LINES = 400

LAYERS: list[set[str]] = [
    {"pipeline"},
    {"backends", "analyzers", "report"},
    {"recorders", "measurements", "memory"},
    {"model", "loading", "settings", "inputs", "structured_text", "zoo"},
    {"config", "findings", "errors", "units", "utils"},
]
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str | None:
    """The layer part of a dotted module name inside the package (None for the package root)."""
    pieces = module.split(".")
    if pieces[0] != "workbench" or len(pieces) < 2:
        return None
    return pieces[1]


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every workbench import in ``path``, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from workbench import zoo` names a submodule
            if node.module == "workbench":
                found += [(node.lineno, f"workbench.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("workbench")]


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_package_part_has_a_layer() -> None:
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in SOURCES} - {"__init__"}
    assert parts <= set(RANK), f"give these a layer in LAYERS: {sorted(parts - set(RANK))}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    here = part_of(module_name(path))
    if here is None:  # workbench/__init__.py exports lazily from anywhere
        return
    wrong = []
    for line, name in imported_modules(path):
        there = part_of(name)
        if there is None or there == here:
            continue
        if RANK[there] < RANK[here]:
            wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} ({there} sits above {here})")
    assert not wrong, "\n".join(wrong)


def test_nothing_below_the_cli_imports_it() -> None:
    for path in SOURCES:
        assert all(name != "cli" for _, name in imported_modules(path))


def test_the_layer_test_can_fail() -> None:
    # a downward-pointing layer table turned upside down must flag the real imports
    upward = [(line, name) for path in SOURCES for line, name in imported_modules(path)
              if part_of(name) and part_of(module_name(path)) and RANK[part_of(name)] > RANK[part_of(module_name(path))]]
    assert upward, "no module imports a lower layer: the contract above would be vacuous"


@pytest.mark.parametrize("path", SOURCES + [ROOT / "cli.py"], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by concept"
