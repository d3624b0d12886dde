"""TFX Trainer module file for the liver UNET (`module_file=models/unet/trainer.py`, or
`run_fn='ctseg.models.unet.trainer.run_fn'`), in the style of TFX's penguin example.

`custom_config` keys (all optional; a `preset` sets the defaults, explicit keys override it):
  preset                   'small' (default: 128 px, depth 4, 12 base filters, dropout 0.1, 18 epochs, for CPUs)
                           or 'full' (256 px, depth 4, 32..512 filters, dropout 0.5, 40 epochs: the blog post's net,
                           for GPUs)
  image_size               input height = width in pixels; must equal ingest's image_size
  depth, base_filters      levels of the UNET and filters at the first level (doubling per level)
  dropout                  dropout rate after each pool and each up-concatenation
  context_slices           2.5D: k neighbours above and below each slice as input channels (0: one slice);
                           the served model takes consecutive slices and stacks them itself
  window_center, window_width   CT window in HU applied inside the model (default liver window 60/400)
  epochs, batch_size, learning_rate   Adam training; batch_size is per replica
  min_epoch_steps          batches an epoch, at least (default 40, 720 in 18 epochs): a pass over a few
                           patients is lengthened to it, so they train long enough to learn the contrast,
                           not only where livers usually lie (0: one pass an epoch)
  dice_weight, bce_weight  loss = dice_weight * soft Dice loss + bce_weight * binary cross-entropy (bce_weight 0:
                           pure Dice; dice_weight 0: pure cross-entropy, whose volumes are calibrated)
  keep_empty_probability   chance to keep a training slice without organ (default 0.4: drops 60%)
  augmentation in the train step, drawn per slice, each with its probability (and its size), in this order:
    flip_probability (left-right, default 0: the liver is on the right; on the phantom with the chest,
    dropping the flip cut the real heart labelled liver by 40-60%, docs/BENCHMARKS.md);
    rotate_probability (max_rotation_degrees) and scale_probability (zoom 1 ± max_scale),
    one resampling; elastic_probability (elastic_max_px: a smooth displacement field);
    hu_scale_probability (1 ± max_hu_scale about 0 HU) and hu_shift_probability (± max_hu_shift HU):
    contrast phase and calibration; blur_probability (Gaussian, sigma up to max_blur_sigma_px) and
    median_probability (3x3): reconstruction kernel; low_resolution_probability (a pixel grid coarser by a
    scale drawn in [min_resolution_scale, 1] per side, nearest down and bilinear up): matrix, kernel, thick
    slices; noise_probability (Gaussian of a sigma drawn in [noise_std_min_hu, noise_std_hu]): dose
  average_weights_from     the trained model is the mean of the weights at the end of each epoch from this
                           fraction of the epochs on (stochastic weight averaging; default 0: the last epoch's)
  early_stopping_patience  epochs without val_loss improvement before stopping (best weights kept)
  shuffle_buffer, seed
  jit_compile              compile the train step with XLA (default false; docs/BENCHMARKS.md says why)

`fn_args.train_steps` / `eval_steps`, when set, fix the number of batches (split evenly over the
epochs); otherwise each epoch is one pass over the balanced training split, or min_epoch_steps batches
where that is more.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import TYPE_CHECKING, Callable

import tensorflow as tf

from ctseg import profile, serving
from ctseg.cpu_kernels import onednn_in_use
from ctseg.models.unet import data
from ctseg.models.unet.augment import augmenting
from ctseg.models.unet.config import UnetConfig
from ctseg.models.unet.model import build_unet, compile_model, serving_model

if TYPE_CHECKING:  # importing TFX doubles a fresh process's start-up, and run_fn only reads FnArgs' fields
    from tfx import v1 as tfx

log = logging.getLogger(__name__)


def _input_fn(file_pattern, config: UnetConfig, batch_size: int, training: bool, steps: int | None = None):
    """Training data repeats (epochs are step counts); eval data repeats only when `eval_steps` is set."""
    return data._input_fn(file_pattern, config, batch_size, training, repeat=training or bool(steps))


def _build_model(config: UnetConfig, total_steps: int | None = None) -> tf.keras.Model:
    """The UNET with the config's augmentation in its train step, compiled."""
    return compile_model(augmenting(build_unet(config), config), config, decay_steps=total_steps)


def distribution_strategy(devices=None) -> tf.distribute.Strategy:
    """MirroredStrategy over `devices` (default: every logical GPU) with the `mixed_float16` policy;
    the default single-device strategy with float32 when there are none.

    Sets Keras's global policy, so call it before building the model. Tests pass logical CPU devices
    to take the GPU path on a machine without one.
    """
    devices = list(tf.config.list_logical_devices("GPU") if devices is None else devices)
    if devices:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        return tf.distribute.MirroredStrategy([getattr(d, "name", d) for d in devices])
    tf.keras.mixed_precision.set_global_policy("float32")
    return tf.distribute.get_strategy()


def describe_training(strategy: tf.distribute.Strategy, config: UnetConfig, global_batch: int) -> str:
    """One line a user on a cluster reads to see whether the GPU was used, and how."""
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        devices = ", ".join(strategy.extended.worker_devices)
    else:
        onednn = {True: "on", False: "off", None: "unknown"}[onednn_in_use()]
        devices = (f"{tf.config.list_logical_devices()[0].name} (no GPU found; {os.cpu_count() or 1} CPU threads, "
                   f"oneDNN kernels {onednn})")
    replicas = strategy.num_replicas_in_sync
    return (f"training on {devices} with {type(strategy).__name__}: {replicas} replica(s), global batch "
            f"{global_batch} ({global_batch // replicas} per replica), policy "
            f"{tf.keras.mixed_precision.global_policy().name}, jit_compile {'on' if config.jit_compile else 'off'}")


