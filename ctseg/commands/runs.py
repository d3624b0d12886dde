"""`ctseg runs` and `ctseg runs show RUN`: pipeline runs as ML Metadata recorded them."""
from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub) -> None:
    from ctseg.commands.mlmd_options import add_store_arguments

    p = sub.add_parser(
        "runs", help="list pipeline runs from ML Metadata, or show one run's executions and artifacts",
        usage="ctseg runs [options] [show RUN]",
        description="Without arguments: one line per pipeline run, newest first (id, start, state, duration, "
                    "mean per-patient Dice, blessing, pushed version). `show RUN`: the run's executions in "
                    "order and every artifact with its key properties. RUN is a run id, a unique prefix of "
                    "one, or `latest`.")
    p.add_argument("show", nargs="?", choices=["show"], help=argparse.SUPPRESS)
    p.add_argument("run", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--limit", type=int, default=None, help="list only the newest N runs")
    add_store_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from ctseg.commands.mlmd_options import store_from_args
    from ctseg.errors import CtsegError
    from ctseg.mlmd.runs import describe_run, list_runs

    if args.show and not args.run:
        raise CtsegError("`ctseg runs show` needs a RUN: a run id, a unique prefix of one, or `latest`")
    if args.limit is not None and args.limit < 1:
        raise CtsegError(f"--limit must be at least 1, got {args.limit}")
    store = store_from_args(args)
    if args.show:
        described = describe_run(store, args.run)
        print(json.dumps(described, indent=2) if args.json else format_run(described))
        return 0
    runs = list_runs(store, limit=args.limit)
    print(json.dumps([r.to_dict() for r in runs], indent=2) if args.json else format_runs(runs))
    return 0


def _or_dash(value: Any, fmt: str = "{}") -> str:
    return "-" if value is None else fmt.format(value)


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 120 else f"{value / 60:.1f}min"


def _blessed(value: bool | None) -> str:
    return "-" if value is None else "yes" if value else "no"


def format_runs(runs) -> str:
    if not runs:
        return "no pipeline runs in this ML Metadata store"
    rows = [("RUN", "PIPELINE", "STARTED", "STATE", "CACHED", "DURATION", "DICE", "BLESSED", "PUSHED")]
    for r in runs:
        total = sum(r.executions.values())
        started = r.started[:19].replace("T", " ") if r.started else "-"
        rows.append((r.run_id, _or_dash(r.pipeline), started, r.state,
                     f"{r.executions.get('cached', 0)}/{total}", _seconds(r.duration_s),
                     _or_dash(r.dice, "{:.4f}"), _blessed(r.blessed), _or_dash(r.pushed_version)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _short(value: Any, width: int = 100) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width - 3] + "..."


def format_properties(properties: dict[str, Any], indent: str) -> list[str]:
    """Key properties one per line; Dice per patient as a small table."""
    lines = []
    for key, value in properties.items():
        if value in ("", None, {}, []):
            continue
        if key == "dice_per_patient" and isinstance(value, dict):
            lines.append(f"{indent}Dice per patient:")
            lines += [f"{indent}  {patient:<20}{dice:.4f}" for patient, dice in value.items()]
        else:
            lines.append(f"{indent}{key}: {_short(value)}")
    return lines


def format_run(d: dict[str, Any]) -> str:
    """`ctseg runs show` for a person: header, executions table, artifacts with their properties."""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(d["execution_counts"].items()))
    lines = [
        f"Run {d['run_id']} of pipeline {_or_dash(d['pipeline'])}: {d['state'].upper()}",
        f"  started {_or_dash(d['started'])}, took {_seconds(d['duration_s'])}; executions: {counts or 'none'}",
        f"  mean per-patient Dice {_or_dash(d['dice'], '{:.4f}')}, blessed {_blessed(d['blessed'])}, "
        f"pushed version {_or_dash(d['pushed_version'])}",
        "",
        "Executions:",
    ]
    width = max((len(e["node_id"]) for e in d["executions"]), default=4)
    for e in d["executions"]:
        lines.append(f"  {e['id']:>5}  {e['node_id']:<{width}}  {e['state']:<9} {_seconds(e['duration_s']):>8}")
        if e["state"] == "failed":
            error = e["error"] or "(no message recorded in ML Metadata; see the run log)"
            lines.append("         error: " + error.strip().replace("\n", "\n                "))
    lines += ["", "Artifacts:"]
    for a in d["artifacts"]:
        origin = f"from {a['producer']}" if a["producer"] else "from an earlier run"
        lines.append(f"  {a['id']:>5}  {a['type']} ({origin})  {a['uri']}")
        lines += format_properties(a["properties"], indent="         ")
    return "\n".join(lines)
