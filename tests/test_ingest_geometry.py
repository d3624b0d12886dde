"""Ingest applies `ctseg predict`'s geometry rules to training data, and both take one slice depth, so the
evaluator's volumes and surface distances and predict's volume agree for one mask. Runs ingest's own
per-patient function on copies of a small phantom patient with edited headers (no Beam runner needed)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom

from ctseg import ircad
from ctseg import predict as P
from ctseg.components.evaluation.executor import read_slices
from ctseg.components.ingest.executor import ingest_patient

SIZE = 32


def _patient(small_phantom: Path, root: Path, change=None, names=None) -> ircad.PatientRef:
    """A copy of patient 1 under `root`; `change(ds)` edits its CT slices in `names` (all if None)."""
    shutil.copytree(small_phantom / "3Dircadb1.1", root / "3Dircadb1.1")
    for f in sorted((root / "3Dircadb1.1" / "PATIENT_DICOM").iterdir()):
        if change and (names is None or f.name in names):
            ds = pydicom.dcmread(f)
            change(ds)
            ds.save_as(f)
    return ircad.find_patients(str(root))[0]


def _ingest(ref: ircad.PatientRef, tmp_path: Path) -> tuple[Path, list[dict]]:
    """The examples as a TFRecord file, and the quarantine records."""
    import tensorflow as tf

    examples, quarantined = tmp_path / "examples.tfrecord", []
    with tf.io.TFRecordWriter(str(examples)) as writer:
        for output in ingest_patient(ref, "eval", "liver", SIZE):
            if isinstance(output, tuple):
                writer.write(output[1])
            elif output.tag == "quarantine":
                quarantined.append(output.value)
    return examples, quarantined


def test_the_evaluator_and_predict_take_one_slice_depth_for_overlapping_slices(small_phantom, tmp_path):
    """A reconstruction whose slices overlap (SliceThickness twice the step between positions): the
    evaluator and predict take one slice depth, so their volumes agree (SliceThickness would double them)."""
    def overlapping(ds):
        ds.SliceThickness = 2 * float(ds.SliceThickness)

    ref = _patient(small_phantom, tmp_path / "data", overlapping)
    examples, quarantined = _ingest(ref, tmp_path)
    assert quarantined == []
    (batch,) = list(read_slices([str(examples)], batch_size=1000))
    series = P.load_series(tmp_path / "data" / "3Dircadb1.1")
    depth = P.slice_spacing_mm(series)
    assert np.allclose(batch["thickness_mm"], depth)
    whole = np.ones((len(series.slices), *series.shape), np.uint8)  # one mask: every voxel of the series
    model_pixels = batch["hu"].shape[1] * batch["hu"].shape[2]
    assert np.isclose(np.sum(batch["voxel_ml"]) * model_pixels, P.volume_ml(whole, series), rtol=1e-6)


def test_ingest_quarantines_what_predict_refuses(small_phantom, tmp_path):
    def sagittal(ds):
        ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    def localizer(ds):
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    def finer(ds):
        ds.PixelSpacing = [float(ds.PixelSpacing[0]) * 0.8, float(ds.PixelSpacing[1]) * 0.8]

    for change, name, says in ((sagittal, "image_2", "a sagittal slice tilted 90 degrees from axial"),
                               (localizer, "image_3", "a localizer"),
                               (finer, "image_4", "PixelSpacing")):
        ref = _patient(small_phantom, tmp_path / change.__name__, change, names={name})
        _, quarantined = _ingest(ref, tmp_path / change.__name__)
        assert [(Path(q["file"]).name, says in q["reason"]) for q in quarantined] == [(name, True)], quarantined


def test_ingest_quarantines_the_slice_after_a_gap(small_phantom, tmp_path):
    ref = _patient(small_phantom, tmp_path / "data")
    for folder in ("PATIENT_DICOM", "MASKS_DICOM/liver"):
        (tmp_path / "data" / "3Dircadb1.1" / folder / "image_5").unlink()
    _, quarantined = _ingest(ref, tmp_path)
    assert [Path(q["file"]).name for q in quarantined] == ["image_6"]
    assert "slices missing between image_4 and image_6" in quarantined[0]["reason"]


def test_plane_normal_is_np_cross_to_the_last_bit():
    """The written-out normal gives np.cross's float64 values exactly, so positions, orderings and slice
    depths stay the same bits (ingest and predict both take it)."""
    from ctseg.geometry import plane_normal

    rng = np.random.default_rng(0)
    pairs = [([1.0, 0.0, 0.0], [0.0, 1.0, 0.0]), ([-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]),
             ([0.99619469809175, 0.0, 0.08715574274766], [0.0, 1.0, 0.0])]
    pairs += [(list(rng.normal(size=3) * 10.0 ** rng.integers(-3, 4)), list(rng.normal(size=3))) for _ in range(500)]
    for row, col in pairs:
        assert plane_normal(row, col).tobytes() == np.cross(np.asarray(row, float), np.asarray(col, float)).tobytes()
    ds = pydicom.Dataset()
    ds.ImageOrientationPatient = ["0.9998477", "0.0", "-0.0174524", "0.0", "1.0", "0.0"]
    ds.ImagePositionPatient = ["-175.5", "-160.25", "-1234.5678"]
    iop, ipp = np.asarray(ds.ImageOrientationPatient, float), np.asarray(ds.ImagePositionPatient, float)
    from ctseg.dicom import slice_position_mm

    assert slice_position_mm(ds) == float(np.dot(np.cross(iop[:3], iop[3:]), ipp))
