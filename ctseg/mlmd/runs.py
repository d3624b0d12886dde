"""Pipeline runs in ML Metadata: list them, find one by id or prefix, describe its executions and
artifacts, and the per-step lines `ctseg run` prints while it runs.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Optional

from ctseg.errors import CtsegError
from ctseg.mlmd.records import (
    _KFP_DAG_EXECUTION_TYPE,
    _artifact_record,
    _duration_s,
    _event_key,
    _execution_error,
    _Graph,
    _is_input,
    _is_output,
    _ms_to_iso,
    _properties,
    _state_name,
    _type_name,
)
from ctseg.mlmd.store import NODE_CONTEXT_TYPE, PIPELINE_CONTEXT_TYPES, RUN_CONTEXT_TYPES

_DICE_KEY = "mean_patient_dice"
_RUN_PREFIX = "ctseg_"  # ctseg.pipeline.local_runner.RUN_PROPERTY_PREFIX: what `ctseg run` records on its run


@dataclasses.dataclass
class RunSummary:
    """One pipeline run, as `ctseg runs` lists it."""

    run_id: str
    pipeline: Optional[str]
    started: Optional[str]
    state: str  # complete, failed, running, canceled, interrupted or abandoned (see _Run.state)
    duration_s: Optional[float]
    dice: Optional[float]
    blessed: Optional[bool]
    pushed_version: Optional[str]
    executions: dict[str, int]  # count per execution state, e.g. {"complete": 3, "cached": 5}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _Run:
    """One run context with its executions, events and artifacts, fetched once."""

    def __init__(self, store, context):
        self.store, self.context = store, context
        self.executions = sorted((e for e in store.get_executions_by_context(context.id)
                                  if e.type != _KFP_DAG_EXECUTION_TYPE),
                                 key=lambda e: (e.create_time_since_epoch, e.id))
        self.events = store.get_events_by_execution_ids([e.id for e in self.executions]) if self.executions else []
        artifact_ids = sorted({ev.artifact_id for ev in self.events})
        self.artifacts = {a.id: a for a in store.get_artifacts_by_id(artifact_ids)} if artifact_ids else {}

    def outputs(self, type_name: str) -> list:
        """Artifacts of a type that this run's executions produced (or reused from the cache), last first."""
        ids = [ev.artifact_id for ev in self.events if _is_output(ev)]
        found = [self.artifacts[i] for i in dict.fromkeys(ids) if _type_name(self.artifacts[i]) == type_name]
        return found[::-1]

    def process(self) -> dict[str, Any]:
        """What `ctseg run` recorded on the run context (pid, host, heartbeat, state, ...), without the prefix."""
        props = _properties(self.context)
        return {k[len(_RUN_PREFIX):]: v for k, v in props.items() if k.startswith(_RUN_PREFIX)}

    def state(self) -> str:
        """complete, failed, canceled or running from the executions; `ctseg run`'s own record adds
        interrupted (a signal stopped it) and abandoned (its process is gone without saying how it ended)."""
        states = {_state_name(e) for e in self.executions}
        found = next((s for s in ("failed", "canceled", "running", "new") if s in states), "complete")
        process = self.process()
        if process.get("state") == "interrupted":
            return "interrupted"
        if found in ("failed", "canceled"):
            return found
        if found in ("running", "new") or process.get("state") == "running":
            from ctseg.workdir import process_state

            gone = process and process_state(process.get("pid"), process.get("host"), process.get("pid_start_ticks"),
                                             process.get("heartbeat")) == "gone"
            return "abandoned" if gone else "running"
        return found

    def summary(self) -> RunSummary:
        evaluation = next(iter(self.outputs("ModelEvaluation")), None)
        blessing = next(iter(self.outputs("ModelBlessing")), None)
        pushed = [p for p in self.outputs("PushedModel") if _properties(p).get("pushed") == 1]
        dice = None
        for artifact in filter(None, (evaluation, blessing)):
            dice = _properties(artifact).get(_DICE_KEY)
            if dice is not None:
                break
        blessed = _properties(blessing).get("blessed") if blessing is not None else None
        counts: dict[str, int] = {}
        for e in self.executions:
            counts[_state_name(e)] = counts.get(_state_name(e), 0) + 1
        state = self.state()
        return RunSummary(
            run_id=self.context.name,
            pipeline=self.pipeline_name(),
            started=_ms_to_iso(self.context.create_time_since_epoch),
            state=state,
            duration_s=self._duration_s(state),
            dice=dice,
            blessed=None if blessed is None else bool(blessed),
            pushed_version=str(_properties(pushed[0]).get("pushed_version")) if pushed else None,
            executions=counts,
        )

    def _duration_s(self, state: str) -> Optional[float]:
        """From the first step's start to the last step's end; a run still going counts up to now."""
        start = min((e.create_time_since_epoch for e in self.executions),
                    default=self.context.create_time_since_epoch)
        end = max((e.last_update_time_since_epoch for e in self.executions), default=0)
        if state == "running":
            end = max(end, int(time.time() * 1000))
        return _duration_s(start, end)

    def pipeline_name(self) -> Optional[str]:
        if not self.executions:
            return None
        contexts = self.store.get_contexts_by_execution(self.executions[0].id)
        return next((c.name for c in contexts if c.type in PIPELINE_CONTEXT_TYPES), None)

    def node_ids(self) -> dict[int, str]:
        """Execution id → node id (component id), from each execution's `node` context."""
        pipeline = self.pipeline_name()
        ids = {}
        for e in self.executions:
            node = next((c.name for c in self.store.get_contexts_by_execution(e.id)
                         if c.type == NODE_CONTEXT_TYPE), None)
            if node and pipeline and node.startswith(pipeline + "."):
                node = node[len(pipeline) + 1:]
            props = _properties(e)
            ids[e.id] = node or props.get("task_name") or props.get("display_name") or _type_name(e).split(".")[-1]
        return ids


