"""Slice examples from a phantom folder without the ingest component: a stand-in for tests and
benchmarks of the Trainer (resizing by block averaging, split by patient)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctseg import dicom, features


def _shrink(arr: np.ndarray, size: int) -> np.ndarray:
    """Block mean down to `size` (the source size must be a multiple of it)."""
    factor = arr.shape[0] // size
    if factor * size != arr.shape[0]:
        raise ValueError(f"source size {arr.shape[0]} is not a multiple of {size}")
    return arr.reshape(size, factor, size, factor).mean(axis=(1, 3))


def patient_examples(patient_dir: Path, size: int, organ: str = "liver"):
    """Serialized examples of one patient, in slice order."""
    images = sorted((patient_dir / "PATIENT_DICOM").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    for index, image in enumerate(images):
        ds = dicom.read_dataset(image)
        hu = dicom.hu_from_dataset(ds, str(image))
        mask = dicom.mask_from_dataset(dicom.read_dataset(patient_dir / "MASKS_DICOM" / organ / image.name))
        yield features.slice_example(
            hu=_shrink(hu, size), mask=_shrink(mask.astype(np.float32), size) >= 0.5,
            patient_id=patient_dir.name, slice_index=index, spacing_mm=dicom.spacing_mm(ds)[0],
            thickness_mm=dicom.thickness_mm(ds), source_shape=hu.shape,
            mask_distinct_values=len(np.unique(mask))).SerializeToString()


def write_split_examples(phantom_dir, out_dir, size: int, eval_patients: int = 1) -> dict[str, list[str]]:
    """Writes OUT/{train,eval}/data.gz (gzipped TFRecords); the last `eval_patients` patients are eval.

    Returns the patient ids of each split.
    """
    import tensorflow as tf

    patients = sorted(Path(phantom_dir).iterdir(), key=lambda p: int(p.name.split(".")[-1]))
    splits = {"train": patients[:-eval_patients], "eval": patients[-eval_patients:]}
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    for split, dirs in splits.items():
        path = Path(out_dir) / split / "data.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with tf.io.TFRecordWriter(str(path), options) as writer:
            for patient in dirs:
                for serialized in patient_examples(patient, size):
                    writer.write(serialized)
    return {split: [p.name for p in dirs] for split, dirs in splits.items()}
