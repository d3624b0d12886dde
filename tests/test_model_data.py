"""The Trainer's input pipeline: parsing, empty-slice balancing, augmentation, batching."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from ctseg.features import slice_example
from ctseg.models.unet import data
from ctseg.models.unet.config import UnetConfig

SIZE = 32
OFF = dict(flip_probability=0.0, rotate_probability=0.0, median_probability=0.0, noise_probability=0.0)
ORGAN_HU, BACKGROUND_HU = 150.0, -100.0


def _organ_slice():
    """An asymmetric L-shaped organ whose HU marks it, so alignment is checkable after any transform."""
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[6:24, 8:14] = 1
    mask[18:24, 8:26] = 1
    return np.where(mask > 0, ORGAN_HU, BACKGROUND_HU).astype(np.float32), mask


def _config(**probabilities):
    return dataclasses.replace(UnetConfig(image_size=SIZE, depth=2), **{**OFF, **probabilities})


def _write(path, slices):
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i, (hu, mask) in enumerate(slices):
            w.write(slice_example(hu=hu, mask=mask, patient_id="p", slice_index=i, spacing_mm=0.7, thickness_mm=2.0,
                                  source_shape=(512, 512), mask_distinct_values=2).SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """12 slices with organ, 8 without."""
    hu, mask = _organ_slice()
    empty = (np.full((SIZE, SIZE), BACKGROUND_HU, np.float32), np.zeros((SIZE, SIZE), np.float32))
    return _write(tmp_path_factory.mktemp("records") / "data.gz", [(hu + i, mask) for i in range(12)] + [empty] * 8)


def _augment(config, hu, mask):
    return [t.numpy() for t in data.augment(tf.constant(hu), tf.constant(mask), config)]


def _assert_aligned(hu, mask, min_agreement=0.98):
    assert set(np.unique(mask)) <= {0.0, 1.0}, "mask is no longer binary"
    organ_by_hu = hu > (ORGAN_HU + BACKGROUND_HU) / 2
    assert np.mean(organ_by_hu == (mask > 0)) >= min_agreement


def test_parse_round_trip(records):
    hu, mask = next(iter(data.parsed_dataset(records, SIZE)))
    expected_hu, expected_mask = _organ_slice()
    np.testing.assert_array_equal(hu.numpy(), expected_hu.astype(np.int16))
    np.testing.assert_array_equal(mask.numpy(), expected_mask.astype(np.uint8))


def test_parse_rejects_other_sizes(records):
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_size 64"):
        next(iter(data.parsed_dataset(records, 64)))


def test_no_files_is_a_clear_error(tmp_path):
    from ctseg.errors import CtsegError
    with pytest.raises(CtsegError, match="no example files"):
        data.example_files([str(tmp_path / "*.gz")])


def test_balancing_keeps_empty_slices_at_the_configured_rate():
    empty, organ = tf.zeros((SIZE, SIZE), tf.uint8), tf.ones((SIZE, SIZE), tf.uint8)
    tf.random.set_seed(3)
    kept = [bool(data.keep_slice(empty, 0.4)) for _ in range(3000)]
    assert np.mean(kept) == pytest.approx(0.4, abs=0.03)
    assert all(bool(data.keep_slice(organ, 0.0)) for _ in range(50))


def test_flip_and_noise_chain_and_leave_mask_exact():
    """Each augmentation works on the previous one's output (the blog's code dropped the first)."""
    hu, mask = _organ_slice()
    tf.random.set_seed(0)
    out_hu, out_mask = _augment(_config(flip_probability=1.0, noise_probability=1.0, noise_std_hu=20.0), hu, mask)
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    assert np.std(out_hu - hu[:, ::-1]) == pytest.approx(20.0, rel=0.15)
    _assert_aligned(out_hu, out_mask, min_agreement=1.0)


def test_median_filters_the_image_not_the_mask():
    hu, mask = _organ_slice()
    hu[2, 2] = 2000.0  # an isolated spike the 3x3 median removes
    out_hu, out_mask = _augment(_config(median_probability=1.0), hu, mask)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_hu[2, 2] == BACKGROUND_HU


def test_rotation_moves_image_and_mask_together():
    hu, mask = _organ_slice()
    tf.random.set_seed(1)
    moved = 0
    for _ in range(6):
        out_hu, out_mask = _augment(_config(rotate_probability=1.0, max_rotation_degrees=15.0), hu, mask)
        _assert_aligned(out_hu, out_mask)
        moved += not np.array_equal(out_mask, mask)
    assert moved >= 3, "rotations by up to 15 degrees left the mask unchanged"


def test_all_augmentations_keep_mask_binary_and_aligned():
    hu, mask = _organ_slice()
    config = _config(flip_probability=0.5, rotate_probability=1.0, median_probability=1.0, noise_probability=1.0)
    tf.random.set_seed(2)
    for _ in range(10):
        _assert_aligned(*_augment(config, hu, mask), min_agreement=0.97)


def test_training_stream_is_balanced_batched_and_repeats(records):
    config = dataclasses.replace(_config(flip_probability=0.5, rotate_probability=0.5), keep_empty_probability=0.0)
    ds = data._input_fn(records, config, batch_size=4, training=True)
    batches = list(ds.take(9))  # 36 slices: more than one pass over the 12 organ slices
    for hu, mask in batches:
        assert hu.shape == mask.shape == (4, SIZE, SIZE) and hu.dtype == mask.dtype == tf.float32
        assert tf.reduce_all(tf.reduce_any(mask > 0, axis=[1, 2])), "an empty slice was kept at probability 0"
    assert data.balanced_epoch_steps(records, config, 4) == 3
    assert data.balanced_epoch_steps(records, dataclasses.replace(config, keep_empty_probability=0.5), 4) == 4


def test_eval_stream_is_every_slice_once(records):
    batches = list(data._input_fn(records, _config(), batch_size=8, training=False))
    assert [int(hu.shape[0]) for hu, _ in batches] == [8, 8, 4]
    assert sum(int(tf.reduce_any(m > 0, axis=[1, 2]).numpy().sum()) for _, m in batches) == 12
