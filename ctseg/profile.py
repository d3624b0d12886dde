"""What a model was trained on, travelling with the model: its training profile.

The Trainer writes it into the exported SavedModel's `assets.extra/` (a folder TensorFlow Serving
copies with the model and ignores), so a pushed version, a KServe copy or a model folder mailed to a
colleague all carry it:

- `training_statistics.pb`: TFDV statistics (a DatasetFeatureStatisticsList) of the per-slice
  features of the training examples that `ctseg predict` can compute for any series as well
  (`SERIES_FEATURES`: field of view, slice thickness, HU min/max/mean/std at the trained size) and
  the HU of a grid of pixels of each slice (`HU_SAMPLE_KEY`), whose histogram is the HU histogram;
- `training_profile.json`: per training patient the organ volume (ml), the fraction of slices with
  organ, thickness and spacing; per eval patient what the trained model predicts there (its volume
  and the number of 3D components before the clean-up).

`ctseg predict` compares a series with it (`ctseg.predict.ood`); the evaluator records the profile
of the model it judges, so ML Metadata finds it for a Trainer output whose folder lacks it.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

from ctseg import features
from ctseg.errors import CtsegError

PROFILE_DIR = "assets.extra"
PROFILE_FILE = "training_profile.json"
STATISTICS_FILE = "training_statistics.pb"
# The field of view, not the pixel spacing: the model resizes the whole slice to its size, so the field of view sets
# how big an organ is on its input, and 3 mm pixels of a 366 mm field read as well as 0.98 mm ones of 500 mm.
SERIES_FEATURES = (features.FIELD_OF_VIEW_KEY, features.THICKNESS_KEY, *features.HU_STATS_KEYS)
HU_SAMPLE_KEY = "hu_sample"  # the HU of a regular grid of pixels of each slice: the series' HU histogram
HU_SAMPLE_GRID = 32          # pixels per side of that grid (1024 per slice)
HISTOGRAM_BUCKETS = 40       # of TFDV's standard histograms, which its Jensen-Shannon divergence compares
PROFILE_KEYS = (features.PATIENT_KEY, features.SLICE_KEY, features.SPACING_KEY, features.THICKNESS_KEY,
                features.SOURCE_ROWS_KEY, features.SOURCE_COLUMNS_KEY, features.SOURCE_MASK_KEY,
                *features.HU_STATS_KEYS)


@dataclasses.dataclass
class Profile:
    """The training profile of one model: statistics of its training slices, and per-patient organ figures."""
    statistics: object             # tensorflow_metadata DatasetFeatureStatisticsList of SERIES_FEATURES
    patients: list[dict]           # training patients: patient_id, slices, volume_ml, organ_slice_fraction, ...
    eval_predictions: list[dict]   # eval patients: patient_id, volume_ml, components_before_cleanup (the model's)
    organ: str = "liver"
    source: str = ""               # where it was read from (a file, or an ML Metadata artifact)

    def range_of(self, key: str, rows: Optional[list[dict]] = None) -> Optional[tuple[float, float]]:
        values = [r[key] for r in (self.patients if rows is None else rows) if r.get(key) is not None]
        return (min(values), max(values)) if values else None

    def to_json(self) -> dict:
        return {"organ": self.organ, "patients": self.patients, "eval_predictions": self.eval_predictions,
                "statistics_file": STATISTICS_FILE}


def hu_sample(hu: np.ndarray) -> np.ndarray:
    """The HU of a HU_SAMPLE_GRID x HU_SAMPLE_GRID grid of pixels of a slice (all pixels of a smaller one)."""
    step = max(1, min(hu.shape) // HU_SAMPLE_GRID)
    return np.asarray(hu, np.float32)[::step, ::step].ravel()


def field_of_view_mm(column_spacing_mm: float, columns: int) -> float:
    """The width of the slice in mm, which the model sees at its own size whatever the pixels."""
    return float(column_spacing_mm) * int(columns)


def slice_feature_rows(examples: Iterable[bytes]) -> list[dict]:
    """Each serialized slice example's patient, index, SERIES_FEATURES, HU sample and organ pixels at the
    source size."""
    rows = []
    for serialized in examples:
        ex = features.decode_example(serialized)
        rows.append({**{k: ex[k] for k in (features.PATIENT_KEY, features.SLICE_KEY, features.SPACING_KEY,
                                           features.THICKNESS_KEY, *features.HU_STATS_KEYS)},
                     features.FIELD_OF_VIEW_KEY: field_of_view_mm(ex[features.SPACING_KEY],
                                                                  ex[features.SOURCE_COLUMNS_KEY]),
                     HU_SAMPLE_KEY: hu_sample(ex[features.IMAGE_KEY]),
                     "organ_pixels": int(np.count_nonzero(ex[features.SOURCE_MASK_KEY]))})
    return rows


def feature_statistics(rows: list[dict]):
    """TFDV statistics of per-slice rows (one example per slice: SERIES_FEATURES and the HU sample), in
    memory, without a Beam pipeline."""
    import pyarrow as pa
    from tensorflow_data_validation import StatsOptions
    from tensorflow_data_validation.statistics.stats_impl import generate_statistics_in_memory

    def column(values: list[np.ndarray]) -> pa.ListArray:
        offsets = np.concatenate([[0], np.cumsum([len(v) for v in values])]).astype(np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(values).astype(np.float32)))

    names = (*SERIES_FEATURES, HU_SAMPLE_KEY)
    batch = pa.RecordBatch.from_arrays([column([np.atleast_1d(r[k]) for r in rows]) for k in names], list(names))
    return generate_statistics_in_memory(batch, StatsOptions(num_histogram_buckets=HISTOGRAM_BUCKETS))


def patient_figures(rows: list[dict]) -> list[dict]:
    """Per patient: slices, organ volume in ml (organ pixels x spacing^2 x thickness), the fraction of
    slices with organ, and the patient's thickness and spacing."""
    by_patient: dict[str, list[dict]] = {}
    for r in rows:
        by_patient.setdefault(r[features.PATIENT_KEY], []).append(r)
    out = []
    for patient, slices in sorted(by_patient.items()):
        volume_ml = sum(r["organ_pixels"] * r[features.SPACING_KEY] ** 2 * r[features.THICKNESS_KEY]
                        for r in slices) / 1000.0
        out.append({"patient_id": patient, "slices": len(slices), "volume_ml": round(volume_ml, 1),
                    "organ_slice_fraction": round(sum(r["organ_pixels"] > 0 for r in slices) / len(slices), 3),
                    "thickness_mm": round(float(np.median([r[features.THICKNESS_KEY] for r in slices])), 3),
                    "spacing_mm": round(float(np.median([r[features.SPACING_KEY] for r in slices])), 3)})
    return out


