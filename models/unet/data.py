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


def _flip(hu, mask):
    return tf.reverse(hu, [1]), tf.reverse(mask, [1])


def _rotate(hu, mask, max_degrees: float):
    angle = tf.random.uniform([], -max_degrees, max_degrees) * (math.pi / 180.0)
    hu = tfa.image.rotate(hu[..., None], angle, interpolation="bilinear", fill_mode="nearest")[..., 0]
    mask = tfa.image.rotate(mask[..., None], angle, interpolation="nearest", fill_mode="nearest")[..., 0]
    return hu, mask


def _median(hu, mask):
    """Median filter of the image only: the mask is ground truth and must not be blurred."""
    return tfa.image.median_filter2d(hu[..., None], filter_shape=3)[..., 0], mask


def _noise(hu, mask, std_hu: float):
    return hu + tf.random.normal(tf.shape(hu), stddev=std_hu), mask


def augment(hu, mask, config: UnetConfig):
    """One (H, W) float slice and its mask: flip, rotation (both together), median filter, Gaussian
    noise (image only), each with its probability, each applied to the previous one's output."""
    hu, mask = _maybe(config.flip_probability, _flip, hu, mask)
    hu, mask = _maybe(config.rotate_probability, lambda h, m: _rotate(h, m, config.max_rotation_degrees), hu, mask)
    hu, mask = _maybe(config.median_probability, _median, hu, mask)
    hu, mask = _maybe(config.noise_probability, lambda h, m: _noise(h, m, config.noise_std_hu), hu, mask)
    return hu, mask


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
    """Batches of (HU float32 (B, H, W), mask float32 (B, H, W)) for `model.fit`.

    Training streams repeat endlessly and are balanced and augmented; evaluation streams are every
    slice once (repeated only with `repeat`), untouched.
    """
    repeat = training if repeat is None else repeat
    ds = parsed_dataset(patterns, config.image_size)
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
