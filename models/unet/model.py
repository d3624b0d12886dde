"""The UNET (Ronneberger et al.) with the CT window inside it, the Dice loss, and Dice/IoU metrics.

The network takes Hounsfield units of shape (batch, H, W) and returns liver probabilities of the
same shape: windowing and scaling are its first layer, so the exported model cannot be fed
differently pre-processed data than it was trained on.
"""
from __future__ import annotations

import tensorflow as tf

from ctseg.models.unet.config import UnetConfig
from ctseg.serving import THRESHOLD

SMOOTH = 1.0  # the blog post's Dice smoothing term: keeps empty-vs-empty at Dice 1 and the gradient finite


class HuWindow(tf.keras.layers.Layer):
    """HU → [0, 1]: `clip((hu - (center - width/2)) / width, 0, 1)`, the same mapping as `ctseg.dicom.window`.

    Always computed in float32 (HU do not fit float16's precision), whatever the mixed-precision policy.
    """

    def __init__(self, center: float, width: float, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.center, self.width = float(center), float(width)

    def call(self, hu):
        low = self.center - self.width / 2.0
        return tf.clip_by_value((tf.cast(hu, tf.float32) - low) / self.width, 0.0, 1.0)

    def get_config(self):
        return {**super().get_config(), "center": self.center, "width": self.width}


def context_indices(count, context_slices: int):
    """(count, 2k+1) indices of each slice's neighbours k below to k above in a stack of `count`
    consecutive slices, clamped at the ends (the first slice stands in for the ones before it)."""
    offsets = tf.range(-context_slices, context_slices + 1)
    return tf.clip_by_value(tf.range(count)[:, None] + offsets[None, :], 0, count - 1)


class ContextStack(tf.keras.layers.Layer):
    """(N, H, W) consecutive slices of one series → (N, H, W, 2k+1): each slice with its k neighbours
    on either side as channels (order: k below ... the slice ... k above). This is how the served
    model turns the stack of HU slices users have into the 2.5D input it was trained on."""

    def __init__(self, context_slices: int, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.context_slices = int(context_slices)

    def call(self, hu):
        hu = tf.cast(hu, tf.float32)
        neighbours = tf.gather(hu, context_indices(tf.shape(hu)[0], self.context_slices))  # (N, C, H, W)
        return tf.transpose(neighbours, [0, 2, 3, 1])

    def get_config(self):
        return {**super().get_config(), "context_slices": self.context_slices}


def _double_conv(x, filters: int, name: str, normalization: str = "none"):
    """Two 3x3 convs with ReLU; with instance normalisation, conv → norm → ReLU (the norm's offset replaces the
    conv's bias)."""
    plain = normalization == "none"
    for i in (1, 2):
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", activation="relu" if plain else None, use_bias=plain,
                                   kernel_initializer="he_normal", name=f"{name}_conv{i}")(x)
        if not plain:
            # One group a channel: instance normalisation. float32 under mixed precision (a variance in float16 loses
            # its digits).
            x = tf.keras.layers.GroupNormalization(groups=filters, epsilon=1e-5, dtype="float32",
                                                   name=f"{name}_norm{i}")(x)
            x = tf.keras.layers.ReLU(name=f"{name}_relu{i}")(x)
    return x


def build_unet(config: UnetConfig) -> tf.keras.Model:
    """Per level down: two 3x3 ReLU convs, 2x2 max-pool, dropout; a bottleneck; per level up:
    a strided Conv2DTranspose, concatenation with the skip, dropout, two 3x3 convs; a 1x1 sigmoid."""
    size, channels = config.image_size, config.channels
    if config.context_slices:  # 2.5D: (size, size, 2k+1) stacks of the slice and its neighbours
        hu = tf.keras.Input((size, size, channels), name="hu", dtype=tf.float32)
        x = HuWindow(config.window_center, config.window_width, name="hu_window")(hu)
    else:
        hu = tf.keras.Input((size, size), name="hu", dtype=tf.float32)
        x = HuWindow(config.window_center, config.window_width, name="hu_window")(hu)
        x = tf.keras.layers.Reshape((size, size, 1), name="channel")(x)
    skips = []
    for level in range(config.depth):
        x = _double_conv(x, config.base_filters * 2 ** level, f"down{level}", config.normalization)
        skips.append(x)
        x = tf.keras.layers.MaxPooling2D(2, name=f"down{level}_pool")(x)
        x = tf.keras.layers.Dropout(config.dropout, name=f"down{level}_dropout")(x)
    x = _double_conv(x, config.base_filters * 2 ** config.depth, "bottleneck", config.normalization)
    for level in reversed(range(config.depth)):
        filters = config.base_filters * 2 ** level
        x = tf.keras.layers.Conv2DTranspose(filters, 3, strides=2, padding="same", name=f"up{level}_transpose")(x)
        x = tf.keras.layers.Concatenate(name=f"up{level}_concat")([x, skips[level]])
        x = tf.keras.layers.Dropout(config.dropout, name=f"up{level}_dropout")(x)
        x = _double_conv(x, filters, f"up{level}", config.normalization)
    x = tf.keras.layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name="probability")(x)
    probabilities = tf.keras.layers.Reshape((size, size), dtype="float32", name="probabilities")(x)
    return tf.keras.Model(hu, probabilities, name="unet")


