"""The package's layers: each part imports only parts below it (README, Development)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fairseq_to_hf"

# Lowest first. `reference` (fairseq re-implemented) sits below everything that converts, so the
# converter's code cannot leak into what verifies it, and `verify` above everything it checks.
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer) for layer in (
    {"errors", "interrupts", "progress", "prefetch"},
    {"reader", "field_types", "shard_size"},
    {"arch", "hparams", "hashing"},
    {"reference"},
    {"plan"},
    {"tokenizer"},
    {"writer", "staging"},
    {"verify"},
    {"report", "card", "inspection"},
    {"pipeline"},
    {"cli"},
    {"__main__"},
))
ROOT_NAMES = {"__version__"}  # defined by the package's __init__.py, which imports nothing of it


def _part(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _imported_parts(path: Path) -> set[str]:
    """The package's parts a module imports (relative imports; the package never imports itself by name)."""
    folder = list(path.relative_to(PACKAGE).parts[:-1])
    parts = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import | ast.ImportFrom) and not getattr(node, "level", 0):
            names = [node.module] if isinstance(node, ast.ImportFrom) else [alias.name for alias in node.names]
            assert not any(name and name.startswith("fairseq_to_hf") for name in names), path
            continue
        if isinstance(node, ast.ImportFrom):
            base = folder[: len(folder) - (node.level - 1)]
            module = base + (node.module.split(".") if node.module else [])
            parts |= {module[0]} if module else {alias.name for alias in node.names} - ROOT_NAMES
    return {part.removesuffix(".py") for part in parts}


def test_every_part_of_the_package_has_a_layer() -> None:
    parts = {_part(path) for path in PACKAGE.rglob("*.py")} - {"__init__"}
    assert parts == set().union(*LAYERS)


def test_no_part_imports_one_at_or_above_its_layer() -> None:
    level = {part: index for index, layer in enumerate(LAYERS) for part in layer}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        if part == "__init__":
            continue
        for imported in _imported_parts(path) - {part}:
            if level[imported] >= level[part]:
                wrong.append(f"{path.relative_to(PACKAGE)} imports {imported}")
    assert not wrong
