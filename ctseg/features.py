"""The contract between ingest, validation, training, evaluation and prediction: one tf.train.Example per slice.

The image is kept in Hounsfield units as int16 bytes (CT values fit in int16), the mask as uint8
bytes holding 0/1; both row-major with shape (`height`, `width`). The scalars are what the schema
in `schemas/` validates. `FEATURE_TYPES` is the one definition of the keys and their types: the
builders (`slice_example`, and `serialized_slice_example`, its bytes, which ingest writes), the tf parse spec
(`feature_spec`, `parse_slices`) and the numpy reader (`decode_example`) all follow it.
"""
from __future__ import annotations

import math
import struct

import numpy as np

IMAGE_KEY = "image_hu"          # bytes: int16 little-endian HU, row-major (height, width)
MASK_KEY = "mask"               # bytes: uint8 0/1, row-major (height, width)
HEIGHT_KEY = "height"
WIDTH_KEY = "width"
PATIENT_KEY = "patient_id"
SLICE_KEY = "slice_index"       # position of the slice in the patient's series, ordered by ImagePositionPatient
SPACING_KEY = "spacing_mm"      # in-plane pixel spacing of the source DICOM, mm
THICKNESS_KEY = "thickness_mm"  # the series' slice depth, mm: ctseg.geometry.slice_depth_mm
SOURCE_ROWS_KEY = "source_rows"
SOURCE_COLUMNS_KEY = "source_columns"
# Not stored in the example: source columns x their spacing, the width the model sees at its size (ctseg.profile)
FIELD_OF_VIEW_KEY = "field_of_view_mm"
SOURCE_MASK_KEY = "source_mask"  # bytes: the 0/1 mask at source_rows x source_columns, np.packbits row-major
LIVER_FRACTION_KEY = "liver_fraction"        # fraction of mask pixels that are organ
MASK_VALUES_KEY = "mask_distinct_values"     # distinct stored values in the mask DICOM: 1 or 2 for a binary mask
HU_STATS_KEYS = ("hu_min", "hu_max", "hu_mean", "hu_std")

# Bounds of the examples' side in pixels: one int16 slice of MAX_IMAGE_SIZE² is 2 MiB, and ingest holds a
# patient's slices at that size (IRCAD's CT is 512x512; the models train at 128-256).
MIN_IMAGE_SIZE = 8
MAX_IMAGE_SIZE = 1024


def check_image_size(size: int, name: str = "image_size") -> int:
    """The examples' side in pixels, or a CtsegError saying the bounds (of `name`, the knob as the caller spells it)."""
    from ctseg.errors import CtsegError

    if not MIN_IMAGE_SIZE <= int(size) <= MAX_IMAGE_SIZE:
        raise CtsegError(f"{name} must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {size}")
    return int(size)


IMAGE_DTYPE = np.dtype("<i2")
MASK_DTYPE = np.dtype("u1")

# Every feature holds exactly one value of this kind.
FEATURE_TYPES = {
    IMAGE_KEY: "bytes", MASK_KEY: "bytes", HEIGHT_KEY: "int", WIDTH_KEY: "int", PATIENT_KEY: "bytes",
    SLICE_KEY: "int", SPACING_KEY: "float", THICKNESS_KEY: "float", SOURCE_ROWS_KEY: "int",
    SOURCE_COLUMNS_KEY: "int", SOURCE_MASK_KEY: "bytes", LIVER_FRACTION_KEY: "float", MASK_VALUES_KEY: "int",
    **{key: "float" for key in HU_STATS_KEYS},
}
PIXEL_KEYS = (IMAGE_KEY, MASK_KEY, HEIGHT_KEY, WIDTH_KEY)


def feature_spec(keys=None) -> dict:
    """`tf.io.parse_example` spec of `keys` (default: every feature)."""
    import tensorflow as tf

    dtypes = {"bytes": tf.string, "int": tf.int64, "float": tf.float32}
    return {key: tf.io.FixedLenFeature([], dtypes[FEATURE_TYPES[key]]) for key in (keys or FEATURE_TYPES)}


