"""Compiles the ctseg pipeline into a KFP v2 pipeline spec with TFX's KubeflowV2DagRunner.

The pipeline object is the one `ctseg run` builds (`ctseg.pipeline.pipeline.create_pipeline`); on a cluster
only the paths, the Beam runner, the Trainer's preset and each step's container resources differ.
The spec uses schema 2.1.0, the one KFP 2's SDK and backend speak, and is written as the YAML that
`kfp.Client.create_run_from_pipeline_package` accepts: the `pipelineSpec` of TFX's PipelineJob,
with the pipeline root as its `defaultPipelineRoot`.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import ctseg
from ctseg.errors import CtsegError
from ctseg.object_stores import STORE_SCHEMES, check_store_path

# `ctseg compile` writes the spec here under its work dir (never into the installed package or the source tree).
SPEC_FILE = Path("kubeflow") / "ctseg_pipeline.yaml"
PIPELINE_NAME = "ctseg"
DEFAULT_IMAGE = f"ghcr.io/ctseg/ctseg:{ctseg.__version__}"
# Where the Dockerfile puts the curated schema inside the image.
IMAGE_SCHEMA_FILE = "/opt/ctseg/schemas/schema.pbtxt"
# Object stores both TensorFlow's filesystems (the executors write with tf.io.gfile) and KFP's launcher
# know (ctseg.object_stores; KFP's own `minio://` is refused with its s3:// spelling).
PIPELINE_ROOT_SCHEMES = STORE_SCHEMES
TRAINER_ID = "Trainer"
EVALUATOR_ID = "SegmentationEvaluator"
CLUSTER_PRESET = "full"
# Without --beam-arg, Beam steps run in their pod with one worker per core of its CPU limit: the
# entrypoint adds --direct_num_workers from the pod's cgroup quota (kubeflow_entrypoint.beam_args_for_pod).
DEFAULT_BEAM_ARGS = ("--direct_running_mode=multi_processing",)

_MEMORY_UNITS_BYTES = {"": 10 ** 9, "K": 10 ** 3, "M": 10 ** 6, "G": 10 ** 9, "T": 10 ** 12,
                       "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}


def memory_gb(memory: str) -> float:
    """Kubernetes quantity ("32G", "30Gi", "512Mi"; a bare number is GB) in the GB the KFP spec carries."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]i?)?", str(memory).strip())
    if not match:
        raise CtsegError(f"memory {memory!r} is not a quantity like 32G, 30Gi or 512Mi")
    return float(match[1]) * _MEMORY_UNITS_BYTES[match[2] or ""] / 10 ** 9


