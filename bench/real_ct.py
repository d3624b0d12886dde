"""Dice of a trained model on real CT that no one here wrote, through `ctseg predict`'s own code path.

No real abdominal CT with a liver mask can live in this repository (IRCAD's licence forbids it, and
we have no internet), so this bench reads it from public repositories fetched beside it:

* TotalSegmentator (github.com/wasserth/TotalSegmentator, Apache-2.0; its example CT is from the
  TotalSegmentator dataset, CC-BY-4.0), `tests/reference_files/`:
  - `example_ct_dicom/`: 20 real DICOM slices (512x512, 0.98 mm pixels, 2 mm apart, JPEG 2000
    lossless), read as they are; reference `example_seg_dicom.nii.gz`.
  - `example_ct.nii.gz`: 112 slices of 3 mm voxels from the upper abdomen to the pelvis, liver on 43;
    reference `example_seg_fast_force_split.nii.gz`.
  - `example_ct_sm.nii.gz`: 30 slices of 3 mm voxels through the liver; reference `example_seg.nii.gz`
    (TotalSegmentator's full-resolution model).
  The NIfTI volumes are written here as a DICOM CT series (axial, square field of view padded with
  air, as a scanner writes it) before `ctseg predict` reads them. The two NIfTI volumes are one scan;
  the DICOM series is another (its field of view holds the arms), of the same patient or not: the
  repository does not say.
  The references are TotalSegmentator's own output (label 5, liver), not manual contours: its liver
  Dice against manual contours is about 0.97 (Wasserthal et al. 2023), so figures here carry that error.
* dcmqi (github.com/QIICR/dcmqi, BSD-3): `data/segmentations/ct-3slice/` (3 real CT slices) and the
  liver DICOM SEG that references them (pydicom-data's `liver.dcm`, the same file as dcmqi's).

    .venv/bin/python -m bench.real_ct --model out/serving [--totalsegmentator DIR] [--dcmqi DIR] [--out DIR]
        [--picture PNG] [--json OUT]

Each case goes through `load_series` → `predict_series` (the 3D clean-up included, and `ctseg predict`'s
out-of-distribution check against the model's training profile: the features it finds, per case and probe)
→ `write_outputs`,
and the mask is scored against the reference resampled onto the slices' own pixel grid through patient
coordinates (nearest neighbour). Prints a JSON row per case, then the whole result and a markdown table
(`--json` saves the result); the figures go in docs/BENCHMARKS.md.

Where the error goes, per case (volumes in ml by predict's own `volume_ml`):

* False positives (predicted liver outside the reference liver), by the structure of the case's
  TotalSegmentator label map (v2 "total" classes, `totalsegmentator/map_to_binary.py`) each voxel falls
  in: heart, stomach, inferior vena cava, aorta, kidneys (with their cysts), spleen, colon, duodenum,
  gallbladder, small bowel, lungs (five lobes), any other label, or no label; each as ml and as % of all
  false positives. The label map goes through the same resampling as the liver reference. Also the false
  positives within 3 mm (in-plane) of the reference liver, whatever their label: an outline drawn too
  wide. TotalSegmentator labels no fat, abdominal wall or diaphragm, so "no label" is mostly those.
  dcmqi's case has no label map: its total only.
* Misses (reference liver not predicted), each voxel in the first place that holds it: "dome", the most
  superior 15% of the slices holding reference liver (at least one); "piece", in a piece of a slice's
  reference (in-plane, 8-connected) that the prediction does not touch at all (a cross-section missed
  whole: on ts-112 the anterior edge of segments III/IV hanging apart below the hilum, and the right lobe's
  tip beside the kidney, 2026-12-07); "border", within 3 mm of the
  outside of the reference liver in-plane (the distance from its pixel centre to the nearest pixel
  centre outside the liver, the image's edge counting as outside; with 3 mm pixels, the outer ring);
  "hypodense", more than 20 HU below the median HU of the reference liver (lesions and their rims:
  TotalSegmentator's "total" task has no lesion label); "other". Where the liver reaches the scan's top
  slice (`dome_in_scan` false: every case here) the "dome" is the top of the scan, not the anatomical
  dome.
* The outline by side (`outline_by_side`): each slice's directions from the reference liver's centroid in four
  quarters (anterior, posterior, patient right, patient left, in the radiological facing), and per quarter the
  false positives and misses in ml and the mean signed in-plane distance of the predicted outline from the
  reference's (+ outside it): which side is drawn too wide and which stops short. False positives on slices
  without reference liver belong to no side.
* The reference's outline: the median HU of the reference liver in rings by in-plane depth under its outline
  (0-1.5, 1.5-3, 3-6, 6-10 mm, deeper). On an outline drawn on the liver's edge the outer ring is liver with
  partial volume; on one drawn outside it, fat: dcmqi-3's SEG is drawn 2-4 mm outside the parenchyma, so its
  volume ratios read about a tenth low for a correct outline (docs/BENCHMARKS.md).
* Heart labelled liver: predicted liver inside the heart label, for a case whose label map shows the
  heart; none of the three TotalSegmentator cases does (their top slices reach the lung bases).

Heart probes (`heart_probes`, reported apart, no Dice): two chest crops of one arterial-phase CT in the
TotalSegmentator checkout, `pulmonary_report/models/ct_cropped.nii.gz` (112 slices of 1.5 mm around the
heart, the liver dome on its lowest slices) and `aorta_report/test_result/models/ct_cropped.nii.gz`
(164 slices, from the coeliac trunk at T12 to the aortic arch), with the heart mask
`pulmonary_report/models/heart.nii.gz`. The two crops are one scan (where they overlap, 90% of their
voxels are equal and none differs by more than 2 HU), so the one heart mask, whose grid covers both,
serves both through patient coordinates. Each crop (18 cm wide) is written into a 360 mm field of view
padded with air, so the model, which resizes whole slices to its input size, sees the heart at the
scale of a whole scan (written without the padding, the pulmonary crop's figures move by 1%). They show
how much of a real heart the model calls liver, and the predicted liver volume in total; with no liver
reference they cannot say how much of that total is liver, nor score the liver; and the crop's square
edge and the air around it are unlike a scan, so they are a probe, not a case.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

LIVER_LABEL = 5  # TotalSegmentator v2 class map (`totalsegmentator/map_to_binary.py`, class_map["total"])
HEART_LABEL = 51
STRUCTURES = (  # where a false positive falls: (name, TotalSegmentator "total" labels)
    ("heart", (51,)), ("stomach", (6,)), ("inferior vena cava", (63,)), ("aorta", (52,)),
    ("kidneys", (2, 3, 23, 24)), ("spleen", (1,)), ("colon", (20,)), ("duodenum", (19,)), ("gallbladder", (4,)),
    ("small bowel", (18,)), ("lungs", (10, 11, 12, 13, 14)))
OTHER_LABELLED, OUTSIDE_LABELS = "other labelled", "outside any label"
MISS_PLACES = ("dome", "piece", "border", "hypodense", "other")
MISS_LABELS = {"dome": "at dome", "piece": "in pieces it never touched", "border": "at border",
               "hypodense": "at hypodense", "other": "other"}
SIDES = ("anterior", "posterior", "patient right", "patient left")
DOME_FRACTION = 0.15
BORDER_MM = 3.0
HYPODENSE_BELOW_MEDIAN_HU = 20.0
RING_EDGES_MM = (0.0, 1.5, 3.0, 6.0, 10.0)
RING_NAMES = (*(f"{lo:g}-{hi:g} mm" for lo, hi in zip(RING_EDGES_MM, RING_EDGES_MM[1:])),
              f"over {RING_EDGES_MM[-1]:g} mm")
PROBE_FIELD_OF_VIEW_MM = 360.0
LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])


def pixel_centres_lps(header) -> np.ndarray:
    """(rows, cols, 3) patient coordinates (LPS, mm) of a slice's pixel centres (DICOM PS3.3 C.7.6.2.1.1)."""
    ipp = np.asarray([float(v) for v in header.ImagePositionPatient])
    iop = np.asarray([float(v) for v in header.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in header.PixelSpacing)
    r = np.arange(int(header.Rows))[:, None, None]
    c = np.arange(int(header.Columns))[None, :, None]
    return ipp + c * col_mm * iop[:3] + r * row_mm * iop[3:]


def sample_nifti(volume: np.ndarray, affine: np.ndarray, points_lps: np.ndarray, outside=0) -> np.ndarray:
    """`volume` (a NIfTI array, its affine to RAS mm) at the given LPS points, nearest voxel."""
    ras = points_lps @ LPS_FROM_RAS.T
    ijk = (np.c_[ras.reshape(-1, 3), np.ones(ras[..., 0].size)] @ np.linalg.inv(affine).T)[:, :3]
    ijk = np.rint(ijk).astype(np.int64)
    inside = np.all((ijk >= 0) & (ijk < np.asarray(volume.shape[:3])), axis=1)
    out = np.full(len(ijk), outside, dtype=volume.dtype)
    out[inside] = volume[tuple(ijk[inside].T)]
    return out.reshape(points_lps.shape[:-1])


def axial_grid(affine: np.ndarray, shape: tuple[int, int, int],
               field_of_view_mm: float = 0.0) -> tuple[np.ndarray, float, float, int]:
    """An axial DICOM grid covering an axis-aligned NIfTI volume: (top-left LPS of the first slice,
    pixel mm, slice mm, square size). The field of view is made square, centred, as scanners write it,
    and at least `field_of_view_mm` wide."""
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not np.allclose(np.abs(affine[:3, :3]), np.diag(zooms), atol=1e-3):
        raise SystemExit("only axis-aligned NIfTI volumes are written as DICOM here")
    corners = np.array([[i, j, k, 1.0]
                        for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)])
    lps = (corners @ affine.T)[:, :3] @ LPS_FROM_RAS.T
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    pixel_mm = float(zooms[0])
    if not np.isclose(zooms[0], zooms[1]):
        raise SystemExit(f"non-square pixels {zooms[:2]}")
    size = int(max(shape[0], shape[1], np.ceil(field_of_view_mm / pixel_mm)))
    centre = (lo + hi) / 2
    start = np.array([centre[0] - (size - 1) / 2 * pixel_mm, centre[1] - (size - 1) / 2 * pixel_mm, lo[2]])
    return start, pixel_mm, float(zooms[2]), size


