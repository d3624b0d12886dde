"""ML Metadata messages as plain data: property values, type and state names, event directions,
an artifact's record (with what its files say, decoded by its component), and event lookups
around an artifact or execution.
"""
from __future__ import annotations

import datetime
import json
from typing import Any, Optional

from ctseg.components.evaluation import evaluation_details
from ctseg.components.validation import anomalies_details
from ctseg.mlmd.store import NODE_CONTEXT_TYPE, PIPELINE_CONTEXT_TYPES, RUN_CONTEXT_TYPES

_HIDDEN_PROPERTIES = ("tfx_version", "is_external", "store_session_info")  # the last: KFP's object-store login
_EXECUTION_RESULT = "__execution_result__"  # tfx.orchestration.portable.mlmd.execution_lib
# What KFP v2's launcher and driver write (backend/src/v2/metadata/client.go): the run's root DAG is an
# execution of its own, a container execution carries its task's name and its parameters in `inputs`.
_KFP_DAG_EXECUTION_TYPE = "system.DAGExecution"
_KFP_TASK_NAME = "task_name"
_KFP_INPUTS = "inputs"


def _ms_to_iso(ms: int) -> Optional[str]:
    if not ms:
        return None
    return datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.timezone.utc).astimezone().isoformat(
        timespec="seconds")


def _value(value) -> Any:
    """A metadata_store_pb2.Value as a JSON type; JSON text (TFX's serialized exec properties) decoded."""
    from google.protobuf import json_format

    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "struct_value":
        return json_format.MessageToDict(value.struct_value)
    if kind == "proto_value":
        return value.proto_value.type_url
    raw = getattr(value, kind)
    return _decoded(raw) if kind == "string_value" else raw


def _properties(message) -> dict[str, Any]:
    """Properties and custom properties of an artifact or execution, without TFX's bookkeeping keys.

    KFP keeps a container execution's input parameters (TFX's exec properties) in one `inputs` struct
    (backend/src/v2/metadata/client.go, CreateExecution); they are lifted to the top level, decoded,
    as TFX's local runners store them.
    """
    merged = {**message.properties, **message.custom_properties}
    found = {k: _value(v) for k, v in sorted(merged.items())
             if not k.startswith("__") and k not in _HIDDEN_PROPERTIES}
    if _KFP_INPUTS in found and _KFP_TASK_NAME in found and isinstance(found[_KFP_INPUTS], dict):
        for k, v in found.pop(_KFP_INPUTS).items():
            found.setdefault(k, _decoded(v))
    return found


def _decoded(raw: Any) -> Any:
    if isinstance(raw, str) and (raw[:1] in ("{", "[") or raw in ("null", "true", "false")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


def _type_name(message) -> str:
    """The artifact or execution type without KFP's `tfx.`/`system.` namespace or a Python module path."""
    name = message.type
    for prefix in ("tfx.", "system."):
        if name.startswith(prefix) and "." not in name[len(prefix):]:
            return name[len(prefix):]
    return name


def _state_name(execution) -> str:
    from ml_metadata.proto import metadata_store_pb2

    return metadata_store_pb2.Execution.State.Name(execution.last_known_state).lower()


def _duration_s(start_ms: int, end_ms: int) -> Optional[float]:
    return round((end_ms - start_ms) / 1000, 3) if start_ms and end_ms and end_ms >= start_ms else None


def _execution_error(execution) -> Optional[str]:
    """The failure message TFX keeps in the execution's `__execution_result__` (an ExecutionResult as JSON).

    TFX records it when the executor reports a non-zero ExecutionResult code; an exception raised from
    an executor's Do() leaves no message in ML Metadata (it is only in the runner's log).
    """
    value = execution.custom_properties.get(_EXECUTION_RESULT)
    if value is None:
        return None
    try:
        result = json.loads(value.string_value)
    except json.JSONDecodeError:
        return value.string_value or None
    return result.get("resultMessage") or result.get("result_message") or (
        f"error code {result['code']}" if result.get("code") else None)


def _is_input(event) -> bool:
    from ml_metadata.proto import metadata_store_pb2 as pb

    return event.type in (pb.Event.INPUT, pb.Event.DECLARED_INPUT, pb.Event.INTERNAL_INPUT)


def _is_output(event) -> bool:
    from ml_metadata.proto import metadata_store_pb2 as pb

    return event.type in (pb.Event.OUTPUT, pb.Event.DECLARED_OUTPUT, pb.Event.INTERNAL_OUTPUT)


def _event_key(event) -> str:
    steps = [s.key for s in event.path.steps if s.WhichOneof("value") == "key"]
    return steps[0] if steps else ""


_DETAILS = {"ModelEvaluation": evaluation_details, "ExampleAnomalies": anomalies_details}


def _artifact_record(artifact, *, details: bool = True) -> dict[str, Any]:
    record = {"id": artifact.id, "type": _type_name(artifact), "uri": artifact.uri,
              "properties": _properties(artifact)}
    reader = _DETAILS.get(record["type"]) if details else None
    if reader is not None:
        record["properties"].update(reader(artifact.uri))
    return record


class _Graph:
    """Event lookups around one artifact or execution."""

    def __init__(self, store):
        self.store = store

    def producers(self, artifact_id: int) -> list:
        """Executions that output the artifact: the one that made it first, then cache hits that reused it."""
        ids = [ev.execution_id for ev in self.store.get_events_by_artifact_ids([artifact_id]) if _is_output(ev)]
        executions = self.store.get_executions_by_id(ids) if ids else []
        return sorted(executions, key=lambda e: (_state_name(e) == "cached", e.create_time_since_epoch, e.id))

    def consumers(self, artifact_id: int) -> list[int]:
        return [ev.execution_id for ev in self.store.get_events_by_artifact_ids([artifact_id]) if _is_input(ev)]

    def io(self, execution_id: int, outputs: bool) -> dict[str, list]:
        """The artifacts an execution read (or wrote), by key."""
        events = [ev for ev in self.store.get_events_by_execution_ids([execution_id])
                  if (_is_output(ev) if outputs else _is_input(ev))]
        artifacts = {a.id: a for a in self.store.get_artifacts_by_id([ev.artifact_id for ev in events])} \
            if events else {}
        found: dict[str, list] = {}
        for ev in events:
            found.setdefault(_event_key(ev), []).append(artifacts[ev.artifact_id])
        return found

    def run_of(self, execution_id: int) -> Optional[str]:
        return next((c.name for c in self.store.get_contexts_by_execution(execution_id)
                     if c.type in RUN_CONTEXT_TYPES), None)

    def node_of(self, execution) -> str:
        contexts = self.store.get_contexts_by_execution(execution.id)
        node = next((c.name for c in contexts if c.type == NODE_CONTEXT_TYPE), None)
        pipeline = next((c.name for c in contexts if c.type in PIPELINE_CONTEXT_TYPES), None)
        if node and pipeline and node.startswith(pipeline + "."):
            return node[len(pipeline) + 1:]
        task = execution.custom_properties.get(_KFP_TASK_NAME)
        return node or (task.string_value if task is not None else "") or _type_name(execution).split(".")[-1]

    def execution_record(self, execution) -> dict[str, Any]:
        return {"id": execution.id, "node_id": self.node_of(execution), "type": execution.type,
                "state": _state_name(execution), "run_id": self.run_of(execution.id),
                "started": _ms_to_iso(execution.create_time_since_epoch), "properties": _properties(execution)}
