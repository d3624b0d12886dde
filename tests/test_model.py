"""The UNET's pre-processing, loss, metrics and configuration (no training)."""
import numpy as np
import pytest
import tensorflow as tf

from ctseg.dicom import window
from ctseg.errors import CtsegError
from ctseg.models.unet.config import UnetConfig
from ctseg.models.unet.model import (
    HuWindow,
    OverlapMetric,
    build_unet,
    compile_model,
    dice_coefficient,
    dice_loss,
    make_loss,
)

TINY = UnetConfig.from_custom_config({"image_size": 32, "depth": 2, "base_filters": 2})


def test_window_maps_hu_as_documented():
    """Liver window 60/400: -140 HU and below → 0, 260 HU and above → 1, linear between."""
    hu = tf.constant([[-1000.0, -140.0, 60.0, 160.0, 260.0, 3000.0]])
    got = HuWindow(60.0, 400.0)(hu).numpy()
    np.testing.assert_allclose(got, [[0.0, 0.0, 0.5, 0.75, 1.0, 1.0]], atol=1e-6)


def test_window_is_configurable_and_matches_dicom_window():
    rng = np.random.default_rng(0)
    hu = rng.uniform(-1100, 1500, (4, 32, 32)).astype(np.float32)
    layer = HuWindow(40.0, 80.0)
    np.testing.assert_allclose(layer(hu).numpy(), window(hu, 40.0, 80.0), atol=1e-6)
    assert HuWindow.from_config(layer.get_config()).width == 80.0


def test_model_applies_its_window_from_config():
    model = build_unet(UnetConfig.from_custom_config({"image_size": 32, "depth": 2, "base_filters": 2,
                                                      "window_center": 40, "window_width": 350}))
    layer = model.get_layer("hu_window")
    assert (layer.center, layer.width) == (40.0, 350.0)
    np.testing.assert_allclose(layer(tf.constant([-135.0, 40.0, 215.0])).numpy(), [0.0, 0.5, 1.0], atol=1e-6)


def test_dice_loss_on_known_inputs():
    ones = np.ones((1, 2, 2), np.float32)
    assert float(dice_loss(ones, ones)) == pytest.approx(0.0)
    half = np.array([[[1, 1], [0, 0]]], np.float32)
    # no overlap: (0 + 1) / (2 + 2 + 1)
    assert float(dice_loss(half, 1 - half)) == pytest.approx(0.8)
    # soft prediction 0.5 everywhere on an all-organ truth: (2*2 + 1) / (4 + 2 + 1)
    assert float(dice_coefficient(ones, 0.5 * ones)) == pytest.approx(5 / 7)
    # empty truth and empty prediction is a perfect score, not 0/0
    assert float(dice_loss(0 * ones, 0 * ones)) == pytest.approx(0.0)


def test_combined_loss_adds_weighted_cross_entropy():
    t = np.array([[[1, 0], [1, 0]]], np.float32)
    p = np.array([[[0.9, 0.2], [0.6, 0.1]]], np.float32)
    bce = -np.mean(t * np.log(p) + (1 - t) * np.log(1 - p))
    dice = (2 * 1.5 + 1) / (2 + 1.8 + 1)
    assert float(make_loss(0.5)(t, p)) == pytest.approx(1 - dice + 0.5 * bce, rel=1e-4)
    assert make_loss(0.0) is dice_loss
    assert float(make_loss(1.0, dice_weight=0.0)(t, p)) == pytest.approx(bce, rel=1e-4)
    assert float(make_loss(0.5, dice_weight=2.0)(t, p)) == pytest.approx(2 * (1 - dice) + 0.5 * bce, rel=1e-4)


def test_loss_weights_are_checked():
    from ctseg.errors import CtsegError
    from ctseg.models.unet.config import UnetConfig

    assert UnetConfig.from_custom_config({"dice_weight": 0.0}).dice_weight == 0.0
    with pytest.raises(CtsegError, match="not both 0"):
        UnetConfig.from_custom_config({"dice_weight": 0.0, "bce_weight": 0.0})


