"""`ctseg compile`: the KFP v2 spec, loaded back with KFP's own loader. The spec run step by step the way
KFP's backend runs it is tests/test_kubeflow_backend.py.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import yaml

from ctseg.cli import main
from ctseg.errors import CtsegError
from ctseg.pipeline.kubeflow_entrypoint import ENTRYPOINT_COMMAND
from ctseg.pipeline.kubeflow_runner import IMAGE_SCHEMA_FILE, StepResources, compile_pipeline, memory_gb

REPO = Path(__file__).resolve().parent.parent
IMAGE = "ghcr.io/example/ctseg:0.1.0-test"
PIPELINE_ROOT = "gs://ctseg-test/pipeline-root"
LOCAL_BEAM_ARGS = ["--direct_running_mode=in_memory", "--direct_num_workers=1"]
INGEST = "IrcadExampleGen"


# The allocatable share of an 8-vCPU / 30 GB GPU node (GKE n1-standard-8: 7.91 CPU, 26.6 GB after the
# kubelet's reserve), less about 0.5 CPU and 1 GB for the node's daemon sets (logging, GPU device plugin).
GPU_NODE_FREE_CPU, GPU_NODE_FREE_MEMORY_GB = 7.4, 25.6


@pytest.fixture(scope="module")
def spec_file(small_phantom, tmp_path_factory):
    """Compiled once for the module: GPU Trainer, DirectRunner in the pod, the 64 px phantom as data."""
    return compile_pipeline(
        image=IMAGE, output=tmp_path_factory.mktemp("kfp") / "ctseg.yaml",
        data_root=str(small_phantom), pipeline_root=PIPELINE_ROOT, image_size=64,
        beam_pipeline_args=LOCAL_BEAM_ARGS,
        trainer_resources=StepResources(cpu="6", memory="30Gi", accelerator="nvidia.com/gpu", accelerator_count=2),
        step_resources=StepResources(cpu="1500m", memory="6G"))


@pytest.fixture(scope="module")
def spec(spec_file):
    """The spec as KFP's client loads it before a submission, as a PipelineSpec proto."""
    from kfp.client import client

    return client._extract_pipeline_yaml(str(spec_file)).pipeline_spec


def container(spec, task: str):
    label = spec.components[spec.root.dag.tasks[task].component_ref.name].executor_label
    executors = spec.deployment_spec.fields["executors"].struct_value
    return executors.fields[label].struct_value.fields["container"].struct_value


def as_dict(struct):
    from google.protobuf import json_format

    return json_format.MessageToDict(struct)


def container_tasks(spec) -> list[str]:
    executors = as_dict(spec.deployment_spec)["executors"]
    return [t for t in spec.root.dag.tasks
            if "container" in executors[spec.components[spec.root.dag.tasks[t].component_ref.name].executor_label]]


@pytest.mark.slow
def test_spec_is_a_strict_kfp_v2_pipeline_spec(spec_file, spec):
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    strict = json_format.ParseDict(yaml.safe_load(spec_file.read_text()), pipeline_spec_pb2.PipelineSpec())
    assert strict == spec
    assert spec.schema_version == "2.1.0" and spec.pipeline_info.name == "ctseg"
    assert spec.default_pipeline_root == PIPELINE_ROOT
    assert set(spec.root.dag.tasks) >= {INGEST, "StatisticsGen", "ExampleValidator", "ValidationGate", "Trainer",
                                        "SegmentationEvaluator", "Pusher", "ImportSchemaGen", "SchemaGen"}
    trainer_deps = set(spec.root.dag.tasks["Trainer"].dependent_tasks)
    assert {"ValidationGate", INGEST, "ImportSchemaGen"} <= trainer_deps, "the Trainer waits for the gate"


@pytest.mark.slow
def test_trainer_asks_for_gpus_cpu_and_memory(spec):
    resources = as_dict(container(spec, "Trainer"))["resources"]
    assert resources["accelerator"] == {"type": "nvidia.com/gpu", "count": "2"}
    assert resources["cpuLimit"] == resources["cpuRequest"] == 6.0
    assert resources["memoryLimit"] == pytest.approx(30 * 2 ** 30 / 1e9)


@pytest.mark.slow
def test_other_steps_ask_only_for_cpu_and_memory(spec):
    tasks = [t for t in container_tasks(spec) if t != "Trainer"]
    assert len(tasks) >= 7
    for task in tasks:
        resources = as_dict(container(spec, task))["resources"]
        assert resources == {"cpuLimit": 1.5, "cpuRequest": 1.5, "memoryLimit": 6.0, "memoryRequest": 6.0}, task


