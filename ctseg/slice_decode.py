"""IRCAD DICOM slices and masks decoded for the examples: HU or a binary mask, turned as the model reads
them and resized, with what ordering and the example need from the header."""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ctseg import dicom, dicom_header, geometry

HU_RANGE = (-32768.0, 32767.0)  # what the int16 example holds; anything outside would be clipped silently


@dataclasses.dataclass
class CtSlice:
    """A decoded CT slice resized for the model, with what ordering and the example need from its header."""
    hu: np.ndarray                 # float32 (size, size)
    sort_key: tuple
    spacing_mm: float
    thickness_mm: float
    source_shape: tuple[int, int]


def _not_an_axial_slice(ds) -> Optional[str]:
    """`ctseg.geometry`'s rules for one slice, as `ctseg predict` applies them: a localizer or a slice that
    is not axial is no training slice."""
    if geometry.is_localizer(ds):
        return "a localizer (ImageType LOCALIZER), not a slice of the series"
    return geometry.not_axial(ds)


def _facing(ds, pixels: np.ndarray) -> np.ndarray:
    """The slice or mask turned as the model reads it (`ctseg.geometry.in_plane_flips`), as predict turns it."""
    flip_rows, flip_cols = geometry.in_plane_flips(ds)
    return pixels[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def _header(data: bytes, location: str):
    """The few values ingest reads straight from the bytes (`ctseg.dicom_header`), or pydicom's whole parse for
    anything that reader leaves to it."""
    return dicom_header.parse(data) or dicom.read_dataset(data, location)


def _decoded(decode, data: bytes, location: str, size: int):
    """`decode` of the parsed file; a header value pydicom keeps as text that is no number (a RescaleSlope of "x")
    is a DicomError naming the file, as any other unusable file, not a bare ValueError that ends the run."""
    ds = _header(data, location)
    try:
        return decode(ds, location, size)
    except dicom.DicomError:
        raise
    except (ValueError, TypeError) as e:
        raise dicom.DicomError(location, f"a header value cannot be read ({type(e).__name__}: {e})") from e


def decode_slice(data: bytes, location: str, size: int) -> CtSlice:
    """DICOM bytes → HU resized to (size, size); a DicomError naming `location` when the file is unusable."""
    return _decoded(ct_slice, data, location, size)


def ct_slice(ds, location: str, size: int) -> CtSlice:
    """A parsed slice (pydicom Dataset or `dicom_header.RawHeader`) → HU resized to (size, size)."""
    not_a_slice = dicom.not_single_frame(ds) or _not_an_axial_slice(ds)
    if not_a_slice:
        raise dicom.DicomError(location, not_a_slice)
    stored = _facing(ds, dicom.pixel_array(ds, location))
    slope, intercept = dicom.rescale(ds)
    lo, hi = sorted((float(stored.min()) * slope + intercept, float(stored.max()) * slope + intercept))
    if lo < HU_RANGE[0] or hi > HU_RANGE[1]:
        raise dicom.DicomError(location, f"values {lo:.0f}..{hi:.0f} after RescaleSlope/Intercept are outside "
                                         f"the int16 range of Hounsfield units; not a CT slice")
    # Resampling commutes with the rescale (its weights sum to 1), so it runs on the smaller slice.
    hu = dicom.resize_hu(stored, size) * np.float32(slope) + np.float32(intercept)
    return CtSlice(hu, dicom.slice_sort_key(ds, location), dicom.spacing_mm(ds)[0], dicom.thickness_mm(ds),
                   stored.shape)


@dataclasses.dataclass
class Mask:
    mask: np.ndarray               # uint8 0/1 (size, size)
    distinct_values: int           # distinct stored values before binarising
    source_shape: tuple[int, int]
    source: np.ndarray             # uint8 0/1 at source_shape: the ground truth for source-resolution scores


def decode_mask(data: bytes, location: str, size: int) -> Mask:
    """Mask DICOM bytes → binary (non-zero → 1) mask resized by nearest neighbour; odd stored values are
    counted, not rejected."""
    return _decoded(mask_slice, data, location, size)


def mask_slice(ds, location: str, size: int) -> Mask:
    """A parsed mask (pydicom Dataset or `dicom_header.RawHeader`) → binary mask resized to (size, size)."""
    stored = _facing(ds, dicom.pixel_array(ds, location))
    source = (stored != 0).astype(np.uint8)
    return Mask(dicom.resize_mask(source, size), dicom.distinct_values(stored), stored.shape, source)
