"""The compiled spec run the way the open-source Kubeflow Pipelines 2.x backend runs it.

`tests/kfp_backend.py` emulates KFP's backend (kubeflow/pipelines at tag 2.5.0, backend/src/v2; the rules
it relies on are unchanged at 2.17.0 and master, and 2.0.5-2.4.1 differ only by having no
`executor-logs` output and no uuid in output URIs): the API server's compiler check, the driver's
executor input, each task in its own process through the spec's own command and args, the launcher's
output file, and KFP's writes to ML Metadata. The project runs from a built wheel in a fresh venv, as
in the image. The pipeline root and the data are in an object store reached through its real API on
loopback (tests/loopback_stores.py): moto's S3 server (MinIO's place on open-source Kubeflow) and
gcp-storage-emulator's GCS, each for one run of the whole spec on the 64 px phantom (3 patients, one
epoch), with the launcher's downloads and uploads made as KFP makes them. `ctseg runs`, `ctseg runs
show` and `ctseg lineage` then read KFP's ML Metadata layout, and the pushed model is served the way
TensorFlow Serving would load it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from kfp_backend import EXECUTOR_LOGS, KfpBackend, KfpMetadata, RunCreationRefused, check_executors, download_blob
from loopback_stores import started

from ctseg.cli import main as cli_main
from ctseg.mlmd.lineage import lineage, served_model_id
from ctseg.mlmd.runs import describe_run, list_runs
from ctseg.mlmd.store import connect
from ctseg.pipeline.kubeflow_entrypoint import ENTRYPOINT_COMMAND, kfp_compatible_executor_input
from ctseg.pipeline.kubeflow_runner import StepResources, compile_pipeline
from ctseg.pipeline.local_runner import LOCAL_BEAM_ARGS

IMAGE = "ghcr.io/example/ctseg:0.1.0-test"
SPEC_ROOT = "gs://ctseg-test/root"      # what the spec says; KFP ignores it (driver.go:151-172)
RUN_ID = "7d9c8c1e-0000-4000-8000-00000000kfp1"
CPU_STEP = StepResources(cpu="1", memory="2G")


@pytest.fixture(scope="module", params=["s3", "gs"])
def object_store(request, tmp_path_factory):
    """The store, also reachable from this process (`ctseg runs show` reads artifact files through it)."""
    for server in started(request.param, tmp_path_factory.mktemp(f"{request.param}_server"), "mlpipeline"):
        with pytest.MonkeyPatch.context() as patch:
            for name, value in {**server.pod_env(), **server.endpoint_env()}.items():
                patch.setenv(name, value)
            yield server


@pytest.fixture(scope="module")
def kfp_run(installed_wheel, small_phantom, object_store, tmp_path_factory):
    """The whole spec, once per store: the phantom uploaded to the bucket, the spec compiled with the store's
    endpoint in every step's env, every task run by the wheel's venv (its `python` first on PATH)."""
    work = tmp_path_factory.mktemp("kfp_backend")
    data_uri = object_store.upload_tree(small_phantom, "data/ircad")
    spec_file = compile_pipeline(
        image=IMAGE, output=work / "ctseg.yaml", data_root=data_uri, pipeline_root=SPEC_ROOT,
        serving_dir=object_store.uri("serving"), image_size=64, preset="small",
        custom_config={"epochs": 1, "depth": 2, "base_filters": 4},
        dice_threshold=0.0, beam_pipeline_args=list(LOCAL_BEAM_ARGS),
        schema_file=str(installed_wheel.site_packages / "ctseg" / "schemas" / "schema.pbtxt"),
        trainer_resources=CPU_STEP, step_resources=CPU_STEP, step_env=object_store.endpoint_env())
    backend = KfpBackend.from_file(
        spec_file, pipeline_root=object_store.uri("v2/artifacts"), metadata=KfpMetadata(work / "kfp.sqlite"),
        python_bin=installed_wheel.venv / "bin", work=work / "pods", store=object_store,
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "", **object_store.pod_env()})
    records = backend.run(RUN_ID)
    print(f"\nKFP emulation on {object_store.scheme}, per step (wall s, CPU s):",
          ", ".join(f"{r.name} {r.seconds:.0f}/{r.cpu_seconds:.0f}" for r in records.values()))
    return {"work": work, "spec": yaml.safe_load(spec_file.read_text()), "records": records, "data": data_uri,
            "objects": object_store, "run_root": object_store.uri(f"v2/artifacts/ctseg/{RUN_ID}"),
            "store": connect(sqlite_path=str(work / "kfp.sqlite")), "sqlite": work / "kfp.sqlite"}


@pytest.mark.slow
def test_default_spec_runs_every_step_through_the_wrapper_and_has_no_resolver(kfp_run):
    spec = kfp_run["spec"]
    check_executors(spec)  # would raise on a resolver
    containers = [e["container"] for e in spec["deploymentSpec"]["executors"].values()]
    assert len(containers) == len(spec["root"]["dag"]["tasks"]) == 9
    assert all(c["command"] == ENTRYPOINT_COMMAND for c in containers)


def test_a_spec_with_a_resolver_is_refused_at_run_creation(tmp_path):
    """What the old baseline step compiled to: TFX's Resolver becomes KFP `resolver` executors."""
    from tfx import v1 as tfx
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing)).with_id("baseline")
    pipeline = tfx.dsl.Pipeline(pipeline_name="resolver", pipeline_root=SPEC_ROOT, components=[resolver])
    job = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=IMAGE, use_pipeline_spec_2_1=True),
    ).run(pipeline, write_out=False)
    with pytest.raises(RunCreationRefused, match="non-container and non-importer executor not implemented"):
        check_executors(job["pipelineSpec"])


