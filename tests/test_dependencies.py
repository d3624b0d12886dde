"""The project declares what its code imports: every third-party top-level import of the installed
package (the folders pyproject.toml maps into `ctseg`) comes from a distribution listed in
`[project] dependencies`, and every listed distribution is imported (or is a named plugin)."""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import tomli

REPO = Path(__file__).resolve().parent.parent
PYPROJECT = tomli.loads((REPO / "pyproject.toml").read_text())
# Declared but never imported by name: pydicom finds its pixel-data decoders as plugins.
PLUGINS = {"pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle"}
NAMESPACES = {"google"}  # one namespace of many distributions (google.protobuf is protobuf's): named by two parts


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    return {_normalized(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0])
            for spec in PYPROJECT["project"]["dependencies"]}


def _imported_modules() -> dict[str, set[str]]:
    """Third-party import name (two parts for a namespace package) → the project files importing it."""
    found: dict[str, set[str]] = {}
    for folder in PYPROJECT["tool"]["setuptools"]["package-dir"].values():
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    parts = name.split(".")
                    if parts[0] in sys.stdlib_module_names or parts[0] == "ctseg" or parts[0] == "__future__":
                        continue
                    key = ".".join(parts[:2]) if parts[0] in NAMESPACES else parts[0]
                    found.setdefault(key, set()).add(str(path.relative_to(REPO)))
    return found


def _distributions(module: str) -> set[str]:
    """The distributions that install the top-level package of `module`: their top_level.txt, or the
    distribution of the same name (those without top_level.txt, e.g. numpy)."""
    top = module.split(".")[0]
    found = {_normalized(d) for d in _TOP_LEVEL.get(top, ())}
    try:
        found.add(_normalized(importlib.metadata.distribution(top).metadata["Name"]))
    except importlib.metadata.PackageNotFoundError:
        pass
    return found


_TOP_LEVEL = importlib.metadata.packages_distributions()


def test_every_import_of_the_package_is_a_declared_dependency_and_every_dependency_is_imported():
    declared, imported = _declared(), _imported_modules()
    undeclared = {module: sorted(files) for module, files in imported.items() if not _distributions(module) & declared}
    assert not undeclared, f"imported but not in [project] dependencies: {undeclared}"
    used = set().union(*(_distributions(module) for module in imported))
    assert declared - used - PLUGINS == set(), "declared but never imported"
