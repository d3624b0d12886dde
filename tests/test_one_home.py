"""Names of the on-disk layout are spelled in one module each, so the copies cannot drift apart."""
from __future__ import annotations

import ast
from pathlib import Path

from ctseg.mlmd.files import split_dirs, split_name

REPO = Path(__file__).resolve().parent.parent
HOMES = {  # literal → the one module that spells it
    "saved_model.pb": "ctseg/serving.py",
    "Format-Serving": "ctseg/serving.py",
    "metadata.sqlite": "ctseg/workdir.py",
    ".ctseg.lock": "ctseg/workdir.py",
    "Split-": "ctseg/mlmd/files.py",
}


def _literals(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docstrings]


def test_each_layout_name_is_spelled_in_its_home_module_only():
    offenders = []
    for folder in ("ctseg", "components", "pipeline", "models"):
        for path in sorted((REPO / folder).rglob("*.py")):
            relative = path.relative_to(REPO).as_posix()
            for value in _literals(path):
                for literal, home in HOMES.items():
                    spelled = value.startswith(literal) if literal == "Split-" else value == literal
                    if spelled and relative != home:
                        offenders.append((relative, value))
    assert not offenders, offenders


def test_split_folders_are_read_by_name(tmp_path):
    for name in ("Split-train", "Split-eval", "Split-", "split-test", "other"):
        (tmp_path / name).mkdir()
    assert split_dirs(tmp_path) == {"eval": str(tmp_path / "Split-eval"), "train": str(tmp_path / "Split-train")}
    assert split_name("Split-test/") == "test" and split_name("Split-") is None
    assert split_dirs(tmp_path / "missing") == {}
