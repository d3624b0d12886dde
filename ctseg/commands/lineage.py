"""`ctseg lineage PATH_OR_ID`: from a pushed model back to the run, hyperparameters and data behind it."""
from __future__ import annotations

import json
from typing import Any


def register(sub) -> None:
    from ctseg.commands.mlmd_options import add_store_arguments

    p = sub.add_parser(
        "lineage", help="trace a pushed model back to its run, hyperparameters, examples and input data",
        description="Given a pushed model version's folder (<serving_dir>/<version>), a model's URI or a "
                    "Model/PushedModel artifact id, walk ML Metadata's events back to the Trainer's run, "
                    "its hyperparameters, the examples and statistics it was trained on and the input data.")
    p.add_argument("path_or_id", metavar="PATH_OR_ID", help="pushed version folder, model URI or artifact id")
    add_store_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ctseg.commands.mlmd_options import store_from_args
    from ctseg.mlmd.lineage import lineage

    found = lineage(store_from_args(args), args.path_or_id)
    print(json.dumps(found, indent=2) if args.json else format_lineage(found))
    return 0


def _artifact_line(label: str, a: dict[str, Any]) -> str:
    return f"{label:<20}{a['uri']}  ({a['type']} {a['id']})"


def format_lineage(d: dict[str, Any]) -> str:
    """The chain newest to oldest, one block per step, for a person."""
    from ctseg.commands.runs import format_properties

    lines = []
    pushed = d["pushed_model"]
    if pushed:
        by = pushed["pushed_by"]
        lines.append(_artifact_line("Pushed model", pushed))
        lines.append(f"{'':<20}version {pushed['properties'].get('pushed_version', '-')}, pushed by "
                     f"{by['node_id']} (execution {by['id']}) in run {by['run_id']}")
    lines.append(_artifact_line("Model", d["model"]))
    t = d["trainer"]
    lines.append(f"{'Trained by':<20}{t['node_id']} (execution {t['id']}, {t['state']}) in run {t['run_id']}")
    hyper = d["hyperparameters"]
    if isinstance(hyper, dict) and hyper:
        lines.append("Hyperparameters")
        lines += [f"{'':<20}{k} = {json.dumps(v)}" for k, v in sorted(hyper.items())]
    for key in ("train_args", "eval_args"):
        if t["properties"].get(key) not in (None, {}, ""):
            lines.append(f"{'':<20}{key} = {json.dumps(t['properties'][key])}")
    for e in d["examples"]:
        lines.append(_artifact_line("Examples", e))
        if e["producer"]:
            p = e["producer"]
            lines.append(f"{'':<20}made by {p['node_id']} (execution {p['id']}) in run {p['run_id']}")
        lines += format_properties(e["properties"], indent=" " * 16)
    labels = {"ExampleStatistics": "Statistics", "Schema": "Schema", "ExampleAnomalies": "Anomalies"}
    for type_name, artifacts in d["derived"].items():
        for a in artifacts:
            lines.append(_artifact_line(labels.get(type_name, type_name), a))
            if type_name == "ExampleAnomalies":
                lines += format_properties({k: v for k, v in a["properties"].items() if k.startswith("anomal")},
                                           indent=" " * 16)
    for key, artifacts in d["trainer_inputs"].items():
        for a in artifacts:
            if a["type"] == "Schema":
                lines.append(_artifact_line(f"Trained with {key}", a))
    lines += _profile_lines(d.get("training_profile"))
    lines.append(f"{'Input data':<20}{d['data_path'] or '(not recorded)'}")
    lines.append(f"{'Input fingerprint':<20}{d.get('data_fingerprint') or '(not recorded)'}")
    return "\n".join(lines)


def _profile_lines(p: dict | None) -> list[str]:
    """Where the model's training profile (what `ctseg predict` compares a series with) came from."""
    if not p:
        return []
    by = p["computed_by"]
    lines = [f"{'Training profile':<20}{p['in_model'] or '(the model folder carries none)'}",
             f"{'':<20}computed by {by['node_id']} (execution {by['id']}) in run {by['run_id']} from the train "
             f"split of {', '.join(p['from_examples']) or '(no examples recorded)'}"]
    lines += [f"{'':<20}recorded by the evaluation: ModelBlessing {r['id']}, {r['uri']}" for r in p["recorded_by"]]
    return lines
