"""Per-patient scores of one model: its probabilities gathered slice by slice, then each patient's volume
thresholded and cleaned up in 3D (`ctseg.postprocess`, as `ctseg predict` does) and scored twice:

- at the model's size against the examples' model-size mask (the blessing figure, as before), and
- at the source resolution: probabilities resized back to each slice's source rows and columns,
  thresholded and cleaned up, against the source-size mask ingest keeps in the example
  (`source_mask`); this is the Dice papers report, and the ASSD in mm comes from these volumes with
  (thickness_mm, spacing_mm, spacing_mm) as voxel spacing.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable, Optional

import numpy as np

from ctseg import features, postprocess
from ctseg.components.evaluation import metrics


@dataclasses.dataclass
class PatientSlices:
    """One patient's eval slices as read (any order); `ordered` puts a list in slice order."""
    slice_index: list = dataclasses.field(default_factory=list)
    hu: list = dataclasses.field(default_factory=list)              # int16 (h, w) at the model size
    mask: list = dataclasses.field(default_factory=list)            # uint8 (h, w)
    source_mask: list = dataclasses.field(default_factory=list)     # packed bits, or b"" when absent
    source_shape: list = dataclasses.field(default_factory=list)
    voxel_ml: list = dataclasses.field(default_factory=list)
    spacing_mm: list = dataclasses.field(default_factory=list)
    thickness_mm: list = dataclasses.field(default_factory=list)

    def add(self, b: dict, k: int) -> None:
        self.slice_index.append(int(b["slice_index"][k]))
        self.hu.append(np.asarray(b["hu"][k]).astype(features.IMAGE_DTYPE))
        self.mask.append(b["mask"][k])
        self.source_mask.append(b["source_mask"][k])
        self.source_shape.append(tuple(int(v) for v in b["source_shape"][k]))
        for key in ("voxel_ml", "spacing_mm", "thickness_mm"):
            getattr(self, key).append(float(b[key][k]))

    def ordered(self, values: list) -> list:
        return [values[i] for i in np.argsort(self.slice_index, kind="stable")]

    def hu_volume(self) -> np.ndarray:
        """float32 (slices, h, w) HU at the model size in slice order: what the model reads and the HU gate compares."""
        return np.stack(self.ordered(self.hu)).astype(np.float32)


@dataclasses.dataclass
class PatientScore:
    """Per-slice counts (in slice order) of the cleaned prediction at model size and at source size."""
    patient_id: str
    model_size: metrics.SliceOverlap
    raw_model_size: metrics.SliceOverlap          # before the clean-up, to show what it changed
    voxel_ml: np.ndarray
    source: Optional[metrics.SliceOverlap]        # None when the examples hold no source mask
    assd_mm: Optional[float]
    cleaned: np.ndarray                           # model-size mask after clean-up, for the picture


def _counts(prediction: np.ndarray, truth: np.ndarray) -> metrics.SliceOverlap:
    return metrics.slice_overlap(prediction.astype(np.float32), truth)


def score_patient(patient_id: str, slices: PatientSlices, probabilities: np.ndarray,
                  cleanup: postprocess.Cleanup) -> PatientScore:
    """`probabilities`: the model's (slices, h, w), in slice order."""
    probabilities = np.asarray(probabilities, np.float32)
    truth = np.stack(slices.ordered(slices.mask))
    raw = postprocess.binarize(probabilities)
    hu = slices.hu_volume()
    gated = postprocess.gate_probabilities(probabilities, hu, cleanup)
    cleaned = postprocess.clean_volume(postprocess.binarize(gated), cleanup, hu_at_model_size=hu)
    source = assd = None
    shapes = set(slices.source_shape)
    packed = slices.ordered(slices.source_mask)
    if all(packed) and len(shapes) == 1:
        shape = shapes.pop()
        source_truth = np.stack([features.unpack_mask(p, shape) for p in packed])
        predicted = postprocess.clean_volume(postprocess.source_mask(gated, shape), cleanup, hu_at_model_size=hu)
        source = _counts(predicted, source_truth)
        spacing = (float(np.median(slices.thickness_mm)), float(np.median(slices.spacing_mm)),
                   float(np.median(slices.spacing_mm)))
        assd = metrics.assd_mm(predicted, source_truth, spacing)
    return PatientScore(patient_id, _counts(cleaned, truth), _counts(raw, truth),
                        np.asarray(slices.ordered(slices.voxel_ml)), source, assd, cleaned)


