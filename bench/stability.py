"""Trains the same configuration with several seeds (`custom_config["seed"]`: weights, balancing and
augmentation) through `ctseg run` on the default phantom and reports each run's mean per-patient Dice
(at the source resolution and at model size) and the spread (max - min). Target: spread <= 0.03.

    .venv/bin/python -m bench.stability [--seeds 0 1 2] [--config '{}'] [--workdir /tmp/ctseg-stability]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.segmentation import headline, train_with_ctseg_run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--config", default="{}", help="Trainer custom_config (JSON) shared by every run")
    ap.add_argument("--workdir", default="/tmp/ctseg-stability")
    ap.add_argument("--data", help="IRCAD folder (default: `ctseg run`'s default phantom, written once)")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    data = Path(args.data) if args.data else work / "phantom"
    if not data.exists():
        from ctseg.phantom import write_phantom
        write_phantom(data, patients=14, slices=40, size=512, seed=0)
    config = json.loads(args.config)
    runs = {}
    for seed in args.seeds:
        run = train_with_ctseg_run(data, work / f"seed-{seed}", {**config, "seed": seed})
        runs[seed] = {"seconds": round(run["seconds"]), **headline(run["metrics"]),
                      "per_patient_source_dice": {p["patient_id"]: round(p.get("source_dice", float("nan")), 4)
                                                  for p in run["metrics"]["patients"]}}
        print(json.dumps({seed: runs[seed]}), flush=True)
    source = [r["dice_source"] for r in runs.values()]
    model_size = [r["dice_model_size"] for r in runs.values()]
    print(json.dumps({"config": config, "runs": runs,
                      "spread_dice_source": round(max(source) - min(source), 4),
                      "spread_dice_model_size": round(max(model_size) - min(model_size), 4)}, indent=1))


if __name__ == "__main__":
    main()
