"""Runs the pipeline on this machine: TFX LocalDagRunner, Beam DirectRunner, ML Metadata in SQLite."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tfx import v1 as tfx

from ctseg.pipeline.pipeline import create_pipeline

PIPELINE_NAME = "ctseg"
# The in-memory DirectRunner runs Beam in this process. Naming a worker image (which it never uses)
# stops TFX from building an sdist of itself for every Beam step, about 11 s each.
LOCAL_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1",
                   "--sdk_container_image=apache/beam_python3.10_sdk:2.59.0")


@dataclasses.dataclass(frozen=True)
class LocalPaths:
    """Where a local run keeps things, all under one work dir."""
    workdir: Path

    @property
    def pipeline_root(self) -> Path:
        return self.workdir / "pipeline"

    @property
    def metadata_path(self) -> Path:
        return self.workdir / "metadata.sqlite"

    @property
    def serving_dir(self) -> Path:
        return self.workdir / "serving"


def build_local_pipeline(*, data_root: str, workdir: str | Path, pipeline_name: str = PIPELINE_NAME,
                         **knobs: Any) -> tfx.dsl.Pipeline:
    """The pipeline `create_pipeline` builds from `knobs`, with every path under `workdir`."""
    paths = LocalPaths(Path(workdir).resolve())
    knobs.setdefault("beam_pipeline_args", list(LOCAL_BEAM_ARGS))
    return create_pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=str(paths.pipeline_root),
        data_root=str(data_root),
        serving_dir=str(paths.serving_dir),
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(paths.metadata_path)),
        **knobs,
    )


def run_local(*, data_root: str, workdir: str | Path, **knobs: Any) -> LocalPaths:
    """Builds the pipeline (`build_local_pipeline`) and runs it to the end or the first failure."""
    paths = LocalPaths(Path(workdir).resolve())
    paths.workdir.mkdir(parents=True, exist_ok=True)
    pipeline = build_local_pipeline(data_root=data_root, workdir=paths.workdir, **knobs)
    try:
        tfx.orchestration.LocalDagRunner().run(pipeline)
    except Exception as e:
        _record_failure(paths, e)
        raise
    return paths


def ingest_pipeline(*, data_root: str | Path, workdir: str | Path, image_size: int,
                    split_ratios: dict[str, float] | None = None, pipeline_name: str = "ctseg-ingest"):
    """Ingest alone (IrcadExampleGen) as a pipeline with its own MLMD store under `workdir`: for the
    Trainer's tests and benchmarks, which append their own components. Returns (pipeline, example_gen)."""
    from ctseg.components.ingest.component import IrcadExampleGen
    from ctseg.pipeline.pipeline import DEFAULT_SPLITS

    workdir = Path(workdir)
    example_gen = IrcadExampleGen(data_root=str(data_root), image_size=image_size,
                                  split_ratios=split_ratios or DEFAULT_SPLITS)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=str(workdir / "root"), components=[example_gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "mlmd.sqlite")),
        beam_pipeline_args=list(LOCAL_BEAM_ARGS))
    return pipeline, example_gen


def run_ingest(*, data_root: str | Path, workdir: str | Path, image_size: int,
               split_ratios: dict[str, float] | None = None) -> dict[str, str]:
    """Runs ingest once per work dir (a second call reuses its output); returns {split: gzipped example files}."""
    workdir = Path(workdir)
    found = lambda: sorted(workdir.glob("root/IrcadExampleGen/examples/*/Split-*"))  # noqa: E731
    if not found():
        tfx.orchestration.LocalDagRunner().run(ingest_pipeline(
            data_root=data_root, workdir=workdir, image_size=image_size, split_ratios=split_ratios)[0])
    return {p.name.removeprefix("Split-"): str(p / "*.gz") for p in found()}


def _record_failure(paths: LocalPaths, error: Exception) -> None:
    """TFX keeps no message for an executor that raised; store it so `ctseg runs show` can say why."""
    from ctseg import metadata

    try:
        metadata.record_failure(metadata.connect(sqlite_path=str(paths.metadata_path), writable=True),
                                "latest", f"{type(error).__name__}: {error}")
    except Exception:  # the run's own error matters more than its record
        pass
