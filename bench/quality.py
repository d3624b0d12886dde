"""Trains the default UNET on a phantom through ingest and the Trainer's `run_fn`, and reports
volumetric Dice per eval patient: 2|P∩T| / (|P| + |T|) over all of the patient's eval slices.

The defaults are those recommended for `ctseg run`: 10 patients of 40 slices written at 512 px, ingested at 128 px,
split 75/25 by patient hash.

    .venv/bin/python bench/quality.py [--patients 10] [--slices 40] [--image-size 128]
                                      [--config '{"epochs": 30}'] [--workdir /tmp/ctseg-quality]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ctseg.quiet import silence  # noqa: E402

silence(False)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tfx import v1 as tfx  # noqa: E402

from ctseg import features, serving  # noqa: E402
from ctseg.models.unet import trainer  # noqa: E402
from ctseg.phantom import write_phantom  # noqa: E402
from ctseg.pipeline.local_runner import run_ingest  # noqa: E402


def per_patient_dice(serving_dir: str, eval_pattern: str) -> dict[str, float]:
    """Volumetric Dice per patient from the exported model's `serving_default` signature, one patient
    per call (a 2.5D model takes one patient's slices), before any 3D clean-up."""
    serve = tf.saved_model.load(serving_dir).signatures[serving.SERVING_SIGNATURE]
    by_patient = defaultdict(list)
    for r in tf.data.TFRecordDataset(tf.io.gfile.glob(eval_pattern), "GZIP"):
        by_patient[features.decode_example(r.numpy())[features.PATIENT_KEY]].append(r.numpy())
    dice = {}
    for pid, records in sorted(by_patient.items()):
        predicted = serving.is_organ(serve(examples=tf.constant(records))[serving.OUTPUT].numpy())
        truth = np.stack([features.decode_example(r)[features.MASK_KEY] for r in records]) > 0
        dice[pid] = float(2 * np.sum(predicted & truth) / max(predicted.sum() + truth.sum(), 1))
    return dice


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=10)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--phantom-size", type=int, default=512)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", default="{}", help="custom_config as JSON")
    ap.add_argument("--train-steps", type=int, default=None)
    ap.add_argument("--workdir", default="/tmp/ctseg-quality")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    phantom = work / f"phantom-{args.patients}x{args.slices}-{args.phantom_size}-s{args.seed}"
    if not phantom.exists():
        write_phantom(phantom, patients=args.patients, slices=args.slices, size=args.phantom_size, seed=args.seed)
    split = run_ingest(data_root=phantom, workdir=work / f"ingest-{phantom.name}-{args.image_size}",
                       image_size=args.image_size)
    custom = {"image_size": args.image_size, **json.loads(args.config)}
    run = work / f"run-{int(time.time())}"
    fn_args = tfx.components.FnArgs(
        train_files=[split["train"]], eval_files=[split["eval"]],
        serving_model_dir=str(run / "serving"), model_run_dir=str(run / "logs"),
        train_steps=args.train_steps, eval_steps=None, custom_config=custom)
    start = time.perf_counter()
    trainer.run_fn(fn_args)
    seconds = time.perf_counter() - start
    dice = per_patient_dice(str(run / "serving"), split["eval"])
    print(json.dumps({"custom_config": custom, "train_seconds": round(seconds, 1),
                      "dice_per_eval_patient": {k: round(v, 4) for k, v in dice.items()},
                      "mean_dice": round(float(np.mean(list(dice.values()))), 4)}, indent=1))


if __name__ == "__main__":
    main()
