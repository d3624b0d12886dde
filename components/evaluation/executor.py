"""Executor of SegmentationEvaluator: scores the model per patient, decides the blessing, writes both artifacts."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Iterator, Optional

import numpy as np
from absl import logging
from tfx import types
from tfx.components.evaluator import constants
from tfx.dsl.components.base import base_executor
from tfx.dsl.io import fileio
from tfx.types import artifact_utils
from tfx.types import standard_component_specs as keys
from tfx.utils import io_utils, path_utils

from ctseg import features, postprocess, profile
from ctseg.components.evaluation import METRICS_FILE, figures, metrics, scoring
from ctseg.errors import CtsegError
from ctseg.serving import newest_complete_version

SPLIT_KEY = "split"
PROFILE_SUBDIR = "training_profile"  # the model's training profile, as the evaluation recorded it
DICE_THRESHOLD_KEY = "dice_threshold"
DICE_TOLERANCE_KEY = "dice_tolerance"
BATCH_SIZE_KEY = "batch_size"
CLEANUP_KEY = "cleanup"
SERVING_DIR_KEY = "serving_dir"
METADATA_KEY = "metadata"

GRID_FILE = "eval_grid.png"
# What evaluation reads of each example: pixels, patient and slice, the geometry for volumes in ml and
# ASSD in mm, and the source-size mask for scores at the source resolution.
EVAL_KEYS = (*features.PIXEL_KEYS, features.PATIENT_KEY, features.SLICE_KEY, features.SPACING_KEY,
             features.THICKNESS_KEY, features.SOURCE_ROWS_KEY, features.SOURCE_COLUMNS_KEY, features.SOURCE_MASK_KEY)


class Segmenter:
    """A SavedModel folder's served model (`ctseg.serving.load_model`), fed in batches at the examples'
    size (a baseline trained at another `image_size` is resized in and out by `ServedModel.probabilities`)."""

    def __init__(self, path: str):
        from ctseg.serving import load_model

        self.path = path
        self._served = load_model(self.path)
        self.size = self._served.size

    def probabilities(self, hu: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Probabilities (N, H, W) of one patient's consecutive slices (N, H, W) in position order (a
        2.5D model stacks each slice with its neighbours), at the slices' size."""
        return self._served.series_probabilities(np.asarray(hu, np.float32), batch_size)


def model_path(model: types.Artifact) -> str:
    """The SavedModel folder of a Model artifact, the one the Pusher copies to a serving version."""
    return path_utils.serving_model_path(model.uri, path_utils.is_old_model_artifact(model))


def newest_served_model(serving_dir: str) -> Optional[str]:
    """The version TensorFlow Serving serves (`ctseg.serving.newest_complete_version`), on any file system."""
    if not serving_dir or not fileio.isdir(serving_dir):
        return None
    return newest_complete_version(serving_dir, fileio.listdir, fileio.exists)


def saved_model_digest(path: str) -> str:
    """A digest of every file of a SavedModel folder (names and bytes): the Pusher's copy of a model
    has the model's digest."""
    digest = hashlib.sha256()
    for directory, _, files in sorted(fileio.walk(path)):
        for name in sorted(files):
            full = os.path.join(directory, name)
            digest.update(os.path.relpath(full, path).encode() + b"\0")
            with fileio.open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def served_model_id(metadata: str, version_dir: str) -> Optional[int]:
    """The Model artifact id behind a pushed version, from the ML Metadata store `metadata`
    ("sqlite:PATH" or "grpc:HOST:PORT"); None when there is no store or it has no such push."""
    from ctseg.mlmd import lineage
    from ctseg.mlmd.store import connect

    kind, _, where = (metadata or "").partition(":")
    try:
        if kind == "sqlite":
            store = connect(sqlite_path=where)
        elif kind == "grpc":
            host, _, port = where.rpartition(":")
            store = connect(host=host, port=int(port))
        else:
            return None
        return lineage.served_model_id(store, version_dir)
    except (CtsegError, ValueError) as e:  # the id is a detail: the baseline's path still says which model
        logging.warning("could not look up the serving model %s in ML Metadata (%s): %s", version_dir, metadata, e)
        return None


def split_files(examples: types.Artifact, split: str) -> list[str]:
    if split not in artifact_utils.decode_split_names(examples.split_names):
        raise CtsegError(f"the examples at {examples.uri} have no '{split}' split "
                         f"(they have {examples.split_names})")
    split_uri = artifact_utils.get_split_uri([examples], split)
    files = sorted(fileio.glob(os.path.join(split_uri, "*")))
    if not files:
        raise CtsegError(f"no example files in {split_uri}")
    return files


