"""The served model's contract: what the Trainer exports, and how evaluation and `ctseg predict` call it.

A SavedModel with two signatures; the CT window is inside the model, so inputs are raw Hounsfield units:

- `serving_default` (`SERVING_SIGNATURE`): input `examples` (tf.string, [None], serialized slice
  examples of `ctseg.features`) → output `probabilities` (float32, [None, H, W]);
- `segment_hu` (`HU_SIGNATURE`): input `hu` (float32, [None, H, W]) → output `probabilities`.

H and W are the trained size, recorded as the signature's fixed input shape. A pixel is organ where its
probability is at least `THRESHOLD`. Slices of another size are resized to the trained size with
ingest's antialiased kernel and the probabilities resized back (`ServedModel.probabilities`).

A 2.5D model (`context_slices` k > 0, recorded in the SavedModel's `context_slices` variable) reads a
batch as one series: `hu` holds consecutive slices in position order, and each slice's k neighbours
on either side come from the batch (clamped at its ends); `serving_default` takes one patient's
examples in any order and sorts them by `slice_index`. `ServedModel.chunk_probabilities` calls it in
chunks that overlap by k, so every slice sees the neighbours one call over the series would give it.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Optional

from ctseg.errors import CtsegError

SERVING_SIGNATURE = "serving_default"
HU_SIGNATURE = "segment_hu"
EXAMPLES_INPUT = "examples"
HU_INPUT = "hu"
OUTPUT = "probabilities"
THRESHOLD = 0.5
SAVED_MODEL_FILE = "saved_model.pb"
TRAINER_EXPORT_DIR = "Format-Serving"  # where a Trainer's Model artifact holds its SavedModel (TFX's SERVING_MODEL_DIR)


def is_organ(probabilities):
    """The one decision rule, for numpy arrays and tensors alike: probability >= THRESHOLD."""
    return probabilities >= THRESHOLD


def export_model(model, image_size: int, export_dir: str, context_slices: int = 0) -> None:
    """Writes `model` (a Keras model from HU (batch, size, size) to probabilities) with both signatures;
    `context_slices` > 0: the model takes consecutive slices of one series (see the module docstring)."""
    import tensorflow as tf

    from ctseg import features

    model = tf.keras.Model(model.inputs, model.outputs)  # drops compile state (custom loss) from the export
    model.context_slices = tf.Variable(context_slices, trainable=False, dtype=tf.int32, name="context_slices")

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size], tf.float32, name=HU_INPUT)])
    def segment_hu(hu):
        return {OUTPUT: tf.cast(model(hu, training=False), tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
    def serve_examples(examples):
        hu, _ = features.parse_slices(examples, image_size)
        if not context_slices:
            return segment_hu(tf.cast(hu, tf.float32))
        ids = tf.io.parse_example(examples, features.feature_spec((features.PATIENT_KEY, features.SLICE_KEY)))
        one_patient = tf.debugging.assert_equal(
            ids[features.PATIENT_KEY], ids[features.PATIENT_KEY][0],
            message="a 2.5D model's serving_default takes one patient's slices per call (their neighbours are context)")
        with tf.control_dependencies([one_patient]):
            order = tf.argsort(ids[features.SLICE_KEY], stable=True)
        probabilities = segment_hu(tf.cast(tf.gather(hu, order), tf.float32))[OUTPUT]
        return {OUTPUT: tf.gather(probabilities, tf.math.invert_permutation(order))}

    model.save(export_dir, save_format="tf", include_optimizer=False,
               signatures={SERVING_SIGNATURE: serve_examples, HU_SIGNATURE: segment_hu})


@dataclasses.dataclass
class ServedModel:
    """The `segment_hu` signature of one exported model version and the size it was trained on."""
    path: Path | str  # the URI for a model in an object store
    version: str
    size: tuple[int, int]
    fn: object
    context_slices: int = 0  # neighbours on each side a 2.5D model reads from the batch (0: 2D)

    def __call__(self, hu):
        """Probabilities for HU already at the trained size."""
        return self.fn(**{HU_INPUT: hu})[OUTPUT]

    def chunk_probabilities(self, hu, batch_size: int = 16):
        """(start, probabilities) of one series' consecutive slices `hu` (N, h, w) in position order, `batch_size`
        slices at a time, at their own size (`probabilities`): each call gets `context_slices` extra slices on
        either side, so every slice sees the neighbours one call over the series gives it, and a caller can
        keep what it needs of each chunk rather than the series' probabilities."""
        import numpy as np

        count, k = len(hu), self.context_slices
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            lo, hi = max(0, start - k), min(count, stop + k)
            yield start, np.asarray(self.probabilities(hu[lo:hi]))[start - lo:stop - lo]

    def series_probabilities(self, hu, batch_size: int = 16):
        """Probabilities (N, h, w) as numpy of one series' consecutive slices (`chunk_probabilities`, joined)."""
        import numpy as np

        out = [p for _, p in self.chunk_probabilities(hu, batch_size)]
        return np.concatenate(out) if out else np.zeros((0, *np.shape(hu)[1:]), np.float32)

    def probabilities(self, hu, size: tuple[int, int] | None = None):
        """Probabilities at the slices' own `size` (default: `hu`'s static shape), resizing in and out
        when it differs from the trained size."""
        import tensorflow as tf

        size = tuple(size or hu.shape[1:3])
        if size == self.size:
            return self(hu)
        return tf.image.resize(self(self.at_model_size(hu))[..., None], size)[..., 0]

    def at_model_size(self, hu):
        """HU slices (N, h, w) resized to the trained size with ingest's antialiased kernel, as a tensor: what the
        model reads, and what the clean-up's HU gate (`postprocess.gate_probabilities`) compares."""
        import tensorflow as tf

        return tf.image.resize(tf.cast(hu, tf.float32)[..., None], self.size, antialias=True)[..., 0]

    def segment(self, hu, size: tuple[int, int] | None = None):
        """uint8 0/1 organ mask at the slices' own size."""
        import tensorflow as tf

        return tf.cast(is_organ(self.probabilities(hu, size)), tf.uint8)


