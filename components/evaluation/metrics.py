"""Overlap metrics for binary segmentation, in pure numpy, and the blessing rule.

Conventions (the ones MONAI calls `ignore_empty=False`):
- A prediction is organ where `ctseg.serving.is_organ` says so (probability >= `serving.THRESHOLD`).
- Dice = 2|P∩T| / (|P| + |T|), IoU = |P∩T| / |P∪T|. When prediction and truth are both empty the
  model agreed perfectly that there is no organ, so Dice = IoU = 1.0; such slices are counted in the
  slice means (their number is reported as `empty_slices`).
- Per-patient (volumetric, 3D) Dice and IoU pool the voxels of all the patient's eval slices before
  dividing: the figure clinicians and papers report. The model's score is the mean over patients.
- Average symmetric surface distance (ASSD, mm): the mean over the border voxels of both masks of the
  distance to the nearest border voxel of the other, in millimetres through the voxel spacing; 0 when
  both are empty, undefined (None) when only one is.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ctseg.serving import is_organ


@dataclasses.dataclass(frozen=True)
class SliceOverlap:
    """Voxel counts per slice, shape (N,): all the metrics below derive from these."""
    intersection: np.ndarray
    predicted: np.ndarray
    truth: np.ndarray


def slice_overlap(probabilities: np.ndarray, truth: np.ndarray) -> SliceOverlap:
    """Counts for a batch of slices: `probabilities` (N, H, W) in [0, 1], `truth` (N, H, W) 0/1."""
    pred = is_organ(np.asarray(probabilities))
    true = np.asarray(truth) != 0
    if pred.shape != true.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from mask shape {true.shape}")
    axes = tuple(range(1, pred.ndim))
    return SliceOverlap(intersection=np.sum(pred & true, axis=axes, dtype=np.int64),
                        predicted=np.sum(pred, axis=axes, dtype=np.int64),
                        truth=np.sum(true, axis=axes, dtype=np.int64))


def dice_from_counts(intersection, predicted, truth) -> np.ndarray:
    intersection, total = np.asarray(intersection, np.float64), np.asarray(predicted, np.float64) + truth
    return np.where(total > 0, 2.0 * intersection / np.maximum(total, 1), 1.0)


def iou_from_counts(intersection, predicted, truth) -> np.ndarray:
    intersection = np.asarray(intersection, np.float64)
    union = np.asarray(predicted, np.float64) + truth - intersection
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary arrays of any shape (one slice or a whole volume)."""
    p, t = np.asarray(prediction) != 0, np.asarray(truth) != 0
    return float(dice_from_counts(np.sum(p & t), np.sum(p), np.sum(t)))


def iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    p, t = np.asarray(prediction) != 0, np.asarray(truth) != 0
    return float(iou_from_counts(np.sum(p & t), np.sum(p), np.sum(t)))


def _border(volume: np.ndarray) -> np.ndarray:
    """Foreground voxels with a background face-neighbour (the volume's outside counts as background)."""
    from scipy import ndimage

    return volume & ~ndimage.binary_erosion(volume, structure=ndimage.generate_binary_structure(volume.ndim, 1),
                                            border_value=0)


def assd_mm(prediction: np.ndarray, truth: np.ndarray, spacing_mm) -> float | None:
    """Average symmetric surface distance in mm of two binary volumes (slices, rows, cols);
    `spacing_mm` is (slice spacing, row spacing, column spacing)."""
    from scipy import ndimage

    p, t = np.asarray(prediction) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"prediction shape {p.shape} differs from mask shape {t.shape}")
    if not p.any() and not t.any():
        return 0.0
    if not p.any() or not t.any():
        return None
    either = np.argwhere(p | t)  # crop to both masks' bounding box (plus a margin) before the distance maps
    lo, hi = np.maximum(either.min(axis=0) - 1, 0), either.max(axis=0) + 2
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    p, t = _border(p[box]), _border(t[box])
    to_truth = ndimage.distance_transform_edt(~t, sampling=spacing_mm)
    to_prediction = ndimage.distance_transform_edt(~p, sampling=spacing_mm)
    distances = np.concatenate([to_truth[p], to_prediction[t]])
    return float(distances.mean())


