"""The Trainer's `tf.data` input pipeline: gzipped slice examples → (HU, mask) batches.

Order of the training pipeline: read → parse → cache (compact int16/uint8) → repeat → shuffle →
empty-slice balancing → batch → float → prefetch. Caching before the random steps keeps every
epoch's balancing fresh while parsing runs once. Augmentation is not here: it runs on whole batches
in the model's train step (`ctseg.models.unet.augment`), on the device that trains.
"""
from __future__ import annotations

import math

import tensorflow as tf

from ctseg import features
from ctseg.errors import CtsegError
from ctseg.models.unet.config import UnetConfig


def to_float(hu, mask):
    return tf.cast(hu, tf.float32), tf.cast(mask, tf.float32)


def keep_slice(mask, keep_empty_probability: float):
    """True for every slice with organ, and for an empty slice with probability `keep_empty_probability`."""
    has_organ = tf.reduce_any(mask > 0)
    return tf.logical_or(has_organ, tf.random.uniform([]) < keep_empty_probability)


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


def _input_fn(patterns, config: UnetConfig, batch_size: int, training: bool,
              repeat: bool | None = None) -> tf.data.Dataset:
    """Batches of (HU float32 (B, H, W), or (B, H, W, 2k+1) with `context_slices` k, and mask float32
    (B, H, W)) for `model.fit`.

    Training streams repeat endlessly, shuffled and balanced (the model's train step augments them);
    evaluation streams are every slice once (repeated only with `repeat`), untouched.
    """
    repeat = training if repeat is None else repeat
    ds = slice_dataset(patterns, config)
    if repeat:
        ds = ds.repeat()
    if training:
        ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
        ds = ds.filter(lambda hu, mask: keep_slice(mask, config.keep_empty_probability))
    ds = ds.batch(batch_size, drop_remainder=repeat)
    return ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