def _run_contexts(store) -> list:
    contexts = [c for t in RUN_CONTEXT_TYPES for c in store.get_contexts_by_type(t)]
    return sorted(contexts, key=lambda c: (c.create_time_since_epoch, c.id), reverse=True)


def list_runs(store, limit: Optional[int] = None) -> list[RunSummary]:
    """Every pipeline run in the store, newest first (at most `limit`)."""
    contexts = _run_contexts(store)[:limit] if limit else _run_contexts(store)
    return [_Run(store, c).summary() for c in contexts]


def find_run(store, run: str):
    """The run context named `run`, or the only one whose name starts with it; `latest` is the newest."""
    contexts = _run_contexts(store)
    if not contexts:
        raise CtsegError("the ML Metadata store holds no pipeline runs")
    if run == "latest":
        return contexts[0]
    exact = [c for c in contexts if c.name == run]
    matches = exact or [c for c in contexts if c.name.startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise CtsegError(f"no pipeline run '{run}' in ML Metadata (`ctseg runs` lists them)")
    raise CtsegError(f"'{run}' matches {len(matches)} runs ({', '.join(c.name for c in matches[:5])}...); "
                     "give more of the run id")


def describe_run(store, run: str) -> dict[str, Any]:
    """A run's executions in order and every artifact they read or wrote.

    `run` is a run id, a unique prefix of one, or `latest`. The result (stable; `ctseg run` prints its
    end-of-run summary from it) is the RunSummary's fields (run_id, pipeline, started, state,
    duration_s, dice, blessed, pushed_version, executions → replaced below) plus:

    - `executions`: list in start order of {id, node_id, type, state ("complete", "cached", "failed",
      "running", ...), started, duration_s, error (failure message or None), properties (exec
      properties, JSON decoded), inputs, outputs ({key: [artifact id]})};
    - `execution_counts`: {state: count};
    - `process`: what `ctseg run` recorded on the run (pid, host, started, heartbeat, state, ended,
      message), {} for runs of other runners;
    - `artifacts`: list in order of first use of {id, type, uri, producer (node id of the execution in
      this run that wrote or reused it from the cache, None for one from an earlier run such as the
      resolver's baseline), properties}. Properties are the artifact's properties and custom properties
      (e.g. split_names, slices_*, quarantined for examples; blessed, reason for a blessing; pushed,
      pushed_destination, pushed_version for a pushed model) plus, read from the artifact's files,
      `dice_per_patient`, `reason`, `mean_patient_dice` for a ModelEvaluation and `anomalies`,
      `anomalies_per_split`, `anomalous_features` for ExampleAnomalies.
    """
    record = _Run(store, find_run(store, run))
    nodes = record.node_ids()
    summary = record.summary().to_dict()
    summary["execution_counts"] = summary.pop("executions")
    executions, producers, order = [], {}, []
    for e in record.executions:
        inputs: dict[str, list[int]] = {}
        outputs: dict[str, list[int]] = {}
        for ev in (ev for ev in record.events if ev.execution_id == e.id):
            side = outputs if _is_output(ev) else inputs if _is_input(ev) else None
            if side is None:
                continue
            side.setdefault(_event_key(ev), []).append(ev.artifact_id)
            order.append(ev.artifact_id)
            if side is outputs:
                producers.setdefault(ev.artifact_id, nodes[e.id])
        executions.append({
            "id": e.id, "node_id": nodes[e.id], "type": e.type, "state": _state_name(e),
            "started": _ms_to_iso(e.create_time_since_epoch),
            "duration_s": _duration_s(e.create_time_since_epoch, e.last_update_time_since_epoch),
            "error": _execution_error(e), "properties": _properties(e), "inputs": inputs, "outputs": outputs,
        })
    artifacts = [{**_artifact_record(record.artifacts[i]), "producer": producers.get(i)}
                 for i in dict.fromkeys(order)]
    return {**summary, "process": record.process(), "executions": executions, "artifacts": artifacts}


def execution_lines(store, after_id: int = 0) -> list[tuple[int, str, str]]:
    """(execution id, state, one line for a person) for each execution newer than `after_id`, in order:
    what `ctseg run` prints as the pipeline advances."""
    executions = sorted((e for e in store.get_executions() if e.id > after_id),
                        key=lambda e: (e.create_time_since_epoch, e.id))
    graph = _Graph(store)
    lines = []
    for e in executions:
        state = _state_name(e)
        took = _duration_s(e.create_time_since_epoch, e.last_update_time_since_epoch)
        line = f"  {graph.node_of(e):<28} {state:<9}" + (f" {took:.1f}s" if took is not None and state != "running"
                                                         else "")
        lines.append((e.id, state, line))  # a failed step's error is printed once, in the run's summary
    return lines