@pytest.mark.slow
def test_the_run_reaches_a_pushed_model(kfp_run):
    records, store = kfp_run["records"], kfp_run["objects"]
    order = list(records)
    assert order.index("IrcadExampleGen") < order.index("StatisticsGen") < order.index("Trainer")
    assert order[-1] == "Pusher"
    pushed = records["Pusher"].executor_output["artifacts"]["pushed_model"]["artifacts"][0]["metadata"]
    assert pushed["pushed"] == 1
    version_dir = pushed["pushed_destination"]
    assert version_dir.rsplit("/", 1)[0] == store.uri("serving")
    assert f"{store.key(version_dir)}/saved_model.pb" in store.keys(store.key(version_dir))


@pytest.mark.slow
def test_no_directory_marker_is_left_for_the_next_download(kfp_run, tmp_path):
    """Every artifact KFP recorded downloads by the launcher's rule, which lists the artifact's key as a
    prefix (object_store.go:123-150), with no `dir/` marker in that listing. The markers TensorFlow's GCS
    filesystem leaves above the artifacts (the run's, each task's folder) are in no artifact's listing."""
    store = kfp_run["objects"]
    artifact_keys = [store.key(a.uri) for a in kfp_run["store"].get_artifacts() if a.uri.startswith(store.scheme)]
    assert len(artifact_keys) > len(kfp_run["records"])
    for key in artifact_keys:
        listed = store.objects(key)
        assert [k for k in listed if k.endswith("/")] == [], key
        download_blob(listed, key, tmp_path / key)
    keys = store.keys(store.key(kfp_run["run_root"]))
    assert any(k.endswith("/saved_model.pb") for k in keys)
    markers = [k for k in keys if k.endswith("/")]
    assert all(any(a.startswith(m) for a in artifact_keys) for m in markers), markers


@pytest.mark.slow
def test_a_marker_in_the_store_fails_the_launchers_download(kfp_run, tmp_path):
    """What TensorFlow's GCS filesystem writes, put in the real store: the download of it fails."""
    store = kfp_run["objects"]
    store.write("markers/model/Format-Serving/", b"")
    store.write("markers/model/Format-Serving/saved_model.pb", b"x")
    with pytest.raises((NotADirectoryError, FileExistsError)):
        download_blob(store.objects("markers/model"), "markers/model", tmp_path / "model")


@pytest.mark.slow
def test_executor_input_is_built_as_kfp_driver_builds_it(kfp_run):
    store, trainer = kfp_run["store"], kfp_run["records"]["Trainer"].executor_input
    examples = trainer["inputs"]["artifacts"]["examples"]["artifacts"][0]
    # driver: the producer's MLMD artifact, its id as the name, instanceSchema "" (client.go:945-948)
    (recorded,) = store.get_artifacts_by_id([int(examples["name"])])
    assert recorded.uri == examples["uri"] and examples["type"] == {"instanceSchema": ""}
    assert examples["metadata"]["display_name"] == "examples" and isinstance(examples["metadata"]["span"], float)
    run_root = kfp_run["run_root"]
    for key, lst in trainer["outputs"]["artifacts"].items():
        (artifact,) = lst["artifacts"]
        assert re.fullmatch(re.escape(f"{run_root}/Trainer/") + r"[0-9a-f-]{36}/" + re.escape(key), artifact["uri"])
        assert "name" not in artifact and "metadata" not in artifact
    assert trainer["outputs"]["artifacts"][EXECUTOR_LOGS]["artifacts"][0]["type"] == {"schemaTitle": "system.Artifact"}
    assert trainer["outputs"]["outputFile"].endswith("Trainer-pod/tmp/kfp_outputs/output_metadata.json")


