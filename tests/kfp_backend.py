"""Runs a compiled KFP v2 pipeline spec on this machine the way the open-source Kubeflow Pipelines
backend runs it, rule by rule from its Go source, and records the run in ML Metadata as KFP does.

Modelled on kubeflow/pipelines at tag 2.5.0 (backend/src/v2: compiler, driver, launcher, metadata);
`publish_logs=False` gives the 2.0.5-2.4.x outputs (no `executor-logs`, URIs without the per-task
uuid). The same rules hold at 2.17.0 and master (checked in the fetched snapshot). Each rule cites
its source as `path:line` at 2.5.0. With an object store (`store`, tests/loopback_stores.py: a real
S3 or GCS API on loopback) the launcher's copies are made as KFP makes them: every input artifact
downloaded into the pod before the command, every output's local folder uploaded after it
(objectstore/object_store.go, `download_blob`/`upload_blob`). What is not emulated: Argo and
Kubernetes (pods, volumes, resource requests) and KFP's cache server.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import yaml

KFP_TAG = "2.5.0"
EXECUTOR_LOGS = "executor-logs"


class RunCreationRefused(Exception):
    """What the API server answers when its compiler rejects the spec (the run is never created)."""


class TaskFailed(Exception):
    pass


def check_executors(spec: dict) -> None:
    """compiler/visitor.go:104-128: every executor must be a container or an importer."""
    executors = spec["deploymentSpec"]["executors"]
    for name, component in spec["components"].items():
        label = component.get("executorLabel")
        if not label:
            continue
        executor = executors.get(label)
        if executor is None:
            raise RunCreationRefused(f'error processing component name="{name}": executor(label="{label}") '
                                     "not found in deployment config")
        if "container" not in executor and "importer" not in executor:
            raise RunCreationRefused(f'error processing component name="{name}": executor(label="{label}"): '
                                     "non-container and non-importer executor not implemented")


def dependency_order(tasks: dict) -> list[str]:
    """Tasks after their `dependentTasks` and the producers of their inputs (Argo's DAG edges)."""
    def upstream(task: dict) -> set[str]:
        producers = {a["taskOutputArtifact"]["producerTask"]
                     for a in task.get("inputs", {}).get("artifacts", {}).values() if "taskOutputArtifact" in a}
        return set(task.get("dependentTasks", [])) | producers

    done, order = set(), []
    while len(order) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and upstream(t) <= done)
        if not ready:
            raise RunCreationRefused(f"the DAG has a cycle among {sorted(set(tasks) - done)}")
        order.extend(ready)
        done.update(ready)
    return order


def schema_title(artifact_type: dict) -> str:
    """metadata/client.go:1003-1015 (SchemaToArtifactType) of component/launcher_v2.go:822-833 (getArtifactSchema)."""
    if "schemaTitle" in artifact_type:
        return artifact_type["schemaTitle"]
    title = (yaml.safe_load(artifact_type.get("instanceSchema") or "") or {}).get("title")
    if not title:
        raise TaskFailed("No title specified")  # glog.Fatal in SchemaToArtifactType
    return title


# ---------------------------------------------------------------- value conversions (metadata/converter.go)

def struct_to_mlmd(value: Any):
    """metadata/converter.go:133-166 StructValueToMLMDValue: numbers become doubles, bools ints, lists and
    structs are wrapped under "list"/"struct"; null is refused."""
    from google.protobuf import struct_pb2
    from ml_metadata.proto import metadata_store_pb2 as pb

    if isinstance(value, bool):
        return pb.Value(int_value=int(value))
    if isinstance(value, (int, float)):
        return pb.Value(double_value=float(value))
    if isinstance(value, str):
        return pb.Value(string_value=value)
    if isinstance(value, (list, dict)):
        wrapped = struct_pb2.Struct()
        wrapped.update({"list" if isinstance(value, list) else "struct": value})
        return pb.Value(struct_value=wrapped)
    raise TaskFailed(f"unknown/unsupported value type {type(value).__name__}")


