"""`ctseg compile`: the `ctseg run` pipeline as a Kubeflow Pipelines (KFP v2) spec."""
from __future__ import annotations

from pathlib import Path

from ctseg.commands import DEFAULT_WORKDIR, add_out_argument
from ctseg.commands.pipeline_options import add_pipeline_options, pipeline_knobs
from ctseg.errors import CtsegError
from ctseg.pipeline.kubeflow_runner import CLUSTER_PRESET, IMAGE_SCHEMA_FILE, TRAINER_RESOURCES


def register(sub) -> None:
    p = sub.add_parser("compile", help="compile the pipeline into a Kubeflow Pipelines v2 spec",
                       description="Build the same pipeline as `ctseg run`, with the same knobs, and compile it "
                                   "with TFX's KubeflowV2DagRunner into a KFP v2 spec for `ctseg submit`. The "
                                   "Trainer asks for a GPU, CPU and memory; the other steps for CPU and memory.")
    p.add_argument("--data", required=True,
                   help="IRCAD folder or 3Dircadb1.zip as the pods see it, e.g. gs://bucket/3Dircadb1.zip")
    p.add_argument("--pipeline-root", required=True,
                   help="where the pods write artifacts: gs://... or s3://... "
                        "(also passed with the run by `ctseg submit`)")
    p.add_argument("--image", help="the image built from the Dockerfile, pinned by tag or digest "
                                   "(default: ghcr.io/ctseg/ctseg:<version>)")
    add_out_argument(p, "spec file to write (default: WORKDIR/kubeflow/ctseg_pipeline.yaml; also --output)", "--output")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help="work dir the default spec file goes under (default: ./out)")
    p.add_argument("--serving-dir", help="where the Pusher exports blessed models (default: <pipeline root>/serving)")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline argument, repeated, e.g. --beam-arg=--runner=DataflowRunner "
                        "--beam-arg=--project=P --beam-arg=--region=R --beam-arg=--temp_location=gs://... "
                        "(default: DirectRunner, one worker per core of the pod's CPU limit)")
    p.add_argument("--trainer-gpus", type=int, default=1,
                   help="GPUs for the Trainer (default: %(default)s; 0 for none)")
    p.add_argument("--trainer-accelerator", default="nvidia.com/gpu",
                   help="accelerator type: the Kubernetes resource name on Kubeflow (default: %(default)s), "
                        "or e.g. NVIDIA_TESLA_T4 on Vertex AI")
    p.add_argument("--trainer-cpu", default=TRAINER_RESOURCES.cpu, help="Trainer CPU limit (default: %(default)s)")
    p.add_argument("--trainer-memory", default=TRAINER_RESOURCES.memory,
                   help="Trainer memory limit (default: %(default)s)")
    p.add_argument("--trainer-cpu-request", default=TRAINER_RESOURCES.cpu_request,
                   help="Trainer CPU the scheduler reserves (default: %(default)s, to fit an 8-vCPU GPU node)")
    p.add_argument("--trainer-memory-request", default=TRAINER_RESOURCES.memory_request,
                   help="Trainer memory the scheduler reserves (default: %(default)s, to fit a 30 GB GPU node)")
    p.add_argument("--step-cpu", default="4", help="CPU cores of every other step (default: %(default)s)")
    p.add_argument("--step-memory", default="16G", help="memory of every other step (default: %(default)s)")
    p.add_argument("--baseline-metadata", metavar="grpc:HOST:PORT",
                   help="ML Metadata service in which the evaluator looks up the Model artifact id of the model "
                        "serving (its baseline), e.g. grpc:metadata-grpc-service.kubeflow:8080; without it the "
                        "baseline is recorded by its path alone")
    p.add_argument("--pod-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a plain environment variable for every step's pod, repeated, e.g. "
                        "--pod-env AWS_ENDPOINT_URL=http://minio-service.kubeflow:9000 (never a secret: the spec is "
                        "readable by whoever can list the pipeline)")
    add_pipeline_options(p, preset=CLUSTER_PRESET, schema_file=IMAGE_SCHEMA_FILE,
                         schema_help="the curated schema as the pods see it (default: the copy in the image)")
    p.set_defaults(func=run)


def cluster_pipeline_args(args) -> dict:
    """`build_cluster_pipeline` keyword arguments: the pipeline's knobs, then the cluster's paths and resources."""
    from ctseg.pipeline.kubeflow_runner import StepResources

    knobs = pipeline_knobs(args)
    return dict(
        knobs,
        data_root=args.data,
        pipeline_root=args.pipeline_root,
        serving_dir=args.serving_dir,
        beam_pipeline_args=args.beam_arg,
        preset=args.preset,
        trainer_resources=StepResources(cpu=args.trainer_cpu, memory=args.trainer_memory,
                                        cpu_request=args.trainer_cpu_request,
                                        memory_request=args.trainer_memory_request,
                                        accelerator=args.trainer_accelerator, accelerator_count=args.trainer_gpus),
        step_resources=StepResources(cpu=args.step_cpu, memory=args.step_memory),
        baseline_metadata=args.baseline_metadata,
    )


def pod_env(assignments: list[str]) -> dict[str, str]:
    env = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise CtsegError(f"--pod-env {assignment!r} is not NAME=VALUE")
        env[name] = value
    return env


def run(args) -> int:
    from ctseg.pipeline.kubeflow_runner import DEFAULT_IMAGE, SPEC_FILE, compile_pipeline

    path = compile_pipeline(image=args.image or DEFAULT_IMAGE, output=args.out or Path(args.workdir) / SPEC_FILE,
                            step_env=pod_env(args.pod_env), **cluster_pipeline_args(args))
    print(f"wrote the Kubeflow pipeline spec to {path}")
    import yaml

    from ctseg.pipeline.kubeflow_submit import compiled_fingerprint

    print(f"data fingerprint in the spec: {compiled_fingerprint(yaml.safe_load(path.read_text()))} "
          f"(`ctseg submit` takes it again, so changed data is ingested again)")
    return 0
