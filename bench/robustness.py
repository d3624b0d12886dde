"""Trains once with `ctseg run`'s defaults on the default phantom, then scores that model on phantom
variants it never trained on: another seed (new patients), one contrast phase at a time, noise sigma
20 HU for every patient, a 256x256 source, and slices twice as thick. Prints a JSON table; the figures
go in docs/BENCHMARKS.md.

    .venv/bin/python -m bench.robustness [--workdir /tmp/ctseg-robustness] [--patients 4] [--config '{}']

Every variant is scored as the evaluator scores (bench/segmentation.py): per-patient Dice at the
source resolution after the 3D clean-up, which is the figure the target (>= 0.88) is about.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from bench.segmentation import headline, score_model, train_with_ctseg_run

VARIANT_SEED = 1000  # far from the training phantom's seed 0: different patients, phases, noise


def write_geometries(out: Path, geometries, size: int, seed: int) -> Path:
    """The IRCAD folders of the given patient geometries (the phantom's own renderer and DICOM writer)."""
    from ctseg.phantom import render_patient

    for g in geometries:
        for _, files in render_patient(g, size, seed):
            for rel, data in files.items():
                path = out / g.patient_id / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
    return out


def variants(patients: int, slices: int) -> dict[str, tuple[list, int]]:
    """name → (patient geometries, source size). All start from the same unseen seed, so rows differ
    only by what the name says."""
    from ctseg.phantom import patient_geometries

    base = patient_geometries(patients, slices, VARIANT_SEED)
    replace = lambda **kw: [dataclasses.replace(g, **kw) for g in base]  # noqa: E731
    thick = [dataclasses.replace(g, thickness_mm=round(2 * g.thickness_mm, 1), num_slices=max(8, g.num_slices // 2))
             for g in base]
    return {
        "another seed (phases and noise as drawn)": (base, 512),
        "native phase (no contrast)": (replace(phase="native"), 512),
        "arterial phase": (replace(phase="arterial"), 512),
        "portal venous phase": (replace(phase="portal"), 512),
        "noise sigma 20 HU": (replace(noise_hu=20.0), 512),
        "256x256 source": (base, 256),
        "slices twice as thick (half as many)": (thick, 512),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/ctseg-robustness")
    ap.add_argument("--patients", type=int, default=4, help="patients per variant")
    ap.add_argument("--slices", type=int, default=40, help="slices per variant patient (before thickness)")
    ap.add_argument("--config", default="{}", help="extra Trainer custom_config (JSON) for the one training run")
    ap.add_argument("--model", help="score this SavedModel instead of training one")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    result = {"variants": {}}
    if args.model:
        model = Path(args.model)
    else:
        from ctseg.phantom import write_phantom

        data = work / "train-phantom"
        if not data.exists():  # `ctseg run`'s default phantom: 14 patients x ~40 slices, 512 px, seed 0
            write_phantom(data, patients=14, slices=40, size=512, seed=0)
        run = train_with_ctseg_run(data, work / "run", json.loads(args.config))
        model = run["model"]
        result["training"] = {"seconds": round(run["seconds"]), "config": json.loads(args.config),
                              "eval split (default run)": headline(run["metrics"])}
        print(json.dumps(result["training"]), flush=True)
    for name, (geometries, size) in variants(args.patients, args.slices).items():
        folder = work / "variants" / name.split(" (")[0].replace(" ", "-")
        if not folder.exists():
            write_geometries(folder, geometries, size, VARIANT_SEED)
        row = headline(score_model(model, folder))
        result["variants"][name] = row
        print(json.dumps({name: row}), flush=True)
    worst = min(r["dice_source"] for r in result["variants"].values())
    result["worst_variant_dice_source"] = worst
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