def write_nifti_as_dicom(ct_path: Path, out: Path, name: str, field_of_view_mm: float = 0.0) -> Path:
    """A NIfTI CT written as one axial DICOM CT series (int16, HU = stored value - 1024), superior slice first,
    padded with air to a square field of view at least `field_of_view_mm` wide."""
    import nibabel as nib
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from ctseg.dicom import CT_IMAGE_STORAGE

    image = nib.load(str(ct_path))
    hu = np.asanyarray(image.dataobj).astype(np.float32)
    start, pixel_mm, slice_mm, size = axial_grid(image.affine, hu.shape, field_of_view_mm)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    out.mkdir(parents=True, exist_ok=True)
    for k in range(hu.shape[2]):
        header = Dataset()
        header.ImagePositionPatient = [float(start[0]), float(start[1]), float(start[2] + k * slice_mm)]
        header.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        header.PixelSpacing = [pixel_mm, pixel_mm]
        header.Rows = header.Columns = size
        pixels = sample_nifti(hu, image.affine, pixel_centres_lps(header), outside=-1024.0)
        ds = Dataset()
        ds.update(header)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.PatientID, ds.PatientName = "CT", name, name
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20230101", "000000", "", ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, hu.shape[2] - k
        ds.Manufacturer, ds.PositionReferenceIndicator = "", ""
        ds.SliceThickness = slice_mm
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = np.clip(np.rint(pixels + 1024), -32768, 32767).astype("<i2").tobytes()
        pydicom.dcmwrite(out / f"image_{hu.shape[2] - 1 - k}", ds, write_like_original=False)
    return out


