"""Peak memory of `ctseg predict` against the number of slices in the series.

One 512 px phantom patient is written once; series of the first N of its slices (hard links, no copies)
are each predicted in a fresh process (`ctseg.predict.predict`, all four outputs written), with the
smallest real model (tests/tiny_unet.py: the Trainer's UNET exported as the Trainer exports it; the
model's size barely matters next to the series). Each child reports its peak resident set
(`ru_maxrss`) after loading the model, its baseline measured in the same process, and after
predicting. The growth per slice is the slope of the peak between the smallest and largest series,
which the process's fixed cost (TensorFlow, the model) does not enter.

The children share a bytecode cache (`PYTHONPYCACHEPREFIX` in the temporary folder), filled by one
unmeasured run first, as an installed package has its modules compiled: without one (an environment
with PYTHONDONTWRITEBYTECODE, or a read-only one) every process compiles highdicom's 20 MB table of
DICOM modules again, about 400 MB at its peak, which is no part of predict.

    .venv/bin/python -m bench.predict_memory [--slices 20 50 100] [--size 512] [--out memory.json]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, resource, sys
from ctseg.quiet import silence
silence(False)
from ctseg.predict import load_model, predict
series, model, out = sys.argv[1:4]
load_model(model)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
summary = predict(series, model, out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"slices": summary["slices"], "baseline_mb": baseline, "peak_mb": peak}))
"""


def series_of(patient_dicom: Path, count: int, dest: Path) -> Path:
    """The first `count` slices (in position order: image_0.. as the phantom writes them) as hard links."""
    dest.mkdir(parents=True)
    for k in range(count):
        os.link(patient_dicom / f"image_{k}", dest / f"image_{k}")
    return dest


def child_env(bytecode: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(bytecode)}


def measure(series: Path, model: Path, out: Path, env: dict) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, str(series), str(model), str(out)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(run.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[20, 50, 100])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from ctseg.phantom import write_phantom
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from tiny_unet import export_tiny_unet

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # the phantom's protocol sets the count; ask for more and use the first ones
        write_phantom(tmp / "data", patients=1, slices=int(max(args.slices) * 1.3), size=args.size, seed=3)
        images = tmp / "data" / "3Dircadb1.1" / "PATIENT_DICOM"
        available = len(list(images.iterdir()))
        counts = [n for n in sorted(args.slices) if n <= available]
        model = export_tiny_unet(tmp / "serving" / "1").parent
        env = child_env(tmp / "bytecode")
        series = {n: series_of(images, n, tmp / f"series{n}") for n in counts}
        measure(series[counts[0]], model, tmp / "warm-up", env)  # fills the bytecode cache
        rows = [measure(series[n], model, tmp / f"out{n}", env) for n in counts]
    first, last = rows[0], rows[-1]
    per_slice = (last["peak_mb"] - first["peak_mb"]) / max(last["slices"] - first["slices"], 1)
    result = {"size_px": args.size, "rows": rows, "growth_mb_per_slice": per_slice}
    for r in rows:
        print(f"{r['slices']:>5} slices: peak {r['peak_mb']:7.0f} MB  "
              f"(after loading the model {r['baseline_mb']:5.0f} MB, "
              f"predict adds {r['peak_mb'] - r['baseline_mb']:6.0f} MB)")
    print(f"growth {per_slice:.2f} MB per {args.size} px slice")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
