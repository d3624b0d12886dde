"""What `ctseg.predict.load_series` refuses or skips before any model runs, on copies of a small phantom
patient with edited headers or odd entries beside the slices."""
from __future__ import annotations

import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctseg import postprocess
from ctseg import predict as P
from ctseg.errors import CtsegError


def _series(small_phantom: Path, dest: Path, change=None, names=None) -> Path:
    """A copy of patient 1's slices; `change(ds)` edits the headers of the files in `names` (all if None)."""
    shutil.copytree(small_phantom / "3Dircadb1.1" / "PATIENT_DICOM", dest)
    for f in sorted(dest.iterdir()):
        if change and (names is None or f.name in names):
            ds = pydicom.dcmread(f)
            change(ds)
            ds.save_as(f)
    return dest


def _load_within(folder: Path, timeout_s: float = 60) -> P.Series:
    """load_series in a thread, so a read that blocks fails the test instead of hanging it."""
    result: dict = {}

    def load():
        try:
            result["series"] = P.load_series(folder)
        except BaseException as e:  # handed to the test thread
            result["error"] = e

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"load_series({folder}) still blocked after {timeout_s} s"
    if "error" in result:
        raise result["error"]
    return result["series"]


def test_a_duplicate_position_is_refused_naming_both_files(small_phantom, tmp_path):
    folder = _series(small_phantom, tmp_path / "dup")
    shutil.copy(folder / "image_3", folder / "image_3_copy")
    ds = pydicom.dcmread(folder / "image_3_copy")
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "image_3_copy")
    with pytest.raises(CtsegError, match=r"image_3(_copy)?: same ImagePositionPatient as image_3(_copy)?"):
        P.load_series(folder)


def test_a_slice_without_position_is_refused_naming_it(small_phantom, tmp_path):
    def unplaced(ds):
        del ds.ImagePositionPatient

    folder = _series(small_phantom, tmp_path / "nopos", unplaced, names={"image_5"})
    with pytest.raises(CtsegError, match=r"^image_5: no ImagePositionPatient"):
        P.load_series(folder)


def test_an_mr_modality_is_refused_even_with_a_ct_sop_class(small_phantom, tmp_path):
    def mr(ds):
        ds.Modality = "MR"

    folder = _series(small_phantom, tmp_path / "mr", mr, names={"image_2"})
    assert pydicom.dcmread(folder / "image_2").SOPClassUID == pydicom.uid.CTImageStorage
    with pytest.raises(CtsegError, match=r"image_2: modality MR is not CT"):
        P.load_series(folder)


def test_entries_that_are_not_files_are_skipped_and_listed(small_phantom, tmp_path):
    folder = _series(small_phantom, tmp_path / "odd")
    os.mkfifo(folder / "pipe")
    (folder / "dangling").symlink_to(tmp_path / "nowhere")
    (folder / "loop_a").symlink_to(folder / "loop_b")
    (folder / "loop_b").symlink_to(folder / "loop_a")
    series = _load_within(folder)
    assert len(series.slices) == len(list((small_phantom / "3Dircadb1.1" / "PATIENT_DICOM").iterdir()))
    skipped = {s.split(": ", 1)[0].rsplit("/", 1)[-1]: s.split(": ", 1)[1] for s in series.skipped}
    loop = "cannot be read: a symbolic link loop"
    assert skipped == {"pipe": "a named pipe (FIFO), not a file",
                       "dangling": "cannot be read: a symbolic link to nothing", "loop_a": loop, "loop_b": loop}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_that_cannot_be_read_is_named(small_phantom, tmp_path):
    folder = _series(small_phantom, tmp_path / "locked")
    (folder / "image_4").chmod(0)
    with pytest.raises(CtsegError, match=r"image_4: cannot be read \(permission denied\)"):
        P.load_series(folder)


def _orientation(iop):
    def change(ds):
        ds.ImageOrientationPatient = [round(float(v), 6) for v in iop]
    return change