def read_examples(file_patterns) -> list[bytes]:
    """Every serialized example of gzipped TFRecord files (the Trainer's `train_files` / `eval_files`)."""
    import tensorflow as tf

    patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns or ())
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        return []
    return [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def count_components(volume: np.ndarray) -> int:
    """26-connected foreground components of a (slices, rows, cols) binary volume, as the clean-up counts them."""
    from scipy import ndimage

    return int(ndimage.label(np.asarray(volume) != 0, structure=np.ones((3, 3, 3), bool))[1])


def eval_predictions(served, examples: list[bytes], batch_size: int = 16) -> list[dict]:
    """The exported model on each eval patient (slices in position order, at the trained size): its
    predicted organ volume and the number of 3D components before the clean-up."""
    from ctseg.serving import is_organ

    patients: dict[str, list[dict]] = {}
    for serialized in examples:
        ex = features.decode_example(serialized)
        patients.setdefault(ex[features.PATIENT_KEY], []).append(ex)
    out = []
    for patient, slices in sorted(patients.items()):
        slices.sort(key=lambda ex: ex[features.SLICE_KEY])
        hu = np.stack([ex[features.IMAGE_KEY] for ex in slices]).astype(np.float32)
        mask = is_organ(served.series_probabilities(hu, batch_size))
        source_px = slices[0][features.SOURCE_ROWS_KEY] * slices[0][features.SOURCE_COLUMNS_KEY] / hu[0].size
        volume_ml = sum(float(m.sum()) * source_px * ex[features.SPACING_KEY] ** 2 * ex[features.THICKNESS_KEY]
                        for m, ex in zip(mask, slices)) / 1000.0
        out.append({"patient_id": patient, "volume_ml": round(volume_ml, 1),
                    "components_before_cleanup": count_components(mask)})
    return out


def build_profile(train_examples: list[bytes], served=None, eval_examples: list[bytes] = (),
                  organ: str = "liver") -> Profile:
    """The profile of a model trained on `train_examples`; `served` (the exported model) predicts the
    eval patients for the prediction-side figures."""
    if not train_examples:
        raise CtsegError("no training examples to profile")
    rows = slice_feature_rows(train_examples)
    predicted = eval_predictions(served, list(eval_examples)) if served is not None and eval_examples else []
    return Profile(feature_statistics(rows), patient_figures(rows), predicted, organ)


def write_profile(model_dir: str | os.PathLike, profile: Profile) -> Path | str:
    """Writes the profile into `model_dir/assets.extra/`; returns that folder."""
    import tensorflow as tf

    folder = os.path.join(os.fspath(model_dir), PROFILE_DIR)  # keeps a gs:// or s3:// URI whole
    tf.io.gfile.makedirs(folder)
    with tf.io.gfile.GFile(os.path.join(folder, STATISTICS_FILE), "wb") as f:
        f.write(profile.statistics.SerializeToString())
    with tf.io.gfile.GFile(os.path.join(folder, PROFILE_FILE), "w") as f:
        f.write(json.dumps(profile.to_json(), indent=2) + "\n")
    return Path(folder) if "://" not in folder else folder


def read_profile(folder: str | os.PathLike) -> Optional[Profile]:
    """The profile in `folder` (a model's `assets.extra`, or an evaluation artifact that recorded it), or
    None when there is none; a CtsegError naming the file when it is damaged."""
    from tensorflow_metadata.proto.v0 import statistics_pb2

    folder = Path(folder)
    profile_file, stats_file = folder / PROFILE_FILE, folder / STATISTICS_FILE
    if not profile_file.is_file() or not stats_file.is_file():
        return None
    try:
        data = json.loads(profile_file.read_text())
        stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(stats_file.read_bytes())
        return Profile(stats, list(data["patients"]), list(data.get("eval_predictions", [])),
                       data.get("organ", "liver"), str(folder))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CtsegError(f"{profile_file}: the model's training profile cannot be read ({e})") from e


def model_profile_dir(model_dir: str | os.PathLike) -> Path:
    return Path(model_dir) / PROFILE_DIR


def copy_profile(src: str | os.PathLike, dest: str | os.PathLike) -> bool:
    """Copies a model's profile files from `src` (its assets.extra) into `dest`; False when it has none."""
    import tensorflow as tf

    names = (PROFILE_FILE, STATISTICS_FILE)
    if not all(tf.io.gfile.exists(os.path.join(str(src), n)) for n in names):
        return False
    tf.io.gfile.makedirs(str(dest))
    for name in names:
        tf.io.gfile.copy(os.path.join(str(src), name), os.path.join(str(dest), name), overwrite=True)
    return True


def find_profile(model_dir: str | os.PathLike, metadata: str | os.PathLike | None = None) -> Optional[Profile]:
    """The profile the model folder carries; else, for a model ML Metadata knows, the profile its
    evaluation recorded (`PROFILE_URI_KEY` on the evaluation artifact); else None."""
    found = read_profile(model_profile_dir(model_dir))
    if found is not None:
        return found
    from ctseg.blessing import default_store, model_kind

    model_dir = Path(model_dir).absolute()
    store = Path(metadata) if metadata else default_store(model_dir, model_kind(model_dir))
    if store is None or not store.is_file():
        return None
    uri = recorded_profile_uri(model_dir, str(store))
    found = read_profile(uri) if uri else None
    if found is not None:
        found.source = f"{uri} (recorded by the evaluation in {store})"
    return found


PROFILE_URI_KEY = "training_profile"  # custom property of the evaluation's artifacts: the folder holding the profile
PROFILE_SOURCE_KEY = "training_profile_source"  # ... and the model folder it was copied from
CURRENT_MODEL_ID_KEY = "current_model_id"  # ctseg.blessing: the ModelBlessing's model


def recorded_profile_uri(model_dir: Path, store_path: str) -> Optional[str]:
    """The profile folder an evaluation recorded (on its ModelBlessing) for the Model artifact at
    `model_dir` (a Trainer's Format-Serving or the artifact folder above it); the newest one."""
    from ctseg.mlmd.store import connect

    store = connect(store_path)
    model_ids = {a.id for uri in (str(model_dir), str(model_dir.parent)) for a in store.get_artifacts_by_uri(uri)}
    for blessing in sorted(store.get_artifacts_by_type("ModelBlessing"), key=lambda a: -a.id):
        props = blessing.custom_properties
        if CURRENT_MODEL_ID_KEY in props and props[CURRENT_MODEL_ID_KEY].int_value in model_ids \
                and PROFILE_URI_KEY in props:
            return props[PROFILE_URI_KEY].string_value
    return None


def profile_trained_model(export_dir: str, train_files, eval_files, organ: str = "liver") -> Path:
    """The Trainer's last step: the profile of the model it exported to `export_dir`, written beside it."""
    from ctseg.serving import load_model

    profile = build_profile(read_examples(train_files), load_model(export_dir), read_examples(eval_files), organ)
    return write_profile(export_dir, profile)
