"""TFX Trainer module file for the liver UNET (`module_file=models/unet/trainer.py`, or
`run_fn='ctseg.models.unet.trainer.run_fn'`), in the style of TFX's penguin example.

`custom_config` keys (all optional; a `preset` sets the defaults, explicit keys override it):
  preset                   'small' (default: 128 px, depth 4, 8 base filters, dropout 0.1, for CPUs)
                           or 'full' (256 px, depth 4, 32..512 filters, dropout 0.5: the blog post's net, for GPUs)
  image_size               input height = width in pixels; must equal ingest's image_size
  depth, base_filters      levels of the UNET and filters at the first level (doubling per level)
  dropout                  dropout rate after each pool and each up-concatenation
  window_center, window_width   CT window in HU applied inside the model (default liver window 60/400)
  epochs, batch_size, learning_rate   Adam training; batch_size is per replica
  bce_weight               loss = Dice loss + bce_weight * binary cross-entropy (0: pure Dice)
  keep_empty_probability   chance to keep a training slice without organ (default 0.4: drops 60%)
  flip_probability, rotate_probability (max_rotation_degrees), median_probability,
  noise_probability (noise_std_hu)   augmentation probabilities
  early_stopping_patience  epochs without val_loss improvement before stopping (best weights kept)
  shuffle_buffer, seed

`fn_args.train_steps` / `eval_steps`, when set, fix the number of batches (split evenly over the
epochs); otherwise each epoch is one pass over the balanced training split.
"""
from __future__ import annotations

import logging
import math
import os

import tensorflow as tf
from tfx import v1 as tfx

from ctseg.models.unet import data
from ctseg.models.unet.config import UnetConfig
from ctseg.models.unet.model import build_unet, compile_model

log = logging.getLogger(__name__)
SERVING_SIGNATURE = "serving_default"
HU_SIGNATURE = "segment_hu"


def _input_fn(file_pattern, config: UnetConfig, batch_size: int, training: bool, steps: int | None = None):
    """Training data repeats (epochs are step counts); eval data repeats only when `eval_steps` is set."""
    return data._input_fn(file_pattern, config, batch_size, training, repeat=training or bool(steps))


def _build_model(config: UnetConfig, total_steps: int | None = None) -> tf.keras.Model:
    return compile_model(build_unet(config), config, decay_steps=total_steps)


def distribution_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over every GPU with mixed precision; the default (single-device) strategy on CPU."""
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
        strategy = tf.distribute.MirroredStrategy([d.name for d in gpus])
        log.warning("training on %d GPU(s) with mixed precision: %s", len(gpus), ", ".join(d.name for d in gpus))
    else:
        tf.keras.mixed_precision.set_global_policy("float32")
        strategy = tf.distribute.get_strategy()
        log.warning("training on CPU (no GPU found), %d threads", os.cpu_count() or 1)
    return strategy


def _callbacks(fn_args: tfx.components.FnArgs, config: UnetConfig, has_eval: bool):
    monitor = "val_loss" if has_eval else "loss"
    return [
        tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
        tf.keras.callbacks.ModelCheckpoint(os.path.join(fn_args.model_run_dir, "checkpoints", "best"),
                                           monitor=monitor, save_best_only=True, save_weights_only=True),
        tf.keras.callbacks.EarlyStopping(monitor=monitor, patience=config.early_stopping_patience,
                                         restore_best_weights=True),
    ]


def export_model(model: tf.keras.Model, config: UnetConfig, export_dir: str) -> None:
    """SavedModel with the two signatures of docs/DESIGN.md; the fixed input shape records the trained size."""
    size = config.image_size
    model = tf.keras.Model(model.inputs, model.outputs)  # drops compile state (custom loss) from the export

    @tf.function(input_signature=[tf.TensorSpec([None, size, size], tf.float32, name="hu")])
    def segment_hu(hu):
        return {"probabilities": tf.cast(model(hu, training=False), tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(examples):
        hu, _ = data.parse_examples(examples, size)
        return segment_hu(tf.cast(hu, tf.float32))

    model.save(export_dir, save_format="tf", include_optimizer=False,
               signatures={SERVING_SIGNATURE: serve_examples, HU_SIGNATURE: segment_hu})


def run_fn(fn_args: tfx.components.FnArgs):
    """Trains the UNET on the train split, validates on eval, and exports to `serving_model_dir`."""
    config = UnetConfig.from_custom_config(fn_args.custom_config)
    log.info("UNET config: %s", config)
    tf.keras.utils.set_random_seed(config.seed)  # weights, balancing and augmentation repeat run to run
    for split_files in (fn_args.train_files, fn_args.eval_files):
        if split_files:
            data.check_image_size(split_files, config.image_size)
    strategy = distribution_strategy()
    batch_size = config.batch_size * strategy.num_replicas_in_sync
    epochs = min(config.epochs, fn_args.train_steps) if fn_args.train_steps else config.epochs
    if fn_args.train_steps:
        train_steps = math.ceil(fn_args.train_steps / epochs)
    else:
        train_steps = data.balanced_epoch_steps(fn_args.train_files, config, batch_size)
    log.warning("%d epochs of %d steps, %d slices per step", epochs, train_steps, batch_size)
    eval_steps = fn_args.eval_steps or None
    train_ds = _input_fn(fn_args.train_files, config, batch_size, training=True, steps=train_steps)
    has_eval = bool(fn_args.eval_files)
    eval_ds = _input_fn(fn_args.eval_files, config, batch_size, training=False, steps=eval_steps) if has_eval else None

    with strategy.scope():
        model = _build_model(config, total_steps=epochs * train_steps)
    model.fit(train_ds, epochs=epochs, steps_per_epoch=train_steps, validation_data=eval_ds,
              validation_steps=eval_steps, callbacks=_callbacks(fn_args, config, has_eval), verbose=2)
    export_model(model, config, fn_args.serving_model_dir)
