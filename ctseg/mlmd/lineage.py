"""A model's lineage: ML Metadata's events walked back from a pushed model to the Trainer's run,
its hyperparameters, the examples and the data they were read from.
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Optional, Sequence

from ctseg.errors import CtsegError
from ctseg.mlmd.records import _artifact_record, _Graph, _properties, _type_name
from ctseg.mlmd.runs import _run_contexts
from ctseg.serving import TRAINER_EXPORT_DIR

_DATA_PATH_KEYS = ("data_root", "input_base")  # IrcadExampleGen, TFX's file-based ExampleGens
_FINGERPRINT_KEYS = ("input_fingerprint",)  # both record TFX's example_gen.utils.FINGERPRINT_PROPERTY_NAME
_DATA_ARTIFACT_TYPES = ("ExampleStatistics", "Schema", "ExampleAnomalies")


def _find_model_artifact(store, path_or_id: str):
    """The PushedModel or Model artifact named by an artifact id, a pushed version's folder or a model URI."""
    if path_or_id.isdigit():
        found = store.get_artifacts_by_id([int(path_or_id)])
        if not found:
            raise CtsegError(f"no artifact with id {path_or_id} in ML Metadata")
        if _type_name(found[0]) not in ("PushedModel", "Model"):
            raise CtsegError(f"artifact {path_or_id} is a {_type_name(found[0])}, not a Model or PushedModel")
        return found[0]
    path = path_or_id.rstrip("/") if "://" in path_or_id else os.path.abspath(path_or_id)
    pushed = [a for a in _artifacts_of_type(store, "PushedModel")
              if path in (_properties(a).get("pushed_destination"), a.uri)]
    if pushed:
        return max(pushed, key=lambda a: a.id)
    candidates = [path, os.path.dirname(path)]  # a Model's URI, or its Format-Serving folder
    models = [a for uri in candidates for a in store.get_artifacts_by_uri(uri) if _type_name(a) == "Model"]
    if models:
        return models[0]
    raise CtsegError(f"{path_or_id}: no pushed model version or model in ML Metadata has this path "
                     "(give a pushed version's folder, a model's URI or a model artifact id)")


def _data_property(examples_record: dict, producer: Optional[dict], keys: Sequence[str]) -> Optional[str]:
    sources = [producer["properties"] if producer else {}, examples_record["properties"]]
    return next((s[k] for s in sources for k in keys if s.get(k)), None)


def lineage(store, path_or_id: str) -> dict[str, Any]:
    """Walks ML Metadata's events back from a pushed model (or a model) to the data it was trained on.

    Returns {query, pushed_model (artifact + pushed_by execution, or None), model (artifact), trainer
    (execution: node_id, state, run_id, properties), run_id (the run that trained the model: a cached
    rerun reuses it), hyperparameters (the Trainer's custom_config), trainer_inputs ({key: [artifact]}),
    examples (list of artifact + producer execution + data_path + data_fingerprint), data_path and
    data_fingerprint (of the first examples),
    derived (artifacts computed from those examples in the training run, by type: ExampleStatistics,
    Schema, ExampleAnomalies)}.
    """
    graph = _Graph(store)
    start = _find_model_artifact(store, path_or_id)
    result: dict[str, Any] = {"query": path_or_id, "pushed_model": None}
    model = start
    if _type_name(start) == "PushedModel":
        pusher = graph.producers(start.id)
        if not pusher:
            raise CtsegError(f"pushed model {start.id} has no producing execution in ML Metadata")
        result["pushed_model"] = {**_artifact_record(start), "pushed_by": graph.execution_record(pusher[0])}
        models = graph.io(pusher[0].id, outputs=False).get("model") or [
            a for arts in graph.io(pusher[0].id, outputs=False).values() for a in arts if _type_name(a) == "Model"]
        if not models:
            raise CtsegError(f"the Pusher execution {pusher[0].id} of {path_or_id} records no input model")
        model = models[0]
    result["model"] = _artifact_record(model)
    trainers = graph.producers(model.id)
    if not trainers:
        raise CtsegError(f"model {model.id} ({model.uri}) has no producing execution in ML Metadata")
    trainer = graph.execution_record(trainers[0])
    result["trainer"] = trainer
    result["run_id"] = trainer["run_id"]
    result["hyperparameters"] = trainer["properties"].get("custom_config") or {}
    inputs = graph.io(trainers[0].id, outputs=False)
    result["trainer_inputs"] = {k: [_artifact_record(a, details=False) for a in arts] for k, arts in inputs.items()}

    examples = [a for arts in inputs.values() for a in arts if _type_name(a) == "Examples"]
    result["examples"] = []
    for artifact in examples:
        record = _artifact_record(artifact)
        made_by = graph.producers(artifact.id)
        record["producer"] = graph.execution_record(made_by[0]) if made_by else None
        record["data_path"] = _data_property(record, record["producer"], _DATA_PATH_KEYS)
        # What the data was when it was read: the artifact's (ingest's own look at the files) before the
        # execution's (taken when the pipeline was built), as TFX's ExampleGen records both.
        record["data_fingerprint"] = _data_property(record, None, _FINGERPRINT_KEYS) or _data_property(
            record, record["producer"], _FINGERPRINT_KEYS)
        result["examples"].append(record)
    for key in ("data_path", "data_fingerprint"):
        result[key] = next((e[key] for e in result["examples"] if e[key]), None)
    result["derived"] = _derived(store, graph, [a.id for a in examples], trainers[0], trainer["run_id"])
    result["training_profile"] = _training_profile(store, model, trainer, result["trainer_inputs"])
    return result