def labels_on_series(series, label_path: Path) -> np.ndarray:
    """A NIfTI label map on each slice's pixel grid, in series order (0 outside the map)."""
    import nibabel as nib

    image = nib.load(str(label_path))
    labels = np.asanyarray(image.dataobj)
    return np.stack([sample_nifti(labels, image.affine, pixel_centres_lps(s.header)) for s in series.slices])


def reference_from_nifti(series, label_path: Path) -> np.ndarray:
    """The liver label of a NIfTI label map on each slice's pixel grid, in series order."""
    return (labels_on_series(series, label_path) == LIVER_LABEL).astype(np.uint8)


def heart_from_nifti(series, heart_path: Path) -> np.ndarray:
    """A binary heart mask on each slice's pixel grid, as TotalSegmentator "total" labels (heart or 0)."""
    return np.where(labels_on_series(series, heart_path) > 0, HEART_LABEL, 0).astype(np.uint8)


def reference_from_seg(series, seg_path: Path) -> np.ndarray:
    """The frames of a one-segment DICOM SEG, matched to the series' slices by SOP Instance UID."""
    import pydicom

    seg = pydicom.dcmread(str(seg_path))
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    by_uid = {}
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        by_uid[uid] = by_uid.get(uid, 0) | (frame > 0)
    missing = [s.name for s in series.slices if str(s.header.SOPInstanceUID) not in by_uid]
    if missing:
        raise SystemExit(f"{seg_path} has no frame for {missing}")
    return np.stack([by_uid[str(s.header.SOPInstanceUID)] for s in series.slices]).astype(np.uint8)