def mlmd_to_json(value) -> Any:
    """metadata/converter.go:176-216 toRuntimeArtifact: string, double, int (as a number), struct."""
    from google.protobuf import json_format

    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind in ("double_value", "int_value"):
        return float(getattr(value, kind))
    if kind == "struct_value":
        return json_format.MessageToDict(value.struct_value)
    raise TaskFailed(f"unknown property type in MLMD artifact: {kind}")


# ---------------------------------------------------------------- ML Metadata, as metadata/client.go writes it

class KfpMetadata:
    """The KFP metadata client's writes, through MLMD's own API on a SQLite store."""

    def __init__(self, sqlite_path: Path):
        from ml_metadata.metadata_store import metadata_store
        from ml_metadata.proto import metadata_store_pb2 as pb

        self.pb = pb
        config = pb.ConnectionConfig()
        config.sqlite.filename_uri = str(sqlite_path)
        config.sqlite.connection_mode = pb.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
        self.store = metadata_store.MetadataStore(config)

    def _type_id(self, kind: str, name: str) -> int:
        put = {"context": (self.pb.ContextType, self.store.put_context_type),
               "execution": (self.pb.ExecutionType, self.store.put_execution_type),
               "artifact": (self.pb.ArtifactType, self.store.put_artifact_type)}[kind]
        return put[1](put[0](name=name))  # metadata/client.go:62-80: all types are schemaless

    def _context(self, type_name: str, name: str, properties: dict[str, str]):
        """metadata/client.go:306-364 GetPipeline / getOrInsertContext."""
        found = self.store.get_context_by_type_and_name(type_name, name)
        if found is not None:
            return found
        context = self.pb.Context(type_id=self._type_id("context", type_name), name=name)
        for k, v in properties.items():
            context.custom_properties[k].string_value = v
        context.id = self.store.put_contexts([context])[0]
        return context

    def pipeline(self, pipeline_name: str, run_id: str, run_root: str, session_info: str):
        pipeline_ctx = self._context("system.Pipeline", pipeline_name, {})
        run_ctx = self._context("system.PipelineRun", run_id, {
            "namespace": "kubeflow", "resource_name": "run-resource",
            "pipeline_root": run_root, "store_session_info": session_info})
        self.store.put_parent_contexts([self.pb.ParentContext(child_id=run_ctx.id, parent_id=pipeline_ctx.id)])
        return [pipeline_ctx, run_ctx]

    def create_execution(self, contexts, type_name: str, *, task_name: str, name: str = "",
                         properties: dict[str, Any], input_ids: dict[str, int]) -> Any:
        """metadata/client.go:534-670 CreateExecution: RUNNING, task_name/display_name, INPUT events keyed by
        input name."""
        execution = self.pb.Execution(type_id=self._type_id("execution", type_name),
                                      last_known_state=self.pb.Execution.RUNNING)
        if name:
            execution.name = name
        for k, v in {"display_name": task_name, "task_name": task_name, **properties}.items():
            if isinstance(v, dict):
                execution.custom_properties[k].struct_value.update(v)
            elif isinstance(v, int):
                execution.custom_properties[k].int_value = v
            else:
                execution.custom_properties[k].string_value = v
        events = [(None, self._event(self.pb.Event.INPUT, key, artifact_id)) for key, artifact_id in input_ids.items()]
        execution.id = self.store.put_execution(execution, events, contexts, reuse_context_if_already_exist=True)[0]
        return execution

    def _event(self, event_type, key: str, artifact_id: Optional[int] = None):
        """metadata/client.go:435-443 eventPath: the artifact's name in this task is the event path's one key."""
        event = self.pb.Event(type=event_type)
        event.path.steps.add().key = key
        if artifact_id is not None:
            event.artifact_id = artifact_id
        return event

    def record_artifact(self, output_name: str, runtime_artifact: dict, session_info: str):
        """metadata/client.go:1018-1078 RecordArtifact: type named by the schema title, metadata as custom
        properties."""
        artifact = self.pb.Artifact(uri=runtime_artifact["uri"], state=self.pb.Artifact.LIVE,
                                    type_id=self._type_id("artifact", schema_title(runtime_artifact["type"])))
        for k, v in (runtime_artifact.get("metadata") or {}).items():
            artifact.custom_properties[k].CopyFrom(struct_to_mlmd(v))
        if "display_name" not in artifact.custom_properties:
            artifact.custom_properties["display_name"].string_value = output_name
        if "store_session_info" not in artifact.custom_properties:
            artifact.custom_properties["store_session_info"].string_value = session_info
        artifact.id = self.store.put_artifacts([artifact])[0]
        return artifact

    def publish(self, execution, contexts, state, outputs: list[tuple[str, Any]], parameters: dict) -> None:
        """metadata/client.go:454-507 PublishExecution: final state, `outputs` parameters, OUTPUT events."""
        execution.last_known_state = state
        if parameters:
            execution.custom_properties["outputs"].struct_value.update(parameters)
        events = [(None, self._event(self.pb.Event.OUTPUT, name, artifact.id)) for name, artifact in outputs]
        self.store.put_execution(execution, events, contexts, reuse_context_if_already_exist=True)

    def output_artifacts(self, execution_id: int) -> dict[str, Any]:
        """metadata/client.go:917-952 GetOutputArtifactsByExecutionId."""
        events = [e for e in self.store.get_events_by_execution_ids([execution_id]) if e.type == self.pb.Event.OUTPUT]
        by_id = {a.id: a for a in self.store.get_artifacts_by_id([e.artifact_id for e in events])}
        return {e.path.steps[0].key: by_id[e.artifact_id] for e in events}