def _training_profile(store, model, trainer: dict, trainer_inputs: dict) -> dict:
    """Where the model's training profile (`ctseg.profile`) came from: the folder the model carries it in,
    the Trainer execution that computed it from its train examples, and the evaluations that recorded it."""
    from ctseg.profile import CURRENT_MODEL_ID_KEY, PROFILE_DIR, PROFILE_FILE, PROFILE_URI_KEY

    carried = os.path.join(model.uri, TRAINER_EXPORT_DIR, PROFILE_DIR)
    recorded = [{"id": b.id, "uri": _properties(b)[PROFILE_URI_KEY]} for b in _artifacts_of_type(store, "ModelBlessing")
                if _properties(b).get(CURRENT_MODEL_ID_KEY) == model.id and _properties(b).get(PROFILE_URI_KEY)]
    return {"in_model": carried if os.path.isfile(os.path.join(carried, PROFILE_FILE)) else None,
            "computed_by": {"node_id": trainer["node_id"], "id": trainer["id"], "run_id": trainer["run_id"]},
            "from_examples": [a["uri"] for a in trainer_inputs.get("examples", [])],
            "recorded_by": recorded}


def _derived(store, graph: _Graph, artifact_ids: Iterable[int], trainer, run_id: Optional[str]) -> dict:
    """Artifacts computed from the examples (two steps down: statistics, then schema and anomalies),
    by executions of the training run other than the Trainer."""
    run_executions = set()
    if run_id is not None:
        run = next((c for c in _run_contexts(store) if c.name == run_id), None)
        run_executions = {e.id for e in store.get_executions_by_context(run.id)} if run else set()
    found: dict[str, dict[int, dict]] = {}
    frontier = list(artifact_ids)
    for _ in range(2):
        next_frontier = []
        for artifact_id in frontier:
            for execution_id in graph.consumers(artifact_id):
                if execution_id == trainer.id or execution_id not in run_executions:
                    continue
                for arts in graph.io(execution_id, outputs=True).values():
                    for a in arts:
                        if _type_name(a) not in _DATA_ARTIFACT_TYPES or a.id in found.get(_type_name(a), {}):
                            continue
                        found.setdefault(_type_name(a), {})[a.id] = _artifact_record(a)
                        next_frontier.append(a.id)
        frontier = next_frontier
    return {t: list(found[t].values()) for t in _DATA_ARTIFACT_TYPES if t in found}


def _artifacts_of_type(store, type_name: str) -> list:
    """Artifacts of a TFX type as TFX's runners name it and as KFP does (by schema title, `tfx.<Name>`)."""
    return [a for name in (type_name, f"tfx.{type_name}") for a in store.get_artifacts_by_type(name)]


def served_model_id(store, version_dir: str) -> Optional[int]:
    """The id of the Model artifact whose push wrote `version_dir` (a pushed version's folder), or None
    when the store has no push to that folder."""
    path = version_dir.rstrip("/") if "://" in version_dir else os.path.abspath(version_dir)
    pushed = [a for a in _artifacts_of_type(store, "PushedModel") if _properties(a).get("pushed_destination") == path]
    graph = _Graph(store)
    for artifact in sorted(pushed, key=lambda a: -a.id):
        for pusher in graph.producers(artifact.id):
            models = graph.io(pusher.id, outputs=False).get("model")
            if models:
                return models[0].id
    return None
