"""Small pure functions for CT DICOM: decoding to Hounsfield units, slice geometry, windowing.

Every decoding failure raises `DicomError` naming the file and the reason in words, so ingest
can quarantine it and a person can act on it.
"""
from __future__ import annotations

import io
import os
from typing import BinaryIO, Union

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

PathOrFile = Union[str, os.PathLike, BinaryIO, bytes]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LIVER_WINDOW = (60.0, 400.0)  # centre, width in HU: the usual abdominal liver window


class DicomError(ValueError):
    """A file that is not a usable CT slice or mask; `reason` is meant for a person."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def read_dataset(src: PathOrFile, name: str | None = None) -> pydicom.Dataset:
    """Reads a DICOM file (path, file object or bytes); IRCAD files have no preamble, so `force`."""
    name = name or (str(src) if isinstance(src, (str, os.PathLike)) else "<bytes>")
    fp = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        ds = pydicom.dcmread(fp, force=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DicomError(name, f"not readable as DICOM ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise DicomError(name, "no pixel data (not an image DICOM)")
    return ds


def pixel_array(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """The stored values of a single-frame monochrome image, or a DicomError saying why not."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if not photometric.startswith("MONOCHROME"):
        raise DicomError(name, f"photometric interpretation {photometric} is not a grey-scale CT image")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise DicomError(name, f"multi-frame image ({frames} frames); expected one slice per file")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(name, "more than one sample per pixel; expected grey-scale")
    try:
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for truncated or undecodable pixel data
        raise DicomError(name, f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e
    if arr.ndim != 2:
        raise DicomError(name, f"pixel array has shape {arr.shape}; expected a 2-D slice")
    return arr


def hu_from_dataset(ds: pydicom.Dataset, name: str = "<dataset>") -> np.ndarray:
    """Hounsfield units of a CT slice: stored values through RescaleSlope and RescaleIntercept."""
    arr = pixel_array(ds, name)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def mask_from_dataset(ds: pydicom.Dataset, name: str = "<dataset>") -> np.ndarray:
    """A binary mask (uint8 0/1) from an IRCAD mask DICOM, whose foreground is stored as 255 (any non-zero)."""
    return (pixel_array(ds, name) != 0).astype(np.uint8)


def spacing_mm(ds: pydicom.Dataset) -> tuple[float, float]:
    """In-plane pixel spacing (row, column) in mm; 1.0 where the file does not say."""
    ps = ds.get("PixelSpacing")
    if ps is None or len(ps) < 2:
        return 1.0, 1.0
    return float(ps[0]), float(ps[1])


def thickness_mm(ds: pydicom.Dataset) -> float:
    value = ds.get("SliceThickness")
    try:
        return float(value) if value not in (None, "") else 0.0
    except (TypeError, ValueError):
        return 0.0


def slice_position_mm(ds: pydicom.Dataset) -> float | None:
    """Position of the slice along its normal (ImagePositionPatient projected on the orientation's normal)."""
    ipp = ds.get("ImagePositionPatient")
    if ipp is None or len(ipp) != 3:
        return None
    iop = ds.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    else:
        normal = np.array([0.0, 0.0, 1.0])
    return float(np.dot(normal, np.asarray(ipp, float)))


def slice_sort_key(ds: pydicom.Dataset, name: str = "") -> tuple:
    """Orders slices by position, then InstanceNumber, then name: never by file name alone."""
    pos = slice_position_mm(ds)
    inst = ds.get("InstanceNumber")
    return (
        0 if pos is not None else 1,
        pos if pos is not None else 0.0,
        int(inst) if inst not in (None, "") else 0,
        name,
    )


def window(hu: np.ndarray, center: float = LIVER_WINDOW[0], width: float = LIVER_WINDOW[1]) -> np.ndarray:
    """Maps HU to [0, 1] through a display window (centre, width)."""
    lo = center - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - lo) / np.float32(width), 0.0, 1.0)
