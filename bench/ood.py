"""The out-of-distribution check of `ctseg predict` (ctseg/predict/ood.py): what it measures, and what it costs.

1. Thresholds: a training profile from phantom patients (seed 0, examples made by ingest's own
   `ingest_patient`), then held-out patients of the same kind (other seeds) and the same patients
   altered as each finding describes (slices twice the thickest, CT without its rescale, MR-like
   intensities, the slices of a chest-abdomen scan above the liver); prints every feature's
   Jensen-Shannon divergence and the findings.
2. Cost: the check on a `--series-slices` x `--series-size` px series (default 120 x 512), against
   `predict_series` of the same series with the `small` preset's UNET (untrained: the cost does not
   depend on the weights) in the same run; and the cost of importing TFDV in a process that has
   TensorFlow, which a predict run pays once.
3. The command: `ctseg predict` in fresh processes on that series, with the model carrying a profile
   and without one, alternating (the difference includes importing TFDV, which the command does once).

    python -m bench.ood [--train-patients 14] [--slices 40] [--size 256] [--held-out 6] [--json]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def ingest_examples(root: Path, size: int, organ: str = "liver") -> list[bytes]:
    """Every slice example ingest writes for the patients under `root`, without the Beam pipeline."""
    from ctseg import ircad
    from ctseg.components.ingest.executor import ingest_patient

    return [out[1] for ref in ircad.find_patients(str(root))
            for out in ingest_patient(ref, "train", organ, size) if isinstance(out, tuple)]


def series_hu(series, size: int) -> np.ndarray:
    """The series' HU resized to the model's size as predict resizes them."""
    import tensorflow as tf

    from ctseg.predict import read_hu

    return np.concatenate([tf.image.resize(hu[..., None], (size, size), antialias=True)[..., 0].numpy()
                           for hu, _ in read_hu(series).batch(32)])


def variants(series, hu: np.ndarray, thickest_mm: float) -> dict:
    """(headers, HU) of the series as it is and altered as each input finding describes."""
    from ctseg.predict.series import copy_header

    def thick(h):
        h = copy_header(h)
        h.SliceThickness = round(2 * thickest_mm, 2)
        return h

    headers = [s.header for s in series.slices]
    return {
        "as is": (headers, hu),
        "slices twice the thickest": ([thick(h) for h in headers], hu),
        "no rescale (+1024 HU)": (headers, hu + 1024),
        "MR-like (0-2000)": (headers, (hu - hu.min()) / max(float(np.ptp(hu)), 1.0) * 2000),
    }


def chest_only(series, hu: np.ndarray, liver_slices: np.ndarray):
    """The slices above the liver of a chest-abdomen scan (position order: image_0 the most inferior)."""
    top = int(np.nonzero(liver_slices)[0].max()) + 1 if liver_slices.any() else 0
    return [s.header for s in series.slices[top:]], hu[top:]


def measure_thresholds(args, work: Path) -> list[dict]:
    from ctseg import profile as P
    from ctseg.dicom import mask_from_dataset, read_dataset
    from ctseg.phantom import write_phantom
    from ctseg.predict import load_series
    from ctseg.predict.ood import input_findings, validate

    train = write_phantom(work / "train", patients=args.train_patients, slices=args.slices, size=args.size, seed=0)
    rows = P.slice_feature_rows(ingest_examples(train, args.model_size))
    profile = P.Profile(P.feature_statistics(rows), P.patient_figures(rows), [])
    thickest = max(p["thickness_mm"] for p in profile.patients)
    out = []
    for seed in range(1, args.held_out + 1):
        held = write_phantom(work / f"held{seed}", patients=1, slices=args.slices, size=args.size, seed=seed,
                             protocols=("chest_abdomen",) if seed % 2 == 0 else ("abdomen",))
        patient = held / "3Dircadb1.1"
        series = load_series(patient)
        hu = series_hu(series, args.model_size)
        cases = variants(series, hu, thickest)
        if seed % 2 == 0:
            masks = sorted((patient / "MASKS_DICOM" / "liver").iterdir(), key=lambda p: int(p.name.split("_")[1]))
            liver = np.array([mask_from_dataset(read_dataset(str(m))).any() for m in masks])
            cases["chest only (above the liver)"] = chest_only(series, hu, liver)
        for case, (headers, values) in cases.items():
            from ctseg.predict.ood import series_feature_rows

            series_rows = series_feature_rows(headers, values)
            _, anomalies = validate(series_rows, profile)
            js = {i.path.step[-1]: round(i.drift_measurements[0].value, 3) for i in anomalies.drift_skew_info}
            findings = [f.feature for f in input_findings(series_rows, profile)]
            out.append({"seed": seed, "case": case, "slices": len(values), "js": js, "findings": findings})
    return out


def measure_cost(args, work: Path) -> dict:
    """Seconds of the input check and of predict_series on one series, in this process, repeated."""
    from ctseg import profile as P
    from ctseg.models.unet.config import UnetConfig
    from ctseg.models.unet.model import build_unet, serving_model
    from ctseg.phantom import write_phantom
    from ctseg.postprocess import binarize
    from ctseg.predict import load_series, predict_series
    from ctseg.predict.ood import Check
    from ctseg.serving import export_model, load_model

    root = write_phantom(work / "cost", patients=1, slices=args.series_slices, size=args.series_size, seed=9,
                         protocols=("chest_abdomen",))  # the longest protocol: at least series_slices slices
    series = load_series(root / "3Dircadb1.1")
    series = dataclasses.replace(series, slices=series.slices[:args.series_slices])
    train = write_phantom(work / "cost_train", patients=3, slices=20, size=64, seed=0)
    rows = P.slice_feature_rows(ingest_examples(train, args.model_size))
    profile = P.Profile(P.feature_statistics(rows), P.patient_figures(rows), [{"components_before_cleanup": 3}])
    config = UnetConfig.from_custom_config({"preset": "small", "image_size": args.model_size})
    export_model(serving_model(build_unet(config), config), args.model_size, str(work / "model"),
                 context_slices=config.context_slices)
    served = load_model(work / "model")
    plain, checked, check_only, after_only = [], [], [], []
    for _ in range(args.repeats):
        t = time.perf_counter()
        predict_series(series, served, 16)
        plain.append(time.perf_counter() - t)
        check = Check(profile)
        t = time.perf_counter()
        headers = [s.header for s in series.slices]
        prediction = predict_series(series, served, 16, before_model=check.before_model(headers))
        check.after_model(prediction)
        checked.append(time.perf_counter() - t)
        hu = series_hu(series, args.model_size)
        t = time.perf_counter()
        Check(profile).before_model([s.header for s in series.slices])(hu)
        check_only.append(time.perf_counter() - t)
        at_model_size = binarize(served.series_probabilities(hu, 16))
        t = time.perf_counter()
        P.count_components(at_model_size)
        Check(profile).after_model(prediction)
        after_only.append(time.perf_counter() - t)
    return {"series": f"{len(series.slices)} slices of {args.series_size} px", "model_size": args.model_size,
            "predict_s": plain, "predict_with_check_s": checked, "input_check_s": check_only,
            "components_and_prediction_check_s": after_only,
            "median_added_s": round(float(np.median(checked) - np.median(plain)), 3),
            "median_ratio": round(float(np.median(checked) / np.median(plain)), 3),
            "tfdv_import_s": tfdv_import_seconds()}


def measure_cli(args, work: Path) -> dict:
    """Wall seconds of `ctseg predict` (a fresh process: imports, model load, outputs) on a
    `--series-slices` x `--series-size` series, with a model that carries a profile and with the same
    model without one (no check), alternating."""
    import shutil

    from ctseg import profile as P
    from ctseg.models.unet.config import UnetConfig
    from ctseg.models.unet.model import build_unet, serving_model
    from ctseg.phantom import write_phantom
    from ctseg.serving import export_model

    root = write_phantom(work / "cli", patients=1, slices=args.series_slices, size=args.series_size, seed=9,
                         protocols=("chest_abdomen",)) / "3Dircadb1.1"
    series = work / "cli_series" / "PATIENT_DICOM"
    series.mkdir(parents=True)
    for i in range(args.series_slices):  # image_0 is the most inferior: the first slices in position order
        shutil.copy(root / "PATIENT_DICOM" / f"image_{i}", series / f"image_{i}")
    config = UnetConfig.from_custom_config({"preset": "small", "image_size": args.model_size})
    bare = work / "cli_bare" / "1"
    export_model(serving_model(build_unet(config), config), args.model_size, str(bare),
                 context_slices=config.context_slices)
    profiled = Path(shutil.copytree(bare, work / "cli_profiled" / "1"))
    train = write_phantom(work / "cli_train", patients=3, slices=20, size=64, seed=0)
    rows = P.slice_feature_rows(ingest_examples(train, args.model_size))
    P.write_profile(profiled, P.Profile(P.feature_statistics(rows), P.patient_figures(rows), []))
    ctseg = str(Path(sys.executable).with_name("ctseg"))
    seconds: dict[str, list[float]] = {"without_profile": [], "with_profile": []}
    for i in range(args.repeats):
        for name, model in (("without_profile", bare), ("with_profile", profiled)):
            out = work / f"cli_out_{name}_{i}"
            t = time.perf_counter()
            done = subprocess.run([ctseg, "predict", str(series.parent), "--model", str(model), "--out", str(out)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"ctseg predict failed ({done.returncode}): {done.stderr[-2000:]}")
            seconds[name].append(round(time.perf_counter() - t, 2))
    plain, checked = np.median(seconds["without_profile"]), np.median(seconds["with_profile"])
    return {"series": f"{args.series_slices} slices of {args.series_size} px", **seconds,
            "median_added_s": round(float(checked - plain), 2), "median_ratio": round(float(checked / plain), 3)}


def tfdv_import_seconds() -> float:
    """Importing TFDV in a fresh process that already has TensorFlow (what a predict run pays once)."""
    code = ("import time, tensorflow; t = time.perf_counter(); import tensorflow_data_validation; "
            "print(time.perf_counter() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(float(out.stdout.strip().splitlines()[-1]), 2)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-patients", type=int, default=14)
    parser.add_argument("--slices", type=int, default=40)
    parser.add_argument("--size", type=int, default=256, help="phantom source size in px")
    parser.add_argument("--model-size", type=int, default=128)
    parser.add_argument("--held-out", type=int, default=6)
    parser.add_argument("--series-slices", type=int, default=120)
    parser.add_argument("--series-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip", choices=("thresholds", "cost", "cli"), action="append", default=[])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        result = {}
        if "thresholds" not in args.skip:
            result["thresholds"] = measure_thresholds(args, Path(tmp))
        if "cost" not in args.skip:
            result["cost"] = measure_cost(args, Path(tmp))
        if "cli" not in args.skip:
            result["cli"] = measure_cli(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for r in result.get("thresholds", []):
        print(f"seed {r['seed']} {r['case']:<32} {r['slices']:>4} slices  JS {r['js']}  findings {r['findings']}")
    for part in ("cost", "cli"):
        if part in result:
            print(json.dumps(result[part], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
