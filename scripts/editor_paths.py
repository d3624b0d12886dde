"""Writes build/editor/ctseg: the installed package's layout as symlinks into the work tree, for editors
and type checkers (pyright/Pylance read `[tool.pyright] extraPaths`). They cannot follow the import hook
of setuptools' editable install, which maps `ctseg.components` to components/ and so on at run time.

Folders are linked whole, so files added inside them are seen at once; rerun it after adding a module
directly under ctseg/; `make` runs it before every target. Run time is untouched: imports and tracebacks
use the work tree's own paths.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import tomli

REPO = Path(__file__).resolve().parent.parent
TREE = REPO / "build" / "editor"


def main() -> int:
    package_dirs = tomli.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    shutil.rmtree(TREE, ignore_errors=True)
    root = TREE / "ctseg"
    root.mkdir(parents=True)
    for entry in sorted((REPO / package_dirs["ctseg"]).iterdir()):
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry)
    for name, folder in package_dirs.items():
        if name != "ctseg" and name.count(".") == 1:
            (root / name.split(".")[1]).symlink_to(REPO / folder, target_is_directory=True)
    print(f"wrote {TREE.relative_to(REPO)} (pyright's extraPaths)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
