"""What ML Metadata knows about pipeline runs: runs, their executions and artifacts, and a model's lineage.

Read through `ml_metadata`'s `MetadataStore` API (contexts, executions, events, artifacts), so the same
functions work on the SQLite store of local runs and on a cluster's MLMD gRPC service. TFX records a
pipeline run as a context of type `pipeline_run` named by the run id, each node as a `node` context
named `<pipeline>.<node id>`, and associates every execution with both. Everything returned is plain
data (dicts, dataclasses of JSON types), so `--json` output and `ctseg run`'s summary need no
formatting code of their own. Only `record_failure` writes to the store.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any, Iterable, Optional, Sequence

from ctseg.errors import CtsegError

RUN_CONTEXT_TYPES = ("pipeline_run", "system.PipelineRun")  # TFX's local/portable runners; KFP v2
PIPELINE_CONTEXT_TYPES = ("pipeline", "system.Pipeline")
NODE_CONTEXT_TYPE = "node"
DEFAULT_GRPC_PORT = 8080
GRPC_TIMEOUT_S = 10.0

_HIDDEN_PROPERTIES = ("tfx_version", "is_external", "store_session_info")  # the last: KFP's object-store login
_EXECUTION_RESULT = "__execution_result__"  # tfx.orchestration.portable.mlmd.execution_lib
_DATA_PATH_KEYS = ("data_root", "input_base")  # IrcadExampleGen, TFX's file-based ExampleGens
_FINGERPRINT_KEYS = ("input_fingerprint",)  # both record TFX's example_gen.utils.FINGERPRINT_PROPERTY_NAME
_DICE_KEY = "mean_patient_dice"
_DATA_ARTIFACT_TYPES = ("ExampleStatistics", "Schema", "ExampleAnomalies")
_RUN_PREFIX = "ctseg_"  # ctseg.pipeline.local_runner.RUN_PROPERTY_PREFIX: what `ctseg run` records on its run
DEFAULT_SQLITE = os.path.join("out", "metadata.sqlite")
# What KFP v2's launcher and driver write (backend/src/v2/metadata/client.go): the run's root DAG is an
# execution of its own, a container execution carries its task's name and its parameters in `inputs`.
_KFP_DAG_EXECUTION_TYPE = "system.DAGExecution"
_KFP_TASK_NAME = "task_name"
_KFP_INPUTS = "inputs"


def connect(sqlite_path: Optional[str] = None, host: Optional[str] = None, port: Optional[int] = None,
            writable: bool = False):
    """A `MetadataStore` on a SQLite file (read-only unless `writable`), or a client of an MLMD gRPC
    service when `host` is set.

    Fails with a CtsegError, rather than creating an empty store, when the file doesn't exist, and
    when the service doesn't answer within GRPC_TIMEOUT_S.
    """
    if not host:
        if not sqlite_path:
            raise CtsegError("no ML Metadata store given: pass a SQLite path or --mlmd-host")
        _check_sqlite_file(sqlite_path)  # before importing ml_metadata

    from ml_metadata import errors as mlmd_errors
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.proto import metadata_store_pb2

    if host:
        where = f"MLMD service {host}:{port or DEFAULT_GRPC_PORT}"
        config = metadata_store_pb2.MetadataStoreClientConfig(
            host=host, port=int(port or DEFAULT_GRPC_PORT), client_timeout_sec=GRPC_TIMEOUT_S)
    else:
        where = f"ML Metadata store {sqlite_path}"
        config = metadata_store_pb2.ConnectionConfig()
        config.sqlite.filename_uri = os.path.abspath(sqlite_path)
        config.sqlite.connection_mode = (metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE if writable
                                         else metadata_store_pb2.SqliteMetadataSourceConfig.READONLY)
    try:
        store = metadata_store.MetadataStore(config)
        store.get_context_types()
    except mlmd_errors.StatusError as e:
        raise CtsegError(f"cannot read {where}: {_first_clause(e)}") from None
    except RuntimeError as e:  # MLMD's SQLite source raises RuntimeError("... query: <SQL>") on a foreign file
        reason = _first_clause(e)
        if "CREATE TABLE" in str(e) and "readonly" in reason:  # read-only, MLMD tried to add its missing tables
            reason = "an SQLite database without ML Metadata's tables"
        raise CtsegError(f"{sqlite_path or where} is not an ML Metadata store ({reason})") from None
    return store


_SQLITE_MAGIC = b"SQLite format 3\x00"


def _check_sqlite_file(path: str) -> None:
    """A sentence for a path that cannot be a SQLite store, before MLMD answers with its SQL."""
    if os.path.isdir(path):
        raise CtsegError(f"{path} is a folder, not an ML Metadata store (give its metadata.sqlite file)")
    if not os.path.isfile(path):
        raise CtsegError(f"no ML Metadata store at {path} (the file does not exist)")
    try:
        with open(path, "rb") as f:
            head = f.read(len(_SQLITE_MAGIC))
    except OSError as e:
        raise CtsegError(f"cannot read the ML Metadata store {path}: {(e.strerror or str(e)).lower()}") from None
    if head != _SQLITE_MAGIC:
        raise CtsegError(f"{path} is not an ML Metadata store: it is not an SQLite database "
                         f"(`ctseg run` writes one as WORKDIR/metadata.sqlite)")


def _first_clause(error: Exception) -> str:
    """An MLMD error without the SQL statement it appends (" query: ...")."""
    text = str(error).strip().removeprefix("Error when executing query:")
    return text.split(" query:")[0].strip() or type(error).__name__


def add_store_arguments(parser) -> None:
    """The options that choose the store, shared by `ctseg runs` and `ctseg lineage`."""
    group = parser.add_argument_group("ML Metadata store")
    group.add_argument("--metadata", default=DEFAULT_SQLITE, metavar="SQLITE",
                       help=f"SQLite store of local runs (default {DEFAULT_SQLITE})")
    group.add_argument("--mlmd-host", help="host of an MLMD gRPC service (e.g. a cluster's metadata-grpc-service); "
                                           "overrides --metadata")
    group.add_argument("--mlmd-port", type=int, default=DEFAULT_GRPC_PORT,
                       help=f"port of the MLMD gRPC service (default {DEFAULT_GRPC_PORT})")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")


def store_from_args(args):
    return connect(sqlite_path=args.metadata, host=args.mlmd_host, port=args.mlmd_port)


# ---------------------------------------------------------------- values and small records


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


# ---------------------------------------------------------------- files an artifact's URI holds


def _read_bytes(path: str) -> Optional[bytes]:
    """A file under an artifact URI, local or remote (gs://, s3:// through TensorFlow's filesystems)."""
    try:
        if "://" not in path:
            with open(path, "rb") as f:
                return f.read()
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except Exception:  # noqa: BLE001 - a missing or unreachable file only means fewer details
        return None


def _list_dir(path: str) -> list[str]:
    try:
        if "://" not in path:
            return sorted(os.listdir(path))
        import tensorflow as tf

        return sorted(n.rstrip("/") for n in tf.io.gfile.listdir(path))
    except Exception:  # noqa: BLE001
        return []


def _evaluation_details(uri: str) -> dict[str, Any]:
    """Dice per patient and the blessing decision from SegmentationEvaluator's metrics.json."""
    from ctseg.components.evaluation import METRICS_FILE

    raw = _read_bytes(os.path.join(uri, METRICS_FILE))
    if raw is None:
        return {}
    try:
        metrics = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    details = {k: metrics[k] for k in ("split", "mean_patient_dice", "dice_threshold", "blessed", "reason")
               if k in metrics}
    patients = metrics.get("patients")
    if isinstance(patients, list):
        details["dice_per_patient"] = {p["patient_id"]: p["dice"] for p in patients
                                       if isinstance(p, dict) and "patient_id" in p and "dice" in p}
    return details


def _anomalies_details(uri: str) -> dict[str, Any]:
    """Anomalies per split from ExampleValidator's Split-*/SchemaDiff.pb (a tensorflow_metadata Anomalies)."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    from ctseg.components.validation import ANOMALIES_FILE

    counts, features = {}, {}
    for name in _list_dir(uri):
        if not name.startswith("Split-"):
            continue
        raw = _read_bytes(os.path.join(uri, name, ANOMALIES_FILE))
        if raw is None:
            continue
        anomalies = anomalies_pb2.Anomalies.FromString(raw)
        split = name[len("Split-"):]
        counts[split] = len(anomalies.anomaly_info) + (1 if anomalies.HasField("dataset_anomaly_info") else 0)
        features[split] = sorted(anomalies.anomaly_info)
    if not counts:
        return {}
    details = {"anomalies": sum(counts.values()), "anomalies_per_split": counts}
    if any(features.values()):
        details["anomalous_features"] = {s: f for s, f in features.items() if f}
    return details


_DETAILS = {"ModelEvaluation": _evaluation_details, "ExampleAnomalies": _anomalies_details}


def _artifact_record(artifact, *, details: bool = True) -> dict[str, Any]:
    record = {"id": artifact.id, "type": _type_name(artifact), "uri": artifact.uri,
              "properties": _properties(artifact)}
    reader = _DETAILS.get(record["type"]) if details else None
    if reader is not None:
        record["properties"].update(reader(artifact.uri))
    return record


# ---------------------------------------------------------------- runs


@dataclasses.dataclass
class RunSummary:
    """One pipeline run, as `ctseg runs` lists it."""

    run_id: str
    pipeline: Optional[str]
    started: Optional[str]
    state: str  # complete, failed, running, canceled, interrupted or abandoned (see _Run.state)
    duration_s: Optional[float]
    dice: Optional[float]
    blessed: Optional[bool]
    pushed_version: Optional[str]
    executions: dict[str, int]  # count per execution state, e.g. {"complete": 3, "cached": 5}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Run:
    """One run context with its executions, events and artifacts, fetched once."""

    def __init__(self, store, context):
        self.store, self.context = store, context
        self.executions = sorted((e for e in store.get_executions_by_context(context.id)
                                  if e.type != _KFP_DAG_EXECUTION_TYPE),
                                 key=lambda e: (e.create_time_since_epoch, e.id))
        self.events = store.get_events_by_execution_ids([e.id for e in self.executions]) if self.executions else []
        artifact_ids = sorted({ev.artifact_id for ev in self.events})
        self.artifacts = {a.id: a for a in store.get_artifacts_by_id(artifact_ids)} if artifact_ids else {}

    def outputs(self, type_name: str) -> list:
        """Artifacts of a type that this run's executions produced (or reused from the cache), last first."""
        ids = [ev.artifact_id for ev in self.events if _is_output(ev)]
        found = [self.artifacts[i] for i in dict.fromkeys(ids) if _type_name(self.artifacts[i]) == type_name]
        return found[::-1]

    def process(self) -> dict[str, Any]:
        """What `ctseg run` recorded on the run context (pid, host, heartbeat, state, ...), without the prefix."""
        props = _properties(self.context)
        return {k[len(_RUN_PREFIX):]: v for k, v in props.items() if k.startswith(_RUN_PREFIX)}

    def state(self) -> str:
        """complete, failed, canceled or running from the executions; `ctseg run`'s own record adds
        interrupted (a signal stopped it) and abandoned (its process is gone without saying how it ended)."""
        states = {_state_name(e) for e in self.executions}
        found = next((s for s in ("failed", "canceled", "running", "new") if s in states), "complete")
        process = self.process()
        if process.get("state") == "interrupted":
            return "interrupted"
        if found in ("failed", "canceled"):
            return found
        if found in ("running", "new") or process.get("state") == "running":
            from ctseg.workdir import process_state

            gone = process and process_state(process.get("pid"), process.get("host"), process.get("pid_start_ticks"),
                                             process.get("heartbeat")) == "gone"
            return "abandoned" if gone else "running"
        return found

    def summary(self) -> RunSummary:
        evaluation = next(iter(self.outputs("ModelEvaluation")), None)
        blessing = next(iter(self.outputs("ModelBlessing")), None)
        pushed = [p for p in self.outputs("PushedModel") if _properties(p).get("pushed") == 1]
        dice = None
        for artifact in filter(None, (evaluation, blessing)):
            dice = _properties(artifact).get(_DICE_KEY)
            if dice is not None:
                break
        blessed = _properties(blessing).get("blessed") if blessing is not None else None
        counts: dict[str, int] = {}
        for e in self.executions:
            counts[_state_name(e)] = counts.get(_state_name(e), 0) + 1
        return RunSummary(
            run_id=self.context.name,
            pipeline=self.pipeline_name(),
            started=_ms_to_iso(self.context.create_time_since_epoch),
            state=self.state(),
            duration_s=_duration_s(min((e.create_time_since_epoch for e in self.executions), default=0),
                                   max((e.last_update_time_since_epoch for e in self.executions), default=0)),
            dice=dice,
            blessed=None if blessed is None else bool(blessed),
            pushed_version=str(_properties(pushed[0]).get("pushed_version")) if pushed else None,
            executions=counts,
        )

    def pipeline_name(self) -> Optional[str]:
        if not self.executions:
            return None
        contexts = self.store.get_contexts_by_execution(self.executions[0].id)
        return next((c.name for c in contexts if c.type in PIPELINE_CONTEXT_TYPES), None)

    def node_ids(self) -> dict[int, str]:
        """Execution id → node id (component id), from each execution's `node` context."""
        pipeline = self.pipeline_name()
        ids = {}
        for e in self.executions:
            node = next((c.name for c in self.store.get_contexts_by_execution(e.id)
                         if c.type == NODE_CONTEXT_TYPE), None)
            if node and pipeline and node.startswith(pipeline + "."):
                node = node[len(pipeline) + 1:]
            props = _properties(e)
            ids[e.id] = node or props.get("task_name") or props.get("display_name") or _type_name(e).split(".")[-1]
        return ids


def _run_contexts(store) -> list:
    contexts = [c for t in RUN_CONTEXT_TYPES for c in store.get_contexts_by_type(t)]
    return sorted(contexts, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def list_runs(store, limit: Optional[int] = None) -> list[RunSummary]:
    """Every pipeline run in the store, newest first (at most `limit`)."""
    contexts = _run_contexts(store)[:limit] if limit else _run_contexts(store)
    return [_Run(store, c).summary() for c in contexts]


def find_run(store, run: str):
    """The run context named `run`, or the only one whose name starts with it; `latest` is the newest."""
    contexts = _run_contexts(store)
    if not contexts:
        raise CtsegError("the ML Metadata store holds no pipeline runs")
    if run == "latest":
        return contexts[0]
    exact = [c for c in contexts if c.name == run]
    matches = exact or [c for c in contexts if c.name.startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CtsegError(f"no pipeline run '{run}' in ML Metadata (`ctseg runs` lists them)")
    raise CtsegError(f"'{run}' matches {len(matches)} runs ({', '.join(c.name for c in matches[:5])}...); "
                     "give more of the run id")


def describe_run(store, run: str) -> dict[str, Any]:
    """A run's executions in order and every artifact they read or wrote.

    `run` is a run id, a unique prefix of one, or `latest`. The result (stable; `ctseg run` prints its
    end-of-run summary from it) is the RunSummary's fields (run_id, pipeline, started, state,
    duration_s, dice, blessed, pushed_version, executions → replaced below) plus:

    - `executions`: list in start order of {id, node_id, type, state ("complete", "cached", "failed",
      "running", ...), started, duration_s, error (failure message or None), properties (exec
      properties, JSON decoded), inputs, outputs ({key: [artifact id]})};
    - `execution_counts`: {state: count};
    - `process`: what `ctseg run` recorded on the run (pid, host, started, heartbeat, state, ended,
      message), {} for runs of other runners;
    - `artifacts`: list in order of first use of {id, type, uri, producer (node id of the execution in
      this run that wrote or reused it from the cache, None for one from an earlier run such as the
      resolver's baseline), properties}. Properties are the artifact's properties and custom properties
      (e.g. split_names, slices_*, quarantined for examples; blessed, reason for a blessing; pushed,
      pushed_destination, pushed_version for a pushed model) plus, read from the artifact's files,
      `dice_per_patient`, `reason`, `mean_patient_dice` for a ModelEvaluation and `anomalies`,
      `anomalies_per_split`, `anomalous_features` for ExampleAnomalies.
    """
    record = _Run(store, find_run(store, run))
    nodes = record.node_ids()
    summary = record.summary().to_dict()
    summary["execution_counts"] = summary.pop("executions")
    executions, producers, order = [], {}, []
    for e in record.executions:
        inputs: dict[str, list[int]] = {}
        outputs: dict[str, list[int]] = {}
        for ev in (ev for ev in record.events if ev.execution_id == e.id):
            side = outputs if _is_output(ev) else inputs if _is_input(ev) else None
            if side is None:
                continue
            side.setdefault(_event_key(ev), []).append(ev.artifact_id)
            order.append(ev.artifact_id)
            if side is outputs:
                producers.setdefault(ev.artifact_id, nodes[e.id])
        executions.append({
            "id": e.id, "node_id": nodes[e.id], "type": e.type, "state": _state_name(e),
            "started": _ms_to_iso(e.create_time_since_epoch),
            "duration_s": _duration_s(e.create_time_since_epoch, e.last_update_time_since_epoch),
            "error": _execution_error(e), "properties": _properties(e), "inputs": inputs, "outputs": outputs,
        })
    artifacts = [{**_artifact_record(record.artifacts[i]), "producer": producers.get(i)}
                 for i in dict.fromkeys(order)]
    return {**summary, "process": record.process(), "executions": executions, "artifacts": artifacts}


# ---------------------------------------------------------------- lineage


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
    return result


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


# ---------------------------------------------------------------- while and after a local run


def execution_lines(store, after_id: int = 0) -> list[tuple[int, str, str]]:
    """(execution id, state, one line for a person) for each execution newer than `after_id`, in order:
    what `ctseg run` prints as the pipeline advances."""
    executions = sorted((e for e in store.get_executions() if e.id > after_id),
                        key=lambda e: (e.create_time_since_epoch, e.id))
    graph = _Graph(store)
    lines = []
    for e in executions:
        state = _state_name(e)
        took = _duration_s(e.create_time_since_epoch, e.last_update_time_since_epoch)
        line = f"  {graph.node_of(e):<28} {state:<9}" + (f" {took:.1f}s" if took is not None and state != "running"
                                                         else "")
        lines.append((e.id, state, line))  # a failed step's error is printed once, in the run's summary
    return lines


def record_failure(store, run: str, message: str, code: int = 1) -> list[int]:
    """Stores `message` as the result of the run's failed executions that TFX left without one.

    TFX keeps a failure message in ML Metadata only when an executor returns a non-zero
    ExecutionResult; an executor that raises (the validation gate's CtsegError) leaves just the FAILED
    state. The runner that caught the exception calls this on a `writable` store, so `ctseg runs show`
    can tell why the run stopped. Uses TFX's own `__execution_result__` encoding. Returns the ids updated.
    """
    from tfx.orchestration.portable.mlmd import execution_lib
    from tfx.proto.orchestration import execution_result_pb2

    context = find_run(store, run)
    failed = [e for e in store.get_executions_by_context(context.id)
              if _state_name(e) == "failed" and _EXECUTION_RESULT not in e.custom_properties]
    for e in failed:
        execution_lib.set_execution_result(
            execution_result_pb2.ExecutionResult(code=code, result_message=message), e)
    if failed:
        store.put_executions(failed)
    return [e.id for e in failed]


def cancel_running(store, run: str, message: str) -> list[int]:
    """Marks the run's executions that a signal left RUNNING (or NEW) as CANCELED, with `message` as
    their result: TFX's launcher only records failures of Exceptions, not of a KeyboardInterrupt."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration.portable.mlmd import execution_lib
    from tfx.proto.orchestration import execution_result_pb2

    context = find_run(store, run)
    active = [e for e in store.get_executions_by_context(context.id) if _state_name(e) in ("running", "new")]
    for e in active:
        e.last_known_state = metadata_store_pb2.Execution.CANCELED
        execution_lib.set_execution_result(
            execution_result_pb2.ExecutionResult(code=1, result_message=message), e)
    if active:
        store.put_executions(active)
    return [e.id for e in active]
