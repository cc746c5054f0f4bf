"""The package's layers: every import inside mlops_backend points down (or sideways), never up.

upstream (Ollama, no Flask) and storage (the database) < observability < errors < security <
services (conversations, documents: no Flask) < config and the app state < streaming < blueprints,
docs and the factory. An import found anywhere in a module, a lazy one
inside a function included, counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mlops_backend"
LAYERS = [
    ("upstream", "storage", "schemas", "responses"),
    ("observability",),
    ("errors",),
    ("security",),
    ("services",),
    ("config", "extensions"),
    ("streaming",),
    ("blueprints", "docs", "factory", "cli", "__init__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def layer(module: str) -> int:
    """The layer of a module named relative to the package (`security.keys` -> security's)."""
    return RANK[module.split(".")[0]]


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield ".".join(parts), path


def imported(module: str, path: Path) -> set[str]:
    """The package's own modules that `module` imports, by name relative to the package."""
    package = module.split(".")[:-1]  # for a package's __init__ too: "upstream.__init__" is in "upstream"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
            target = base + (node.module.split(".") if node.module else [])
            if node.module:
                found.add(".".join(target))
            else:  # from . import a, b: each name is a module (or a name of the package's __init__)
                found.update(".".join(target + [alias.name]) if target or alias.name in RANK else alias.name
                             for alias in node.names)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.update(name.split(".", 1)[1] for name in names if name.startswith("mlops_backend."))
    return {name for name in found if name and name.split(".")[0] in RANK}


@pytest.mark.parametrize("module,path", list(modules()), ids=[name for name, _ in modules()])
def test_imports_point_down(module, path):
    upward = sorted(name for name in imported(module, path) if layer(name) > layer(module))
    assert upward == [], f"{module} (layer {layer(module)}) imports a higher layer: {upward}"


def test_every_module_has_a_layer():
    assert all(name.split(".")[0] in RANK for name, _ in modules()), [n for n, _ in modules()
                                                                       if n.split(".")[0] not in RANK]


def test_the_check_sees_an_upward_import(tmp_path):
    sample = tmp_path / "errors.py"
    sample.write_text("from .streaming.sse import event\n\ndef f():\n    from .blueprints import llm\n")
    assert imported("errors", sample) == {"streaming.sse", "blueprints"}
