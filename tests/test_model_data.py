"""The Trainer's input pipeline: parsing, empty-slice balancing, augmentation, batching."""
import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from ctseg.features import slice_example
from ctseg.models.unet import augment, data
from ctseg.models.unet.config import UnetConfig

SIZE = 32
OFF = {f.name: 0.0 for f in dataclasses.fields(UnetConfig)
       if f.name.endswith("_probability") and f.name != "keep_empty_probability"}
ORGAN_HU, BACKGROUND_HU = 150.0, -100.0


def _organ_slice():
    """An asymmetric L-shaped organ whose HU marks it, so alignment is checkable after any transform."""
    mask = np.zeros((SIZE, SIZE), np.float32)
    mask[6:24, 8:14] = 1
    mask[18:24, 8:26] = 1
    return np.where(mask > 0, ORGAN_HU, BACKGROUND_HU).astype(np.float32), mask


def _config(**probabilities):
    """2D (one slice per example): tests/test_context.py covers the 2.5D stream."""
    return dataclasses.replace(UnetConfig(image_size=SIZE, depth=2, context_slices=0), **{**OFF, **probabilities})


def _write(path, slices):
    with tf.io.TFRecordWriter(str(path), tf.io.TFRecordOptions(compression_type="GZIP")) as w:
        for i, (hu, mask) in enumerate(slices):
            w.write(slice_example(hu=hu, mask=mask, patient_id="p", slice_index=i, spacing_mm=0.7, thickness_mm=2.0,
                                  source_shape=(512, 512), mask_distinct_values=2,
                                  source_mask=np.kron(mask, np.ones((16, 16)))).SerializeToString())
    return str(path)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """12 slices with organ, 8 without."""
    hu, mask = _organ_slice()
    empty = (np.full((SIZE, SIZE), BACKGROUND_HU, np.float32), np.zeros((SIZE, SIZE), np.float32))
    return _write(tmp_path_factory.mktemp("records") / "data.gz", [(hu + i, mask) for i in range(12)] + [empty] * 8)


def _augment(config, hu, mask):
    return [t.numpy() for t in augment.augment(tf.constant(hu), tf.constant(mask), config)]


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
    out_hu, out_mask = _augment(_config(flip_probability=1.0, noise_probability=1.0, noise_std_min_hu=20.0,
                                        noise_std_hu=20.0), hu, mask)
    np.testing.assert_array_equal(out_mask, mask[:, ::-1])
    assert np.std(out_hu - hu[:, ::-1]) == pytest.approx(20.0, rel=0.15)
    _assert_aligned(out_hu, out_mask, min_agreement=1.0)


def test_median_filters_the_image_not_the_mask():
    hu, mask = _organ_slice()
    hu[2, 2] = 2000.0  # an isolated spike the 3x3 median removes
    out_hu, out_mask = _augment(_config(median_probability=1.0), hu, mask)
    np.testing.assert_array_equal(out_mask, mask)
    assert out_hu[2, 2] == BACKGROUND_HU


