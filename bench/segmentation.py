"""Shared by bench/robustness.py and bench/stability.py: train with `ctseg run` (the command users run,
in its own process), and score a trained model on any IRCAD folder the way the evaluator does
(`ctseg.components.evaluation.scoring`: the patient's slices in position order, 3D clean-up, Dice at
model size and at the source resolution, ASSD)."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CTSEG = str(Path(sys.executable).with_name("ctseg"))


def train_with_ctseg_run(data: Path, workdir: Path, config: dict | None = None, extra_args=()) -> dict:
    """`ctseg run --data DATA --workdir WORKDIR --config CONFIG --no-cache`; returns the wall time, the
    evaluator's metrics.json and the trained model's SavedModel folder (blessed or not)."""
    start = time.perf_counter()
    done = subprocess.run([CTSEG, "run", "--data", str(data), "--workdir", str(workdir), "--no-cache",
                           "--config", json.dumps(config or {}), *extra_args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1) or not list(workdir.glob("pipeline/Trainer/model/*")):
        raise RuntimeError(f"ctseg run failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return {"seconds": seconds, **run_outputs(workdir), "stdout": done.stdout}


def run_outputs(workdir: Path) -> dict:
    """The newest run's evaluator metrics.json and trained SavedModel folder in a `ctseg run` work dir."""
    def newest(pattern: str) -> Path:  # artifact folders are named by their MLMD id
        return max(workdir.glob(pattern), key=lambda p: int(p.parent.name))

    metrics = json.loads(newest("pipeline/SegmentationEvaluator/evaluation/*/metrics.json").read_text())
    return {"metrics": metrics, "model": newest("pipeline/Trainer/model/*/Format-Serving")}


def ingest_folder(data: Path, image_size: int) -> list[bytes]:
    """Every patient's slice examples, through ingest's own per-patient function (no Beam: benches only)."""
    from ctseg import ircad
    from ctseg.components.ingest.executor import ingest_patient

    records = []
    for ref in ircad.find_patients(str(data)):
        records += [out[1] for out in ingest_patient(ref, "eval", "liver", image_size) if isinstance(out, tuple)]
    return records


def score_model(model_dir: Path, data: Path, cleanup: str = "on") -> dict:
    """The evaluator's summary of the model at `model_dir` on every patient of the IRCAD folder `data`."""
    import tensorflow as tf

    from ctseg import postprocess
    from ctseg.components.evaluation import executor, scoring
    from ctseg.serving import load_model

    served = load_model(model_dir)
    records = ingest_folder(data, served.size[0])
    path = Path(str(model_dir) + f"-scored-{data.name}.tfrecord")
    with tf.io.TFRecordWriter(str(path)) as w:
        for r in records:
            w.write(r)
    summaries, _ = scoring.evaluate(executor.read_slices([str(path)], 64),
                                    {"model": lambda hu: served.series_probabilities(hu, 32)},
                                    postprocess.Cleanup.parse(cleanup))
    path.unlink()
    return summaries["model"]


def headline(summary: dict) -> dict:
    """The figures a table row needs from an evaluator summary."""
    source = summary.get("source_resolution") or {}
    return {"patients": len(summary["patients"]),
            "dice_model_size": round(summary["mean_patient_dice"], 4),
            "dice_source": round(source.get("mean_patient_dice", float("nan")), 4),
            "min_patient_dice_source": round(min(p.get("source_dice", np.nan) for p in summary["patients"]), 4),
            "iou_source": round(source.get("mean_patient_iou", float("nan")), 4),
            "assd_mm": None if source.get("mean_patient_assd_mm") is None else round(source["mean_patient_assd_mm"], 2),
            "dice_before_cleanup": round(summary["mean_patient_dice_before_cleanup"], 4)}
