"""The Trainer's `tf.data` input pipeline: gzipped slice examples → (HU, mask) batches.

Order of the training pipeline: read → parse → cache (compact int16/uint8) → repeat → shuffle →
empty-slice balancing → augmentation → batch → prefetch. Caching before the random steps keeps
every epoch's balancing and augmentation fresh while parsing runs once.
"""
from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_addons as tfa

from ctseg import features
from ctseg.errors import CtsegError
from ctseg.models.unet.config import UnetConfig

def to_float(hu, mask):
    return tf.cast(hu, tf.float32), tf.cast(mask, tf.float32)


def keep_slice(mask, keep_empty_probability: float):
    """True for every slice with organ, and for an empty slice with probability `keep_empty_probability`."""
    has_organ = tf.reduce_any(mask > 0)
    return tf.logical_or(has_organ, tf.random.uniform([]) < keep_empty_probability)


def _maybe(probability: float, transform, *tensors):
    """Applies `transform` to `tensors` with `probability`, else returns them unchanged."""
    if probability <= 0:
        return tensors
    return tf.cond(tf.random.uniform([]) < probability, lambda: transform(*tensors), lambda: tensors)


# Every transform below takes HU (H, W, C) float32 (C = the slice and its neighbours) and the mask
# (H, W, 1) float32 0/1, and returns both; geometric ones move every channel and the mask together.

def _flip(hu, mask):
    return tf.reverse(hu, [1]), tf.reverse(mask, [1])


def _affine(hu, mask, max_degrees: float, max_scale: float):
    """Rotation by up to `max_degrees` and zoom by 1 ± `max_scale` about the centre, one resampling:
    HU bilinear (outside filled with the slice's darkest value: air), mask nearest (stays binary)."""
    angle = tf.random.uniform([], -max_degrees, max_degrees) * (math.pi / 180.0)
    zoom = tf.random.uniform([], 1.0 - max_scale, 1.0 + max_scale)
    size = tf.cast(tf.shape(hu)[:2], tf.float32)
    cy, cx = (size[0] - 1.0) / 2.0, (size[1] - 1.0) / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom  # output pixel -> input pixel
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])
    air = tf.reduce_min(hu)
    hu = tfa.image.transform(hu, transform, interpolation="bilinear", fill_mode="constant", fill_value=air)
    mask = tfa.image.transform(mask, transform, interpolation="nearest", fill_mode="constant", fill_value=0.0)
    return hu, mask


def _elastic(hu, mask, max_px: float, grid: int = 4):
    """A smooth random displacement (a `grid` x `grid` field of up to `max_px` pixels, bilinearly
    upsampled): anatomy bends a little. The mask is warped as a float and thresholded at 0.5."""
    h, w = tf.shape(hu)[0], tf.shape(hu)[1]
    coarse = tf.random.uniform([1, grid, grid, 2], -max_px, max_px)
    flow = tf.image.resize(coarse, [h, w], method="bicubic")
    warped = tfa.image.dense_image_warp(tf.concat([hu, mask], -1)[None], flow)[0]
    return warped[..., :-1], tf.cast(warped[..., -1:] >= 0.5, mask.dtype)


def _median(hu, mask):
    """Median filter of the image only: the mask is ground truth and must not be blurred."""
    return tfa.image.median_filter2d(hu, filter_shape=3), mask


def _blur(hu, mask, max_sigma_px: float):
    """Gaussian blur of sigma up to `max_sigma_px` (a smoother reconstruction kernel or a thicker slice)."""
    sigma = tf.random.uniform([], 0.25, max(max_sigma_px, 0.25))
    x = tf.range(-3.0, 4.0)
    kernel = tf.exp(-x ** 2 / (2.0 * sigma ** 2))
    kernel /= tf.reduce_sum(kernel)
    channels = tf.shape(hu)[-1]
    rows = tf.tile(tf.reshape(kernel, [7, 1, 1, 1]), [1, 1, channels, 1])
    cols = tf.tile(tf.reshape(kernel, [1, 7, 1, 1]), [1, 1, channels, 1])
    padded = tf.pad(hu[None], [[0, 0], [3, 3], [3, 3], [0, 0]], mode="SYMMETRIC")
    out = tf.nn.depthwise_conv2d(padded, rows, [1, 1, 1, 1], "VALID")
    return tf.nn.depthwise_conv2d(out, cols, [1, 1, 1, 1], "VALID")[0], mask