@pytest.mark.parametrize("shape", [(3, 17, 23, 3), (1, 3, 3, 1), (2, 128, 128, 1)])
def test_median3x3_equals_tensorflow_addons_median_filter(shape):
    """The sorting network gives exactly tfa's median (ties, plateaus and edges included)."""
    import tensorflow_addons as tfa

    from ctseg.models.unet.augment import median3x3

    rng = np.random.default_rng(sum(shape))
    image = rng.normal(40.0, 200.0, shape).astype(np.float32)
    image[0, : shape[1] // 2] = np.round(image[0, : shape[1] // 2] / 300.0) * 300.0  # many equal values
    np.testing.assert_array_equal(median3x3(tf.constant(image)).numpy(),
                                  tfa.image.median_filter2d(tf.constant(image), filter_shape=3).numpy())


def test_rotation_moves_image_and_mask_together():
    hu, mask = _organ_slice()
    tf.random.set_seed(1)
    moved = 0
    for _ in range(6):
        out_hu, out_mask = _augment(_config(rotate_probability=1.0, max_rotation_degrees=15.0), hu, mask)
        _assert_aligned(out_hu, out_mask)
        moved += not np.array_equal(out_mask, mask)
    assert moved >= 3, "rotations by up to 15 degrees left the mask unchanged"


def test_zoom_and_elastic_move_image_and_mask_together():
    hu, mask = _organ_slice()
    tf.random.set_seed(4)
    areas = []
    for _ in range(8):
        out_hu, out_mask = _augment(_config(scale_probability=1.0, max_scale=0.3), hu, mask)
        _assert_aligned(out_hu, out_mask)
        areas.append(out_mask.sum())
    assert max(areas) > 1.15 * mask.sum() and min(areas) < 0.85 * mask.sum(), areas  # zoomed in and out
    assert _augment(_config(scale_probability=1.0, max_scale=0.3), hu, mask)[0].min() == BACKGROUND_HU  # air fill
    changed = 0
    for _ in range(8):
        out_hu, out_mask = _augment(_config(elastic_probability=1.0, elastic_max_px=3.0), hu, mask)
        _assert_aligned(out_hu, out_mask, min_agreement=0.97)
        changed += not np.array_equal(out_mask, mask)
    assert changed >= 6


def test_intensity_augmentations_change_the_image_only():
    hu, mask = _organ_slice()
    tf.random.set_seed(5)
    for key, extra in (("hu_shift_probability", dict(max_hu_shift=30.0)),
                       ("hu_scale_probability", dict(max_hu_scale=0.2)),
                       ("blur_probability", dict(max_blur_sigma_px=1.5))):
        outs = [_augment(_config(**{key: 1.0}, **extra), hu, mask) for _ in range(4)]
        for out_hu, out_mask in outs:
            np.testing.assert_array_equal(out_mask, mask)
        assert any(not np.allclose(out_hu, hu) for out_hu, _ in outs), key
    shifted = _augment(_config(hu_shift_probability=1.0, max_hu_shift=30.0), hu, mask)[0]
    assert np.ptp(shifted - hu) < 1e-3 and 0 < abs(float((shifted - hu).mean())) <= 30.0  # one shift per slice
    scaled = _augment(_config(hu_scale_probability=1.0, max_hu_scale=0.2), hu, mask)[0]
    ratio = scaled / hu
    assert np.ptp(ratio) < 1e-5 and 0.8 <= ratio.mean() <= 1.2
    blurred = _augment(_config(blur_probability=1.0, max_blur_sigma_px=1.5), hu, mask)[0]
    assert blurred.mean() == pytest.approx(hu.mean(), abs=1.0)  # blur keeps the HU level, softens the edges
    assert BACKGROUND_HU < blurred[6, 7] < ORGAN_HU


def test_shading_ramps_the_hu_across_the_slice_and_leaves_the_mask():
    """A linear ramp in a random direction, at most `max_shading_hu` from the centre to the edge; mask unchanged."""
    hu, mask = _organ_slice()
    tf.random.set_seed(6)
    batch = tf.constant(np.stack([hu] * 16)[..., None])
    masks = tf.constant(np.stack([mask] * 16)[..., None].astype(np.float32))
    shaded, shaded_mask = [t.numpy() for t in augment._shading(batch, masks, max_shading_hu=40.0)]
    np.testing.assert_array_equal(shaded_mask, masks.numpy())
    ramps = (shaded - batch.numpy())[..., 0]
    centre = SIZE // 2
    assert np.abs(ramps).max() <= 40.0 * np.sqrt(2) + 1e-3  # the corners lie sqrt(2) half-widths out
    assert np.abs(ramps[:, centre, centre]).max() < 40.0 * 2 / SIZE + 1e-3  # no shift at the centre
    for ramp in ramps:  # linear: equal steps along rows and along columns
        for steps in (np.diff(ramp, axis=0), np.diff(ramp, axis=1)):
            assert np.ptp(steps) < 1e-3
    directions = np.arctan2(ramps[:, -1, centre] - ramps[:, 0, centre], ramps[:, centre, -1] - ramps[:, centre, 0])
    assert np.ptp(directions) > np.pi / 2  # the direction is drawn per slice
    from ctseg.errors import CtsegError
    with pytest.raises(CtsegError, match="max_shading_hu"):
        UnetConfig.from_custom_config({"max_shading_hu": -1.0})
    with pytest.raises(CtsegError, match="shading_probability"):
        UnetConfig.from_custom_config({"shading_probability": 2.0})


def test_low_resolution_coarsens_the_image_not_the_mask():
    hu, mask = _organ_slice()
    stripes = np.where(np.arange(SIZE) % 2, 100.0, 0.0).astype(np.float32) * np.ones((SIZE, 1), np.float32)
    batch = tf.constant(np.stack([hu + stripes] * 8)[..., None])
    masks = tf.constant(np.stack([mask] * 8)[..., None])
    same, same_mask = augment._low_resolution(batch, masks, min_scale=1.0)
    np.testing.assert_allclose(same.numpy(), batch.numpy(), atol=1e-3)  # scale 1: the grid itself
    tf.random.set_seed(8)
    coarse, coarse_mask = [t.numpy() for t in augment._low_resolution(batch, masks, min_scale=0.5)]
    np.testing.assert_array_equal(coarse_mask, masks.numpy())
    assert coarse.min() >= batch.numpy().min() - 1e-3 and coarse.max() <= batch.numpy().max() + 1e-3
    # one-pixel stripes do not survive a coarser grid: neighbouring columns are no longer 100 HU apart
    column_steps = np.abs(np.diff(coarse[:, 0, :, 0], axis=1)).mean(axis=1)
    assert (column_steps < 90).all(), column_steps
    assert len({round(float(v), 2) for v in column_steps}) > 4  # each slice drew its own scale
    tf.random.set_seed(9)
    _assert_aligned(*_augment(_config(low_resolution_probability=1.0), hu, mask), min_agreement=0.95)


def test_stacked_neighbours_move_with_the_slice():
    """2.5D: every channel of a slice stack gets the same geometric transform as the mask."""
    hu, mask = _organ_slice()
    stack = np.stack([hu, hu, hu], axis=-1)
    config = _config(flip_probability=0.5, rotate_probability=1.0, scale_probability=1.0, elastic_probability=1.0)
    tf.random.set_seed(6)
    for _ in range(5):
        out_stack, out_mask = _augment(config, stack, mask)
        assert out_stack.shape == stack.shape and out_mask.shape == mask.shape
        np.testing.assert_allclose(out_stack[..., 0], out_stack[..., 2], atol=1e-3)
        _assert_aligned(out_stack[..., 1], out_mask, min_agreement=0.97)


def test_all_augmentations_keep_mask_binary_and_aligned():
    hu, mask = _organ_slice()
    config = _config(**{**{k: 1.0 for k in OFF}, "flip_probability": 0.5}, noise_std_hu=20.0)
    tf.random.set_seed(2)
    for _ in range(10):
        _assert_aligned(*_augment(config, hu, mask), min_agreement=0.95)


def test_augmentation_settings_are_checked():
    from ctseg.errors import CtsegError
    with pytest.raises(CtsegError, match="elastic_probability"):
        UnetConfig.from_custom_config({"elastic_probability": 1.5})
    with pytest.raises(CtsegError, match="max_scale"):
        UnetConfig.from_custom_config({"max_scale": 1.0})
    with pytest.raises(CtsegError, match="min_resolution_scale"):
        UnetConfig.from_custom_config({"min_resolution_scale": 0.0})


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


def test_each_slice_of_a_batch_draws_its_own_transforms():
    hu, mask = _organ_slice()
    batch_hu, batch_mask = np.stack([hu] * 64), np.stack([mask] * 64)
    tf.random.set_seed(7)
    out_hu, out_mask = [t.numpy() for t in augment.augment_batch(
        tf.constant(batch_hu), tf.constant(batch_mask), _config(flip_probability=0.5, hu_shift_probability=0.5))]
    flipped = [np.array_equal(m, mask[:, ::-1]) for m in out_mask]
    assert all(f or np.array_equal(m, mask) for f, m in zip(flipped, out_mask))
    assert 16 <= sum(flipped) <= 48, sum(flipped)
    shifts = [float((h - (hu[:, ::-1] if f else hu)).mean()) for h, f in zip(out_hu, flipped)]
    assert 16 <= sum(s != 0 for s in shifts) <= 48 and len({round(s, 3) for s in shifts if s}) > 10


@pytest.mark.slow  # trains a model
def test_the_train_step_trains_on_the_augmented_batch():
    """One step of the augmenting model with every slice flipped equals one plain step on flipped slices."""
    from ctseg.models.unet.model import build_unet, compile_model

    hu, mask = _organ_slice()
    config = dataclasses.replace(_config(flip_probability=1.0), base_filters=2, dropout=0.0)
    batch_hu, batch_mask = np.stack([hu, hu + 5]), np.stack([mask, mask])

    def one_step(wrap, x, y):
        tf.keras.utils.set_random_seed(0)
        model = build_unet(config)
        compile_model(wrap(model), config).fit(x, y, batch_size=2, epochs=1, verbose=0)
        return model.get_weights()

    augmented = one_step(lambda m: augment.augmenting(m, config), batch_hu, batch_mask)
    plain_on_flipped = one_step(lambda m: m, batch_hu[:, :, ::-1], batch_mask[:, :, ::-1])
    for a, b in zip(augmented, plain_on_flipped):
        np.testing.assert_allclose(a, b, atol=1e-6)