def score(predicted: np.ndarray, reference: np.ndarray, series) -> dict:
    """The evaluator's Dice and IoU (`components/evaluation/metrics.py`) over the whole series, and both volumes."""
    from ctseg.components.evaluation.metrics import dice, iou
    from ctseg.predict import volume_ml

    return {"slices": len(series.slices), "liver_slices": int(reference.any(axis=(1, 2)).sum()),
            "dice": round(dice(predicted, reference), 4), "iou": round(iou(predicted, reference), 4),
            "volume_ml": round(volume_ml(predicted, series), 1),
            "reference_volume_ml": round(volume_ml(reference, series), 1)}


def voxel_ml(series) -> float:
    """One voxel's volume, by predict's own `volume_ml`."""
    from ctseg.predict import volume_ml

    return volume_ml(np.ones(1, np.uint8), series)


def ml_of(voxels: np.ndarray, ml_per_voxel: float) -> float:
    return float(np.count_nonzero(voxels)) * ml_per_voxel


def false_positives_by_structure(predicted: np.ndarray, reference: np.ndarray, labels: np.ndarray,
                                 ml_per_voxel: float) -> dict[str, float]:
    """ml of predicted liver outside the reference liver, by the labelled structure each voxel lies in
    (STRUCTURES, then any other label, then no label)."""
    wrong = labels[(predicted > 0) & (reference == 0)]
    named = np.zeros(wrong.shape, bool)
    ml = {}
    for name, values in STRUCTURES:
        inside = np.isin(wrong, values)
        ml[name] = ml_of(inside, ml_per_voxel)
        named |= inside
    ml[OTHER_LABELLED] = ml_of(~named & (wrong != 0), ml_per_voxel)
    ml[OUTSIDE_LABELS] = ml_of(wrong == 0, ml_per_voxel)
    return ml


def dome_slices(reference: np.ndarray, z_mm: np.ndarray, fraction: float = DOME_FRACTION) -> np.ndarray:
    """Per slice, whether it is among the most superior `fraction` of the slices holding reference liver
    (at least one; LPS z grows towards the head)."""
    with_liver = np.flatnonzero(reference.any(axis=(1, 2)))
    superior_first = with_liver[np.argsort(-np.asarray(z_mm)[with_liver], kind="stable")]
    top = superior_first[:int(np.ceil(fraction * len(with_liver)))]
    dome = np.zeros(len(reference), bool)
    dome[top] = True
    return dome


def _depth_mm(reference: np.ndarray, pixel_mm: tuple[float, float]) -> np.ndarray:
    """In-plane distance of each reference liver voxel to the nearest pixel outside the liver (the image's edge
    counting as outside); 0 outside the liver."""
    from scipy import ndimage

    padded = np.pad(reference > 0, ((0, 0), (1, 1), (1, 1)))
    return np.stack([ndimage.distance_transform_edt(s, sampling=pixel_mm) for s in padded])[:, 1:-1, 1:-1]


def border_voxels(reference: np.ndarray, pixel_mm: tuple[float, float], border_mm: float = BORDER_MM) -> np.ndarray:
    """Reference liver voxels whose in-plane distance to the nearest pixel outside the liver (the image's
    edge counting as outside) is at most `border_mm`."""
    return (reference > 0) & (_depth_mm(reference, pixel_mm) <= border_mm)


def reference_rings_hu(reference: np.ndarray, hu: np.ndarray, pixel_mm: tuple[float, float]) -> dict:
    """Median HU of the reference liver in rings by depth under its outline (RING_EDGES_MM, in-plane), and
    deeper: whether the outline lies on the liver's edge (liver HU with partial volume in the outer ring) or
    outside it (fat there), which decides what a volume ratio against it means. None for an empty ring."""
    depth = _depth_mm(reference, pixel_mm)
    liver = reference > 0
    rings = {}
    for name, lo, hi in zip(RING_NAMES, RING_EDGES_MM, (*RING_EDGES_MM[1:], np.inf)):
        values = hu[liver & (depth > lo) & (depth <= hi)]
        rings[name] = round(float(np.median(values)), 1) if values.size else None
    return rings


def rim_voxels(reference: np.ndarray, pixel_mm: tuple[float, float], rim_mm: float = BORDER_MM) -> np.ndarray:
    """Voxels outside the reference liver whose in-plane distance to it is at most `rim_mm` (none on a
    slice without liver)."""
    from scipy import ndimage

    rim = np.zeros(reference.shape, bool)
    for k in np.flatnonzero(reference.any(axis=(1, 2))):
        outside = reference[k] == 0
        rim[k] = outside & (ndimage.distance_transform_edt(outside, sampling=pixel_mm) <= rim_mm)
    return rim


