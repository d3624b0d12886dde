"""Slice examples from a phantom through the real ingest component (IrcadExampleGen in a one-step
LocalDagRunner pipeline), for the Trainer's tests and benchmarks."""
from __future__ import annotations

from pathlib import Path

from tfx import v1 as tfx

from ctseg.components.ingest.component import IrcadExampleGen

DEFAULT_SPLITS = {"train": 0.75, "eval": 0.25}


def ingest_pipeline(data_root, pipeline_root, image_size: int, split_ratios=None) -> tuple[tfx.dsl.Pipeline, IrcadExampleGen]:
    example_gen = IrcadExampleGen(data_root=str(data_root), image_size=image_size,
                                  split_ratios=split_ratios or DEFAULT_SPLITS)
    root = Path(pipeline_root)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name="ctseg-bench-ingest", pipeline_root=str(root / "root"), components=[example_gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(str(root / "mlmd.sqlite")))
    return pipeline, example_gen


def ingest_phantom(data_root, workdir, image_size: int, split_ratios=None) -> dict[str, str]:
    """Runs ingest once per work folder; returns {split: file pattern of its gzipped examples}."""
    workdir = Path(workdir)
    found = lambda: sorted(workdir.glob("root/IrcadExampleGen/examples/*/Split-*"))  # noqa: E731
    if not found():
        tfx.orchestration.LocalDagRunner().run(ingest_pipeline(data_root, workdir, image_size, split_ratios)[0])
    return {p.name.removeprefix("Split-"): str(p / "*.gz") for p in found()}