def parse_slices(serialized, image_size: int):
    """Serialized examples (batch,) → HU int16 and mask uint8, each (batch, size, size), in the graph.

    Fails (InvalidArgumentError naming the sizes) when an example's height/width differ from
    `image_size`, the size a model is trained and served at.
    """
    import tensorflow as tf

    parsed = tf.io.parse_example(serialized, feature_spec(PIXEL_KEYS))
    expected = tf.constant(image_size, tf.int64)
    checks = [tf.debugging.assert_equal(parsed[k], expected,
                                        message=f"example {k} differs from the model's image_size {image_size}")
              for k in (HEIGHT_KEY, WIDTH_KEY)]
    with tf.control_dependencies(checks):
        hu = tf.io.decode_raw(parsed[IMAGE_KEY], tf.int16, little_endian=True)
        mask = tf.io.decode_raw(parsed[MASK_KEY], tf.uint8)
    shape = [-1, image_size, image_size]
    return tf.reshape(hu, shape), tf.reshape(mask, shape)


def hu_statistics(hu: np.ndarray) -> dict[str, float]:
    """Min, max, mean and standard deviation of a slice's HU; for ingest's int16 slices the moments are exact
    integer sums (in a third less CPU than float32's two passes, which round them)."""
    hu = np.asarray(hu)
    if hu.dtype.kind not in "iu":
        hu = hu.astype(np.float32, copy=False)
        return {"hu_min": float(hu.min()), "hu_max": float(hu.max()),
                "hu_mean": float(hu.mean()), "hu_std": float(hu.std())}
    wide = hu.ravel().astype(np.int64)
    count, total, squares = wide.size, int(wide.sum()), int(np.dot(wide, wide))
    return {"hu_min": float(wide.min()), "hu_max": float(wide.max()), "hu_mean": total / count,
            "hu_std": math.sqrt(count * squares - total * total) / count}


def pack_mask(mask: np.ndarray) -> bytes:
    """A binary mask as bits (1/8 of a byte per pixel): the source-size ground truth costs little to keep."""
    return np.packbits(np.asarray(mask) != 0).tobytes()


def unpack_mask(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    """`pack_mask`'s bytes back to a uint8 0/1 mask of `shape`; ValueError when the sizes disagree."""
    count = int(shape[0]) * int(shape[1])
    bits = np.frombuffer(data, np.uint8)
    if len(bits) != (count + 7) // 8:
        raise ValueError(f"{len(bits)} bytes of packed mask do not hold a {shape[0]}x{shape[1]} mask")
    return np.unpackbits(bits, count=count).reshape(shape)


def _slice_values(*, hu: np.ndarray, mask: np.ndarray, patient_id: str, slice_index: int, spacing_mm: float,
                  thickness_mm: float, source_shape: tuple[int, int], mask_distinct_values: int,
                  source_mask: np.ndarray) -> dict:
    if hu.shape != mask.shape:
        raise ValueError(f"image shape {hu.shape} differs from mask shape {mask.shape}")
    if tuple(np.shape(source_mask)) != tuple(source_shape):
        raise ValueError(f"source mask shape {np.shape(source_mask)} differs from source shape {tuple(source_shape)}")
    hu16 = np.clip(np.rint(hu), -32768, 32767).astype(IMAGE_DTYPE)
    mask8 = (np.asarray(mask) != 0).astype(MASK_DTYPE)
    return {
        IMAGE_KEY: hu16.tobytes(), MASK_KEY: mask8.tobytes(), HEIGHT_KEY: hu.shape[0], WIDTH_KEY: hu.shape[1],
        PATIENT_KEY: patient_id.encode(), SLICE_KEY: slice_index, SPACING_KEY: spacing_mm,
        THICKNESS_KEY: thickness_mm, SOURCE_ROWS_KEY: source_shape[0], SOURCE_COLUMNS_KEY: source_shape[1],
        SOURCE_MASK_KEY: pack_mask(source_mask), LIVER_FRACTION_KEY: np.count_nonzero(mask8) / mask8.size,
        MASK_VALUES_KEY: mask_distinct_values, **hu_statistics(hu16),
    }


def slice_example(**slice_fields):
    """Builds the tf.train.Example for one slice; `hu` and `mask` already at the output size,
    `source_mask` at `source_shape`, kept so evaluation can score at the source resolution."""
    import tensorflow as tf

    values = _slice_values(**slice_fields)
    feature = {
        "bytes": lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v])),
        "int": lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v)])),
        "float": lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)])),
    }
    return tf.train.Example(features=tf.train.Features(
        feature={key: feature[kind](values[key]) for key, kind in FEATURE_TYPES.items()}))


