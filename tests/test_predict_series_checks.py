"""What `ctseg.predict.load_series` refuses or skips before any model runs, on copies of a small phantom
patient with edited headers or odd entries beside the slices."""
from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pydicom
import pytest

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
    assert skipped == {"pipe": "a named pipe (FIFO), not a file", "dangling": "cannot be read: a symbolic link to nothing",
                       "loop_a": "cannot be read: a symbolic link loop", "loop_b": "cannot be read: a symbolic link loop"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_file_that_cannot_be_read_is_named(small_phantom, tmp_path):
    folder = _series(small_phantom, tmp_path / "locked")
    (folder / "image_4").chmod(0)
    with pytest.raises(CtsegError, match=r"image_4: cannot be read \(permission denied\)"):
        P.load_series(folder)
