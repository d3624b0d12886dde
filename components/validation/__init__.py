"""The validation stage: statistics, inferred and curated schemas, anomalies, and the gate before training.

Importing the package is cheap (no TFX): `ANOMALIES_FILE` is read by `ctseg.metadata`; the
components and `validation_stage` are imported on first use.
"""
from __future__ import annotations

import importlib

from ctseg.schemas import SCHEMA_FILE

ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes in each Split-<name> folder (its DEFAULT_FILE_NAME)

__all__ = ["ANOMALIES_FILE", "SCHEMA_FILE", "ValidationGate", "ValidationReport", "ValidationStage",
           "validation_stage"]
_LAZY = {"ValidationGate": "component", "ValidationReport": "component", "ValidationStage": "stage",
         "validation_stage": "stage"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
