"""The validation stage: statistics, inferred and curated schemas, anomalies, and the gate before training.

Importing the package is cheap (no TFX): `anomalies_details` decodes ExampleValidator's files for
`ctseg.mlmd`; the components and `validation_stage` are imported on first use.
"""
from __future__ import annotations

import os
from typing import Any

from ctseg.mlmd.files import read_bytes, split_dirs
from ctseg.schemas import SCHEMA_FILE

ANOMALIES_FILE = "SchemaDiff.pb"  # what ExampleValidator writes in each Split-<name> folder (its DEFAULT_FILE_NAME)

__all__ = ["ANOMALIES_FILE", "SCHEMA_FILE", "ValidationGate", "ValidationReport", "ValidationStage",
           "validation_stage"]


def anomalies_details(uri: str) -> dict[str, Any]:
    """Anomalies per split from ExampleValidator's Split-*/SchemaDiff.pb (a tensorflow_metadata Anomalies)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    counts, features = {}, {}
    for split, folder in split_dirs(uri).items():
        raw = read_bytes(os.path.join(folder, ANOMALIES_FILE))
        if raw is None:
            continue
        anomalies = anomalies_pb2.Anomalies.FromString(raw)
        counts[split] = len(anomalies.anomaly_info) + (1 if anomalies.HasField("dataset_anomaly_info") else 0)
        features[split] = sorted(anomalies.anomaly_info)
    if not counts:
        return {}
    details = {"anomalies": sum(counts.values()), "anomalies_per_split": counts}
    if any(features.values()):
        details["anomalous_features"] = {s: f for s, f in features.items() if f}
    return details


def __getattr__(name):
    # Plain import statements, so that `ctseg.code_version` sees which modules these names run.
    if name in ("ValidationGate", "ValidationReport"):
        from ctseg.components.validation import component
        return getattr(component, name)
    if name in ("ValidationStage", "validation_stage"):
        from ctseg.components.validation import stage
        return getattr(stage, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
