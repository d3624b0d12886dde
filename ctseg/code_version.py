"""Digests of the code a TFX step runs, passed to it as an exec property so TFX's cache notices code changes.

TFX keys its cache on the pipeline, the node, the executor spec (the executor's class path only), the
inputs and the exec properties (`tfx/orchestration/portable/cache_utils.py` `get_cache_context`, TFX
1.15.1 lines 77-133); it fingerprints module files only when a `module_file` is given. Our steps name
their code by import path, so each gets a digest of its modules' files instead.
"""
from __future__ import annotations

import hashlib
import importlib.util
from importlib import resources
from pathlib import Path


def _files(name: str) -> list[tuple[str, bytes]]:
    """(label, bytes) of a module's file, or of every .py file directly in a package."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"cannot find the code of {name} to fingerprint it")
    if spec.submodule_search_locations:  # a package: its own .py files, as installed (wheel or work tree)
        files = sorted((f for f in resources.files(name).iterdir() if f.name.endswith(".py")), key=lambda f: f.name)
        return [(f"{name}/{f.name}", f.read_bytes()) for f in files]
    return [(name, Path(spec.origin).read_bytes())]


def code_version(*modules: str) -> str:
    """16 hex digits of SHA-256 over the files of `modules` (dotted names of modules or packages)."""
    digest = hashlib.sha256()
    for name in modules:
        for label, data in _files(name):
            digest.update(label.encode() + b"\0" + data)
    return digest.hexdigest()[:16]
