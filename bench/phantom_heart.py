"""Heart labelled liver on chest-abdomen phantom patients a model has never seen (another seed).

Real CT with the heart and a liver reference cannot be fetched here (bench/real_ct.py's TotalSegmentator
scans stop at the lung bases; its two heart probes are tight chest crops padded with air, which no
scanner writes). The phantom's chest-abdomen protocol puts the heart on the diaphragm beside the liver
dome, so on unseen phantom patients of that protocol this bench measures what issue-level goals ask
of real scans: ml of heart labelled liver (the phantom knows where its heart is), the liver's Dice and
the predicted/true volume, after the same clean-up `ctseg predict` applies.

    .venv/bin/python -m bench.phantom_heart --model out/serving [--patients 4 --seed 11 --size 256]
"""
from __future__ import annotations

import argparse
import json

import numpy as np


def heart_scores(model, geometry, size: int) -> dict:
    """One patient rendered in memory at `size` px, segmented slice by slice in position order."""
    from ctseg.components.evaluation.metrics import dice
    from ctseg.phantom import PatientPhantom
    from ctseg.phantom.physics import upsample
    from ctseg.postprocess import clean_volume, gate_probabilities, source_mask

    phantom = PatientPhantom(geometry, size)
    slices = [phantom.slice(i) for i in range(geometry.num_slices)]
    hu = np.stack([s.hu for s in slices]).astype(np.float32)
    liver = np.stack([s.masks["liver"] for s in slices])
    heart = np.stack([upsample(phantom.anatomy.heart_mask(phantom._t(i)).astype(np.float32), size) > 0.5
                      for i in range(geometry.num_slices)])
    small = np.asarray(model.at_model_size(hu))  # as predict reads it
    gated = gate_probabilities(model.series_probabilities(small), small)
    predicted = clean_volume(source_mask(gated, hu.shape[1:]), hu_at_model_size=small).astype(bool)
    voxel_ml = (geometry.spacing_mm * 512 / size) ** 2 * geometry.thickness_mm / 1000   # written at 512 px
    return {"patient": geometry.patient_id, "phase": geometry.phase, "slices": geometry.num_slices,
            "dice": round(dice(predicted, liver), 4),
            "volume_ratio": round(float(predicted.sum() / max(liver.sum(), 1)), 3),
            "heart_ml": round(float(heart.sum() * voxel_ml), 1),
            "heart_labelled_liver_ml": round(float((predicted & heart).sum() * voxel_ml), 1)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a serving dir, a version dir or a Trainer model")
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--slices", type=int, default=40, help="slices of an abdominal scan (the default phantom's)")
    ap.add_argument("--seed", type=int, default=11, help="not the training phantom's seed (0)")
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args(argv)

    from ctseg.phantom import patient_geometries
    from ctseg.predict import load_model

    model = load_model(args.model)
    rows = [heart_scores(model, g, args.size)
            for g in patient_geometries(args.patients, args.slices, args.seed, protocols=("chest_abdomen",))]
    for row in rows:
        print(json.dumps(row), flush=True)
    print(json.dumps({"model": str(model.path), "mean_dice": round(float(np.mean([r["dice"] for r in rows])), 4),
                      "max_heart_labelled_liver_ml": max(r["heart_labelled_liver_ml"] for r in rows)}))


if __name__ == "__main__":
    main()
