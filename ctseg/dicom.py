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

from ctseg import geometry

PathOrFile = Union[str, os.PathLike, BinaryIO, bytes]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
UNCOMPRESSED_LITTLE_ENDIAN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")  # implicit and explicit VR
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
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
        if not looks_like_dicom(ds):
            raise DicomError(name, "not a DICOM file (no DICOM header or identifying elements)")
        raise DicomError(name, "no pixel data (not an image DICOM)")
    return ds


def looks_like_dicom(ds: pydicom.Dataset) -> bool:
    """`force` parses any bytes; a real DICOM has a file meta header or at least an identifying (0008,xxxx) element."""
    meta = getattr(ds, "file_meta", None)
    return bool(meta and "TransferSyntaxUID" in meta) or any(tag.group == 0x0008 for tag in ds.keys())


def not_single_frame(ds: pydicom.Dataset) -> str | None:
    """Why a file is not one CT slice per file (a SEG, even of one frame; an Enhanced CT; any multi-frame
    image), else None. Ingest's CT slices and predict's series are refused with this reason."""
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (ValueError, TypeError) as e:
        return f"NumberOfFrames cannot be read ({type(e).__name__}: {e})"
    if str(ds.get("SOPClassUID", "")) == SEGMENTATION_STORAGE or str(ds.get("Modality", "")).strip() == "SEG":
        return "a DICOM Segmentation (SEG), not a CT image"
    if str(ds.get("SOPClassUID", "")) == ENHANCED_CT_STORAGE:
        return (f"Enhanced CT multi-frame image ({frames} frames); expected single-frame CT Image Storage slices, "
                "one per file")
    if frames > 1:
        return f"multi-frame image ({frames} frames); expected one slice per file"
    return None


def pixel_array(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """The stored values of a single-frame monochrome image, or a DicomError saying why not."""
    try:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (ValueError, TypeError, KeyError, AttributeError) as e:  # malformed header values, e.g. a bad VR
        raise DicomError(name, f"image header cannot be read ({type(e).__name__}: {e})") from e
    if not photometric.startswith("MONOCHROME"):
        raise DicomError(name, f"photometric interpretation {photometric} is not a grey-scale CT image")
    if frames > 1:
        raise DicomError(name, f"multi-frame image ({frames} frames); expected one slice per file")
    if samples != 1:
        raise DicomError(name, "more than one sample per pixel; expected grey-scale")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    if rows == 0 or columns == 0:
        raise DicomError(name, f"image has {rows} rows and {columns} columns; no pixels to read")
    arr = _raw_pixels(ds)
    try:
        arr = ds.pixel_array if arr is None else arr
    except Exception as e:  # pydicom raises many types for truncated or undecodable pixel data
        raise DicomError(name, f"pixel data cannot be decoded ({type(e).__name__}: {e})") from e
    if arr.ndim != 2 or not arr.size:
        raise DicomError(name, f"pixel array has shape {arr.shape}; expected a 2-D slice")
    return arr


def _raw_pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    """The stored values of an uncompressed little-endian 8- or 16-bit single-frame image, read-only, straight
    from its Pixel Data: the array pydicom's numpy handler returns, without its copy and per-call bookkeeping
    (a third of the decode time of a CT slice). None for anything else (pydicom then decodes it, or says why not)."""
    try:
        meta = getattr(ds, "file_meta", None)
        if meta is None or meta.get("TransferSyntaxUID") not in UNCOMPRESSED_LITTLE_ENDIAN or not ds.is_little_endian:
            return None
        bits, signed = ds.get("BitsAllocated"), ds.get("PixelRepresentation")
        rows, columns, data = ds.get("Rows"), ds.get("Columns"), ds.get("PixelData")
        if bits not in (8, 16) or signed not in (0, 1) or "BitsStored" not in ds:
            return None
        if not isinstance(data, (bytes, memoryview)):   # memoryview: `ctseg.dicom_header`'s view of the file
            return None
        count = int(rows) * int(columns)
    except (ValueError, TypeError, KeyError, AttributeError):
        return None
    expected = count * bits // 8
    if count <= 0 or len(data) != expected + expected % 2:
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    return np.frombuffer(data, dtype, count=count).reshape(int(rows), int(columns))


def hu_from_dataset(ds: pydicom.Dataset, name: str = "<dataset>") -> np.ndarray:
    """Hounsfield units of a CT slice: stored values through RescaleSlope and RescaleIntercept."""
    arr = pixel_array(ds, name)
    slope, intercept = rescale(ds)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def rescale(ds: pydicom.Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept): stored value x slope + intercept = Hounsfield units."""
    return float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)


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
        normal = geometry.plane_normal(iop[:3], iop[3:])
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


def distinct_values(arr: np.ndarray) -> int:
    """Number of distinct values, with a fast path for the usual binary mask (ten times quicker than np.unique)."""
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        return 1
    if not ((arr != lo) & (arr != hi)).any():
        return 2
    return int(np.unique(arr).size)


def resize_hu(hu: np.ndarray, size: int) -> np.ndarray:
    """Resamples a slice to (size, size) float32 by antialiased bilinear interpolation.

    The kernel of `tf.image.resize(method="bilinear", antialias=True)` (a triangle filter stretched
    by the shrink factor), so noise does not alias into the slice; Pillow's C resampler runs it
    about twice as fast as numpy. Unsigned 16-bit values (most CT) enter Pillow without a copy.
    """
    from PIL import Image

    if hu.dtype == np.dtype("<u2") and hu.flags.c_contiguous:
        img = Image.frombuffer("I;16", hu.shape[::-1], hu, "raw", "I;16", 0, 1).convert("F")
    else:
        img = Image.fromarray(np.ascontiguousarray(hu, dtype=np.float32))  # float32 gives mode "F"
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Resamples a mask (..., rows, cols) to (..., size, size) by nearest neighbour (half-pixel centres), so its
    values stay as they were; a stack of slices is resampled slice by slice."""
    rows = np.minimum(((np.arange(size) + 0.5) * mask.shape[-2] / size).astype(np.intp), mask.shape[-2] - 1)
    cols = np.minimum(((np.arange(size) + 0.5) * mask.shape[-1] / size).astype(np.intp), mask.shape[-1] - 1)
    return mask.take(rows, -2).take(cols, -1)