def _noise(hu, mask, min_std_hu: float, max_std_hu: float):
    """Gaussian noise of a standard deviation drawn in [min_std_hu, max_std_hu] (dose varies by patient)."""
    std = tf.random.uniform([], min(min_std_hu, max_std_hu), max_std_hu)
    return hu + tf.random.normal(tf.shape(hu), stddev=std), mask


def _hu_scale(hu, mask, max_scale: float):
    """Contrast scaled by 1 ± `max_scale` about water (0 HU): contrast phase, kVp, calibration."""
    return hu * tf.random.uniform([], 1.0 - max_scale, 1.0 + max_scale), mask


def _hu_shift(hu, mask, max_shift_hu: float):
    return hu + tf.random.uniform([], -max_shift_hu, max_shift_hu), mask


def augment(hu, mask, config: UnetConfig):
    """One float slice (H, W) or slice stack (H, W, C) and its (H, W) mask, each transform with its
    probability in `config`, each applied to the previous one's output: flip; rotation and zoom (one
    resampling); elastic deformation; HU scale and shift; blur; median filter; noise (image only)."""
    stacked = hu.shape.rank == 3
    hu = hu if stacked else hu[..., None]
    mask = mask[..., None]
    c = config
    hu, mask = _maybe(c.flip_probability, _flip, hu, mask)
    if c.rotate_probability > 0 or c.scale_probability > 0:
        rotate = tf.random.uniform([]) < c.rotate_probability
        zoom = tf.random.uniform([]) < c.scale_probability
        degrees = tf.where(rotate, c.max_rotation_degrees, 0.0)
        scale = tf.where(zoom, c.max_scale, 0.0)
        hu, mask = tf.cond(rotate | zoom, lambda: _affine(hu, mask, degrees, scale), lambda: (hu, mask))
    hu, mask = _maybe(c.elastic_probability, lambda h, m: _elastic(h, m, c.elastic_max_px), hu, mask)
    hu, mask = _maybe(c.hu_scale_probability, lambda h, m: _hu_scale(h, m, c.max_hu_scale), hu, mask)
    hu, mask = _maybe(c.hu_shift_probability, lambda h, m: _hu_shift(h, m, c.max_hu_shift), hu, mask)
    hu, mask = _maybe(c.blur_probability, lambda h, m: _blur(h, m, c.max_blur_sigma_px), hu, mask)
    hu, mask = _maybe(c.median_probability, _median, hu, mask)
    hu, mask = _maybe(c.noise_probability, lambda h, m: _noise(h, m, c.noise_std_min_hu, c.noise_std_hu), hu, mask)
    return (hu if stacked else hu[..., 0]), mask[..., 0]


def example_files(patterns) -> list[str]:
    """Expands the Trainer's file patterns; an empty split is a CtsegError rather than an endless wait."""
    patterns = [patterns] if isinstance(patterns, str) else list(patterns)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise CtsegError(f"no example files match {patterns}")
    return files


def check_image_size(patterns, image_size: int) -> None:
    """Reads the first example of each file: a size other than the model's is a CtsegError naming the file."""
    for path in example_files(patterns):
        for serialized in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
            parsed = tf.io.parse_single_example(serialized, features.feature_spec(features.PIXEL_KEYS))
            shape = (int(parsed[features.HEIGHT_KEY]), int(parsed[features.WIDTH_KEY]))
            if shape != (image_size, image_size):
                raise CtsegError(f"{path}: examples are {shape[0]}x{shape[1]} but the model's image_size is "
                                 f"{image_size}; set custom_config image_size to ingest's image_size")


