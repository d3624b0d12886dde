"""Trains the recipe with `ctseg run` on the simple abdomen (ctseg/phantom/simple.py: a liver 15-35 HU above the
soft tissue, white noise of 12 HU, a spleen at the liver's density) and reports what a volume bias shows: per eval
patient the Dice, predicted / true volume after the 3D clean-up, and the model's own calibration, the sum of its
probabilities over the true volume (a calibrated model's expected volume is the true one, whatever its threshold);
also the predicted / true area on the liver's small cross-sections (slices under a quarter of its largest area).

    .venv/bin/python -m bench.lowcontrast [--data DIR] [--size 256] [--config '{}'] [--workdir /tmp/ctseg-lowcontrast]

The data are written on first use (12 patients x 32 slices, seed 0). docs/BENCHMARKS.md, "Low contrast".
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.segmentation import headline, ingest_folder, run_outputs, train_with_ctseg_run

SMALL_SECTION = 0.25   # a slice whose liver area is under this share of the patient's largest is a small cross-section


def calibration(model_dir: Path, data: Path, patients: list[str]) -> dict[str, dict]:
    """Per patient: sum of probabilities / true voxels, and predicted / true area on small cross-sections,
    at the model's size, before any clean-up."""
    from ctseg import features
    from ctseg.serving import THRESHOLD, load_model

    served = load_model(model_dir)
    examples = [features.decode_example(r) for r in ingest_folder(data, served.size[0])]
    out = {}
    for pid in patients:
        rows = sorted((e for e in examples if e[features.PATIENT_KEY] == pid), key=lambda e: e[features.SLICE_KEY])
        hu = np.stack([e[features.IMAGE_KEY] for e in rows]).astype(np.float32)
        truth = np.stack([e[features.MASK_KEY] for e in rows]).astype(bool)
        p = np.asarray(served.series_probabilities(hu, 16))
        area = truth.sum(axis=(1, 2))
        small = (area > 0) & (area < SMALL_SECTION * area.max())
        predicted = p >= THRESHOLD
        out[pid] = {"expected_over_true": round(float(p.sum() / truth.sum()), 3),
                    "raw_predicted_over_true": round(float(predicted.sum() / truth.sum()), 3),
                    "small_sections": int(small.sum()),
                    "small_section_area_ratio": round(float(predicted[small].sum() / max(truth[small].sum(), 1)), 3),
                    "false_positive_voxels_on_empty_slices": int(predicted[area == 0].sum())}
    return out


def report(metrics: dict, extra: dict[str, dict]) -> dict:
    patients = {}
    for row in metrics["patients"]:
        pid = row["patient_id"]
        patients[pid] = {"dice": round(row["dice"], 4), "source_dice": round(row.get("source_dice", float("nan")), 4),
                         "volume_ratio": round(row["predicted_volume_ml"] / row["true_volume_ml"], 3),
                         "dice_before_cleanup": round(row["dice_before_cleanup"], 4), **extra.get(pid, {})}
    return {**headline(metrics), "per_patient": patients}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="simple-abdomen folder (written there if missing)")
    ap.add_argument("--size", type=int, default=256, help="source size when writing the data (256 or 512)")
    ap.add_argument("--config", default="{}", help="Trainer custom_config (JSON)")
    ap.add_argument("--workdir", default="/tmp/ctseg-lowcontrast")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--scored", metavar="WORKDIR", help="report this finished `ctseg run` work dir instead of training")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    data = Path(args.data) if args.data else work / f"simple-{args.size}"
    if not data.exists():
        from ctseg.phantom.simple import write_simple_abdomen
        write_simple_abdomen(data, patients=12, slices=32, size=args.size, seed=0)
    config = json.loads(args.config)
    run = run_outputs(Path(args.scored)) if args.scored else train_with_ctseg_run(data, work / "run", config)
    eval_patients = [r["patient_id"] for r in run["metrics"]["patients"]]
    result = {"config": config, "seconds": round(run.get("seconds", 0)),
              **report(run["metrics"], calibration(run["model"], data, eval_patients))}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)


if __name__ == "__main__":
    main()
