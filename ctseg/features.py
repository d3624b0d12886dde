"""The contract between ingest, validation, training, evaluation and prediction: one tf.train.Example per slice.

The image is kept in Hounsfield units as int16 bytes (CT values fit in int16), the mask as uint8
bytes holding 0/1; both row-major with shape (`height`, `width`). The scalars are what the schema
in `schemas/` validates.
"""
from __future__ import annotations

import numpy as np

IMAGE_KEY = "image_hu"          # bytes: int16 little-endian HU, row-major (height, width)
MASK_KEY = "mask"               # bytes: uint8 0/1, row-major (height, width)
HEIGHT_KEY = "height"
WIDTH_KEY = "width"
PATIENT_KEY = "patient_id"
SLICE_KEY = "slice_index"       # position of the slice in the patient's series, ordered by ImagePositionPatient
SPACING_KEY = "spacing_mm"      # in-plane pixel spacing of the source DICOM, mm
THICKNESS_KEY = "thickness_mm"  # SliceThickness of the source DICOM, mm
SOURCE_ROWS_KEY = "source_rows"
SOURCE_COLUMNS_KEY = "source_columns"
LIVER_FRACTION_KEY = "liver_fraction"        # fraction of mask pixels that are organ
MASK_VALUES_KEY = "mask_distinct_values"     # distinct stored values in the mask DICOM: 1 or 2 for a binary mask
HU_STATS_KEYS = ("hu_min", "hu_max", "hu_mean", "hu_std")

# Bounds of the examples' side in pixels: one int16 slice of MAX_IMAGE_SIZE² is 2 MiB, and ingest holds a
# patient's slices at that size (IRCAD's CT is 512x512; the models train at 128-256).
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 1024



def check_image_size(size: int) -> int:
    """The examples' side in pixels, or a CtsegError saying the bounds."""
    from ctseg.errors import CtsegError

    if not MIN_IMAGE_SIZE <= int(size) <= MAX_IMAGE_SIZE:
        raise CtsegError(f"image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {size}")
    return int(size)


IMAGE_DTYPE = np.dtype("<i2")
MASK_DTYPE = np.dtype("u1")


def hu_statistics(hu: np.ndarray) -> dict[str, float]:
    hu = np.asarray(hu, np.float32)
    return {"hu_min": float(hu.min()), "hu_max": float(hu.max()),
            "hu_mean": float(hu.mean()), "hu_std": float(hu.std())}


def slice_example(*, hu: np.ndarray, mask: np.ndarray, patient_id: str, slice_index: int,
                  spacing_mm: float, thickness_mm: float, source_shape: tuple[int, int],
                  mask_distinct_values: int):
    """Builds the tf.train.Example for one slice; `hu` and `mask` already at the output size."""
    import tensorflow as tf

    if hu.shape != mask.shape:
        raise ValueError(f"image shape {hu.shape} differs from mask shape {mask.shape}")
    hu16 = np.clip(np.rint(hu), -32768, 32767).astype(IMAGE_DTYPE)
    mask8 = (np.asarray(mask) != 0).astype(MASK_DTYPE)

    def f(values):
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values]))

    def i(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

    def b(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

    feats = {
        IMAGE_KEY: b([hu16.tobytes()]),
        MASK_KEY: b([mask8.tobytes()]),
        HEIGHT_KEY: i([hu.shape[0]]),
        WIDTH_KEY: i([hu.shape[1]]),
        PATIENT_KEY: b([patient_id.encode()]),
        SLICE_KEY: i([slice_index]),
        SPACING_KEY: f([spacing_mm]),
        THICKNESS_KEY: f([thickness_mm]),
        SOURCE_ROWS_KEY: i([source_shape[0]]),
        SOURCE_COLUMNS_KEY: i([source_shape[1]]),
        LIVER_FRACTION_KEY: f([float(mask8.mean())]),
        MASK_VALUES_KEY: i([mask_distinct_values]),
    }
    feats.update({k: f([v]) for k, v in hu_statistics(hu16).items()})
    return tf.train.Example(features=tf.train.Features(feature=feats))


def decode_example(serialized: bytes) -> dict:
    """Parses one serialized example back to numpy (for tests, evaluation and tools, not the tf.data path)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(serialized)
    fm = ex.features.feature

    def scalar(key):
        feat = fm[key]
        for kind in ("int64_list", "float_list", "bytes_list"):
            vals = getattr(feat, kind).value
            if len(vals):
                return vals[0]
        return None

    h, w = int(scalar(HEIGHT_KEY)), int(scalar(WIDTH_KEY))
    out = {k: scalar(k) for k in fm.keys() if k not in (IMAGE_KEY, MASK_KEY)}
    out[PATIENT_KEY] = out[PATIENT_KEY].decode()
    out[IMAGE_KEY] = np.frombuffer(scalar(IMAGE_KEY), IMAGE_DTYPE).reshape(h, w)
    out[MASK_KEY] = np.frombuffer(scalar(MASK_KEY), MASK_DTYPE).reshape(h, w)
    return out