def serialized_slice_example(**slice_fields) -> bytes:
    """`slice_example(...).SerializeToString()`, encoded here: the same message (a test parses both), in a tenth
    of the time, because building the protobuf objects in Python cost ingest a fifth of its CPU a slice beyond
    the decode (docs/BENCHMARKS.md). Features in `FEATURE_TYPES` order, each list packed, as protobuf writes them."""
    values = _slice_values(**slice_fields)
    parts, total = [], 0
    for key, kind in FEATURE_TYPES.items():
        value = values[key]
        payload = value if kind == "bytes" else struct.pack("<f", value) if kind == "float" else _varint(int(value))
        value_head = b"\x0a" + _varint(len(payload))
        listed = len(value_head) + len(payload)                             # BytesList / FloatList / Int64List
        feature = _WIRE_KIND[kind] + _varint(listed)                        # Feature's oneof field
        entry = _WIRE_KEYS[key] + b"\x12" + _varint(len(feature) + listed)  # map entry: key, value
        head = b"\x0a" + _varint(len(entry) + len(feature) + listed) + entry + feature + value_head
        parts += (head, payload)
        total += len(head) + len(payload)
    return b"".join((b"\x0a", _varint(total), *parts))                   # Example.features


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 as its 64-bit two's complement, as protobuf writes it."""
    n = n + (1 << 64) if n < 0 else n
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_WIRE_KIND = {"bytes": b"\x0a", "float": b"\x12", "int": b"\x1a"}  # Feature: bytes_list 1, float_list 2, int64_list 3
_WIRE_KEYS = {key: b"\x0a" + _varint(len(key)) + key.encode() for key in FEATURE_TYPES}


def scalar_values(serialized: bytes) -> dict:
    """The patient id and numeric features of one example, leniently: a feature that is missing or does
    not hold exactly one value of its `FEATURE_TYPES` kind is left out. For validation, which must name
    the patients of bad examples rather than fail on them."""
    import tensorflow as tf

    found = tf.train.Example.FromString(serialized).features.feature
    lists = {"int": "int64_list", "float": "float_list", "bytes": "bytes_list"}
    out = {}
    for key, kind in FEATURE_TYPES.items():
        values = getattr(found[key], lists[kind]).value if key in found else ()
        if len(values) == 1 and (kind != "bytes" or key == PATIENT_KEY):
            out[key] = values[0].decode(errors="replace") if kind == "bytes" else float(values[0])
    return out


def decode_example(serialized: bytes) -> dict:
    """Parses one serialized example back to numpy with `feature_spec` (for tests and tools, not the
    tf.data path): scalars as Python numbers, the patient id as str, image and mask as (height, width)."""
    import tensorflow as tf

    parsed = {k: v.numpy() for k, v in tf.io.parse_single_example(serialized, feature_spec()).items()}
    out = {k: v.item() for k, v in parsed.items() if FEATURE_TYPES[k] != "bytes"}
    shape = (out[HEIGHT_KEY], out[WIDTH_KEY])
    out[PATIENT_KEY] = parsed[PATIENT_KEY].decode()
    out[IMAGE_KEY] = np.frombuffer(parsed[IMAGE_KEY], IMAGE_DTYPE).reshape(shape)
    out[MASK_KEY] = np.frombuffer(parsed[MASK_KEY], MASK_DTYPE).reshape(shape)
    out[SOURCE_MASK_KEY] = unpack_mask(parsed[SOURCE_MASK_KEY], (out[SOURCE_ROWS_KEY], out[SOURCE_COLUMNS_KEY]))
    return out
