"""The wheel's package map (pyproject.toml) against the repo: one top-level import package, `ctseg`."""
from __future__ import annotations

import ast
from pathlib import Path

import tomli

REPO = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomli.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
# Folders mapped under `ctseg`; importing them by their folder name would load a second copy of each module.
MAPPED_FOLDERS = ("components", "pipeline", "models", "kubeflow", "schemas")


def folder_of(package: str) -> Path:
    """Where setuptools takes `package` from, by the longest package-dir prefix (as setuptools resolves it)."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in SETUPTOOLS["package-dir"]:
            return REPO / SETUPTOOLS["package-dir"][prefix] / Path(*parts[i:])
    return REPO / Path(*parts)


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    listed = set(SETUPTOOLS["packages"])
    assert {p.split(".")[0] for p in listed} == {"ctseg"}
    for package in listed:
        assert (folder_of(package) / "__init__.py").is_file(), f"{package}: no {folder_of(package)}/__init__.py"
    on_disk = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            on_disk.add(".".join([package, *init.parent.relative_to(REPO / folder).parts]))
    assert on_disk <= listed, f"packages the wheel would leave out: {sorted(on_disk - listed)}"


def test_the_schema_ships_as_package_data():
    from ctseg.schemas import SCHEMA_FILE

    assert "*.pbtxt" in SETUPTOOLS["package-data"]["ctseg.schemas"]
    assert Path(SCHEMA_FILE).is_file() and Path(SCHEMA_FILE).parent == folder_of("ctseg.schemas")


def test_no_module_imports_a_mapped_folder_by_its_bare_name():
    offenders = []
    for path in REPO.glob("**/*.py"):
        if any(part.startswith(".") or part in ("build", "out") for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in MAPPED_FOLDERS]
    assert not offenders, offenders


def test_kubeflow_folder_holds_no_python():
    assert not list((REPO / "kubeflow").glob("**/*.py"))
