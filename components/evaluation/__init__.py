"""Evaluation stage: SegmentationEvaluator (ModelEvaluation + ModelBlessing) and readers of its results.

`load_evaluation` and `format_evaluation` import neither TFX nor TensorFlow, so the CLI can show a
finished evaluation cheaply; the component is imported on first use.
"""
from __future__ import annotations

import json
import os
from typing import Any

from ctseg.errors import CtsegError
from ctseg.knobs import Spelling, check_fraction, plain_name
from ctseg.mlmd.files import read_bytes

METRICS_FILE = "metrics.json"
# SegmentationEvaluator's blessing rule, here so that the CLI shows them without importing TFX.
DEFAULT_DICE_THRESHOLD = 0.90
DEFAULT_DICE_TOLERANCE = 0.01


def check_blessing(dice_threshold: float, dice_tolerance: float, cleanup: str, spell: Spelling = plain_name) -> str:
    """SegmentationEvaluator's knobs; returns the clean-up in its canonical spelling."""
    from ctseg.postprocess import Cleanup

    check_fraction(dice_threshold, spell("dice_threshold"))
    check_fraction(dice_tolerance, spell("dice_tolerance"))
    try:
        return str(Cleanup.parse(cleanup))
    except ValueError as e:
        raise CtsegError(f"{spell('cleanup')}: {e}") from None


def load_evaluation(uri: str | os.PathLike) -> dict:
    """The evaluation written by SegmentationEvaluator at `uri` (a ModelEvaluation artifact's folder);
    `grid_png` is made an absolute path."""
    path = os.path.join(os.fspath(uri), METRICS_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except FileNotFoundError as e:
        raise CtsegError(f"no evaluation at {uri}: {METRICS_FILE} is missing") from e
    except (OSError, json.JSONDecodeError) as e:
        raise CtsegError(f"unreadable evaluation {path}: {e}") from e
    result["grid_png"] = os.path.join(os.fspath(uri), result["grid_png"])
    return result


def evaluation_details(uri: str) -> dict[str, Any]:
    """Dice per patient and the blessing decision from SegmentationEvaluator's metrics.json."""
    raw = read_bytes(os.path.join(uri, METRICS_FILE))
    if raw is None:
        return {}
    try:
        metrics = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    details = {k: metrics[k] for k in ("split", "mean_patient_dice", "dice_threshold", "blessed", "reason")
               if k in metrics}
    patients = metrics.get("patients")
    if isinstance(patients, list):
        details["dice_per_patient"] = {p["patient_id"]: p["dice"] for p in patients
                                       if isinstance(p, dict) and "patient_id" in p and "dice" in p}
    return details


def format_evaluation(result: dict) -> str:
    """The evaluation in a few lines a person reads: decision and reason, per-patient table, picture."""
    base = result.get("baseline")
    lines = [
        f"Model {result['reason']}",
        f"  {result['split']} split: mean per-patient Dice {result['mean_patient_dice']:.4f}, "
        f"IoU {result['mean_patient_iou']:.4f}; mean slice Dice {result['mean_slice_dice']:.4f} "
        f"over {result['slices']} slices",
    ]
    source = result.get("source_resolution")
    if source:
        assd = source.get("mean_patient_assd_mm")
        lines.append(f"  at the source resolution: mean per-patient Dice {source['mean_patient_dice']:.4f}, "
                     f"IoU {source['mean_patient_iou']:.4f}; mean ASSD "
                     + (f"{assd:.2f} mm" if assd is not None else "undefined (empty predictions)"))
    if "cleanup" in result:
        lines.append(f"  3D clean-up: {result['cleanup']} (mean per-patient Dice before it "
                     f"{result['mean_patient_dice_before_cleanup']:.4f})")
    if base:
        which = base["uri"] if base.get("id") is None else f"{base['uri']}, model {base['id']}"
        lines.append(f"  baseline (serving {which}): mean per-patient Dice {base['mean_patient_dice']:.4f}")
    nan = float("nan")
    lines.append(f"  {'patient':<16}{'slices':>7}{'Dice':>8}{'IoU':>8}{'src Dice':>10}{'ASSD mm':>9}"
                 f"{'true ml':>10}{'pred ml':>10}")
    for p in result["patients"]:
        assd = p.get("assd_mm")
        lines.append(f"  {p['patient_id']:<16}{p['slices']:>7}{p['dice']:>8.4f}{p['iou']:>8.4f}"
                     f"{p.get('source_dice', nan):>10.4f}{nan if assd is None else assd:>9.2f}"
                     f"{p.get('true_volume_ml', nan):>10.1f}{p.get('predicted_volume_ml', nan):>10.1f}")
    lines.append(f"  picture (best, median, worst patient): {result['grid_png']}")
    return "\n".join(lines)


def __getattr__(name):
    if name in ("SegmentationEvaluator", "SegmentationEvaluatorSpec"):
        from ctseg.components.evaluation import component
        return getattr(component, name)
    raise AttributeError(name)