@pytest.mark.slow
def test_tfx_entrypoint_alone_cannot_parse_what_the_driver_passes(kfp_run):
    """Why the wrapper exists: TFX 1.15.1's parser on the Trainer's executor input as KFP built it."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2
    from tfx.orchestration.kubeflow.v2.container import kubeflow_v2_entrypoint_utils as utils

    driver_input = kfp_run["records"]["Trainer"].executor_input
    message = json_format.ParseDict(driver_input, pipeline_spec_pb2.ExecutorInput())
    with pytest.raises(AttributeError, match="'NoneType' object has no attribute 'get'"):
        utils.parse_raw_artifact_dict(message.inputs.artifacts)       # instanceSchema ""
    with pytest.raises(ImportError):
        utils.parse_raw_artifact_dict(message.outputs.artifacts)      # executor-logs: system.Artifact

    inputs_spec = kfp_run["spec"]["components"]["Trainer"]["inputDefinitions"]
    fixed = json_format.ParseDict(kfp_compatible_executor_input(driver_input, inputs_spec),
                                  pipeline_spec_pb2.ExecutorInput())
    inputs = utils.parse_raw_artifact_dict(fixed.inputs.artifacts)
    assert type(inputs["examples"][0]).__name__ == "Examples" and inputs["examples"][0].split_names
    assert set(utils.parse_raw_artifact_dict(fixed.outputs.artifacts)) == {"model", "model_run"}


def test_validation_report_type_resolves_by_its_title():
    from tfx.utils import import_utils

    from ctseg.components.validation.component import ValidationReport

    assert import_utils.import_class_by_path(ValidationReport.TYPE_NAME) is ValidationReport


def test_directory_markers_break_the_next_download(tmp_path):
    """The launcher's DownloadBlob (object_store.go:123-150) on what TensorFlow's GCS filesystem
    writes: a zero-byte `dir/` marker becomes a file, and the next key under it cannot be written."""
    written = {"run/Trainer/u/model/Format-Serving/": b"", "run/Trainer/u/model/Format-Serving/saved_model.pb": b"x"}
    with pytest.raises((NotADirectoryError, FileExistsError)):
        download_blob(written, "run/Trainer/u/model", tmp_path / "with_markers")
    without = {k: v for k, v in written.items() if not k.endswith("/")}
    download_blob(without, "run/Trainer/u/model", tmp_path / "cleaned")
    assert (tmp_path / "cleaned" / "Format-Serving" / "saved_model.pb").read_bytes() == b"x"


@pytest.mark.slow
def test_kfp_metadata_layout(kfp_run):
    store, records = kfp_run["store"], kfp_run["records"]
    (run_ctx,) = store.get_contexts_by_type("system.PipelineRun")
    assert run_ctx.name == RUN_ID
    assert run_ctx.custom_properties["pipeline_root"].string_value.endswith(f"/ctseg/{RUN_ID}")
    executions = store.get_executions_by_type("system.ContainerExecution")
    assert {e.custom_properties["task_name"].string_value for e in executions} == set(records)
    assert {e.last_known_state for e in executions} == {store_state("COMPLETE")}
    examples = store.get_artifacts_by_type("tfx.Examples")
    assert len(examples) == 1 and examples[0].custom_properties["display_name"].string_value == "examples"
    logs = store.get_artifacts_by_type("system.Artifact")
    assert len(logs) == len(records)
    log_uri = records["Trainer"].executor_input["outputs"]["artifacts"][EXECUTOR_LOGS]["artifacts"][0]["uri"]
    trainer_log = kfp_run["objects"].read(kfp_run["objects"].key(log_uri))
    assert b"Starting executor" in trainer_log
    # The pod's environment has no TF_ENABLE_ONEDNN_OPTS: the entrypoint turns oneDNN on before TFX loads TensorFlow.
    assert b"oneDNN kernels on" in trainer_log, trainer_log[-2000:]


def store_state(name: str) -> int:
    from ml_metadata.proto import metadata_store_pb2

    return metadata_store_pb2.Execution.State.Value(name)


@pytest.mark.slow
def test_ctseg_runs_reads_the_kfp_store(kfp_run, capsys):
    (run,) = list_runs(kfp_run["store"])
    assert run.run_id == RUN_ID and run.pipeline == "ctseg" and run.state == "complete"
    assert run.executions == {"complete": 9} and run.blessed is True and run.pushed_version
    assert cli_main(["runs", "--metadata", str(kfp_run["sqlite"])]) == 0
    assert RUN_ID[:8] in capsys.readouterr().out


@pytest.mark.slow
def test_ctseg_runs_show_reads_the_kfp_store(kfp_run, capsys):
    described = describe_run(kfp_run["store"], RUN_ID)
    steps = {e["node_id"]: e for e in described["executions"]}
    assert set(steps) == set(kfp_run["records"])
    assert steps["Trainer"]["properties"]["custom_config"]["epochs"] == 1      # from KFP's `inputs` struct
    examples = next(a for a in described["artifacts"] if a["type"] == "Examples")
    assert examples["producer"] == "IrcadExampleGen" and examples["properties"]["patients"] == 3
    evaluation = next(a for a in described["artifacts"] if a["type"] == "ModelEvaluation")
    assert set(evaluation["properties"]["dice_per_patient"]) and "threshold" in evaluation["properties"]["reason"]
    assert cli_main(["runs", "show", RUN_ID[:8], "--metadata", str(kfp_run["sqlite"])]) == 0
    out = capsys.readouterr().out
    assert "SegmentationEvaluator" in out and "Pusher" in out


@pytest.mark.slow
def test_ctseg_lineage_reads_the_kfp_store(kfp_run, capsys):
    store = kfp_run["store"]
    pushed = kfp_run["records"]["Pusher"].executor_output["artifacts"]["pushed_model"]["artifacts"][0]
    version_dir = pushed["metadata"]["pushed_destination"]
    found = lineage(store, version_dir)
    assert found["run_id"] == RUN_ID and found["trainer"]["node_id"] == "Trainer"
    assert found["pushed_model"]["pushed_by"]["node_id"] == "Pusher"
    assert found["hyperparameters"]["epochs"] == 1 and found["data_path"] == kfp_run["data"]
    assert set(found["derived"]) == {"ExampleStatistics", "Schema", "ExampleAnomalies"}
    model_id = int(kfp_run["records"]["Pusher"].executor_input["inputs"]["artifacts"]["model"]["artifacts"][0]["name"])
    assert found["model"]["id"] == model_id == served_model_id(store, version_dir)
    assert cli_main(["lineage", version_dir, "--metadata", str(kfp_run["sqlite"])]) == 0
    assert kfp_run["data"] in capsys.readouterr().out


SERVE = r'''
import importlib.abc, json, sys

class NotInTfServing(importlib.abc.MetaPathFinder):
    """TensorFlow Serving has TensorFlow's ops only: no tensorflow-io, no tensorflow-addons, no project code."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow_io", "tensorflow_addons", "ctseg", "tfx"):
            raise ImportError(f"{name} is not available to TensorFlow Serving")