def parsed_dataset(patterns, image_size: int) -> tf.data.Dataset:
    """(HU int16, mask uint8) per slice, cached in memory after the first pass."""
    files = example_files(patterns)
    ds = tf.data.TFRecordDataset(files, compression_type="GZIP", num_parallel_reads=tf.data.AUTOTUNE)
    ds = ds.batch(256).map(lambda s: features.parse_slices(s, image_size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.unbatch().cache()


def read_patients(patterns, image_size: int):
    """Every slice of a split in memory, ordered by (patient, slice_index): HU int16 (N, H, W), mask
    uint8 (N, H, W) and patient ids (N,). 2.5D needs each slice's neighbours, which only the patient's
    ordered slices give; a split is small enough to hold (3D-IRCADb-01 at 256 px: about 0.4 GB)."""
    import numpy as np

    spec = features.feature_spec((features.PATIENT_KEY, features.SLICE_KEY))
    ds = tf.data.TFRecordDataset(example_files(patterns), compression_type="GZIP")
    hu, mask, patients, indices = [], [], [], []
    for batch in ds.batch(256):
        h, m = features.parse_slices(batch, image_size)
        ids = tf.io.parse_example(batch, spec)
        hu.append(h.numpy())
        mask.append(m.numpy())
        patients.append(ids[features.PATIENT_KEY].numpy())
        indices.append(ids[features.SLICE_KEY].numpy())
    patients, indices = np.concatenate(patients), np.concatenate(indices)
    order = np.lexsort((indices, patients))
    return np.concatenate(hu)[order], np.concatenate(mask)[order], patients[order]


def neighbour_table(patients, context_slices: int):
    """(N, 2k+1) row numbers of each slice's neighbours k below to k above within its own patient
    (rows ordered by patient and position), clamped at the patient's first and last slice."""
    import numpy as np

    patients = np.asarray(patients)
    rows = np.arange(len(patients))
    starts = np.searchsorted(patients, patients, side="left")
    ends = np.searchsorted(patients, patients, side="right") - 1
    offsets = np.arange(-context_slices, context_slices + 1)
    return np.clip(rows[:, None] + offsets[None, :], starts[:, None], ends[:, None]).astype(np.int32)


def context_dataset(patterns, config: UnetConfig) -> tf.data.Dataset:
    """(HU int16 (H, W, 2k+1): the slice and its neighbours, mask uint8 (H, W)) per slice, for 2.5D."""
    hu, mask, patients = read_patients(patterns, config.image_size)
    table = neighbour_table(patients, config.context_slices)
    hu = tf.constant(hu)
    return tf.data.Dataset.from_tensor_slices((table, mask)).map(
        lambda rows, m: (tf.transpose(tf.gather(hu, rows), [1, 2, 0]), m), num_parallel_calls=tf.data.AUTOTUNE)


def slice_dataset(patterns, config: UnetConfig) -> tf.data.Dataset:
    """The per-slice input the model takes: the slice alone (2D) or with its neighbours (2.5D)."""
    if config.context_slices:
        return context_dataset(patterns, config)
    return parsed_dataset(patterns, config.image_size)


def balanced_epoch_steps(patterns, config: UnetConfig, batch_size: int) -> int:
    """Batches in one expected pass over the balanced training split: slices with organ plus the
    expected share of empty ones. Training streams repeat, so epochs need a fixed step count."""
    totals = parsed_dataset(patterns, config.image_size).reduce(
        tf.zeros([2], tf.int64),
        lambda acc, item: acc + tf.stack([tf.constant(1, tf.int64), tf.cast(tf.reduce_any(item[1] > 0), tf.int64)]))
    slices, with_organ = (int(v) for v in totals.numpy())
    expected = with_organ + config.keep_empty_probability * (slices - with_organ)
    return max(1, math.ceil(expected / batch_size))


def _input_fn(patterns, config: UnetConfig, batch_size: int, training: bool, repeat: bool | None = None) -> tf.data.Dataset:
    """Batches of (HU float32 (B, H, W), or (B, H, W, 2k+1) with `context_slices` k, and mask float32
    (B, H, W)) for `model.fit`.

    Training streams repeat endlessly and are balanced and augmented; evaluation streams are every
    slice once (repeated only with `repeat`), untouched.
    """
    repeat = training if repeat is None else repeat
    ds = slice_dataset(patterns, config)
    if repeat:
        ds = ds.repeat()
    if training:
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
        ds = ds.filter(lambda hu, mask: keep_slice(mask, config.keep_empty_probability))
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.map(lambda hu, mask: augment(hu, mask, config), num_parallel_calls=tf.data.AUTOTUNE)
    else:
        ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=repeat).prefetch(tf.data.AUTOTUNE)