def test_overlap_metrics_pool_over_batches():
    dice, iou = OverlapMetric("dice"), OverlapMetric("iou")
    t1, p1 = np.array([[1, 1, 0, 0]], np.float32), np.array([[0.9, 0.4, 0.8, 0.0]], np.float32)
    t2, p2 = np.array([[1, 0, 0, 0]], np.float32), np.array([[0.7, 0.0, 0.0, 0.0]], np.float32)
    for m in (dice, iou):
        m.update_state(t1, p1)
        m.update_state(t2, p2)
    # pooled: intersection 2, |T| 3, |P| 3
    assert float(dice.result()) == pytest.approx(2 * 2 / 6)
    assert float(iou.result()) == pytest.approx(2 / 4)
    dice.reset_state()
    dice.update_state(np.zeros((1, 4)), np.zeros((1, 4)))
    assert float(dice.result()) == 1.0


def test_unet_shape_and_levels():
    model = build_unet(TINY)  # the default is 2.5D with one neighbour on each side: 3 channels
    assert model.input_shape == (None, 32, 32, 3) and model.output_shape == (None, 32, 32)
    pools = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.MaxPooling2D)]
    transposes = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2DTranspose)]
    assert len(pools) == len(transposes) == 2
    assert model.get_layer("bottleneck_conv1").filters == 2 * 2 ** 2
    out = model(np.zeros((3, 32, 32, 3), np.float32)).numpy()
    assert out.shape == (3, 32, 32) and ((out >= 0) & (out <= 1)).all()


def test_every_conv_is_normalised_before_its_relu():
    model = build_unet(TINY)  # instance normalisation is the default
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)
             and not isinstance(layer, tf.keras.layers.Conv2DTranspose) and layer.name != "probability"]
    norms = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.GroupNormalization)]
    assert len(convs) == len(norms) == 2 * (2 * 2 + 1)  # two convs a level down and up, two in the bottleneck
    assert not any(conv.use_bias for conv in convs)  # the norm's offset stands in for the bias
    assert all(norm.groups == norm.input_shape[-1] for norm in norms)  # a group a channel: instance normalisation
    assert all(model.get_layer(conv.name.replace("conv", "relu")).input.node.layer is model.get_layer(
        conv.name.replace("conv", "norm")) for conv in convs)


def test_instance_normalisation_standardises_each_channel_of_each_slice_on_its_own():
    """Per slice, not per batch: a slice's features do not depend on the slices it is batched with, in training
    as in serving (batch normalisation's would, while it trains)."""
    model = build_unet(UnetConfig.from_custom_config({"image_size": 32, "depth": 2, "base_filters": 4}))
    first = tf.keras.Model(model.input, model.get_layer("down0_norm1").output)
    rng = np.random.default_rng(0)
    hu = rng.normal(40, 60, (2, 32, 32, 3)).astype(np.float32)
    hu[1] = 2.0 * hu[1] + 100.0
    together = first(hu, training=True).numpy()
    np.testing.assert_allclose(together.mean(axis=(1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(together.std(axis=(1, 2)), 1.0, atol=1e-2)
    np.testing.assert_allclose(first(hu[:1], training=True).numpy()[0], together[0], atol=1e-4)
    np.testing.assert_allclose(first(hu[1:], training=False).numpy()[0], together[1], atol=1e-4)


def test_full_preset_is_the_blog_network():
    config = UnetConfig.from_custom_config({"preset": "full"})
    assert (config.image_size, config.depth, config.base_filters, config.dropout) == (256, 4, 32, 0.5)
    assert config.normalization == "none"
    assert not [layer for layer in build_unet(config).layers if isinstance(layer, tf.keras.layers.GroupNormalization)]
    assert UnetConfig.from_custom_config({"preset": "full", "image_size": 128}).image_size == 128
    assert UnetConfig.from_custom_config(None) == UnetConfig()
    assert UnetConfig().normalization == "instance"


def test_jit_compile_is_a_knob_off_by_default():
    assert UnetConfig.from_custom_config({"preset": "full"}).jit_compile is False
    config = UnetConfig.from_custom_config({"image_size": 32, "depth": 2, "base_filters": 2, "jit_compile": True})
    assert compile_model(build_unet(config), config).jit_compile is True


@pytest.mark.parametrize("custom, words", [
    ({"image_size": 100}, "divisible"),
    ({"preset": "huge"}, "preset"),
    ({"epoch": 3}, "unknown keys"),
    ({"keep_empty_probability": 1.5}, "keep_empty_probability"),
    ({"batch_size": "many"}, "wrong type"),
    ({"jit_compile": "false"}, r"\['jit_compile'\] must be true or false"),
    ({"normalization": "layer"}, "normalization 'layer' must be one of"),
])
def test_bad_custom_config_is_a_clear_error(custom, words):
    with pytest.raises(CtsegError, match=words):
        UnetConfig.from_custom_config(custom)