sys.meta_path.insert(0, NotInTfServing())
import tensorflow as tf

served = tf.saved_model.load(sys.argv[1]).signatures["serving_default"]
serialized = open(sys.argv[2], "rb").read()
out = served(examples=tf.constant([serialized]))["probabilities"].numpy()
print(json.dumps({"shape": list(out.shape), "min": float(out.min()), "max": float(out.max())}))
'''


@pytest.mark.slow
def test_pushed_model_answers_serving_default_without_custom_ops(kfp_run, tmp_path):
    """As KServe's storage initializer does, the version is copied from the store, then loaded."""
    import tensorflow as tf

    store = kfp_run["objects"]
    pushed = kfp_run["records"]["Pusher"].executor_output["artifacts"]["pushed_model"]["artifacts"][0]
    version_dir = store.download_tree(pushed["metadata"]["pushed_destination"], tmp_path / "model")
    examples_uri = kfp_run["records"]["IrcadExampleGen"].executor_output["artifacts"]["examples"]["artifacts"][0]["uri"]
    files = sorted(map(str, store.download_tree(examples_uri, tmp_path / "examples").glob("Split-eval/*")))
    serialized = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP"))).numpy()
    (tmp_path / "example.pb").write_bytes(serialized)
    (tmp_path / "serve.py").write_text(SERVE)
    done = subprocess.run([sys.executable, str(tmp_path / "serve.py"), str(version_dir),
                           str(tmp_path / "example.pb")], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["shape"] == [1, 64, 64] and 0.0 <= answer["min"] <= answer["max"] <= 1.0


@pytest.mark.slow
def test_ingest_output_splits_patients_and_keeps_every_slice(kfp_run, small_phantom, tmp_path):
    import tensorflow as tf

    from ctseg.features import decode_example

    artifact = kfp_run["records"]["IrcadExampleGen"].executor_output["artifacts"]["examples"]["artifacts"][0]
    assert json.loads(artifact["metadata"]["split_names"]) == ["train", "eval"]
    examples = kfp_run["objects"].download_tree(artifact["uri"], tmp_path)
    patients_by_split, slices = {}, 0
    for split in ("train", "eval"):
        files = sorted(map(str, examples.glob(f"Split-{split}/*.gz")))
        assert files, f"no TFRecords in {artifact['uri']}/Split-{split}"
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = decode_example(record.numpy())
            assert example["image_hu"].shape == (64, 64) and example["mask"].shape == (64, 64)
            patients_by_split.setdefault(split, set()).add(example["patient_id"])
            slices += 1
    assert not patients_by_split["train"] & patients_by_split["eval"], "patients never straddle splits"
    assert slices == sum(len(list(p.glob("PATIENT_DICOM/*"))) for p in Path(small_phantom).iterdir())
