import hashlib
import io
import zipfile

import numpy as np
import pydicom
import pytest

from ctseg.cli import main
from ctseg.dicom import hu_from_dataset, mask_from_dataset, read_dataset
from ctseg.phantom import ORGAN_MASKS, patient_geometries, write_phantom


def _series(patient_dir, rel):
    files = sorted((patient_dir / rel).iterdir(), key=lambda p: int(p.name.split("_")[1]))
    return [pydicom.dcmread(f) for f in files]


def test_layout_matches_ircad(small_phantom):
    patients = sorted(p.name for p in small_phantom.iterdir())
    assert patients == ["3Dircadb1.1", "3Dircadb1.2", "3Dircadb1.3"]
    for p in small_phantom.iterdir():
        images = sorted(f.name for f in (p / "PATIENT_DICOM").iterdir())
        assert all(f.startswith("image_") and "." not in f for f in images)
        n = len(images)
        assert {f"image_{i}" for i in range(n)} == set(images)
        assert sorted(d.name for d in (p / "MASKS_DICOM").iterdir()) == sorted(ORGAN_MASKS)
        for organ in ORGAN_MASKS:
            assert len(list((p / "MASKS_DICOM" / organ).iterdir())) == n


def test_dicom_is_valid_ct(small_phantom):
    p = small_phantom / "3Dircadb1.2"
    images = _series(p, "PATIENT_DICOM")
    ds = images[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
    assert ds.BitsAllocated == 16 and ds.PixelRepresentation == 0
    assert float(ds.RescaleIntercept) == -1024 and float(ds.RescaleSlope) == 1
    assert 0.56 <= float(ds.PixelSpacing[0]) <= 0.87 and 1.6 <= float(ds.SliceThickness) <= 4.0
    assert (ds.Rows, ds.Columns) == (64, 64)
    assert len({d.SeriesInstanceUID for d in images}) == 1 and len({d.SOPInstanceUID for d in images}) == len(images)
    assert [int(d.InstanceNumber) for d in images] == list(range(1, len(images) + 1))
    z = [float(d.ImagePositionPatient[2]) for d in images]
    assert np.allclose(np.diff(z), -float(ds.SliceThickness))
    other = _series(small_phantom / "3Dircadb1.1", "PATIENT_DICOM")[0]
    assert other.StudyInstanceUID != ds.StudyInstanceUID and other.SeriesInstanceUID != ds.SeriesInstanceUID
    masks = _series(p, "MASKS_DICOM/liver")
    assert set(np.unique(np.concatenate([m.pixel_array.ravel() for m in masks]))) <= {0, 255}


def test_geometry_varies_by_patient():
    gs = patient_geometries(6, 60, seed=3)
    assert len({g.spacing_mm for g in gs}) == 6 and len({g.thickness_mm for g in gs}) > 1
    assert len({g.num_slices for g in gs}) > 1
    assert all(48 <= g.num_slices <= 72 for g in gs)


def test_hounsfield_units_by_tissue(tmp_path):
    root = write_phantom(tmp_path / "p", patients=1, slices=30, size=128, seed=5)
    p = root / "3Dircadb1.1"
    n = len(list((p / "PATIENT_DICOM").iterdir()))
    liver_hu, corner_hu, bone_max, empty = [], [], [], 0
    for i in range(n):
        hu = hu_from_dataset(read_dataset(p / f"PATIENT_DICOM/image_{i}"))
        liver = mask_from_dataset(read_dataset(p / f"MASKS_DICOM/liver/image_{i}")).astype(bool)
        corner_hu.append(hu[:4, :4].mean())
        bone_max.append(hu.max())
        if liver.any():
            liver_hu.append(np.median(hu[liver]))
        else:
            empty += 1
    assert np.allclose(corner_hu, -1000, atol=60)        # air outside the body
    assert min(bone_max) > 600                            # spine in every slice
    assert 40 < np.median(liver_hu) < 130                  # contrast-enhanced liver parenchyma
    assert 0 < empty < n and len(liver_hu) > n // 3        # slices above and below the liver have empty masks


def test_masks_align_with_liver_and_spleen_is_similar_density(tmp_path):
    root = write_phantom(tmp_path / "p", patients=1, slices=30, size=128, seed=2)
    p = root / "3Dircadb1.1"
    found = False
    for i in range(len(list((p / "PATIENT_DICOM").iterdir()))):
        hu = hu_from_dataset(read_dataset(p / f"PATIENT_DICOM/image_{i}"))
        liver = mask_from_dataset(read_dataset(p / f"MASKS_DICOM/liver/image_{i}")).astype(bool)
        spleen = mask_from_dataset(read_dataset(p / f"MASKS_DICOM/spleen/image_{i}")).astype(bool)
        assert not (liver & spleen).any()
        if liver.sum() > 50 and spleen.sum() > 50:
            found = True
            # liver mask sits on soft tissue; the spleen's HU overlaps the liver's, so a threshold cannot split them
            assert -20 < np.median(hu[liver]) < 200 and np.median(hu[~liver]) < 0
            assert abs(np.median(hu[liver]) - np.median(hu[spleen])) < 25
            # the liver is on the patient's right: image left
            cols = np.nonzero(liver)[1]
            assert cols.mean() < hu.shape[1] / 2
    assert found


def test_liver_shape_changes_smoothly_and_differs_between_patients(tmp_path):
    root = write_phantom(tmp_path / "p", patients=2, slices=40, size=96, seed=4)
    areas = []
    for k in (1, 2):
        p = root / f"3Dircadb1.{k}"
        n = len(list((p / "PATIENT_DICOM").iterdir()))
        areas.append(np.array([int(mask_from_dataset(read_dataset(p / f"MASKS_DICOM/liver/image_{i}")).sum())
                               for i in range(n)]))
    for a in areas:
        nz = a[a > 0]
        assert len(nz) > 5
        assert np.abs(np.diff(nz)).max() < 0.5 * nz.max()  # no jumps between neighbouring slices
    assert len(areas[0]) != len(areas[1]) or not np.array_equal(areas[0], areas[1])


def _pixel_digest(root):
    h = hashlib.sha256()
    for f in sorted(root.rglob("image_*")):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(pydicom.dcmread(f).PixelData)
    return h.hexdigest()


def test_same_seed_same_pixels(tmp_path):
    a = write_phantom(tmp_path / "a", patients=2, slices=8, size=32, seed=9)
    b = write_phantom(tmp_path / "b", patients=2, slices=8, size=32, seed=9)
    c = write_phantom(tmp_path / "c", patients=2, slices=8, size=32, seed=10)
    assert _pixel_digest(a) == _pixel_digest(b) != _pixel_digest(c)


def test_zip_form_is_the_published_layout(small_phantom_zip, small_phantom):
    with zipfile.ZipFile(small_phantom_zip) as outer:
        names = sorted(outer.namelist())
        assert names == sorted(f"3Dircadb1/3Dircadb1.{k}/{part}.zip"
                               for k in (1, 2, 3) for part in ("PATIENT_DICOM", "MASKS_DICOM"))
        with zipfile.ZipFile(io.BytesIO(outer.read("3Dircadb1/3Dircadb1.1/PATIENT_DICOM.zip"))) as inner:
            first = inner.read("PATIENT_DICOM/image_0")
            n = len(inner.namelist())
        with zipfile.ZipFile(io.BytesIO(outer.read("3Dircadb1/3Dircadb1.1/MASKS_DICOM.zip"))) as inner:
            assert "MASKS_DICOM/liver/image_0" in inner.namelist()
            assert len([x for x in inner.namelist() if x.startswith("MASKS_DICOM/liver/")]) == n
    # same seed: the zip holds the same DICOM as the folder form
    assert first == (small_phantom / "3Dircadb1.1/PATIENT_DICOM/image_0").read_bytes()


def test_cli_writes_phantom(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "x"), "--patients", "2", "--slices", "6", "--size", "32"]) == 0
    assert "wrote 2 phantom patients" in capsys.readouterr().out
    assert (tmp_path / "x/3Dircadb1.2/MASKS_DICOM/liver/image_0").exists()


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    assert main(["phantom", str(tmp_path / "x"), "--patients", "0"]) == 1
    assert "at least 1 patient" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["phantom", "--help"])
