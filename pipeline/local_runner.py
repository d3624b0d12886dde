"""Runs the pipeline on this machine: TFX LocalDagRunner, Beam DirectRunner, ML Metadata in SQLite.

One run at a time per work dir (`ctseg.workdir.WorkdirLock`). Each run gets its id before it
starts, so what is recorded and summarised afterwards is this run's and never the newest in the
store. The run's `pipeline_run` context is registered first, through TFX's own context_lib (TFX then
reuses it), carrying the pid, host and start time of this process and a heartbeat; a run ends with
`ctseg_state` set to complete, failed or interrupted (SIGINT, SIGTERM, SIGHUP: `ctseg.interrupts`), so
`ctseg runs` can tell a run still going from one whose process is gone ("abandoned").
"""
from __future__ import annotations

import dataclasses
import datetime
import threading
import time
from pathlib import Path
from typing import Any, Optional

from tfx import v1 as tfx

from ctseg.interrupts import interrupts_raise, signals_ignored
from ctseg.pipeline.pipeline import create_pipeline
from ctseg.workdir import HEARTBEAT_S, METADATA_FILE, PIPELINE_DIR, SERVING_DIR, WorkdirLock, this_process

PIPELINE_NAME = "ctseg"
# The in-memory DirectRunner runs Beam in this process. Naming a worker image (which it never uses)
# stops TFX from building an sdist of itself for every Beam step, about 11 s each.
LOCAL_BEAM_ARGS = ("--direct_running_mode=in_memory", "--direct_num_workers=1",
                   "--sdk_container_image=apache/beam_python3.10_sdk:2.59.0")
# Custom properties of the pipeline_run context (read by ctseg.mlmd.runs).
RUN_PROPERTY_PREFIX = "ctseg_"


@dataclasses.dataclass(frozen=True)
class LocalPaths:
    """Where a local run keeps things, all under one work dir; `run_id` once a run has one."""
    workdir: Path
    run_id: Optional[str] = None

    @property
    def pipeline_root(self) -> Path:
        return self.workdir / PIPELINE_DIR

    @property
    def metadata_path(self) -> Path:
        return self.workdir / METADATA_FILE

    @property
    def serving_dir(self) -> Path:
        return self.workdir / SERVING_DIR


def new_run_id() -> str:
    """The same form as LocalDagRunner's own run ids (local_dag_runner.py: datetime.now().isoformat())."""
    return datetime.datetime.now().isoformat()


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


def run_local(*, data_root: str, workdir: str | Path, run_id: Optional[str] = None, wait: bool = False,
              **knobs: Any) -> LocalPaths:
    """Builds the pipeline (`build_local_pipeline`) and runs it (`run_pipeline`) to the end or the first
    failure. Returns the paths with this run's id; a failure is re-raised after it is recorded on the run."""
    pipeline = build_local_pipeline(data_root=data_root, workdir=workdir, **knobs)
    return run_pipeline(pipeline, workdir, run_id=run_id, wait=wait)


def ingest_pipeline(*, data_root: str | Path, workdir: str | Path, image_size: int,
                    split_ratios: dict[str, float] | None = None, pipeline_name: str = "ctseg-ingest"):
    """Ingest alone (IrcadExampleGen) as a pipeline with its own MLMD store under `workdir`: for the
    Trainer's tests and benchmarks, which append their own components. Returns (pipeline, example_gen)."""
    from ctseg.components.ingest.component import IrcadExampleGen

    workdir = Path(workdir)
    example_gen = IrcadExampleGen(data_root=str(data_root), image_size=image_size,
                                  split_ratios=split_ratios)
    pipeline = tfx.dsl.Pipeline(
        pipeline_name=pipeline_name, pipeline_root=str(workdir / "root"), components=[example_gen],
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(workdir / "mlmd.sqlite")),
        beam_pipeline_args=list(LOCAL_BEAM_ARGS))
    return pipeline, example_gen


def run_ingest(*, data_root: str | Path, workdir: str | Path, image_size: int,
               split_ratios: dict[str, float] | None = None) -> dict[str, str]:
    """Runs ingest once per work dir (a second call reuses its output); returns {split: gzipped example files}."""
    from ctseg.mlmd.files import split_dirs

    def ingested() -> dict[str, str]:
        return {split: str(Path(folder) / "*.gz") for examples in sorted(Path(workdir).glob(
            "root/IrcadExampleGen/examples/*")) for split, folder in split_dirs(examples).items()}

    if not ingested():
        tfx.orchestration.LocalDagRunner().run(ingest_pipeline(
            data_root=data_root, workdir=workdir, image_size=image_size, split_ratios=split_ratios)[0])
    return ingested()