def summarize(patient_ids, overlap: SliceOverlap, voxel_ml=None) -> dict:
    """Slice means, per-patient volumetric figures (sorted by patient) and their mean.

    `voxel_ml` (N,) is the volume of one voxel of each slice in millilitres; with it the patients'
    true and predicted organ volumes are reported too.
    """
    ids = np.asarray(patient_ids)
    if ids.size == 0:
        raise ValueError("no slices to summarize")
    slice_dice = dice_from_counts(overlap.intersection, overlap.predicted, overlap.truth)
    slice_iou = iou_from_counts(overlap.intersection, overlap.predicted, overlap.truth)
    patients = []
    for pid in sorted(set(ids.tolist())):
        sel = ids == pid
        i, p, t = (int(a[sel].sum()) for a in (overlap.intersection, overlap.predicted, overlap.truth))
        row = {"patient_id": str(pid), "slices": int(sel.sum()),
               "dice": float(dice_from_counts(i, p, t)), "iou": float(iou_from_counts(i, p, t)),
               "mean_slice_dice": float(slice_dice[sel].mean()),
               "true_voxels": t, "predicted_voxels": p}
        if voxel_ml is not None:
            vml = np.asarray(voxel_ml, np.float64)[sel]
            row["true_volume_ml"] = float(np.sum(overlap.truth[sel] * vml))
            row["predicted_volume_ml"] = float(np.sum(overlap.predicted[sel] * vml))
        patients.append(row)
    return {
        "mean_patient_dice": float(np.mean([r["dice"] for r in patients])),
        "mean_patient_iou": float(np.mean([r["iou"] for r in patients])),
        "mean_slice_dice": float(slice_dice.mean()),
        "mean_slice_iou": float(slice_iou.mean()),
        "slices": int(ids.size),
        "empty_slices": int(np.sum((overlap.predicted == 0) & (overlap.truth == 0))),
        "patients": patients,
    }


def best_median_worst(patients: list[dict]) -> list[tuple[str, dict]]:
    """The patients a person should look at first, by volumetric Dice (fewer rows for 1-2 patients)."""
    ranked = sorted(patients, key=lambda r: (-r["dice"], r["patient_id"]))
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    seen, out = set(), []
    for label, row in picks:
        if row["patient_id"] not in seen:
            seen.add(row["patient_id"])
            out.append((label, row))
    return out


def blessing_decision(mean_dice: float, threshold: float, tolerance: float,
                      baseline_mean_dice: float | None = None, already_serving: bool = False) -> tuple[bool, str]:
    """Blessed when mean per-patient Dice >= threshold and, with a baseline (the model serving), not
    worse than the baseline's by more than `tolerance`; the reason says which rule decided, in words.

    `already_serving`: the candidate is the model serving (a rerun whose Trainer came from the cache).
    Its earlier blessing stands; blessing it again would only make Pusher push a copy.
    """
    if mean_dice < threshold:
        return False, (f"not blessed: mean per-patient Dice {mean_dice:.4f} is below the threshold "
                       f"{threshold:.4f}")
    if already_serving:
        return False, (f"not blessed again: this model is already the one serving (mean per-patient "
                       f"Dice {mean_dice:.4f}); it was pushed when first blessed, so nothing new is pushed")
    if baseline_mean_dice is None:
        return True, (f"blessed: mean per-patient Dice {mean_dice:.4f} >= threshold {threshold:.4f}; "
                      "no model serving yet, so judged on the threshold alone")
    drop = baseline_mean_dice - mean_dice
    if mean_dice < baseline_mean_dice - tolerance:
        return False, (f"not blessed: mean per-patient Dice {mean_dice:.4f} is {drop:.4f} below the "
                       f"serving baseline model's {baseline_mean_dice:.4f}, more than the tolerance "
                       f"{tolerance:.4f}")
    return True, (f"blessed: mean per-patient Dice {mean_dice:.4f} >= threshold {threshold:.4f} and "
                  f"within the tolerance {tolerance:.4f} of the serving baseline model's "
                  f"{baseline_mean_dice:.4f}")
