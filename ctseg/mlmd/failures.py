"""What TFX leaves unrecorded when a local run stops: the message of a step that raised, and steps a
signal left running. The only writes to the store.
"""
from __future__ import annotations

from ctseg.mlmd.records import _EXECUTION_RESULT, _state_name
from ctseg.mlmd.runs import find_run


def record_failure(store, run: str, message: str, code: int = 1) -> list[int]:
    """Stores `message` as the result of the run's failed executions that TFX left without one.

    TFX keeps a failure message in ML Metadata only when an executor returns a non-zero
    ExecutionResult; an executor that raises (the validation gate's CtsegError) leaves just the FAILED
    state. The runner that caught the exception calls this on a `writable` store, so `ctseg runs show`
    can tell why the run stopped. Uses TFX's own `__execution_result__` encoding. Returns the ids updated.
    """
    from tfx.orchestration.portable.mlmd import execution_lib
    from tfx.proto.orchestration import execution_result_pb2

    context = find_run(store, run)
    failed = [e for e in store.get_executions_by_context(context.id)
              if _state_name(e) == "failed" and _EXECUTION_RESULT not in e.custom_properties]
    for e in failed:
        execution_lib.set_execution_result(
            execution_result_pb2.ExecutionResult(code=code, result_message=message), e)
    if failed:
        store.put_executions(failed)
    return [e.id for e in failed]


def cancel_running(store, run: str, message: str) -> list[int]:
    """Marks the run's executions that a signal left RUNNING (or NEW) as CANCELED, with `message` as
    their result: TFX's launcher only records failures of Exceptions, not of a KeyboardInterrupt."""
    from ml_metadata.proto import metadata_store_pb2
    from tfx.orchestration.portable.mlmd import execution_lib
    from tfx.proto.orchestration import execution_result_pb2

    context = find_run(store, run)
    active = [e for e in store.get_executions_by_context(context.id) if _state_name(e) in ("running", "new")]
    for e in active:
        e.last_known_state = metadata_store_pb2.Execution.CANCELED
        execution_lib.set_execution_result(
            execution_result_pb2.ExecutionResult(code=1, result_message=message), e)
    if active:
        store.put_executions(active)
    return [e.id for e in active]