def read_slices(files: list[str], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of decoded slices: HU (N, H, W) float32, mask (N, H, W) uint8, patient ids, slice indices,
    voxel volumes, spacing and thickness, and the packed source-size masks with their shapes."""
    import tensorflow as tf

    spec = features.feature_spec(EVAL_KEYS)
    compression = "GZIP" if all(f.endswith(".gz") for f in files) else ""
    ds = (tf.data.TFRecordDataset(files, compression_type=compression).batch(batch_size)
          .map(lambda s: tf.io.parse_example(s, spec)))
    where = os.path.dirname(files[0])
    try:
        for b in ds.as_numpy_iterator():
            yield decode_batch(b, where)
    except tf.errors.OpError as e:
        raise CtsegError(f"unreadable examples in {where}: {e.message.splitlines()[0]}") from e


def decode_batch(b: dict[str, np.ndarray], where: str) -> dict[str, np.ndarray]:
    h, w = b[features.HEIGHT_KEY], b[features.WIDTH_KEY]
    if len(set(h.tolist())) != 1 or len(set(w.tolist())) != 1:
        raise CtsegError(f"examples in {where} have mixed slice sizes {sorted(set(zip(h.tolist(), w.tolist())))}")
    shape = (len(h), int(h[0]), int(w[0]))
    try:
        hu = np.frombuffer(b"".join(b[features.IMAGE_KEY]), features.IMAGE_DTYPE).reshape(shape)
        mask = np.frombuffer(b"".join(b[features.MASK_KEY]), features.MASK_DTYPE).reshape(shape)
    except ValueError as e:
        raise CtsegError(f"examples in {where}: image or mask bytes do not match height x width {shape[1:]}") from e
    spacing = b[features.SPACING_KEY].astype(np.float64)
    pixel_mm2 = (spacing * b[features.SOURCE_ROWS_KEY] / h) * (spacing * b[features.SOURCE_COLUMNS_KEY] / w)
    return {"hu": hu.astype(np.float32), "mask": mask,
            "patient_id": np.array([p.decode() for p in b[features.PATIENT_KEY]]),
            "slice_index": b[features.SLICE_KEY],
            "voxel_ml": pixel_mm2 * b[features.THICKNESS_KEY] / 1000.0,
            "spacing_mm": spacing, "thickness_mm": b[features.THICKNESS_KEY].astype(np.float64),
            "source_mask": list(b[features.SOURCE_MASK_KEY]),
            "source_shape": np.stack([b[features.SOURCE_ROWS_KEY], b[features.SOURCE_COLUMNS_KEY]], axis=1)}


def grid_rows(summary: dict, shown: dict, model: str = "model") -> list[figures.GridRow]:
    rows = []
    for label, row in metrics.best_median_worst(summary["patients"]):
        hu, truth, predictions = shown[row["patient_id"]]
        rows.append(figures.GridRow(f"{label}: {row['patient_id']}\nDice {row['dice']:.3f}", hu, truth,
                                    predictions[model]))
    return rows


class Executor(base_executor.BaseExecutor):
    """Writes metrics.json and eval_grid.png into `evaluation`, BLESSED/NOT_BLESSED into `blessing`."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        examples = artifact_utils.get_single_instance(input_dict[keys.EXAMPLES_KEY])
        model = artifact_utils.get_single_instance(input_dict[keys.MODEL_KEY])
        served = newest_served_model(exec_properties.get(SERVING_DIR_KEY) or "")
        # A rerun whose Trainer came from the cache evaluates the very model that is serving.
        already_serving = served is not None and saved_model_digest(served) == saved_model_digest(model_path(model))
        baseline_dir = None if already_serving else served
        baseline_id = served_model_id(exec_properties.get(METADATA_KEY) or "", served) if served else None
        evaluation = artifact_utils.get_single_instance(output_dict[keys.EVALUATION_KEY])
        blessing = artifact_utils.get_single_instance(output_dict[keys.BLESSING_KEY])
        split = exec_properties.get(SPLIT_KEY) or "eval"
        threshold = float(exec_properties[DICE_THRESHOLD_KEY])
        tolerance = float(exec_properties[DICE_TOLERANCE_KEY])
        cleanup = postprocess.Cleanup.parse(exec_properties.get(CLEANUP_KEY) or "on")

        files = split_files(examples, split)
        segmenters = {"model": Segmenter(model_path(model)).probabilities}
        if baseline_dir is not None:
            segmenters["baseline"] = Segmenter(baseline_dir).probabilities
        summaries, shown = scoring.evaluate(
            read_slices(files, int(exec_properties.get(BATCH_SIZE_KEY) or 32)), segmenters, cleanup)
        summary, base_summary = summaries["model"], summaries.get("baseline")
        if summary is None:
            raise CtsegError(f"the '{split}' split of {examples.uri} holds no slices to evaluate")
        blessed, reason = metrics.blessing_decision(
            summary["mean_patient_dice"], threshold, tolerance,
            base_summary["mean_patient_dice"] if base_summary else None, already_serving=already_serving)

        grid_path = os.path.join(evaluation.uri, GRID_FILE)
        figures.write_grid(grid_rows(summary, shown), grid_path,
                           title=f"{split} split: mean per-patient Dice {summary['mean_patient_dice']:.3f}")
        result = {
            **summary,
            "split": split, "dice_threshold": threshold, "dice_tolerance": tolerance,
            "blessed": blessed, "reason": reason, "grid_png": GRID_FILE,
            "model": {"uri": model.uri, "id": model.id},
            "serving": None if served is None else {"uri": served, "id": baseline_id, "is_this_model": already_serving},
            "baseline": None if baseline_dir is None else {"uri": baseline_dir, "id": baseline_id, **base_summary},
            "training_profile": record_profile(model_path(model), evaluation, blessing),
        }
        io_utils.write_string_file(os.path.join(evaluation.uri, METRICS_FILE), json.dumps(result, indent=2))
        self._annotate(evaluation, result)
        evaluation.set_string_custom_property("grid_png", grid_path)
        self._annotate(blessing, result)
        write_blessing(blessing, model, result["baseline"], blessed, exec_properties)
        logging.info("Evaluation of model %s: %s", model.uri, reason)
        logging.info("Evaluation picture: %s", grid_path)

    @staticmethod
    def _annotate(artifact: types.Artifact, result: dict) -> None:
        """The figures ML Metadata (and `ctseg runs`) shows without opening metrics.json."""
        for key in ("mean_patient_dice", "mean_patient_iou", "mean_slice_dice", "mean_slice_iou"):
            artifact.set_float_custom_property(key, result[key])
        for key, value in (result.get("source_resolution") or {}).items():
            if key.startswith("mean_") and value is not None:
                artifact.set_float_custom_property(f"source_{key}", value)
        if result["baseline"]:
            artifact.set_float_custom_property("baseline_mean_patient_dice", result["baseline"]["mean_patient_dice"])
        artifact.set_string_custom_property("reason", result["reason"])
        artifact.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY, int(result["blessed"]))
        artifact.set_string_custom_property(constants.ARTIFACT_PROPERTY_BLESSING_MESSAGE_KEY, result["reason"])