@pytest.mark.slow
def test_every_step_runs_the_image_through_tfx_entrypoint_with_importable_executors(spec):
    for task in container_tasks(spec):
        c = as_dict(container(spec, task))
        assert c["image"] == IMAGE and c["command"] == ENTRYPOINT_COMMAND, task
        args = c["args"]
        executor_path = args[args.index("--executor_class_path") + 1]
        module, _, name = executor_path.rpartition(".")
        assert hasattr(importlib.import_module(module), name), executor_path
        assert args[args.index("--json_serialized_invocation_args") + 1] == "{{$}}"
        assert args[-len(LOCAL_BEAM_ARGS):] == LOCAL_BEAM_ARGS, task
        top = module.split(".")[0]
        assert top == "tfx" or (REPO / top / "__init__.py").exists(), f"{executor_path} is not in the image"


def constants(spec, task: str) -> dict:
    parameters = spec.root.dag.tasks[task].inputs.parameters
    return {k: json_format_value(v.runtime_value.constant) for k, v in parameters.items()}


def json_format_value(value):
    from google.protobuf import json_format

    return json_format.MessageToDict(value)


@pytest.mark.slow
def test_trainer_runs_the_full_preset_from_the_installed_module(spec):
    params = constants(spec, "Trainer")
    assert params["run_fn"] == "ctseg.models.unet.trainer.run_fn"
    config = json.loads(params["custom_config"])
    assert config["preset"] == "full" and config["image_size"] == 64
    assert constants(spec, "ImportSchemaGen")["schema_file"] == IMAGE_SCHEMA_FILE
    assert PIPELINE_ROOT + "/serving" in json.dumps(constants(spec, "Pusher"))


def test_cli_compiles_with_beam_runner_args_and_cpu_only_trainer(small_phantom, tmp_path, capsys):
    out = tmp_path / "dataflow.yaml"
    assert main(["compile", "--data", "gs://bucket/3Dircadb1.zip", "--pipeline-root", "s3://bucket/root/",
                 "--image", IMAGE, "--output", str(out), "--trainer-gpus", "0",
                 "--beam-arg=--runner=DataflowRunner", "--beam-arg=--project=liver",
                 "--beam-arg=--temp_location=gs://bucket/tmp", "--pod-env", "AWS_REGION=eu-west-1"]) == 0
    assert str(out) in capsys.readouterr().out
    from kfp.client import client

    spec = client._extract_pipeline_yaml(str(out)).pipeline_spec
    assert spec.default_pipeline_root == "s3://bucket/root"
    for task in container_tasks(spec):
        args = as_dict(container(spec, task))["args"]
        assert args[-3:] == ["--runner=DataflowRunner", "--project=liver", "--temp_location=gs://bucket/tmp"]
    trainer = as_dict(container(spec, "Trainer"))["resources"]
    assert "accelerator" not in trainer and trainer["cpuLimit"] == 8.0 and trainer["memoryLimit"] == 26.0
    assert trainer["cpuRequest"] == 6.0 and trainer["memoryRequest"] == 22.0
    assert as_dict(container(spec, "Trainer"))["env"] == [{"name": "AWS_REGION", "value": "eu-west-1"}]
    assert constants(spec, INGEST)["image_size"] == 256, "the full preset's size by default"


@pytest.mark.slow
def test_no_resolver_the_evaluator_reads_the_serving_dir(spec):
    """KFP's backend compiler refuses `resolver` executors (backend/src/v2/compiler/visitor.go:128 at 2.5.0)."""
    assert not [e for e in spec.deployment_spec["executors"].values() if "resolver" in e]
    evaluator = constants(spec, "SegmentationEvaluator")
    assert evaluator["serving_dir"] == PIPELINE_ROOT + "/serving" == json.loads(
        constants(spec, "Pusher")["push_destination"])["filesystem"]["base_directory"]


