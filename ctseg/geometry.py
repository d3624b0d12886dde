"""The slice geometry a series must have for the model, one rule each, on header values (no pixels):
axial slices (a few degrees of tilt at most), localizers apart from the stack, one pixel spacing, slice
positions without gaps, and the one slice depth that volumes and surface distances use. `ctseg predict`
and ingest apply the same rules, so the model never trains on, nor is fed, what it cannot read.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import pydicom

MAX_TILT_DEG = 5.0  # an axial slice's normal may lean this far from the patient's z axis (gantry tilt, obliquity)
GAP_STEP_FACTOR = 1.5  # a step between consecutive positions this many times the median step is a gap
SPACING_TOLERANCE_MM = 1e-3


def _cosines(header: pydicom.Dataset) -> Optional[tuple[np.ndarray, np.ndarray]]:
    iop = header.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return None
    return np.asarray(iop[:3], float), np.asarray(iop[3:], float)


def plane_normal(row: Sequence[float], col: Sequence[float]) -> np.ndarray:
    """row x col, the normal of the plane they span: np.cross's products and differences in its order, so the
    same float64 values, written out because np.cross costs about 30 µs on two 3-vectors (ingest takes a
    normal twice a slice)."""
    (a0, a1, a2), (b0, b1, b2) = (float(v) for v in row), (float(v) for v in col)
    return np.array([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0])


def not_axial(header: pydicom.Dataset) -> Optional[str]:
    """Why a slice is not one the model can read as axial (sagittal, coronal, tilted, or axial with rows and
    columns swapped), else None. A slice without ImageOrientationPatient is taken as axial, as ordering does."""
    cosines = _cosines(header)
    if cosines is None:
        return None
    row, col = cosines
    normal = plane_normal(row, col)
    size = float(np.linalg.norm(normal))
    if size < 1e-6:
        return f"ImageOrientationPatient {_values(header)} does not describe a plane"
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])) / size)))
    if tilt > MAX_TILT_DEG:
        plane = ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]
        what = f"a {plane} slice" if plane != "axial" else "an axial slice"
        return (f"{what} tilted {tilt:.0f} degrees from axial (ImageOrientationPatient {_values(header)}); the model "
                f"reads axial slices, at most {MAX_TILT_DEG:g} degrees off")
    if abs(row[0]) < abs(row[1]):
        return (f"an axial slice with rows and columns swapped (ImageOrientationPatient {_values(header)}); the model "
                "reads rows running left-right")
    return None


def in_plane_flips(header: pydicom.Dataset) -> tuple[bool, bool]:
    """(flip rows, flip columns) that turn an axial slice into the orientation the model was trained on:
    rows running to the patient's left (+x) and columns to the back (+y), as CT and IRCAD store them."""
    cosines = _cosines(header)
    if cosines is None:
        return False, False
    row, col = cosines
    return bool(col[1] < 0), bool(row[0] < 0)


def is_localizer(header: pydicom.Dataset) -> bool:
    """A scout or topogram (ImageType LOCALIZER): a projection, no slice of the stack."""
    image_type = header.get("ImageType") or []
    values = [image_type] if isinstance(image_type, str) else list(image_type)
    return any(str(v).strip().upper() == "LOCALIZER" for v in values)


def median_step_mm(positions_mm: Sequence[Optional[float]]) -> Optional[float]:
    """The median distance between consecutive positions along the normal (in position order), or None
    without two positions or with no step."""
    if len(positions_mm) < 2 or any(p is None for p in positions_mm):
        return None
    step = float(np.median(np.abs(np.diff(np.asarray(positions_mm, float)))))
    return step if step > 0 else None


def slice_depth_mm(positions_mm: Sequence[Optional[float]], thickness_mm: float) -> Optional[float]:
    """The depth of one voxel of a series: the median step of its positions (what ITK and dcm2niix use;
    overlapping reconstructions step less than their SliceThickness), else SliceThickness, else None.
    The one depth of `ctseg predict`'s volume and the evaluator's volume and surface distance."""
    step = median_step_mm(positions_mm)
    if step is not None:
        return step
    return thickness_mm if thickness_mm > 0 else None


def position_gaps(names: Sequence[str], positions_mm: Sequence[float]) -> list[tuple[str, str]]:
    """(the slice after the gap, why) for each step between consecutive slices (in position order) over
    GAP_STEP_FACTOR times the median step: slices are missing there."""
    step = median_step_mm(positions_mm)
    if step is None:
        return []
    gaps = []
    for k in range(1, len(positions_mm)):
        gap = abs(positions_mm[k] - positions_mm[k - 1])
        if gap > GAP_STEP_FACTOR * step:
            gaps.append((names[k], f"slices missing between {names[k - 1]} and {names[k]}: {gap:.3g} mm apart "
                                   f"where the series steps {step:.3g} mm (about {round(gap / step) - 1} missing)"))
    return gaps


def mixed_spacing(names: Sequence[str], spacings_mm: Sequence[tuple[float, float]]) -> list[tuple[str, str]]:
    """(name, why) for each slice whose PixelSpacing differs from the series' most common one."""
    if not names:
        return []
    values, counts = np.unique(np.round(np.asarray(spacings_mm, float), 6), axis=0, return_counts=True)
    common = values[int(np.argmax(counts))]
    example = next(n for n, s in zip(names, spacings_mm) if np.allclose(s, common, atol=SPACING_TOLERANCE_MM))
    return [(name, f"PixelSpacing {_mm(spacing)} in a series of {_mm(common)} (e.g. {example})")
            for name, spacing in zip(names, spacings_mm)
            if not np.allclose(spacing, common, atol=SPACING_TOLERANCE_MM)]


def _mm(spacing) -> str:
    return f"{float(spacing[0]):g} x {float(spacing[1]):g} mm"


def _values(header: pydicom.Dataset) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in header.ImageOrientationPatient) + "]"
