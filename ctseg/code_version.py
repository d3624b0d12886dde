"""Digests of the code a TFX step runs, passed to it as an exec property so TFX's cache notices code changes.

TFX keys its cache on the pipeline, the node, the executor spec (the executor's class path only), the
inputs and the exec properties (`tfx/orchestration/portable/cache_utils.py` `get_cache_context`, TFX
1.15.1 lines 77-133); it fingerprints module files only when a `module_file` is given. Our steps name
their code by import path, so each gets a digest of the project's modules that its entry module
imports, directly or through others, found by reading their `import` statements: no list to keep.
"""
from __future__ import annotations

import ast
import hashlib
import importlib.util
from pathlib import Path

# The exec property that carries the digest into TFX's cache key.
CODE_VERSION_KEY = "code_version"
PROJECT_PACKAGE = "ctseg"


def _spec(name: str):
    """The import spec of a project module, or None when `name` is no module (e.g. a class in a package)."""
    try:
        return importlib.util.find_spec(name)
    except (ImportError, AttributeError, ValueError):  # a parent that is a module, not a package
        return None


def _source(name: str) -> bytes:
    spec = _spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        raise FileNotFoundError(f"cannot find the code of {name} to fingerprint it")
    return Path(spec.origin).read_bytes()


def _with_parents(name: str) -> list[str]:
    """Importing a.b.c runs a/__init__, a/b/__init__ and a/b/c."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


class _Module:
    """What one module's source says about imports: the modules it imports when it runs (imports in
    functions included), the names it binds at the top, and the imports of its module-level
    `__getattr__` (lazy attributes, followed only when an importer asks for a name not bound at the top)."""

    def __init__(self, name: str, source: bytes, package: str):
        self.name, self.package = name, package
        self.is_package = bool(_spec(name).submodule_search_locations)
        tree = ast.parse(source, filename=name)
        lazy = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "__getattr__"]
        self.lazy = [i for f in lazy for i in ast.walk(f) if isinstance(i, (ast.Import, ast.ImportFrom))]
        in_lazy = {id(i) for i in self.lazy}
        self.eager = [i for i in ast.walk(tree)
                      if isinstance(i, (ast.Import, ast.ImportFrom)) and id(i) not in in_lazy]
        self.top_names = {t.id for n in tree.body for t in ast.walk(n)
                          if isinstance(n, (ast.Assign, ast.AnnAssign)) and isinstance(t, ast.Name)}
        self.top_names |= {n.name for n in tree.body
                           if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.top_names |= {(a.asname or a.name).split(".")[0] for n in tree.body
                           if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}

    def _absolute(self, node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        package = self.name if self.is_package else self.name.rpartition(".")[0]
        base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        return f"{base}.{node.module}" if node.module else base

    def _in_package(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def imported(self, nodes: list) -> list[tuple[str, list[str]]]:
        """(module, names asked of it) for each import of the package's modules among `nodes`."""
        found = []
        for node in nodes:
            if isinstance(node, ast.Import):
                found += [(a.name, []) for a in node.names if self._in_package(a.name)]
            else:
                module = self._absolute(node)
                if self._in_package(module):
                    found.append((module, [a.name for a in node.names]))
        return found


def import_closure(*entry_modules: str, package: str = PROJECT_PACKAGE) -> list[str]:
    """The modules of `package` that importing `entry_modules` runs, directly or through others, sorted."""
    parsed: dict[str, _Module] = {}
    todo = [(m, []) for m in entry_modules]
    asked: set[tuple[str, str]] = set()
    while todo:
        name, names = todo.pop()
        for module in _with_parents(name):
            if module not in parsed:
                parsed[module] = _Module(module, _source(module), package)
                todo += parsed[module].imported(parsed[module].eager)
        this = parsed[name]
        for attr in names:
            if (name, attr) in asked:
                continue
            asked.add((name, attr))
            if this.is_package and _spec(f"{name}.{attr}") is not None:
                todo.append((f"{name}.{attr}", []))
            elif attr not in this.top_names:
                todo += this.imported(this.lazy)
    return sorted(parsed)


def code_version(*entry_modules: str, package: str = PROJECT_PACKAGE) -> str:
    """16 hex digits of SHA-256 over the files of the modules in `import_closure(*entry_modules)`."""
    digest = hashlib.sha256()
    for name in import_closure(*entry_modules, package=package):
        digest.update(name.encode() + b"\0" + _source(name))
    return digest.hexdigest()[:16]