def served_versions(serving_dir: str | os.PathLike, listdir=os.listdir, exists=os.path.exists) -> list[str]:
    """The numeric version folders of a serving dir that hold a saved_model.pb, oldest first. `listdir` and
    `exists` read other file systems (TFX's `fileio` for gs:// or s3://)."""
    root = os.fspath(serving_dir)
    names = (name.rstrip("/") for name in listdir(root))
    return sorted((n for n in names if n.isdigit() and exists(os.path.join(root, n, SAVED_MODEL_FILE))), key=int)


def is_complete_saved_model(path: str | os.PathLike, listdir=os.listdir, exists=os.path.exists) -> bool:
    """saved_model.pb with its variables index and every data shard the shard names count: a version the
    Pusher is still copying (its files arrive one by one) is not complete yet."""
    variables = os.path.join(os.fspath(path), "variables")
    if not exists(os.path.join(os.fspath(path), SAVED_MODEL_FILE)):
        return False
    if not exists(os.path.join(variables, "variables.index")):
        return False
    shards = [re.fullmatch(r"variables\.data-(\d+)-of-(\d+)", name.rstrip("/")) for name in listdir(variables)]
    counts = {int(m.group(2)) for m in shards if m}
    if len(counts) != 1:
        return False
    count = counts.pop()
    return {int(m.group(1)) for m in shards if m} == set(range(count))


def newest_complete_version(serving_dir: str | os.PathLike, listdir=os.listdir,
                            exists=os.path.exists) -> Optional[str]:
    """The version TensorFlow Serving serves and `ctseg predict` loads: the highest numeric folder holding a
    complete SavedModel; None when there is none."""
    complete = [v for v in served_versions(serving_dir, listdir, exists)
                if is_complete_saved_model(os.path.join(os.fspath(serving_dir), v), listdir, exists)]
    return os.path.join(os.fspath(serving_dir), complete[-1]) if complete else None


def _model_filesystem(where: str):
    """(is_file, is_dir, listdir, exists, as_path) for a local folder or a gs:// / s3:// one (tf.io.gfile)."""
    if "://" not in where:
        return os.path.isfile, os.path.isdir, os.listdir, os.path.exists, Path
    import tensorflow as tf

    from ctseg.object_stores import register_filesystems

    register_filesystems(where)
    gfile = tf.io.gfile
    return gfile.exists, gfile.isdir, gfile.listdir, gfile.exists, str


def resolve_model_dir(model: str | os.PathLike) -> Path | str:
    """A version dir (holds saved_model.pb) as given, a Trainer model's Format-Serving export, or a serving
    dir's newest complete version; a Path for a local folder, the URI for one in an object store."""
    where = os.fspath(model).rstrip("/") or "/"
    is_file, is_dir, listdir, exists, as_path = _model_filesystem(where)
    if is_file(os.path.join(where, SAVED_MODEL_FILE)):
        return as_path(where)
    if is_file(os.path.join(where, TRAINER_EXPORT_DIR, SAVED_MODEL_FILE)):  # a Trainer's Model artifact URI
        return as_path(os.path.join(where, TRAINER_EXPORT_DIR))
    if not is_dir(where):
        raise CtsegError(f"{where}: no such model folder (give the Pusher's serving dir or one version in it)")
    if not served_versions(where, listdir, exists):
        raise CtsegError(f"{where}: neither a SavedModel nor a serving dir with numeric version folders")
    newest = newest_complete_version(where, listdir, exists)
    if newest is None:
        raise CtsegError(f"{where}: no complete model version (every version lacks some of its variables files; "
                         "is the Pusher still copying one?)")
    return as_path(newest)


def load_model(model: str | os.PathLike) -> ServedModel:
    """Loads a version dir or a serving dir's newest version and checks its `segment_hu` signature."""
    import tensorflow as tf

    path = resolve_model_dir(model)
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as e:  # TF raises several types for a damaged or foreign SavedModel
        raise CtsegError(f"{path}: cannot load the SavedModel ({type(e).__name__}: {e})") from e
    if HU_SIGNATURE not in loaded.signatures:
        raise CtsegError(f"{path}: the model has no '{HU_SIGNATURE}' signature "
                         f"(has {', '.join(loaded.signatures) or 'none'})")
    fn = loaded.signatures[HU_SIGNATURE]
    spec = fn.structured_input_signature[1].get(HU_INPUT)
    if spec is None or spec.shape.rank != 3 or None in spec.shape[1:]:
        raise CtsegError(f"{path}: '{HU_SIGNATURE}' needs input '{HU_INPUT}' of shape [None, H, W], has {spec}")
    fn._ctseg_owner = loaded  # the signature does not keep its SavedModel's variables alive by itself
    context = getattr(loaded, "context_slices", None)  # absent in models exported before 2.5D: 2D
    return ServedModel(path, os.path.basename(os.fspath(path)), (int(spec.shape[1]), int(spec.shape[2])), fn,
                       int(context.numpy()) if context is not None else 0)