def _concat(scores: list[PatientScore], attribute: str) -> tuple[np.ndarray, metrics.SliceOverlap]:
    ids = np.concatenate([[s.patient_id] * len(s.voxel_ml) for s in scores])
    parts = [getattr(s, attribute) for s in scores]
    return ids, metrics.SliceOverlap(*(np.concatenate([getattr(p, f.name) for p in parts])
                                       for f in dataclasses.fields(metrics.SliceOverlap)))


def summarize(scores: list[PatientScore], cleanup: postprocess.Cleanup) -> dict:
    """`metrics.summarize` of the cleaned model-size prediction, with the source-resolution Dice/IoU, the
    ASSD and the Dice before clean-up added per patient and as means over patients."""
    ids, overlap = _concat(scores, "model_size")
    summary = metrics.summarize(ids, overlap, np.concatenate([s.voxel_ml for s in scores]))
    _, raw = _concat(scores, "raw_model_size")
    raw_rows = {r["patient_id"]: r for r in metrics.summarize(ids, raw)["patients"]}
    by_id = {s.patient_id: s for s in scores}
    for row in summary["patients"]:
        row["dice_before_cleanup"] = raw_rows[row["patient_id"]]["dice"]
        row["assd_mm"] = by_id[row["patient_id"]].assd_mm
    summary["cleanup"] = str(cleanup)
    before = [r["dice_before_cleanup"] for r in summary["patients"]]
    summary["mean_patient_dice_before_cleanup"] = float(np.mean(before))
    summary["source_resolution"] = None
    if all(s.source is not None for s in scores):
        source = metrics.summarize(*_concat(scores, "source"))
        for row, src in zip(summary["patients"], source["patients"]):
            row["source_dice"], row["source_iou"] = src["dice"], src["iou"]
        assd = [s.assd_mm for s in scores if s.assd_mm is not None]
        summary["source_resolution"] = {
            "mean_patient_dice": source["mean_patient_dice"], "mean_patient_iou": source["mean_patient_iou"],
            "mean_slice_dice": source["mean_slice_dice"],
            "mean_patient_assd_mm": float(np.mean(assd)) if assd else None,
            "patients_without_assd": len(scores) - len(assd),
        }
    return summary


ProbabilityFn = Callable[[np.ndarray], np.ndarray]


def evaluate(batches: Iterable[dict], models: dict[str, ProbabilityFn], cleanup: postprocess.Cleanup):
    """Gathers every patient's slices, then runs each model on each patient's slices in position
    order (a 2.5D model needs the neighbours); returns ({name: summary or None}, shown), where
    `shown[patient]` = (hu, truth, {name: cleaned model-size prediction}) of the patient's slice with
    the most organ, for the picture."""
    patients: dict[str, PatientSlices] = {}
    for b in batches:
        for k, pid in enumerate(b["patient_id"]):
            patients.setdefault(pid, PatientSlices()).add(b, k)
    if not patients:
        return {name: None for name in models}, {}
    shown = {}
    for pid, slices in patients.items():
        truth = np.stack(slices.ordered(slices.mask))
        best = int(np.argmax(truth.reshape(len(truth), -1).sum(axis=1)))
        shown[pid] = (slices.ordered(slices.hu)[best].astype(np.float32), truth[best], {}, best)
    summaries = {}
    for name, probabilities_of in models.items():
        scores = []
        for pid in sorted(patients):
            slices = patients[pid]
            score = score_patient(pid, slices, probabilities_of(slices.hu_volume()), cleanup)
            scores.append(score)
            shown[pid][2][name] = score.cleaned[shown[pid][3]]
        summaries[name] = summarize(scores, cleanup)
    return summaries, {pid: view[:3] for pid, view in shown.items()}
