"""What `ctseg predict` writes, without a model: real-world headers (blank UIDs after de-identification,
no frame of reference) and the output folder's safety. The mask is given, not predicted."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ctseg import cli
from ctseg import predict as P
from ctseg.errors import CtsegError
from ctseg.serving import ServedModel

BLANKED = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


def _series_dir(phantom: Path, dest: Path, change=None) -> Path:
    src = phantom / "3Dircadb1.1" / "PATIENT_DICOM"
    dest.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        if change:
            change(ds)
        ds.save_as(dest / f.name)
    return dest


def _anonymised(ds):
    """What de-identification tools often leave: blank UIDs in the data set, the file meta intact."""
    for keyword in BLANKED:
        setattr(ds, keyword, "")
    ds.pop("FrameOfReferenceUID", None)


def _prediction(series: P.Series) -> P.Prediction:
    mask = np.zeros((len(series.slices), *series.shape), np.uint8)
    mask[:, 10:20, 10:20] = 1
    return P.Prediction(series, ServedModel(Path("model"), "7", series.shape, None), mask,
                        P.windowed_slices(series, P.tile_indices(mask)), ["pydicom"] * len(series.slices))


def test_an_anonymised_series_without_frame_of_reference_gets_a_seg(small_phantom, tmp_path):
    """Blank UIDs would end in highdicom's KeyError '' and a missing FrameOfReferenceUID in its
    "required by the IOD" error (see `ctseg.predict.complete_uids` for the highdicom 0.22 lines)."""
    import highdicom as hd

    series = P.load_series(_series_dir(small_phantom, tmp_path / "anon", _anonymised))
    summary = P.write_outputs(_prediction(series), tmp_path / "out")
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    originals = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted((tmp_path / "anon").iterdir())]
    referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
    assert referenced == {o.file_meta.MediaStorageSOPInstanceUID for o in originals}  # the file meta's, not new ones
    assert seg.FrameOfReferenceUID and seg.StudyInstanceUID == series.slices[0].header.StudyInstanceUID
    notes = json.loads((tmp_path / "out" / "summary.json").read_text())["generated_uids"]
    assert notes == summary["generated_uids"] and len(notes) == 5
    assert any("SOPClassUID blank: taken from the file meta" in n for n in notes)
    assert any(n.startswith("FrameOfReferenceUID missing: generated one for the series") for n in notes)


def test_a_complete_series_reports_nothing_generated(small_phantom, tmp_path):
    frame = pydicom.uid.generate_uid()
    series = P.load_series(_series_dir(small_phantom, tmp_path / "complete",
                                       lambda ds: setattr(ds, "FrameOfReferenceUID", frame)))
    assert series.generated == ()


def test_an_ircad_series_gets_only_a_frame_of_reference(small_phantom):
    """3D-IRCADb-01 (and so the phantom) has no FrameOfReferenceUID: the one thing generated for it."""
    generated = P.load_series(small_phantom / "3Dircadb1.1").generated
    assert len(generated) == 1 and generated[0].startswith("FrameOfReferenceUID missing")


def test_a_non_empty_output_is_refused_unless_overwrite(small_phantom, tmp_path, capsys):
    out = tmp_path / "out"
    series = P.load_series(small_phantom / "3Dircadb1.1")
    P.write_outputs(_prediction(series), out)
    (out / "MASKS_DICOM" / "liver" / "image_999").write_text("an earlier, longer patient's mask")
    assert cli.main(["predict", str(small_phantom / "3Dircadb1.1"), "--model", str(tmp_path / "m"),
                     "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} is not empty (an earlier prediction?)" in err and "--overwrite" in err
    with pytest.raises(CtsegError, match="--overwrite"):
        P.check_output_dir(out)
    P.check_output_dir(out, overwrite=True)
    P.write_outputs(_prediction(series), out)
    assert not (out / "MASKS_DICOM" / "liver" / "image_999").exists()  # replaced, not mixed
    assert (out / "seg.dcm").exists()


def test_a_failure_while_writing_leaves_no_half_written_output(small_phantom, tmp_path, monkeypatch):
    def broken(*_):
        raise OSError("disk full while writing the overlay")

    monkeypatch.setattr(P.outputs, "overlay_png", broken)
    with pytest.raises(CtsegError, match="disk full"):
        P.write_outputs(_prediction(P.load_series(small_phantom / "3Dircadb1.1")), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_file_too_large_for_the_system_is_one_sentence(small_phantom, tmp_path):
    """A real EFBIG (the process's file-size limit, as a quota or a FAT32 volume gives it): pydicom
    re-raises the write error with the data element's text in it; the user gets the system's reason."""
    import resource
    import signal

    prediction = _prediction(P.load_series(small_phantom / "3Dircadb1.1"))
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
    try:
        with pytest.raises(CtsegError) as error:
            P.write_outputs(prediction, tmp_path / "out")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        signal.signal(signal.SIGXFSZ, previous)
    assert str(error.value) == f"cannot use {tmp_path / 'out'} as the output folder: file too large"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where, reason", [("file/out", "is a file, not a folder"),
                                           ("file/deeper/out", "is a file, not a folder"),
                                           ("/sys/ctseg-out", "permission denied")])
def test_an_output_folder_that_cannot_be_made_is_refused_before_the_model_runs(where, reason, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(CtsegError, match=reason):
        P.check_output_dir(tmp_path / where)


def test_files_that_are_not_dicom_are_skipped_and_listed_but_a_damaged_slice_is_refused(small_phantom, tmp_path):
    """PACS exports and hand-made folders carry a README, a report or a preview picture beside the slices:
    such a file cannot be a slice, so it is skipped and listed (summary.json `skipped_files`) instead of
    refusing the series. A damaged DICOM file (its preamble says DICOM) may be a slice: it is refused."""
    series_dir = _series_dir(small_phantom, tmp_path / "series")
    (series_dir / "README.txt").write_text("exported from PACS on 2026-11-29\n")
    (series_dir / "preview.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    series = P.load_series(series_dir)
    assert len(series.slices) == len(list((small_phantom / "3Dircadb1.1" / "PATIENT_DICOM").iterdir()))
    assert sorted(s.split(":")[0].rsplit("/", 1)[-1] for s in series.skipped) == ["README.txt", "preview.png"]
    summary = P.write_outputs(_prediction(series), tmp_path / "out")
    assert summary["skipped_files"] == list(series.skipped)
    assert all("not a DICOM file" in s for s in summary["skipped_files"])

    slice_bytes = (series_dir / "image_0").read_bytes()
    damaged = tmp_path / "damaged"
    shutil.copytree(series_dir, damaged)
    (damaged / "image_0").write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff")
    with pytest.raises(CtsegError, match=r"1 file\(s\) that are not CT slices: image_0: not a DICOM image"):
        P.load_series(damaged)
    headless = slice_bytes[132:] if slice_bytes[128:132] == b"DICM" else slice_bytes  # IRCAD files have no preamble
    (damaged / "image_0").write_bytes(headless[:40])
    with pytest.raises(CtsegError, match=r"1 file\(s\) that are not CT slices: image_0"):
        P.load_series(damaged)


def test_the_output_folder_is_as_readable_as_its_files(small_phantom, tmp_path):
    """A folder made as any other under the user's umask (022 here: 0755), not mkdtemp's private 0700."""
    import os
    import stat

    previous = os.umask(0o022)
    try:
        P.write_outputs(_prediction(P.load_series(small_phantom / "3Dircadb1.1")), tmp_path / "out")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "out" / "summary.json").stat().st_mode) == 0o644
