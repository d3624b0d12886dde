"""The container entrypoint of every ctseg step on Kubeflow Pipelines 2.x and Vertex AI.

It runs TFX 1.15.1's own v2 entrypoint (tfx/orchestration/kubeflow/v2/container/kubeflow_v2_run_executor.py)
after correcting the executor input for what the open-source KFP backend hands a container, and
cleans up after it what the KFP launcher would trip on in the next step. Around it: the `s3://`
filesystem registered and its variables completed (ctseg.object_stores), Beam's DirectRunner given
one worker per core of the pod's CPU limit, oneDNN's CPU kernels (ctseg.cpu_kernels), and the process
ended without the native teardown that aborts after S3 use. The compiled spec selects it
through `KubeflowV2DagRunnerConfig(default_commands=ENTRYPOINT_COMMAND)`. KFP source references are
to kubeflow/pipelines at tag 2.5.0 (the same code in 2.0.5 unless said otherwise).
"""
from __future__ import annotations

import json
import posixpath
from typing import Any

from absl import app, logging

from ctseg import object_stores
from ctseg.cpu_kernels import prefer_onednn

ENTRYPOINT_MODULE = "ctseg.pipeline.kubeflow_entrypoint"
ENTRYPOINT_COMMAND = ["python", "-m", ENTRYPOINT_MODULE]
INVOCATION_FLAG = "--json_serialized_invocation_args"
INPUTS_SPEC_FLAG = "--json_serialized_inputs_spec_args"
# Object stores where TensorFlow's filesystems write zero-byte "<dir>/" marker objects.
MARKER_SCHEMES = ("gs://", "s3://")
RUNNING_MODE_FLAG = "--direct_running_mode"
NUM_WORKERS_FLAG = "--direct_num_workers"


def _has_title(artifact_type: dict) -> bool:
    """TFX picks the artifact class from the schema title (kubeflow_v2_entrypoint_utils.py:252-267)."""
    if artifact_type.get("schemaTitle"):
        return True
    import yaml

    schema = yaml.safe_load(artifact_type.get("instanceSchema") or "")
    return isinstance(schema, dict) and bool(schema.get("title"))


def kfp_compatible_executor_input(executor_input: dict[str, Any], inputs_spec: dict[str, Any] | None) -> dict[str, Any]:
    """The executor input TFX's entrypoint can parse, from the one KFP's driver built."""
    fixed = json.loads(json.dumps(executor_input))
    declared = (inputs_spec or {}).get("artifacts", {})
    for key, artifact_list in fixed.get("inputs", {}).get("artifacts", {}).items():
        for artifact in artifact_list.get("artifacts", []):
            # KFP's driver passes upstream artifacts with `instanceSchema: ""` (metadata/client.go:945-948,
            # GetOutputArtifactsByExecutionId; copied by ToRuntimeArtifact, client.go:175-190): take the
            # type the step itself declares.
            if not _has_title(artifact.get("type") or {}) and key in declared:
                artifact["type"] = declared[key]["artifactType"]
    outputs = fixed.get("outputs", {}).get("artifacts", {})
    # From KFP 2.5 the driver adds an `executor-logs` output of type system.Artifact that the launcher
    # itself writes and uploads (driver/driver.go:2025-2038, component/launcher_v2.go:467-488):
    # it is not this component's output, and TFX cannot parse its type.
    outputs.pop("executor-logs", None)
    return fixed


def output_uris(executor_input: dict[str, Any]) -> list[str]:
    return [a["uri"] for lst in executor_input.get("outputs", {}).get("artifacts", {}).values()
            for a in lst.get("artifacts", []) if a.get("uri")]


def remove_directory_markers(uri: str) -> list[str]:
    """Deletes the zero-byte `<dir>/` objects TensorFlow's GCS and S3 filesystems write under `uri`.

    The launcher downloads a step's inputs by listing every key under the artifact's prefix and
    writing each as a file (objectstore/object_store.go:123-150); a marker becomes an empty file where
    the next key needs a directory, and the step fails with "not a directory"
    (kubeflow/pipelines#13476). Returns the markers removed.
    """
    if not uri.startswith(MARKER_SCHEMES):
        return []
    import tensorflow as tf

    removed = []
    for directory, subdirs, _ in tf.io.gfile.walk(uri):
        for marker in [directory.rstrip("/") + "/"] + [posixpath.join(directory, d.rstrip("/")) + "/" for d in subdirs]:
            try:
                tf.io.gfile.remove(marker)
                removed.append(marker)
            except tf.errors.OpError:  # a prefix with no marker object
                pass
    return sorted(set(removed))


def json_argument(flag: str, text: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The flag's JSON object, or SystemExit with one sentence naming the flag and what it lacks: the pod
    log is what an operator reads, and a traceback there hides the one line that matters."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise SystemExit(f"ctseg step: {flag} is not JSON ({e}); expected KFP's executor input") from None
    if not isinstance(value, dict):
        raise SystemExit(f"ctseg step: {flag} is a JSON {type(value).__name__}, not an object; expected KFP's "
                         "executor input")
    for path in required:
        node: Any = value
        for key in path.split("."):
            node = node.get(key) if isinstance(node, dict) else None
        if not node:
            raise SystemExit(f"ctseg step: {flag} has no {path}; expected KFP's executor input, which names "
                             "where the step writes its output metadata")
    return value


def _flag_value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def beam_args_for_pod(beam_args: list[str], cores: int) -> list[str]:
    """Beam's DirectRunner in multi_processing mode with one worker per core of the pod's CPU limit.

    With `--direct_num_workers=0` Beam starts `multiprocessing.cpu_count()` workers
    (apache_beam/runners/portability/fn_api_runner/fn_runner.py:163-168 in Beam 2.59): the node's cores,
    not the pod's limit, each importing TensorFlow inside the pod's memory limit.
    """
    if _flag_value(beam_args, RUNNING_MODE_FLAG) != "multi_processing":
        return list(beam_args)
    if (_flag_value(beam_args, NUM_WORKERS_FLAG) or "0") != "0":
        return list(beam_args)
    kept = [a for a in beam_args if not a.startswith(NUM_WORKERS_FLAG + "=")]
    return kept + [f"{NUM_WORKERS_FLAG}={cores}"]


def _parse_flags(argv: list[str]):
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entrypoint

    args, beam_args = tfx_entrypoint._parse_flags(argv)
    inputs_spec = (json_argument(INPUTS_SPEC_FLAG, args.json_serialized_inputs_spec_args)
                   if args.json_serialized_inputs_spec_args else None)
    executor_input = kfp_compatible_executor_input(
        json_argument(INVOCATION_FLAG, args.json_serialized_invocation_args, ("outputs.outputFile",)), inputs_spec)
    args.json_serialized_invocation_args = json.dumps(executor_input)
    args.owned_output_uris = output_uris(executor_input)
    return args, beam_args_for_pod(beam_args, object_stores.pod_cpu_count())


def main(parsed_argv) -> None:
    prefer_onednn()  # before TFX loads TensorFlow: a CPU-only pod trains on oneDNN's kernels
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_run_executor as tfx_entrypoint

    args, beam_args = parsed_argv
    object_stores.register_filesystems()
    tfx_entrypoint.main((args, beam_args))
    for uri in args.owned_output_uris:
        for marker in remove_directory_markers(uri):
            logging.info("removed directory marker %s", marker)
    object_stores.exit_without_native_teardown(0)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
