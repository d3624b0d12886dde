"""`ctseg runs` on a run that is still going: its duration grows with the clock, not with its finished steps."""
from __future__ import annotations

import os
import socket
import time

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2 as mlmd

from ctseg.mlmd.runs import list_runs
from ctseg.mlmd.store import connect


def _running_run(store) -> None:
    """A run context as `ctseg run` records it while its first step runs (this process: alive)."""
    run_type = store.put_context_type(mlmd.ContextType(name="pipeline_run"))
    step_type = store.put_execution_type(mlmd.ExecutionType(name="Step"))
    run = mlmd.Context(type_id=run_type, name="2026-01-01T00:00:00.000001")
    run.custom_properties["ctseg_state"].string_value = "running"
    run.custom_properties["ctseg_pid"].int_value = os.getpid()
    run.custom_properties["ctseg_host"].string_value = socket.gethostname()
    (run_id,) = store.put_contexts([run])
    step = mlmd.Execution(type_id=step_type, last_known_state=mlmd.Execution.RUNNING)
    (step_id,) = store.put_executions([step])
    store.put_attributions_and_associations([], [mlmd.Association(context_id=run_id, execution_id=step_id)])


def test_a_running_runs_duration_counts_up_to_now(tmp_path):
    config = mlmd.ConnectionConfig()
    config.sqlite.filename_uri = str(tmp_path / "metadata.sqlite")
    config.sqlite.connection_mode = mlmd.SqliteMetadataSourceConfig.READWRITE_OPENCREATE
    _running_run(metadata_store.MetadataStore(config))
    time.sleep(1.5)
    (run,) = list_runs(connect(sqlite_path=str(tmp_path / "metadata.sqlite")))
    assert run.state == "running"
    assert run.duration_s is not None and run.duration_s >= 1.5