def untouched_pieces(predicted: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Reference liver voxels in a piece of a slice's reference (in-plane, 8-connected) that the prediction does
    not touch at all: a cross-section missed whole, such as the anterior edge of segments III/IV hanging apart
    below the hilum, or the right lobe's tip beside the kidney."""
    from scipy import ndimage

    pieces = np.zeros(reference.shape, bool)
    for k in np.flatnonzero(reference.any(axis=(1, 2))):
        parts, _ = ndimage.label(reference[k] > 0, structure=np.ones((3, 3)))
        touched = np.unique(parts[(predicted[k] > 0) & (parts > 0)])
        pieces[k] = (parts > 0) & ~np.isin(parts, touched)
    return pieces


def misses_by_place(predicted: np.ndarray, reference: np.ndarray, hu: np.ndarray, z_mm: np.ndarray,
                    pixel_mm: tuple[float, float], ml_per_voxel: float) -> dict[str, float]:
    """ml of reference liver not predicted, each voxel in the first of MISS_PLACES that holds it: the dome
    slices, a piece of a slice's reference the prediction never touches (`untouched_pieces`), the border,
    hypodense (HYPODENSE_BELOW_MEDIAN_HU under the reference liver's median HU), other."""
    liver = reference > 0
    left = liver & (predicted == 0)
    median_hu = float(np.median(hu[liver])) if liver.any() else 0.0
    places = (dome_slices(reference, z_mm)[:, None, None], untouched_pieces(predicted, reference),
              border_voxels(reference, pixel_mm), hu < median_hu - HYPODENSE_BELOW_MEDIAN_HU)
    ml = {}
    for name, where in zip(MISS_PLACES, places):
        ml[name] = ml_of(left & where, ml_per_voxel)
        left &= ~where
    ml[MISS_PLACES[-1]] = ml_of(left, ml_per_voxel)
    return ml


def outline_by_side(predicted: np.ndarray, reference: np.ndarray, pixel_mm: tuple[float, float],
                    ml_per_voxel: float, flip_axes: tuple[int, ...] = ()) -> dict[str, dict]:
    """Per side of the liver (SIDES: the quarter of directions, in-plane and in mm, from each slice's reference
    centroid; `flip_axes` turns the arrays to the radiological facing, `Series.flip_axes`): the false positives
    and misses in ml, and the mean signed in-plane distance in mm of the predicted outline from the reference's
    (+ outside it, 0 on the reference's own outermost pixels): which side is drawn too wide or stops short. Slices
    without reference liver have no centroid, so their false positives (the table's total has them) are left out."""
    from scipy import ndimage

    predicted, reference = (np.flip(a > 0, flip_axes) if flip_axes else a > 0 for a in (predicted, reference))
    step = min(pixel_mm)
    sums = {side: {"false_positive_ml": 0.0, "missed_ml": 0.0} for side in SIDES}
    distances: dict[str, list] = {side: [] for side in SIDES}
    for k in np.flatnonzero(reference.any(axis=(1, 2))):
        ref, pred = reference[k], predicted[k]
        rows, cols = np.indices(ref.shape)
        cy, cx = ndimage.center_of_mass(ref)
        dy, dx = (rows - cy) * pixel_mm[0], (cols - cx) * pixel_mm[1]
        side = np.where(np.abs(dy) >= np.abs(dx), np.where(dy < 0, 0, 1), np.where(dx < 0, 2, 3))
        signed = np.where(ref, step - ndimage.distance_transform_edt(ref, sampling=pixel_mm),
                          ndimage.distance_transform_edt(~ref, sampling=pixel_mm))
        outline = pred & ~ndimage.binary_erosion(pred)
        for i, name in enumerate(SIDES):
            here = side == i
            sums[name]["false_positive_ml"] += ml_of(pred & ~ref & here, ml_per_voxel)
            sums[name]["missed_ml"] += ml_of(ref & ~pred & here, ml_per_voxel)
            distances[name].append(signed[outline & here])
    out = {}
    for name in SIDES:
        d = np.concatenate(distances[name]) if distances[name] else np.zeros(0)
        out[name] = {**rounded(sums[name]), "mean_distance_mm": round(float(d.mean()), 2) if d.size else None}
    return out


def heart_labelled_liver_ml(predicted: np.ndarray, labels: np.ndarray, ml_per_voxel: float) -> float | None:
    """ml of predicted liver inside the heart label; None where the scan does not show the heart."""
    heart = labels == HEART_LABEL
    return ml_of(heart & (predicted > 0), ml_per_voxel) if heart.any() else None


def percentages(ml: dict[str, float]) -> dict[str, float] | None:
    """Each entry as % of their sum; None when the sum is 0."""
    total = sum(ml.values())
    return {k: round(100.0 * v / total, 1) for k, v in ml.items()} if total > 0 else None


def rounded(ml: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 1) for k, v in ml.items()}