def test_compile_without_output_writes_under_the_work_dir_not_the_source_tree(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compile", "--data", "gs://b/d.zip", "--pipeline-root", "gs://b/root", "--image", IMAGE]) == 0
    written = tmp_path / "out" / "kubeflow" / "ctseg_pipeline.yaml"
    assert f"to {Path('out') / 'kubeflow' / 'ctseg_pipeline.yaml'}" in capsys.readouterr().out and written.is_file()
    assert main(["compile", "--data", "gs://b/d.zip", "--pipeline-root", "gs://b/root", "--image", IMAGE,
                 "--workdir", "elsewhere"]) == 0
    assert (tmp_path / "elsewhere" / "kubeflow" / "ctseg_pipeline.yaml").is_file()


@pytest.mark.parametrize("flags, message", [
    (["--pipeline-root", "/tmp/root"], "must be an object-store path every pod can write"),
    (["--pipeline-root", "minio://mlpipeline/ctseg"], "use s3://mlpipeline/ctseg with AWS_ENDPOINT_URL"),
    (["--data", "minio://mlpipeline/data/3Dircadb1.zip"], "use s3://mlpipeline/data/3Dircadb1.zip with"),
    (["--image", "ghcr.io/example/ctseg:latest"], "must name a tag other than latest"),
    (["--trainer-memory", "lots"], "is not a quantity like 32G"),
    (["--trainer-cpu", "0"], "is not a positive number of cores"),
    (["--trainer-accelerator", ""], "an accelerator count needs an accelerator type"),
    (["--output", "spec.json"], "must end in .yaml or .yml"),
    (["--pod-env", "AWS_ENDPOINT_URL"], "is not NAME=VALUE"),
    (["--trainer-cpu", "4"], "must not exceed the limits"),
])
def test_bad_compile_arguments_are_one_sentence(flags, message, capsys):
    args = {"--data": "gs://b/d.zip", "--pipeline-root": "gs://b/root", "--image": IMAGE, "--output": "/tmp/x.yaml"}
    args.update(dict(zip(flags[::2], flags[1::2])))
    assert main(["compile", *[w for kv in args.items() for w in kv]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ctseg compile: ") and message in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def default_spec(small_phantom, tmp_path_factory) -> dict:
    """Compiled with every cluster default: no Beam arguments, resources, image or serving dir given."""
    path = compile_pipeline(output=tmp_path_factory.mktemp("kfp") / "ctseg.yaml", data_root=str(small_phantom),
                            pipeline_root="s3://b/root", step_env={"AWS_ENDPOINT_URL": "http://minio:9000"})
    return yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_default_beam_workers_are_left_to_the_pods_cpu_limit(default_spec):
    """`--direct_num_workers=0` would be the node's cores; the entrypoint adds the pod's (kubeflow_entrypoint)."""
    for label, executor in default_spec["deploymentSpec"]["executors"].items():
        args = executor["container"]["args"]
        assert "--direct_running_mode=multi_processing" in args, label
        assert not [a for a in args if a.startswith("--direct_num_workers")], label


@pytest.mark.slow
def test_default_trainer_requests_fit_an_8_vcpu_30_gb_gpu_node(default_spec):
    resources = default_spec["deploymentSpec"]["executors"]["Trainer_executor"]["container"]["resources"]
    assert resources["cpuRequest"] <= GPU_NODE_FREE_CPU and resources["memoryRequest"] <= GPU_NODE_FREE_MEMORY_GB
    assert resources["cpuRequest"] < resources["cpuLimit"] and resources["memoryRequest"] < resources["memoryLimit"]
    assert resources["accelerator"] == {"count": "1", "type": "nvidia.com/gpu"}


def test_requests_above_limits_are_refused():
    with pytest.raises(CtsegError, match="must not exceed the limits"):
        StepResources(cpu="4", cpu_request="6").resource_spec()


@pytest.mark.slow
def test_the_evaluator_is_never_served_from_kfp_cache(default_spec):
    """Its baseline (the serving dir's newest model) is not in KFP's cache key; every other task keeps its caching."""
    tasks = default_spec["root"]["dag"]["tasks"]
    assert tasks["SegmentationEvaluator"]["cachingOptions"] == {"enableCache": False}
    assert {t.get("cachingOptions", {}).get("enableCache") for n, t in tasks.items() if n != "SegmentationEvaluator"} \
        == {tasks["Trainer"].get("cachingOptions", {}).get("enableCache")}


@pytest.mark.slow
def test_step_env_reaches_every_container(default_spec):
    for executor in default_spec["deploymentSpec"]["executors"].values():
        assert executor["container"]["env"] == [{"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"}]


def test_memory_quantities():
    assert memory_gb("32G") == 32.0 and memory_gb("512M") == 0.512 and memory_gb("16") == 16.0
    assert memory_gb("1Gi") == pytest.approx(1.073741824)
    with pytest.raises(CtsegError):
        memory_gb("32GB")