class SlicesPerSecond(tf.keras.callbacks.Callback):
    """Logs each epoch's training slices per second (validation excluded) and adds it to the epoch's
    logs, so TensorBoard and the History record it too. Epoch 1 includes tracing (and XLA compilation)."""

    def __init__(self, global_batch: int, steps_per_epoch: int):
        super().__init__()
        self.slices = global_batch * steps_per_epoch
        self.started = self.trained = None

    def on_epoch_begin(self, epoch, logs=None):
        self.started, self.trained = time.perf_counter(), None

    def on_test_begin(self, logs=None):
        if self.started is not None and self.trained is None:
            self.trained = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        seconds = (self.trained or time.perf_counter()) - self.started
        rate = self.slices / seconds
        if logs is not None:
            logs["slices_per_second"] = rate
        log.warning("epoch %d: %.1f training slices/s (%d slices in %.2f s)", epoch + 1, rate, self.slices, seconds)


class WeightAverage(tf.keras.callbacks.Callback):
    """The uniform mean of the weights at the end of each epoch from `first_epoch` (0-based) on replaces the
    trained weights when training ends (stochastic weight averaging): a flatter point of the loss surface than
    any one epoch's, which generalises better to data unlike the training data."""

    def __init__(self, first_epoch: int):
        super().__init__()
        self.first_epoch, self.count, self.mean = first_epoch, 0, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch < self.first_epoch:
            return
        weights = self.model.get_weights()
        self.count += 1
        if self.mean is None:
            self.mean = [w.astype("float64") for w in weights]
        else:
            for mean, w in zip(self.mean, weights):
                mean += (w - mean) / self.count

    def on_train_end(self, logs=None):
        if self.count:
            self.model.set_weights([m.astype(w.dtype) for m, w in zip(self.mean, self.model.get_weights())])
            log.warning("weights averaged over the last %d epochs", self.count)


def _callbacks(fn_args: tfx.components.FnArgs, config: UnetConfig, has_eval: bool, global_batch: int, steps: int,
               epochs: int):
    monitor = "val_loss" if has_eval else "loss"
    averaging = [WeightAverage(math.ceil(config.average_weights_from * epochs))] if config.average_weights_from else []
    return [
        SlicesPerSecond(global_batch, steps),
        tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        tf.keras.callbacks.ModelCheckpoint(os.path.join(fn_args.model_run_dir, "checkpoints", "best"),
                                           monitor=monitor, save_best_only=True, save_weights_only=True),
        tf.keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping_patience,
                                         restore_best_weights=True),
    ] + averaging


def export_model(model: tf.keras.Model, config: UnetConfig, export_dir: str) -> None:
    """The served model of `ctseg.serving` (both signatures), at the trained size; a 2.5D model stacks
    each slice's neighbours itself (`serving_model`), so callers give consecutive HU slices."""
    network = tf.keras.Model(model.inputs, model.outputs, name=model.name)  # without the training-only step
    serving.export_model(serving_model(network, config), config.image_size, export_dir,
                         context_slices=config.context_slices)


def training_schedule(config: UnetConfig, train_steps: int | None, one_pass: Callable[[], int]) -> tuple[int, int]:
    """(epochs, batches per epoch): `train_steps` in all when the pipeline fixes it; otherwise one pass over
    the balanced training split (`one_pass()` batches) per epoch, or `min_epoch_steps` where that is more."""
    if train_steps:
        epochs = min(config.epochs, train_steps)
        return epochs, math.ceil(train_steps / epochs)
    per_pass = one_pass()
    steps = max(per_pass, config.min_epoch_steps)
    if steps > per_pass:
        log.warning("one pass over the balanced training split is %d batches; each epoch runs min_epoch_steps %d",
                    per_pass, steps)
    return config.epochs, steps


def run_fn(fn_args: tfx.components.FnArgs, devices=None):
    """Trains the UNET on the train split, validates on eval, and exports to `serving_model_dir` with the
    training profile in its assets.extra (`ctseg.profile`: what `ctseg predict` compares a series with).

    `devices` overrides which devices count as accelerators (see `distribution_strategy`); TFX passes none.
    """
    config = UnetConfig.from_custom_config(fn_args.custom_config)
    log.info("UNET config: %s", config)
    tf.keras.utils.set_random_seed(config.seed)  # weights, balancing and augmentation repeat run to run
    for split_files in (fn_args.train_files, fn_args.eval_files):
        if split_files:
            data.check_image_size(split_files, config.image_size)
    strategy = distribution_strategy(devices)
    batch_size = config.batch_size * strategy.num_replicas_in_sync
    log.warning(describe_training(strategy, config, batch_size))
    epochs, train_steps = training_schedule(
        config, fn_args.train_steps, lambda: data.balanced_epoch_steps(fn_args.train_files, config, batch_size))
    log.warning("%d epochs of %d steps, %d slices per step", epochs, train_steps, batch_size)
    eval_steps = fn_args.eval_steps or None
    train_ds = _input_fn(fn_args.train_files, config, batch_size, training=True, steps=train_steps)
    has_eval = bool(fn_args.eval_files)
    eval_ds = _input_fn(fn_args.eval_files, config, batch_size, training=False, steps=eval_steps) if has_eval else None

    with strategy.scope():
        model = _build_model(config, total_steps=epochs * train_steps)
    model.fit(train_ds, epochs=epochs, steps_per_epoch=train_steps, validation_data=eval_ds,
              validation_steps=eval_steps, verbose=2,
              callbacks=_callbacks(fn_args, config, has_eval, batch_size, train_steps, epochs))
    export_model(model, config, fn_args.serving_model_dir)
    profile.profile_trained_model(fn_args.serving_model_dir, fn_args.train_files, fn_args.eval_files)