@pytest.mark.parametrize("iop, says", [
    ((0, 1, 0, 0, 0, -1), "a sagittal slice tilted 90 degrees from axial"),
    ((1, 0, 0, 0, 0, -1), "a coronal slice tilted 90 degrees from axial"),
    ((1, 0, 0, 0, math.cos(math.radians(20)), -math.sin(math.radians(20))), "an axial slice tilted 20 degrees"),
    ((0, 1, 0, 1, 0, 0), "rows and columns swapped"),
])
def test_slices_the_model_cannot_read_as_axial_are_refused(iop, says, small_phantom, tmp_path):
    folder = _series(small_phantom, tmp_path / "turned", _orientation(iop))
    with pytest.raises(CtsegError, match=says):
        P.load_series(folder)


def test_a_few_degrees_of_tilt_are_read_as_axial(small_phantom, tmp_path):
    tilt = math.radians(3)
    folder = _series(small_phantom, tmp_path / "tilt", _orientation((1, 0, 0, 0, math.cos(tilt), -math.sin(tilt))))
    assert len(P.load_series(folder).slices) == len(list(folder.iterdir()))


def test_a_localizer_is_split_off_and_listed(small_phantom, tmp_path):
    folder = _series(small_phantom, tmp_path / "scout")
    ds = pydicom.dcmread(folder / "image_0")
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = [0, 0, 0]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(folder / "scout")
    series = P.load_series(folder)
    assert "scout" not in [s.name for s in series.slices]
    assert len(series.slices) == len(list(folder.iterdir())) - 1
    assert [s for s in series.skipped if "LOCALIZER" in s] == ["scout: a localizer (ImageType LOCALIZER), not a slice "
                                                               "of the series"]


def test_mixed_pixel_spacing_is_refused_naming_the_slice(small_phantom, tmp_path):
    def finer(ds):
        ds.PixelSpacing = [float(ds.PixelSpacing[0]) * 0.8, float(ds.PixelSpacing[1]) * 0.8]

    folder = _series(small_phantom, tmp_path / "spacing", finer, names={"image_6"})
    with pytest.raises(CtsegError, match=r"^image_6: PixelSpacing .* in a series of .* \(e\.g\. image_0\)"):
        P.load_series(folder)


def test_missing_slices_are_refused_naming_the_gap(small_phantom, tmp_path):
    folder = _series(small_phantom, tmp_path / "gaps")
    for k in range(4, len(list(folder.iterdir())), 5):
        (folder / f"image_{k}").unlink()
    with pytest.raises(CtsegError, match=r"slices missing between image_3 and image_5: .* \(about 1 missing\)"):
        P.load_series(folder)


def _flipped(ds):
    """The same slice stored upside down and mirrored: rows and columns run the other way."""
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1, ::-1]).tobytes()
    ds.ImageOrientationPatient = [-1, 0, 0, 0, -1, 0]


def test_a_flipped_series_is_turned_for_the_model_and_its_mask_turned_back(small_phantom, tmp_path):
    import sys

    from ctseg.serving import load_model

    sys.path.insert(0, str(Path(__file__).parent))
    from tiny_unet import export_tiny_unet

    model = load_model(export_tiny_unet(tmp_path / "model"))
    original = P.load_series(_series(small_phantom, tmp_path / "original"))
    flipped = P.load_series(_series(small_phantom, tmp_path / "flipped", _flipped))
    assert flipped.flip_axes == (1, 2) and len(flipped.geometry_notes) == 2
    seen = {}
    plain = P.predict_series(original, model, before_model=lambda hu: seen.setdefault("original", hu))
    turned = P.predict_series(flipped, model, before_model=lambda hu: seen.setdefault("flipped", hu))
    assert np.allclose(seen["flipped"], seen["original"], atol=1e-3)  # the model saw the same slices
    assert np.array_equal(turned.mask, plain.mask[:, ::-1, ::-1])
    # the untrained model's organ lies mostly in the air, which the HU gate takes: without it, a mask to compare
    in_3d = postprocess.Cleanup(parenchyma_hu=False)
    plain, turned = (P.predict_series(s, model, cleanup=in_3d) for s in (original, flipped))
    assert 0 < plain.mask.sum() < plain.mask.size
    assert np.array_equal(turned.mask, plain.mask[:, ::-1, ::-1])
