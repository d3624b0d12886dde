"""What `ctseg run` tells a user while it runs and when it ends, read back from ML Metadata."""
from __future__ import annotations

import time

from ctseg.mlmd.runs import describe_run
from ctseg.mlmd.store import connect


def _artifacts(run: dict, type_name: str) -> list[dict]:
    return [a for a in run["artifacts"] if a["type"] == type_name and a.get("producer")]


GATE_NODE = "ValidationGate"


def _lines_for_run(run: dict, paths) -> list[str]:
    lines = [f"run {run['run_id']}: {run['state']}"
             + (f" in {run['duration_s']:.0f} s" if run.get("duration_s") else "")]
    lines.append("  steps:")
    for e in run["executions"]:
        took = f"{e['duration_s']:7.1f} s" if e["duration_s"] is not None else " " * 9
        lines.append(f"    {e['node_id']:<32}{e['state']:<10}{took}")
        if e.get("error"):
            lines.append("      error: " + e["error"].strip().replace("\n", "\n      "))
    for ex in _artifacts(run, "Examples")[:1]:
        p = ex["properties"]
        splits = ", ".join(f"{k[len('slices_'):]} {v}" for k, v in sorted(p.items()) if k.startswith("slices_")
                           and k != "slices_with_liver")
        lines.append(f"  data: {p.get('patients', '?')} patients; slices {splits}; "
                     f"{p.get('slices_with_liver', '?')} with liver; {p.get('quarantined', 0)} files quarantined")
        if p.get("quarantined"):
            lines.append(f"    quarantine report: {ex['uri']}/quarantine.jsonl")
    gate = next((e for e in run["executions"] if e["node_id"] == GATE_NODE), None)
    if gate is not None and gate["state"] == "failed":
        lines.append("  validation: stopped by the gate (its error above names each anomaly)")
    else:
        for an in _artifacts(run, "ExampleAnomalies")[:1]:
            count = an["properties"].get("anomalies")
            if count is not None:
                lines.append(f"  validation: {count} anomalies ({an['uri']})")
    for ev in _artifacts(run, "ModelEvaluation")[:1]:
        from ctseg.components.evaluation import format_evaluation, load_evaluation
        try:
            lines.extend("  " + line for line in format_evaluation(load_evaluation(ev["uri"])).splitlines())
        except Exception as e:  # an evaluation that did not finish writing
            lines.append(f"  evaluation: unreadable ({e})")
    for pm in _artifacts(run, "PushedModel")[:1]:
        p = pm["properties"]
        if p.get("pushed"):
            lines.append(f"  pushed model: {p.get('pushed_destination')}")
        else:
            lines.append(f"  not pushed: the model was not blessed; {paths.serving_dir} keeps its previous versions")
    for mr in _artifacts(run, "ModelRun")[:1]:
        lines.append(f"  TensorBoard: tensorboard --logdir {mr['uri']}")
    lines.append(f"  metadata: {paths.metadata_path}  "
                 f"(ctseg runs show {run['run_id']} --metadata {paths.metadata_path})")
    return lines


def print_run_summary(paths, run_id: str, *, started_at: float, failure: BaseException | None) -> None:
    """Per-stage time, splits, Dice per patient, blessing and why, where the model, logs and metadata are:
    all of run `run_id` (never the newest run in the store, which may be another's). The error of a
    failed step is printed once, under that step."""
    print()
    run = None
    try:
        run = describe_run(connect(sqlite_path=str(paths.metadata_path)), run_id)
        print("\n".join(_lines_for_run(run, paths)))
    except Exception as e:  # noqa: BLE001 - e.g. the run stopped before it was recorded
        if failure is None:
            print(f"(no summary of run {run_id}: {e})")
    if failure is not None:
        failed = [e["node_id"] for e in (run or {}).get("executions", []) if e["error"]]
        if isinstance(failure, KeyboardInterrupt):
            print(f"\nThe run was {failure or 'interrupted'}; `ctseg runs` shows it as interrupted.")
        elif failed:
            print(f"\nThe run stopped at {', '.join(failed)}: its error is above.")
        else:
            print(f"\nThe run stopped: {failure}")
    print(f"total {time.time() - started_at:.0f} s")
