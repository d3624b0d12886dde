"""A three-step pipeline of Python function components for the runner tests: seconds, not minutes.

`python tests/tiny_pipeline.py WORKDIR SLEEP_S` runs it through `ctseg.pipeline.local_runner.run_pipeline`
(the runner `ctseg run` uses) with a step that writes WORKDIR/sleeping and then sleeps, so a test
can signal or kill a run in the middle of a step.
"""

import os
import sys
import time
from pathlib import Path

from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from ctseg.errors import CtsegError

PIPELINE = "tiny"
SLEEPING = "sleeping"


@component
def Make(examples: OutputArtifact[standard_artifacts.Examples]):
    Path(examples.uri, "data.txt").write_text("rows")


@component
def Step(examples: InputArtifact[standard_artifacts.Examples], model: OutputArtifact[standard_artifacts.Model],
         sleep_s: Parameter[int] = 0, marker: Parameter[str] = "", fail: Parameter[str] = "",
         newer_run_in: Parameter[str] = ""):
    if newer_run_in:  # another run, started later, appears in the same store while this one works
        from tfx.orchestration import metadata
        from tfx.orchestration.portable.mlmd import context_lib

        config = tfx.orchestration.metadata.sqlite_metadata_connection_config(newer_run_in)
        with metadata.Metadata(config) as m:
            context_lib.register_context_if_not_exists(m, "pipeline_run", "9999-a-newer-run")
    if marker:
        Path(marker).write_text(str(os.getpid()))
    time.sleep(sleep_s)
    if fail:
        raise CtsegError(fail)
    Path(model.uri, "model.txt").write_text("weights")


def tiny_pipeline(workdir: Path, **step):
    make = Make()
    step_ = Step(examples=make.outputs["examples"], **step)
    return tfx.dsl.Pipeline(
        pipeline_name=PIPELINE, pipeline_root=str(workdir / "pipeline"), components=[make, step_],
        enable_cache=False,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "metadata.sqlite")))


if __name__ == "__main__":
    from ctseg.pipeline.local_runner import run_pipeline

    work = Path(sys.argv[1])
    run_pipeline(tiny_pipeline(work, sleep_s=int(sys.argv[2]), marker=str(work / SLEEPING)), work)
