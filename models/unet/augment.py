"""Training augmentation on whole batches, run inside the model's train step on the device that trains.

Each slice of a batch draws its own transforms, each with its probability in the config, applied in
this order to the previous one's output: flip; rotation and zoom (one resampling); elastic
deformation; HU scale and shift; shading; blur; median filter; a coarser pixel grid; noise. Geometric transforms
move every channel (a 2.5D slice stack) and the mask together; the mask stays binary. A transform runs
only on the slices that drew it. On a GPU this costs little next to the UNET's own step, and the CPU only reads,
parses, balances and batches.
"""
from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_addons as tfa

from ctseg.models.unet.config import UnetConfig


def _on_drawn(probability: float, transform, hu, mask):
    """`transform` applied to the slices that draw it (each with `probability`); the others unchanged."""
    if probability <= 0:
        return hu, mask
    rows = tf.where(tf.random.uniform([tf.shape(hu)[0]]) < probability)

    def apply():
        moved_hu, moved_mask = transform(tf.gather_nd(hu, rows), tf.gather_nd(mask, rows))
        return tf.tensor_scatter_nd_update(hu, rows, moved_hu), tf.tensor_scatter_nd_update(mask, rows, moved_mask)

    return tf.cond(tf.size(rows) > 0, apply, lambda: (hu, mask))


def _per_slice(values, like):
    """(N,) values shaped to broadcast over the (N, H, W, C) slices of `like`."""
    return tf.cast(tf.reshape(values, [-1, 1, 1, 1]), like.dtype)


# Every transform below takes HU (N, H, W, C) float32 and the mask (N, H, W, 1) float32 0/1 of the
# N slices that drew it, and returns both.

def _flip(hu, mask):
    return tf.reverse(hu, [2]), tf.reverse(mask, [2])


def _affine(hu, mask, max_degrees, max_scale):
    """Rotation by up to `max_degrees` and zoom by 1 ± `max_scale` about the centre, per slice ((N,) bounds,
    0 where a slice did not draw it), one resampling: HU bilinear (outside filled with the slice's darkest
    value: air), mask nearest (stays binary)."""
    n = tf.shape(hu)[0]
    angle = tf.random.uniform([n], -1.0, 1.0) * max_degrees * (math.pi / 180.0)
    zoom = 1.0 + tf.random.uniform([n], -1.0, 1.0) * max_scale
    rows, cols = _pixel_grid(hu)
    cy, cx = rows[-1, 0] / 2.0, cols[0, -1] / 2.0
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom  # output pixel -> input pixel
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy], 1)
    at = [tf.reshape(transform[:, k], [-1, 1, 1]) for k in range(6)]
    source_cols = at[0] * cols + at[1] * rows + at[2]
    source_rows = at[3] * cols + at[4] * rows + at[5]
    air = _per_slice(tf.reduce_min(hu, axis=[1, 2, 3]), hu)
    # Bilinear weights sum to 1, so reading 0 outside (hu - air) is filling hu with each slice's own air.
    hu = _bilinear(hu - air, source_rows, source_cols) + air
    return hu, _nearest(mask, source_rows, source_cols)


def _pixel_grid(image):
    """(H, W) float row and column indices of the pixels of `image` (N, H, W, C)."""
    size = tf.shape(image)[1:3]
    return tf.meshgrid(tf.range(tf.cast(size[0], tf.float32)), tf.range(tf.cast(size[1], tf.float32)), indexing="ij")


def _read(image, rows, cols):
    """image (N, H, W, C) at integer (N, H, W) positions; 0 outside. One gather of pixels by their index in the
    flattened batch (half of `gather_nd`'s time on a CPU), so XLA compiles it too."""
    shape = tf.shape(image)
    inside = (rows >= 0) & (rows < shape[1]) & (cols >= 0) & (cols < shape[2])
    index = ((tf.range(shape[0])[:, None, None] * shape[1] + tf.clip_by_value(rows, 0, shape[1] - 1)) * shape[2]
             + tf.clip_by_value(cols, 0, shape[2] - 1))
    return tf.gather(tf.reshape(image, [-1, shape[3]]), index) * tf.cast(inside, image.dtype)[..., None]


def _bilinear(image, rows, cols):
    """image sampled at real (N, H, W) positions by bilinear interpolation, 0 outside."""
    top, left = tf.floor(rows), tf.floor(cols)
    down, right = (rows - top)[..., None], (cols - left)[..., None]
    top, left = tf.cast(top, tf.int32), tf.cast(left, tf.int32)
    return ((_read(image, top, left) * (1.0 - right) + _read(image, top, left + 1) * right) * (1.0 - down)
            + (_read(image, top + 1, left) * (1.0 - right) + _read(image, top + 1, left + 1) * right) * down)


def _nearest(image, rows, cols):
    return _read(image, tf.cast(tf.floor(rows + 0.5), tf.int32), tf.cast(tf.floor(cols + 0.5), tf.int32))