def record_profile(model_dir: str, evaluation: types.Artifact, blessing: types.Artifact) -> Optional[str]:
    """Copies the training profile the model carries (`ctseg.profile`) into the evaluation and names it on
    both artifacts, so ML Metadata finds the profile of the model this evaluation judged; None without one."""
    source = os.path.join(model_dir, profile.PROFILE_DIR)
    dest = os.path.join(evaluation.uri, PROFILE_SUBDIR)
    if not profile.copy_profile(source, dest):
        logging.warning("model %s carries no training profile (%s)", model_dir, source)
        return None
    for artifact in (evaluation, blessing):
        artifact.set_string_custom_property(profile.PROFILE_URI_KEY, dest)
        artifact.set_string_custom_property(profile.PROFILE_SOURCE_KEY, source)
    return dest


def write_blessing(blessing: types.Artifact, model: types.Artifact, baseline: Optional[dict],
                   blessed: bool, exec_properties: dict[str, Any]) -> None:
    """As tfx.components.evaluator.executor does, so Pusher and LatestBlessedModelStrategy accept it;
    the baseline is the serving version's folder (and its Model artifact id when ML Metadata knows it)."""
    blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_URI_KEY, model.uri)
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY, model.id)
    if baseline is not None:
        blessing.set_string_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_URI_KEY, baseline["uri"])
        if baseline["id"] is not None:
            blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BASELINE_MODEL_ID_KEY, baseline["id"])
    if "current_component_id" in exec_properties:
        blessing.set_string_custom_property("component_id", exec_properties["current_component_id"])
    name = constants.BLESSED_FILE_NAME if blessed else constants.NOT_BLESSED_FILE_NAME
    io_utils.write_string_file(os.path.join(blessing.uri, name), "")
    blessing.set_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY,
                                     constants.BLESSED_VALUE if blessed else constants.NOT_BLESSED_VALUE)