def where_the_error_goes(predicted: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
                         hu: np.ndarray, series) -> dict:
    """A case's false positives by structure (where a label map exists), its misses by place and the
    heart labelled liver, for the JSON row."""
    from ctseg.dicom import spacing_mm

    ml_per_voxel = voxel_ml(series)
    pixel_mm = spacing_mm(series.slices[0].header)
    z_mm = np.array([float(s.header.ImagePositionPatient[2]) for s in series.slices])
    wrong = (predicted > 0) & (reference == 0)
    missed = misses_by_place(predicted, reference, hu, z_mm, pixel_mm, ml_per_voxel)
    row = {"false_positive_ml": round(ml_of(wrong, ml_per_voxel), 1),
           "false_positive_rim_ml": round(ml_of(wrong & rim_voxels(reference, pixel_mm), ml_per_voxel), 1),
           "false_positive_by_structure_ml": None, "false_positive_by_structure_pct": None,
           "heart_in_scan": None, "heart_labelled_liver_ml": None,
           "missed_ml": round(sum(missed.values()), 1), "dome_in_scan": not bool(reference[np.argmax(z_mm)].any()),
           "missed_by_place_ml": rounded(missed), "missed_by_place_pct": percentages(missed),
           "reference_rings_hu": reference_rings_hu(reference, hu, pixel_mm),
           "outline_by_side": outline_by_side(predicted, reference, pixel_mm, ml_per_voxel, series.flip_axes)}
    if labels is not None:
        by_structure = false_positives_by_structure(predicted, reference, labels, ml_per_voxel)
        heart = heart_labelled_liver_ml(predicted, labels, ml_per_voxel)
        row.update(false_positive_by_structure_ml=rounded(by_structure),
                   false_positive_by_structure_pct=percentages(by_structure),
                   heart_in_scan=heart is not None, heart_labelled_liver_ml=None if heart is None else round(heart, 1))
    return row


def picture(rows: list[tuple[str, object, np.ndarray]], path: Path, per_case: int = 4) -> Path:
    """Slices evenly through each case's liver in the liver window: reference green, prediction red."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ctseg.predict import windowed_slices

    fig, axes = plt.subplots(len(rows), per_case, figsize=(3 * per_case, 3.2 * len(rows)), squeeze=False)
    for (name, prediction, reference), line in zip(rows, axes):
        with_liver = np.flatnonzero(reference.any(axis=(1, 2)) | prediction.mask.any(axis=(1, 2)))
        picks = np.unique(np.linspace(with_liver.min(), with_liver.max(), per_case).round().astype(int))
        windowed = windowed_slices(prediction.series, picks)
        for ax in line:
            ax.axis("off")
        for ax, k in zip(line, picks):
            ax.imshow(windowed[k], cmap="gray")
            ax.contour(reference[k], [0.5], colors="lime", linewidths=0.8)
            ax.contour(prediction.mask[k], [0.5], colors="red", linewidths=0.8)
            ax.set_title(f"slice {k + 1} of {len(reference)}", fontsize=8)
        line[0].text(0.01, 0.99, name.split(" (")[0], transform=line[0].transAxes, fontsize=7, va="top", color="w")
    fig.suptitle("real CT: reference green, model red", fontsize=10)
    fig.tight_layout(h_pad=0.3, w_pad=0.3)
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    short: str            # the column name in docs/BENCHMARKS.md
    source: Path          # a DICOM series folder
    reference: Callable   # series -> liver mask (uint8), or None for a heart probe
    labels: Callable      # series -> TotalSegmentator "total" labels on the series' grid, or None


def cases(totalsegmentator: Path | None, dcmqi: Path | None, scratch: Path):
    """The scored cases (a liver reference each) for every source given."""
    if totalsegmentator:
        ref = totalsegmentator / "tests" / "reference_files"
        labels = ref / "example_seg_dicom.nii.gz"
        yield Case("TotalSegmentator example_ct_dicom (20 real DICOM slices, 512x512)", "ts-dicom",
                   ref / "example_ct_dicom", lambda s, labels=labels: reference_from_nifti(s, labels),
                   lambda s, labels=labels: labels_on_series(s, labels))
        for ct, seg, short, what in (
                ("example_ct", "example_seg_fast_force_split", "ts-112", "112 slices, 3 mm, abdomen to pelvis"),
                ("example_ct_sm", "example_seg", "ts-30", "30 slices, 3 mm, through the liver")):
            labels = ref / f"{seg}.nii.gz"
            yield Case(f"TotalSegmentator {ct}.nii.gz ({what})", short,
                       write_nifti_as_dicom(ref / f"{ct}.nii.gz", scratch / ct, ct),
                       lambda s, labels=labels: reference_from_nifti(s, labels),
                       lambda s, labels=labels: labels_on_series(s, labels))
    if dcmqi:
        from pydicom.data import get_testdata_file

        yield Case("dcmqi ct-3slice + liver.dcm (3 real slices)", "dcmqi-3",
                   dcmqi / "data" / "segmentations" / "ct-3slice",
                   lambda s: reference_from_seg(s, Path(get_testdata_file("liver.dcm"))), lambda s: None)


def heart_probes(totalsegmentator: Path | None, scratch: Path):
    """Chest crops of one arterial-phase scan with TotalSegmentator's heart mask, where the checkout has them:
    no liver reference, so they measure only what the model labels liver inside the heart."""
    if not totalsegmentator:
        return
    ref = totalsegmentator / "tests" / "reference_files"
    heart = ref / "pulmonary_report" / "models" / "heart.nii.gz"
    for crop, short in ((ref / "pulmonary_report" / "models" / "ct_cropped.nii.gz", "ts-pulmonary-crop"),
                        (ref / "aorta_report" / "test_result" / "models" / "ct_cropped.nii.gz", "ts-aorta-crop")):
        if crop.exists() and heart.exists():
            yield Case(f"TotalSegmentator {crop.relative_to(ref)} (chest crop, heart probe)", short,
                       write_nifti_as_dicom(crop, scratch / short, short, PROBE_FIELD_OF_VIEW_MM),
                       lambda s: None, lambda s: heart_from_nifti(s, heart))


def series_hu(series) -> np.ndarray:
    """The series' Hounsfield units (slices, rows, cols), read as predict reads them."""
    from ctseg.predict import read_hu

    return np.stack([hu.numpy() for hu, _ in read_hu(series)])