def _elastic(hu, mask, max_px: float, grid: int = 4):
    """A smooth random displacement per slice (a `grid` x `grid` field of up to `max_px` pixels, bicubically
    upsampled): anatomy bends a little. The mask is warped as a float and thresholded at 0.5."""
    coarse = tf.random.uniform(tf.stack([tf.shape(hu)[0], grid, grid, 2]), -max_px, max_px)
    flow = tf.einsum("yi,nijc,xj->nyxc", _bicubic(grid, hu.shape[1]), coarse, _bicubic(grid, hu.shape[2]))
    warped = tfa.image.dense_image_warp(tf.concat([hu, mask], -1), flow)
    return warped[..., :-1], tf.cast(warped[..., -1:] >= 0.5, mask.dtype)


def _bicubic(points: int, size: int):
    """(size, points) weights of `tf.image.resize(method="bicubic")` from `points` to `size` along one axis,
    as a constant: the resize is separable, and XLA compiles a product where it has no bicubic resize."""
    with tf.init_scope():
        eye = tf.eye(points)[None, :, :, None]
        return tf.constant(tf.image.resize(eye, [size, points], method="bicubic")[0, :, :, 0].numpy())


# Paeth's median of 9 as 19 compare-exchanges (N. Devillard, "Fast median search", opt_med9): pairs (a, b) leave
# the smaller value at a and the larger at b, and the median ends at index 4.
_MEDIAN_OF_9 = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3), (5, 8), (4, 7),
                (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))


