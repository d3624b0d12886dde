"""`ctseg predict` on real DICOM no one here wrote (the pydicom-data package).

693_*.dcm: one real 512x512 CT slice, uncompressed (UNCR, UNCI) and JPEG 2000 lossless (J2KR) and lossy (J2KI,
which records LossyImageCompression 01 without LossyImageCompressionMethod); explicit_VR-UN.dcm: a real
abdominal CT slice (NIH Pancreas-CT), JPEG 2000, without SliceThickness (read correctly; alone it is refused,
since highdicom 0.22 cannot write a SEG without it, but in a series of several slices the spacing of their
positions stands in); eCT_Supplemental.dcm: Enhanced CT multi-frame; liver.dcm: a DICOM SEG, not an image
(both refused by `ctseg.dicom.not_single_frame`, as ingest does). Each one-file series is either read as
pydicom reads it (HU = pixel_array * slope + intercept) and gets a seg.dcm that pydicom and highdicom read
back and that references the source instance, or is refused with its reason in one sentence and nothing
written.
The model is the Trainer's UNET exported by `ctseg.serving.export_model` (tests/tiny_unet.py).
"""
import json
import re
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pydicom.data
import pytest

from ctseg import predict as P
from ctseg.cli import main as cli_main

CT_SLICES = ("693_UNCR.dcm", "693_UNCI.dcm", "693_J2KR.dcm", "693_J2KI.dcm")
REFUSED = {"explicit_VR-UN.dcm": r"no SliceThickness, and no second slice position to take the spacing from; "
                                  r"highdicom, which writes seg\.dcm, needs it",
           "eCT_Supplemental.dcm": r"Enhanced CT multi-frame image \(2 frames\)",
           "liver.dcm": r"a DICOM Segmentation \(SEG\), not a CT image"}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from tiny_unet import export_tiny_unet

    serving = tmp_path_factory.mktemp("real_dicom") / "serving"
    export_tiny_unet(serving / "1")
    return serving


def _series(name: str, tmp_path: Path) -> Path:
    folder = tmp_path / "series"
    folder.mkdir()
    shutil.copy(pydicom.data.get_testdata_file(name), folder / name)
    return folder


def _pydicom_hu(path: str) -> np.ndarray:
    ds = pydicom.dcmread(path)
    return ds.pixel_array.astype(np.float64) * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))


@pytest.mark.parametrize("name", [*CT_SLICES, "explicit_VR-UN.dcm"])
def test_a_real_ct_slice_reads_as_pydicom_reads_it(name, tmp_path):
    """The reader alone (explicit_VR-UN.dcm is refused by predict's series check, see below)."""
    data = Path(pydicom.data.get_testdata_file(name)).read_bytes()
    series = P.Series(name, (P.SliceFile(name, data, P.read_header(name, data)),))
    (hu, _), = list(P.read_hu(series).as_numpy_iterator())
    np.testing.assert_array_equal(hu, _pydicom_hu(pydicom.data.get_testdata_file(name)))


@pytest.mark.slow
@pytest.mark.parametrize("name", CT_SLICES)
def test_a_real_ct_slice_gets_a_segmentation_that_references_it(name, model, tmp_path, capsys):
    source = pydicom.dcmread(pydicom.data.get_testdata_file(name), stop_before_pixels=True)
    out = tmp_path / "out"
    code = cli_main(["predict", str(_series(name, tmp_path)), "--model", str(model), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 0, err
    seg = hd.seg.segread(out / "seg.dcm")
    assert pydicom.dcmread(out / "seg.dcm").Modality == "SEG"
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID)]
    assert seg.pixel_array.shape[-2:] == (source.Rows, source.Columns)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slices"] == 1 and summary["series_instance_uid"] == source.SeriesInstanceUID
    assert summary["volume_ml"] == pytest.approx(
        np.count_nonzero(seg.pixel_array) * float(source.PixelSpacing[0]) * float(source.PixelSpacing[1])
        * float(source.SliceThickness) / 1000.0, rel=1e-3)
    if source.get("LossyImageCompression") == "01":  # the SEG must not hide that its source was lossy
        assert pydicom.dcmread(out / "seg.dcm").LossyImageCompression == "01"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_file_that_is_not_a_ct_slice_is_refused_in_one_sentence(name, model, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli_main(["predict", str(_series(name, tmp_path)), "--model", str(model), "--out", str(out)])
    # the test's model has no training profile: predict warns of it on its own line, apart from the refusal
    err = "\n".join(line for line in capsys.readouterr().err.strip().splitlines()
                     if "carries no training profile" not in line)
    assert code == 2
    assert len(err.splitlines()) == 1 and name in err
    assert re.search(REFUSED[name], err), err
    assert not out.exists() and list(tmp_path.iterdir()) == [tmp_path / "series"]


@pytest.mark.slow
def test_a_real_series_without_slice_thickness_takes_it_from_the_positions(model, tmp_path, capsys):
    """Three copies of the real abdominal slice (no SliceThickness) 2.5 mm apart: the SEG is written with
    the positions' spacing as the voxel depth, and the summary says it was derived."""
    folder = tmp_path / "series"
    folder.mkdir()
    source = pydicom.dcmread(pydicom.data.get_testdata_file("explicit_VR-UN.dcm"))
    assert source.get("SliceThickness", "") in ("", None)  # present and empty, as Type 2 allows
    z0 = float(source.ImagePositionPatient[2])
    for i in range(3):
        source.ImagePositionPatient[2] = z0 - 2.5 * i
        source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        source.InstanceNumber = i + 1
        source.save_as(folder / f"slice{i}.dcm")
    out = tmp_path / "out"
    code = cli_main(["predict", str(folder), "--model", str(model), "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    seg = pydicom.dcmread(out / "seg.dcm")
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(2.5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slices"] == 3 and summary["slice_spacing_mm"] == pytest.approx(2.5)
    assert summary["derived_attributes"] == [
        "SliceThickness missing: the spacing of the slice positions (2.5 mm) used for the Segmentation's "
        "pixel measures"]
    assert pydicom.dcmread(folder / "slice0.dcm").get("SliceThickness", "") in ("", None)  # the files are untouched