def serving_model(model: tf.keras.Model, config: UnetConfig) -> tf.keras.Model:
    """The model users call: HU slices (N, H, W) → probabilities (N, H, W). With `context_slices` k the
    N slices must be consecutive slices of one series in position order; the model stacks each with its
    k neighbours (`ContextStack`) before the trained network."""
    if not config.context_slices:
        return tf.keras.Model(model.inputs, model.outputs)
    size = config.image_size
    hu = tf.keras.Input((size, size), name="hu", dtype=tf.float32)
    probabilities = model(ContextStack(config.context_slices, name="context")(hu))
    return tf.keras.Model(hu, probabilities, name="unet_2_5d")


def _flat(y_true, y_pred):
    return tf.reshape(tf.cast(y_true, tf.float32), [-1]), tf.reshape(tf.cast(y_pred, tf.float32), [-1])


def dice_coefficient(y_true, y_pred, smooth: float = SMOOTH):
    """Soft Dice over the whole batch, as in the blog post: (2|T·P| + s) / (|T| + |P| + s)."""
    t, p = _flat(y_true, y_pred)
    return (2.0 * tf.reduce_sum(t * p) + smooth) / (tf.reduce_sum(t) + tf.reduce_sum(p) + smooth)


def dice_loss(y_true, y_pred):
    return 1.0 - dice_coefficient(y_true, y_pred)


def make_loss(bce_weight: float, dice_weight: float = 1.0):
    """`dice_weight` times the soft Dice loss plus `bce_weight` times binary cross-entropy.

    Cross-entropy alone is minimised by the true probability of each pixel, so its volumes are
    calibrated; soft Dice is not, and biases volumes where pixels are uncertain (Bertels et al., Medical
    Image Analysis 2021).
    """
    if bce_weight <= 0 and dice_weight == 1:
        return dice_loss

    def dice_bce_loss(y_true, y_pred):
        loss = 0.0
        if dice_weight > 0:
            loss += dice_weight * dice_loss(y_true, y_pred)
        if bce_weight > 0:
            loss += bce_weight * tf.keras.losses.binary_crossentropy(*_flat(y_true, y_pred))
        return loss

    return dice_bce_loss


class OverlapMetric(tf.keras.metrics.Metric):
    """Dice or IoU of the thresholded prediction, pooled over every pixel seen in the epoch.

    Pooling (rather than averaging per batch) makes it the volumetric score of the evaluated slices;
    when neither prediction nor truth has a foreground pixel, the overlap is perfect (1).

    Always float32: under the `mixed_float16` policy its counters would otherwise become
    AutoCastVariables, and reading those sync-on-read variables in `result()` under MirroredStrategy
    raises NotImplementedError at the end of the first epoch. Pixel counts belong in float32 anyway.
    """

    def __init__(self, kind: str = "dice", threshold: float = THRESHOLD, name: str | None = None, **kwargs):
        if kind not in ("dice", "iou"):
            raise ValueError(f"kind must be 'dice' or 'iou', not {kind!r}")
        kwargs["dtype"] = "float32"
        super().__init__(name=name or kind, **kwargs)
        self.kind, self.threshold = kind, threshold
        self.intersection = self.add_weight(name="intersection", initializer="zeros")
        self.total = self.add_weight(name="total", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        t, p = _flat(y_true, y_pred)
        t = tf.cast(t > 0.5, tf.float32)
        p = tf.cast(p >= self.threshold, tf.float32)
        self.intersection.assign_add(tf.reduce_sum(t * p))
        self.total.assign_add(tf.reduce_sum(t) + tf.reduce_sum(p))

    def result(self):
        denominator = self.total if self.kind == "dice" else self.total - self.intersection
        numerator = 2.0 * self.intersection if self.kind == "dice" else self.intersection
        return tf.where(denominator > 0, numerator / tf.maximum(denominator, 1e-9), 1.0)

    def reset_state(self):
        self.intersection.assign(0.0)
        self.total.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "kind": self.kind, "threshold": self.threshold}


def compile_model(model: tf.keras.Model, config: UnetConfig, decay_steps: int | None = None) -> tf.keras.Model:
    """Adam; with `decay_steps`, the learning rate follows a cosine to zero over them, which settles
    the oscillation of the validation Dice that a constant rate leaves late in short runs.
    `config.jit_compile` compiles the train step with XLA (off by default: see docs/BENCHMARKS.md)."""
    rate = config.learning_rate
    if decay_steps:
        rate = tf.keras.optimizers.schedules.CosineDecay(rate, decay_steps)
    model.compile(optimizer=tf.keras.optimizers.Adam(rate),
                  loss=make_loss(config.bce_weight, config.dice_weight),
                  metrics=[OverlapMetric("dice"), OverlapMetric("iou")],
                  jit_compile=config.jit_compile)
    return model


def flops_per_slice(model: tf.keras.Model) -> int:
    """Forward-pass floating-point operations for one slice (multiply and add counted separately)."""
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    graph = tf.function(model).get_concrete_function(spec).graph
    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return int(profile(graph, options=options).total_float_ops)