def run_pipeline(pipeline: tfx.dsl.Pipeline, workdir: str | Path, *, run_id: Optional[str] = None,
                 wait: bool = False) -> LocalPaths:
    """Runs any pipeline whose metadata lives in WORKDIR/metadata.sqlite under the work dir's lock."""
    from tfx.dsl.compiler import constants
    from tfx.orchestration.portable import runtime_parameter_utils, tfx_runner

    paths = LocalPaths(Path(workdir).resolve(), run_id or new_run_id())
    with WorkdirLock(paths.workdir, wait=wait, on_wait=lambda text: print(text, flush=True)) as lock:
        lock.note(run_id=paths.run_id)
        ir = tfx_runner._make_pipeline_proto(pipeline)  # what LocalDagRunner.run does before run_with_ir
        # LocalDagRunner substitutes its own run id only where the parameter is still unset.
        runtime_parameter_utils.substitute_runtime_parameter(
            ir, {constants.PIPELINE_RUN_ID_PARAMETER_NAME: paths.run_id})
        record = RunRecord(pipeline, paths.run_id)
        with interrupts_raise():
            record.start()
            try:
                tfx.orchestration.LocalDagRunner().run_with_ir(ir)
            except KeyboardInterrupt as e:
                with signals_ignored():
                    record.end("interrupted", getattr(e, "signal_name", "SIGINT"))
                raise
            except Exception as e:
                record.end("failed", f"{type(e).__name__}: {e}")
                raise
            record.end("complete")
    return paths


class RunRecord:
    """This run's `pipeline_run` context in ML Metadata: who runs it, its heartbeat and how it ended."""

    def __init__(self, pipeline: tfx.dsl.Pipeline, run_id: str):
        self.pipeline_name, self.run_id = pipeline.pipeline_info.pipeline_name, run_id
        self.connection_config = pipeline.metadata_connection_config
        self._stop = threading.Event()
        self._beat: Optional[threading.Thread] = None

    def _update(self, **fields: Any) -> None:
        from tfx.dsl.compiler import constants
        from tfx.orchestration import metadata
        from tfx.orchestration.portable.mlmd import context_lib

        with metadata.Metadata(self.connection_config) as m:
            pipeline_context = context_lib.register_context_if_not_exists(
                m, constants.PIPELINE_CONTEXT_TYPE_NAME, self.pipeline_name)
            context = context_lib.register_context_if_not_exists(
                m, constants.PIPELINE_RUN_CONTEXT_TYPE_NAME, self.run_id, parent_contexts=[pipeline_context])
            for key, value in fields.items():
                target = context.custom_properties[RUN_PROPERTY_PREFIX + key]
                if isinstance(value, int):
                    target.int_value = value
                elif isinstance(value, float):
                    target.double_value = value
                else:
                    target.string_value = str(value)
            m.store.put_contexts([context])

    def start(self) -> None:
        me = this_process()
        self._update(state="running", pid=me["pid"], host=me["host"], started=me["started"],
                     heartbeat=time.time(), **({"pid_start_ticks": me["pid_start_ticks"]}
                                               if "pid_start_ticks" in me else {}))
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="ctseg-run-heartbeat")
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._update(heartbeat=time.time())
            except Exception:  # noqa: BLE001 - a missed beat is no reason to disturb the run
                pass

    def end(self, state: str, message: str = "") -> None:
        """Records how the run ended; failed and interrupted executions get the message TFX did not keep."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        try:
            self._update(state=state, ended=time.time(), **({"message": message} if message else {}))
            if state != "complete":
                self._close_executions(state, message)
        except Exception:  # noqa: BLE001 - the run's own error matters more than its record
            pass

    def _close_executions(self, state: str, message: str) -> None:
        from ctseg.mlmd.failures import cancel_running, record_failure
        from ctseg.mlmd.store import connect

        store = connect(sqlite_path=self.connection_config.sqlite.filename_uri, writable=True)
        if state == "interrupted":
            cancel_running(store, self.run_id, f"interrupted by {message}")
        else:
            record_failure(store, self.run_id, message)