def median3x3(image):
    """The 3x3 median of each pixel of (N, H, W, C), edges reflected: the values of
    `tfa.image.median_filter2d(image, 3)` (a test compares them), from nine shifted views and element-wise
    minima and maxima instead of its patch extraction and top-k, which cost 12 ms a 128 px slice on a CPU."""
    h, w = tf.shape(image)[1], tf.shape(image)[2]
    padded = tf.pad(image, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    p = [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]
    for a, b in _MEDIAN_OF_9:
        p[a], p[b] = tf.minimum(p[a], p[b]), tf.maximum(p[a], p[b])
    return p[4]


def _median(hu, mask):
    """Median filter of the image only: the mask is ground truth and must not be blurred."""
    return median3x3(hu), mask


def _blur(hu, mask, max_sigma_px: float):
    """Gaussian blur of a sigma drawn per slice up to `max_sigma_px` (a smoother reconstruction kernel or a
    thicker slice): 7 taps along rows, then along columns, edges mirrored."""
    n, h, w = tf.shape(hu)[0], tf.shape(hu)[1], tf.shape(hu)[2]
    sigma = tf.random.uniform([n, 1], 0.25, max(max_sigma_px, 0.25))
    kernel = tf.exp(-tf.range(-3.0, 4.0)[None, :] ** 2 / (2.0 * sigma ** 2))
    kernel /= tf.reduce_sum(kernel, axis=1, keepdims=True)
    padded = tf.pad(hu, [[0, 0], [3, 3], [3, 3], [0, 0]], mode="SYMMETRIC")
    rows = sum(_per_slice(kernel[:, k], hu) * padded[:, k:k + h] for k in range(7))
    return sum(_per_slice(kernel[:, k], hu) * rows[:, :, k:k + w] for k in range(7)), mask


def _noise(hu, mask, min_std_hu: float, max_std_hu: float):
    """Gaussian noise of a standard deviation drawn per slice in [min_std_hu, max_std_hu] (dose varies by patient)."""
    std = tf.random.uniform([tf.shape(hu)[0]], min(min_std_hu, max_std_hu), max_std_hu)
    return hu + tf.random.normal(tf.shape(hu)) * _per_slice(std, hu), mask


def _low_resolution(hu, mask, min_scale: float):
    """The slice as a coarser pixel grid shows it: resampled to `scale` (drawn per slice in [min_scale, 1]) of its
    pixels per side by nearest neighbour and back by bilinear interpolation, the mask unchanged, as a smaller
    matrix, a smoother kernel or a thick reconstruction resampled by a viewer shows a liver (nnU-Net's
    SimulateLowResolutionTransform: scale 0.5-1, p 0.25)."""
    scale = tf.reshape(tf.random.uniform([tf.shape(hu)[0]], min(min_scale, 1.0), 1.0), [-1, 1, 1])
    rows, cols = _pixel_grid(hu)

    def on_grid(position):
        """(N, H, W) rows and columns `position` maps each pixel to, kept inside the image."""
        return (tf.clip_by_value(position(rows), 0.0, rows[-1, 0]),
                tf.clip_by_value(position(cols), 0.0, cols[0, -1]))

    # the coarse grid's pixel j covers 1/scale fine pixels, centred at (j + 0.5) / scale - 0.5
    coarse = _nearest(hu, *on_grid(lambda i: (i + 0.5) / scale - 0.5))
    return _bilinear(coarse, *on_grid(lambda i: (i + 0.5) * scale - 0.5)), mask


def _hu_scale(hu, mask, max_scale: float):
    """Contrast scaled by 1 ± `max_scale` about water (0 HU), per slice: contrast phase, kVp, calibration."""
    return hu * _per_slice(tf.random.uniform([tf.shape(hu)[0]], 1.0 - max_scale, 1.0 + max_scale), hu), mask


def _hu_shift(hu, mask, max_shift_hu: float):
    return hu + _per_slice(tf.random.uniform([tf.shape(hu)[0]], -max_shift_hu, max_shift_hu), hu), mask


def _shading(hu, mask, max_shading_hu: float):
    """A smooth shading across the slice: HU ramped linearly in a random direction, by up to `max_shading_hu`
    (drawn per slice) from the image's centre to its edge. CT's beam hardening and scatter leave such low-frequency
    shading (cupping, the darker band between dense bones: Barrett & Keat, RadioGraphics 2004;24:1679-1691); on
    real CT the liver's posterior part reads 13-35 HU darker than its anterior part, the phantom's liver is flat
    (docs/BENCHMARKS.md, "Shading")."""
    n = tf.shape(hu)[0]
    angle = tf.random.uniform([n], 0.0, 2.0 * math.pi)
    amplitude = tf.random.uniform([n], 0.0, max_shading_hu)
    rows, cols = _pixel_grid(hu)
    half = tf.maximum(rows[-1, 0], cols[0, -1]) / 2.0
    y, x = (rows - rows[-1, 0] / 2.0) / half, (cols - cols[0, -1] / 2.0) / half
    ramp = _per_slice(tf.cos(angle), hu) * x[..., None] + _per_slice(tf.sin(angle), hu) * y[..., None]
    return hu + ramp * _per_slice(amplitude, hu), mask


def augment_batch(hu, mask, config: UnetConfig):
    """A batch of float HU slices (B, H, W) or slice stacks (B, H, W, C) and their (B, H, W) masks, each
    slice with its own draw of every transform in `config` (see the module's docstring)."""
    stacked = hu.shape.rank == 4
    hu = hu if stacked else hu[..., None]
    mask = tf.cast(mask, hu.dtype)[..., None]
    c = config
    hu, mask = _on_drawn(c.flip_probability, _flip, hu, mask)
    if c.rotate_probability > 0 or c.scale_probability > 0:
        n = tf.shape(hu)[0]
        degrees = tf.where(tf.random.uniform([n]) < c.rotate_probability, c.max_rotation_degrees, 0.0)
        scale = tf.where(tf.random.uniform([n]) < c.scale_probability, c.max_scale, 0.0)
        rows = tf.where((degrees > 0) | (scale > 0))

        def apply():
            moved = _affine(tf.gather_nd(hu, rows), tf.gather_nd(mask, rows), tf.gather_nd(degrees, rows),
                            tf.gather_nd(scale, rows))
            return tf.tensor_scatter_nd_update(hu, rows, moved[0]), tf.tensor_scatter_nd_update(mask, rows, moved[1])

        hu, mask = tf.cond(tf.size(rows) > 0, apply, lambda: (hu, mask))
    hu, mask = _on_drawn(c.elastic_probability, lambda h, m: _elastic(h, m, c.elastic_max_px), hu, mask)
    hu, mask = _on_drawn(c.hu_scale_probability, lambda h, m: _hu_scale(h, m, c.max_hu_scale), hu, mask)
    hu, mask = _on_drawn(c.hu_shift_probability, lambda h, m: _hu_shift(h, m, c.max_hu_shift), hu, mask)
    hu, mask = _on_drawn(c.shading_probability, lambda h, m: _shading(h, m, c.max_shading_hu), hu, mask)
    hu, mask = _on_drawn(c.blur_probability, lambda h, m: _blur(h, m, c.max_blur_sigma_px), hu, mask)
    hu, mask = _on_drawn(c.median_probability, _median, hu, mask)
    hu, mask = _on_drawn(c.low_resolution_probability, lambda h, m: _low_resolution(h, m, c.min_resolution_scale),
                         hu, mask)
    hu, mask = _on_drawn(c.noise_probability, lambda h, m: _noise(h, m, c.noise_std_min_hu, c.noise_std_hu),
                         hu, mask)
    return (hu if stacked else hu[..., 0]), mask[..., 0]


def augment(hu, mask, config: UnetConfig):
    """One float slice (H, W) or slice stack (H, W, C) and its (H, W) mask, through `augment_batch`."""
    out_hu, out_mask = augment_batch(hu[None], mask[None], config)
    return out_hu[0], out_mask[0]


class AugmentingModel(tf.keras.Model):
    """A Keras model whose train step augments each batch (`augment_batch`) before the forward pass, on the
    device that trains; evaluation and prediction see the data as it is. Built on an existing model's
    inputs and outputs, so it shares that model's layers and weights."""

    def __init__(self, inputs, outputs, config: UnetConfig, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self.augmentation = config

    def train_step(self, data):
        hu, mask, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        hu, mask = augment_batch(hu, mask, self.augmentation)
        return super().train_step((hu, mask) if sample_weight is None else (hu, mask, sample_weight))


def augmenting(model: tf.keras.Model, config: UnetConfig) -> AugmentingModel:
    """`model` (a functional UNET) with `config`'s augmentation in its train step."""
    return AugmentingModel(model.inputs, model.outputs, config, name=model.name)