# ---------------------------------------------------------------- the run

@dataclasses.dataclass
class TaskRecord:
    name: str
    execution_id: int
    executor_input: dict
    returncode: int
    log: str
    executor_output: dict
    seconds: float
    cpu_seconds: float  # user + system time of the step's process: what it costs on an idle machine


@dataclasses.dataclass
class KfpBackend:
    """One KFP run of `spec` with `pipeline_root` (what `ctseg submit` passes with the run).

    `python_bin`: the folder put first on PATH, so that the spec's `python` is the image's interpreter.
    """
    spec: dict
    pipeline_root: str
    metadata: KfpMetadata
    python_bin: Path
    work: Path
    publish_logs: bool = True
    env: dict = dataclasses.field(default_factory=dict)
    timeout_s: float = 600
    store: Any = None  # a loopback_stores server holding the pipeline root; None: a local folder

    @classmethod
    def from_file(cls, spec_file: Path, **kwargs) -> "KfpBackend":
        return cls(spec=yaml.safe_load(Path(spec_file).read_text()), **kwargs)

    def run(self, run_id: Optional[str] = None) -> dict[str, TaskRecord]:
        check_executors(self.spec)
        run_id = run_id or str(uuid.uuid4())
        pipeline_name = self.spec["pipelineInfo"]["name"]
        # driver/driver.go:151-172: the run's pipeline root, else the launcher config map's, else
        # minio://mlpipeline/v2/artifacts (config/env.go:37,76-80); the spec's defaultPipelineRoot is not read.
        root = self.pipeline_root
        # metadata/client.go:287-302,316: the run's root is <pipeline root>/<pipeline name>/<run id>
        run_root = f"{root.rstrip('/')}/{pipeline_name}/{run_id}"
        provider = {"s3://": "s3", "gs://": "gs"}.get(root[:5], "local")
        session_info = json.dumps({"Provider": provider, "Params": {"fromEnv": "true"} if self.store else {}})
        contexts = self.metadata.pipeline(pipeline_name, run_id, run_root, session_info)
        tasks = self.spec["root"]["dag"]["tasks"]
        # driver/driver.go:139-209 RootDAG: a system.DAGExecution named run/<run id>
        dag = self.metadata.create_execution(contexts, "system.DAGExecution", task_name="", name=f"run/{run_id}",
                                             properties={"total_dag_tasks": len(tasks)}, input_ids={})
        records: dict[str, TaskRecord] = {}
        try:
            for name in dependency_order(tasks):
                records[name] = self._run_task(name, tasks[name], run_root, contexts, dag, records, session_info)
        except TaskFailed:
            self.metadata.publish(dag, contexts, self.metadata.pb.Execution.FAILED, [], {})
            raise
        self.metadata.publish(dag, contexts, self.metadata.pb.Execution.COMPLETE, [], {})
        return records

    def _inputs(self, task: dict, records: dict[str, TaskRecord]) -> tuple[dict, dict[str, int]]:
        """driver/driver.go:1369-1584 resolveInputs: constants (with the job placeholders, 1644-1657), and each
        upstream artifact as its producer recorded it (1927-2007 resolveUpstreamArtifacts), converted
        by ToRuntimeArtifact: name = MLMD id, metadata from the custom properties, instanceSchema ""."""
        parameters = {}
        for key, spec in task.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" not in spec:
                raise TaskFailed(f"parameter spec {spec} not emulated")
            parameters[key] = spec["runtimeValue"]["constant"]
        artifacts, ids = {}, {}
        for key, spec in task.get("inputs", {}).get("artifacts", {}).items():
            source = spec["taskOutputArtifact"]
            producer = records[source["producerTask"]]
            outputs = self.metadata.output_artifacts(producer.execution_id)
            if source["outputArtifactKey"] not in outputs:
                raise TaskFailed(f'cannot find output artifact key "{source["outputArtifactKey"]}" in producer task '
                                 f'"{source["producerTask"]}"')
            artifact = outputs[source["outputArtifactKey"]]
            metadata = {k: mlmd_to_json(v) for k, v in {**artifact.properties, **artifact.custom_properties}.items()}
            artifacts[key] = {"artifacts": [{"name": str(artifact.id), "uri": artifact.uri, "metadata": metadata,
                                             "type": {"instanceSchema": ""}}]}
            ids[key] = artifact.id
        return {"parameterValues": parameters, "artifacts": artifacts}, ids

    def _outputs(self, name: str, component: dict, run_root: str, output_file: Path) -> dict:
        """driver/driver.go:2010-2061 provisionOutputs: `artifactType` verbatim, no name, the spec's metadata;
        URI <run root>/<task>/<uuid>/<key> (2.5.0; <run root>/<task>/<key> before); plus executor-logs."""
        definitions = dict(component.get("outputDefinitions", {}).get("artifacts", {}))
        if self.publish_logs:
            definitions[EXECUTOR_LOGS] = {"artifactType": {"schemaTitle": "system.Artifact"}}
        salt = str(uuid.uuid4())
        artifacts = {}
        for key, definition in definitions.items():
            uri = f"{run_root}/{name}/{salt}/{key}" if self.publish_logs else f"{run_root}/{name}/{key}"
            artifact = {"uri": uri, "type": definition["artifactType"]}
            if definition.get("metadata"):
                artifact["metadata"] = definition["metadata"]
            artifacts[key] = {"artifacts": [artifact]}
        parameters = {k: {"outputFile": f"/tmp/kfp/outputs/{k}"}
                      for k in component.get("outputDefinitions", {}).get("parameters", {})}
        return {"artifacts": artifacts, "parameters": parameters, "outputFile": str(output_file)}

    def _run_task(self, name: str, task: dict, run_root: str, contexts, dag, records, session_info) -> TaskRecord:
        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2

        component = self.spec["components"][task["componentRef"]["name"]]
        container = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
        pod = self.work / f"{name}-pod"
        shutil.rmtree(pod, ignore_errors=True)
        (pod / "tmp").mkdir(parents=True)
        inputs, input_ids = self._inputs(task, records)
        # component/launcher_v2.go:458 OutputMetadataFilepath is /tmp/kfp_outputs/output_metadata.json in each pod
        outputs = self._outputs(name, component, run_root, pod / "tmp" / "kfp_outputs" / "output_metadata.json")
        # Field names and values exactly as protojson gives them: parse strictly, print back.
        message = json_format.ParseDict({"inputs": inputs, "outputs": outputs}, pipeline_spec_pb2.ExecutorInput())
        executor_input = json_format.MessageToDict(message)
        execution = self.metadata.create_execution(
            contexts, "system.ContainerExecution", task_name=task["taskInfo"]["name"],
            properties={"parent_dag_id": dag.id, "pod_name": f"{name}-pod", "pod_uid": str(uuid.uuid4()),
                        "namespace": "kubeflow", "image": container["image"], "inputs": inputs["parameterValues"]},
            input_ids=input_ids)
        self._download_inputs(inputs, pod)
        # component/launcher_v2.go:898-925 prepareOutputFolders: the parent of each output's local path
        for lst in outputs["artifacts"].values():
            self._local_path(lst["artifacts"][0]["uri"], pod).parent.mkdir(parents=True, exist_ok=True)
        (pod / "executor_input.json").write_text(json.dumps(executor_input, indent=1))  # for whoever debugs a step
        argv = [*container["command"], *self._substitute(container["args"], executor_input)]
        # driver/driver.go:463-467: the container spec's env goes into the pod; the cluster's (self.env) too
        spec_env = {e["name"]: e["value"] for e in container.get("env", [])}
        env = {"PATH": f"{self.python_bin}:/usr/bin:/bin", "HOME": str(pod), "TMPDIR": str(pod / "tmp"),
               "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1", **self.env, **spec_env}
        started, cpu_before = time.time(), _children_cpu_s()
        done = subprocess.run(argv, cwd=pod, env=env, capture_output=True, text=True, timeout=self.timeout_s)
        log = done.stdout + done.stderr
        if self.publish_logs:  # component/launcher_v2.go:467-488, 511-521: stdout and stderr go to the log artifact too
            self._local_path(outputs["artifacts"][EXECUTOR_LOGS]["artifacts"][0]["uri"], pod).write_text(log)
        state = self.metadata.pb.Execution
        if done.returncode != 0:  # component/launcher_v2.go:183-185: published FAILED, no outputs
            self.metadata.publish(execution, contexts, state.FAILED, [], {})
            raise TaskFailed(f"task {name} exited with {done.returncode} after {time.time() - started:.0f}s:\n"
                             f"{log[-6000:]}")
        executor_output = self._read_output_file(Path(outputs["outputFile"]))
        recorded = self._upload_outputs(executor_input, executor_output, session_info, pod)
        self.metadata.publish(execution, contexts, state.COMPLETE, recorded, executor_output.get("parameterValues", {}))
        return TaskRecord(name, execution.id, executor_input, done.returncode, log, executor_output,
                          time.time() - started, _children_cpu_s() - cpu_before)

    @staticmethod
    def _substitute(args: list[str], executor_input: dict) -> list[str]:
        """component/launcher_v2.go:363-374, 736-820 getPlaceholders: `{{$}}` is the executor input as JSON."""
        placeholders = {"{{$}}": json.dumps(executor_input)}
        for key, lst in executor_input.get("inputs", {}).get("artifacts", {}).items():
            placeholders[f"{{{{$.inputs.artifacts['{key}'].uri}}}}"] = lst["artifacts"][0]["uri"]
        for key, lst in executor_input["outputs"].get("artifacts", {}).items():
            placeholders[f"{{{{$.outputs.artifacts['{key}'].uri}}}}"] = lst["artifacts"][0]["uri"]
        for key, value in executor_input.get("inputs", {}).get("parameterValues", {}).items():
            text = value if isinstance(value, str) else json.dumps(value)
            placeholders[f"{{{{$.inputs.parameters['{key}']}}}}"] = text
        out = []
        for arg in args:
            for placeholder, value in placeholders.items():
                arg = arg.replace(placeholder, value)
            if "{{$" in arg:
                raise TaskFailed(f"placeholder not emulated in {arg[:200]}")
            out.append(arg)
        return out

    @staticmethod
    def _read_output_file(path: Path) -> dict:
        """component/launcher_v2.go:851-880 getExecutorOutputFile: missing is empty; otherwise strict protojson."""
        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2

        if not path.exists():
            return {}
        message = json_format.Parse(path.read_text(), pipeline_spec_pb2.ExecutorOutput())
        return json_format.MessageToDict(message)

    def _local_path(self, uri: str, pod: Path) -> Path:
        """component/launcher_v2.go:882-896 LocalPathForURI (/gcs/, /s3/, /minio/ + the rest), under the pod's
        folder; a local pipeline root is read and written in place."""
        if self.store is None:
            return Path(uri)
        for scheme, mount in (("gs://", "gcs"), ("s3://", "s3"), ("minio://", "minio")):
            if uri.startswith(scheme):
                return pod / mount / uri[len(scheme):]
        raise TaskFailed(f"failed to generate local path for URI {uri}: unsupported storage scheme")

    def _download_inputs(self, inputs: dict, pod: Path) -> None:
        """component/launcher_v2.go:619-688 downloadArtifacts: each input artifact's objects into its local path."""
        if self.store is None:
            return
        for name, lst in inputs["artifacts"].items():
            uri = lst["artifacts"][0]["uri"]
            key = self.store.key(uri)
            try:
                download_blob(self.store.objects(key), key, self._local_path(uri, pod))
            except OSError as e:
                raise TaskFailed(f'failed to download input artifact "{name}" from remote storage URI "{uri}": '
                                 f"{type(e).__name__}: {e}") from None

    def _upload_outputs(self, executor_input: dict, executor_output: dict, session_info: str, pod: Path) -> list:
        """component/launcher_v2.go:540-592 uploadOutputArtifacts: every output of the executor input (not only
        those the executor reported), merged with the executor's URI and metadata (835-849
        mergeRuntimeArtifacts), its local path uploaded when it exists, recorded by RecordArtifact."""
        recorded = []
        for key, lst in executor_input["outputs"].get("artifacts", {}).items():
            artifact = json.loads(json.dumps(lst["artifacts"][0]))
            reported = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
            if reported:
                if reported[0].get("uri"):
                    artifact["uri"] = reported[0]["uri"]
                if "metadata" in reported[0]:
                    artifact["metadata"] = {**(artifact.get("metadata") or {}), **reported[0]["metadata"]}
            local = self._local_path(artifact["uri"], pod)
            if self.store is not None and local.exists():  # "We allow components to not produce output files"
                upload_blob(self.store, local, self.store.key(artifact["uri"]))
            recorded.append((key, self.metadata.record_artifact(key, artifact, session_info)))
        return recorded


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def upload_blob(store, local_path: Path, blob_path: str) -> None:
    """objectstore/object_store.go:88-121 UploadBlob: a file as one object, a folder's files under it
    (sub-folders recursively); no object for a folder itself."""
    if not local_path.is_dir():
        store.write(blob_path, local_path.read_bytes())
        return
    for entry in sorted(local_path.iterdir()):
        upload_blob(store, entry, f"{blob_path}/{entry.name}")


def download_blob(keys: dict[str, bytes], blob_dir: str, local_dir: Path) -> None:
    """objectstore/object_store.go:123-150,180-213 DownloadBlob: every key under the prefix, in listing
    order, written as a file at its relative path; a zero-byte `<dir>/` marker becomes a file."""
    for key in sorted(k for k in keys if k.startswith(blob_dir)):
        relative = os.path.relpath(key, blob_dir)
        target = local_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)  # os.MkdirAll: fails under a file
        target.write_bytes(keys[key])