def probe_row(case: Case, predicted: np.ndarray, series) -> dict:
    """A heart probe's predicted liver, in total and inside the heart, and the heart's volume on its slices."""
    labels = case.labels(series)
    ml_per_voxel = voxel_ml(series)
    heart = labels == HEART_LABEL
    return {"probe": case.name, "short": case.short, "slices": len(series.slices),
            "heart_slices": int(heart.any(axis=(1, 2)).sum()), "heart_ml": round(ml_of(heart, ml_per_voxel), 1),
            "predicted_liver_ml": round(ml_of(predicted, ml_per_voxel), 1),
            "heart_labelled_liver_ml": round(heart_labelled_liver_ml(predicted, labels, ml_per_voxel) or 0.0, 1)}


def _cell(ml: dict | None, pct: dict | None, key: str) -> str:
    if ml is None:
        return "n/a"
    return f"{ml[key]:.1f} ({pct[key]:.0f}%)" if pct else f"{ml[key]:.1f}"


def findings_cell(row: dict) -> str:
    """The features `ctseg predict` finds out of distribution, "none", or "no profile" for a model without one."""
    found = row.get("out_of_distribution")
    return "no profile" if found is None else ", ".join(found) or "none"


def table(rows: list[dict], probes: list[dict]) -> str:
    """Markdown tables: a column per case (Dice, volume ratio, false positives by structure, misses by
    place, heart), then the heart probes."""
    def line(label, cells):
        return f"| {label} | " + " | ".join(cells) + " |"

    lines = [line("", [r["short"] for r in rows]), "|---|" + "---:|" * len(rows),
             line("Dice", [f"{r['dice']:.3f}" for r in rows]),
             line("predicted / reference volume",
                  [f"{r['volume_ml'] / r['reference_volume_ml']:.2f}" for r in rows]),
             line("**false positives, ml**", [f"**{r['false_positive_ml']:.1f}**" for r in rows])]
    for name in [n for n, _ in STRUCTURES] + [OTHER_LABELLED, OUTSIDE_LABELS]:
        lines.append(line(name if name == OUTSIDE_LABELS else f"in {name}", [
            _cell(r["false_positive_by_structure_ml"], r["false_positive_by_structure_pct"], name) for r in rows]))
    lines.append(line(f"(of all false positives: within {BORDER_MM:g} mm of the reference liver)", [
        f"{r['false_positive_rim_ml']:.1f} ({100 * r['false_positive_rim_ml'] / r['false_positive_ml']:.0f}%)"
        if r["false_positive_ml"] else "0.0" for r in rows]))
    lines.append(line("**missed, ml**", [f"**{r['missed_ml']:.1f}**" for r in rows]))
    lines += [line(MISS_LABELS[place], [_cell(r["missed_by_place_ml"], r["missed_by_place_pct"], place) for r in rows])
              for place in MISS_PLACES]
    by_side = " / ".join(SIDES)
    lines.append(line(f"outline's mean distance from the reference's, mm (+ outside): {by_side}", [
        " / ".join("-" if r["outline_by_side"][s]["mean_distance_mm"] is None
                   else f"{r['outline_by_side'][s]['mean_distance_mm']:+.1f}" for s in SIDES) for r in rows]))
    for key, what in (("false_positive_ml", "false positives"), ("missed_ml", "missed")):
        lines.append(line(f"{what} by side, ml: {by_side}", [
            " / ".join(f"{r['outline_by_side'][s][key]:.1f}" for s in SIDES) for r in rows]))
    lines.append(line("liver's top inside the scan (the dome is the dome)",
                      ["yes" if r["dome_in_scan"] else "no" for r in rows]))
    lines.append(line("reference's median HU by depth under its outline: " + " / ".join(RING_NAMES), [
        " / ".join("-" if r["reference_rings_hu"][n] is None else f"{r['reference_rings_hu'][n]:.0f}"
                   for n in RING_NAMES) for r in rows]))
    lines.append(line("heart labelled liver, ml", [
        "n/a" if r["heart_in_scan"] is None else "no heart in scan" if not r["heart_in_scan"]
        else f"{r['heart_labelled_liver_ml']:.1f}" for r in rows]))
    lines.append(line("`ctseg predict`'s out-of-distribution findings", [findings_cell(r) for r in rows]))
    if probes:
        lines += ["", "| heart probe | slices | heart, ml | predicted liver, ml | heart labelled liver, ml | "
                      "out-of-distribution findings |", "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {p['short']} | {p['slices']} | {p['heart_ml']:.1f} | {p['predicted_liver_ml']:.1f} | "
                  f"{p['heart_labelled_liver_ml']:.1f} | {findings_cell(p)} |" for p in probes]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a serving dir, a version dir or a Trainer model")
    ap.add_argument("--totalsegmentator", type=Path, help="a checkout of github.com/wasserth/TotalSegmentator")
    ap.add_argument("--dcmqi", type=Path, help="a checkout of github.com/QIICR/dcmqi")
    ap.add_argument("--out", type=Path, help="keep each case's predict outputs (SEG, masks, overlay) here")
    ap.add_argument("--picture", type=Path, help="write a PNG of every case: reference and prediction contours")
    ap.add_argument("--json", type=Path, metavar="OUT", help="save the results (cases and heart probes) as JSON")
    args = ap.parse_args(argv)
    if not (args.totalsegmentator or args.dcmqi):
        ap.error("give --totalsegmentator and/or --dcmqi")

    from ctseg.commands.predict import in_distribution_check
    from ctseg.predict import load_model, load_series, predict_series, write_outputs

    served = load_model(args.model)
    model_check = in_distribution_check(args.model, None, False)   # the profile, read once

    def predicted(series):
        """`ctseg predict`'s prediction and the names of its out-of-distribution findings (None: no profile)."""
        check = dataclasses.replace(model_check, findings=[]) if model_check else None
        before = check.before_model([s.header for s in series.slices]) if check else None
        prediction = predict_series(series, served, before_model=before)
        return prediction, [f.feature for f in check.after_model(prediction)] if check else None
    rows, probes, drawn = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        for i, case in enumerate(cases(args.totalsegmentator, args.dcmqi, scratch)):
            series = load_series(case.source)
            prediction, findings = predicted(series)
            if args.out:
                write_outputs(prediction, args.out / f"case{i}")
            truth = case.reference(series)
            errors = where_the_error_goes(prediction.mask, truth, case.labels(series), series_hu(series), series)
            rows.append({"case": case.name, "short": case.short, **score(prediction.mask, truth, series), **errors,
                         "out_of_distribution": findings})
            drawn.append((case.name, prediction, truth))
            print(json.dumps(rows[-1]), flush=True)
        for case in heart_probes(args.totalsegmentator, scratch):
            series = load_series(case.source)
            prediction, findings = predicted(series)
            probes.append({**probe_row(case, prediction.mask, series), "out_of_distribution": findings})
            print(json.dumps(probes[-1]), flush=True)
    if args.picture:
        print(f"picture: {picture(drawn, args.picture)}")
    dices = [r["dice"] for r in rows]
    results = {"model": str(served.path), "context_slices": served.context_slices,
               "mean_dice": round(float(np.mean(dices)), 4), "cases": rows, "heart_probes": probes}
    print(json.dumps(results, indent=1))
    print(table(rows, probes))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        print(f"saved: {args.json}")


if __name__ == "__main__":
    main()