def cpu_count(cpu: str) -> float:
    """Kubernetes CPU quantity ("8", "0.5", "500m") in cores."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m?)", str(cpu).strip())
    if not match or float(match[1]) <= 0:
        raise CtsegError(f"cpu {cpu!r} is not a positive number of cores like 8, 0.5 or 500m")
    return float(match[1]) / (1000 if match[2] else 1)


@dataclasses.dataclass(frozen=True)
class StepResources:
    """What one step's container asks the cluster for: `cpu` and `memory` are its limits; the scheduler
    places it by the requests, which default to the limits."""
    cpu: str = "4"
    memory: str = "16G"
    accelerator: str = ""
    accelerator_count: int = 0
    cpu_request: str | None = None
    memory_request: str | None = None

    def resource_spec(self):
        from kfp.pipeline_spec import pipeline_spec_pb2

        cores, gigabytes = cpu_count(self.cpu), memory_gb(self.memory)
        cores_request = cpu_count(self.cpu_request) if self.cpu_request else cores
        gigabytes_request = memory_gb(self.memory_request) if self.memory_request else gigabytes
        if cores_request > cores or gigabytes_request > gigabytes:
            raise CtsegError(f"requests ({cores_request:g} CPU, {gigabytes_request:g} GB) must not exceed the "
                             f"limits ({cores:g} CPU, {gigabytes:g} GB)")
        spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec(
            cpu_limit=cores, cpu_request=cores_request, memory_limit=gigabytes, memory_request=gigabytes_request)
        if self.accelerator_count < 0:
            raise CtsegError(f"accelerator count {self.accelerator_count} must not be negative")
        if self.accelerator_count:
            if not self.accelerator:
                raise CtsegError("an accelerator count needs an accelerator type, e.g. nvidia.com/gpu")
            spec.accelerator.type = self.accelerator
            spec.accelerator.count = self.accelerator_count
        return spec


# KFP's backend uses the accelerator type as the Kubernetes resource name (Vertex AI wants NVIDIA_TESLA_T4 etc.).
# The requests fit the allocatable share of the common 8-vCPU / 30 GB GPU nodes (n1-standard-8 with a T4 on
# GKE: about 7.9 CPU and 26 GB after the kubelet's reserve, less the node's daemon sets); the limits let
# the Trainer use the rest of the node.
TRAINER_RESOURCES = StepResources(cpu="8", memory="26G", cpu_request="6", memory_request="22G",
                                  accelerator="nvidia.com/gpu", accelerator_count=1)
STEP_RESOURCES = StepResources()


def check_pipeline_root(pipeline_root: str) -> str:
    check_store_path(pipeline_root or "", "pipeline root")
    if not pipeline_root or not pipeline_root.startswith(PIPELINE_ROOT_SCHEMES):
        raise CtsegError(f"pipeline root {pipeline_root!r} must be an object-store path every pod can write with "
                         f"TensorFlow's filesystems: one of {', '.join(s + '...' for s in PIPELINE_ROOT_SCHEMES)} "
                         "(for MinIO, s3://... with AWS_ENDPOINT_URL set in the pods)")
    return pipeline_root.rstrip("/")


def check_image(image: str) -> str:
    """Every step must run the same code: a moving tag like `latest` could change between steps."""
    name = image.rsplit("/", 1)[-1]
    tag = name.partition(":")[2]
    if "@" not in name and tag in ("", "latest"):
        raise CtsegError(f"image {image!r} must name a tag other than latest, or a digest")
    return image


def build_cluster_pipeline(
    *,
    data_root: str,
    pipeline_root: str,
    serving_dir: str | None = None,
    beam_pipeline_args: Sequence[str] | None = None,
    trainer_resources: StepResources = TRAINER_RESOURCES,
    step_resources: StepResources = STEP_RESOURCES,
    schema_file: str = IMAGE_SCHEMA_FILE,
    preset: str = CLUSTER_PRESET,
    custom_config: Mapping[str, Any] | None = None,
    pipeline_name: str = PIPELINE_NAME,
    **knobs: Any,
):
    """The `ctseg run` pipeline with cluster paths, the GPU preset and per-step container resources."""
    from tfx.dsl.components.base.base_component import BaseComponent

    from ctseg.models.unet.config import PRESETS
    from ctseg.pipeline.pipeline import create_pipeline

    if not data_root:
        raise CtsegError("a data path is needed: the IRCAD folder or 3Dircadb1.zip as the pods see it (gs://...)")
    check_store_path(data_root, "data path")
    if preset not in PRESETS:
        raise CtsegError(f"Trainer preset {preset!r} is not one of {sorted(PRESETS)}")
    pipeline_root = check_pipeline_root(pipeline_root)
    trainer_spec, step_spec = trainer_resources.resource_spec(), step_resources.resource_spec()
    pipeline = create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        data_root=data_root,
        serving_dir=serving_dir or f"{pipeline_root}/serving",
        schema_file=schema_file,
        custom_config={"preset": preset, **(custom_config or {})},
        beam_pipeline_args=list(beam_pipeline_args or DEFAULT_BEAM_ARGS),
        **knobs,
    )
    for component in pipeline.components:
        if isinstance(component, BaseComponent):
            component.with_platform_config(trainer_spec if component.id == TRAINER_ID else step_spec)
    return pipeline


def container_env(step_env: Mapping[str, str]) -> list[dict[str, str]]:
    """PipelineContainerSpec.env entries; KFP's driver puts them in the step's pod (driver/driver.go:463-467
    at 2.5.0)."""
    for name in step_env:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise CtsegError(f"environment variable name {name!r} is not a valid name")
    return [{"name": name, "value": str(value)} for name, value in sorted(step_env.items())]


def without_cache(spec: dict, task: str) -> None:
    """KFP serves a task from its cache when its inputs, image, command and args match an earlier run's
    (backend/src/v2/cacheutils/cache.go:52-105 at 2.5.0, GenerateCacheKey), and the driver looks the cache up only
    for tasks whose cachingOptions.enableCache is set (driver/driver.go:2334). The evaluator's baseline, the
    newest model in the serving directory, is in none of them, so a cached evaluation could bless
    against a model that has since been replaced."""
    spec["root"]["dag"]["tasks"][task].setdefault("cachingOptions", {})["enableCache"] = False


def compile_pipeline(*, output: str | Path, image: str = DEFAULT_IMAGE, step_env: Mapping[str, str] | None = None,
                     **pipeline_args: Any) -> Path:
    """Builds the cluster pipeline (`build_cluster_pipeline` arguments) and writes its KFP v2 spec to `output`.

    `step_env`: plain variables every step's pod gets, e.g. AWS_ENDPOINT_URL for MinIO (never secrets:
    the spec is readable by anyone who can list the pipeline)."""
    import yaml
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

    from ctseg.pipeline.kubeflow_entrypoint import ENTRYPOINT_COMMAND

    output = Path(output)
    if output.suffix not in (".yaml", ".yml"):
        raise CtsegError(f"{output}: the spec file must end in .yaml or .yml (what kfp.Client accepts)")
    check_image(image)
    pipeline = build_cluster_pipeline(**pipeline_args)
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=image, default_commands=ENTRYPOINT_COMMAND, use_pipeline_spec_2_1=True))
    job = runner.run(pipeline, write_out=False)
    spec = job["pipelineSpec"]
    spec["defaultPipelineRoot"] = pipeline.pipeline_info.pipeline_root
    if EVALUATOR_ID in spec["root"]["dag"]["tasks"]:
        without_cache(spec, EVALUATOR_ID)
    if step_env:
        for executor in spec["deploymentSpec"]["executors"].values():
            if "container" in executor:
                executor["container"]["env"] = container_env(step_env)
    output.parent.mkdir(parents=True, exist_ok=True)
    header = ("# KFP v2 pipeline spec of the ctseg pipeline, compiled by `ctseg compile` with TFX's "
              "KubeflowV2DagRunner.\n"
              f"# Submit with `ctseg submit --host URL --spec {output.name}`.\n")
    output.write_text(header + yaml.safe_dump(spec, sort_keys=True))
    return output
