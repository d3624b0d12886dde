"""bench/real_ct.py scores models on real CT whose reference masks are NIfTI label maps in RAS voxel
order; a wrong flip there would silently report a meaningless Dice. These tests pin the geometry: a NIfTI
volume written as DICOM lands in the radiological orientation (patient right on the image's left,
anterior at the top, DICOM PS3.3 C.7.6.2.1.1), and its label map resampled onto the written slices
covers exactly the voxels it labels, whatever the NIfTI's axis order."""
import io

import nibabel as nib
import numpy as np
import pydicom
import pytest

from bench.real_ct import LIVER_LABEL, reference_from_nifti, write_nifti_as_dicom
from ctseg.dicom import hu_from_dataset
from ctseg.predict import load_series

SHAPE = (20, 14, 6)  # i (x), j (y), k (z) voxels
ZOOMS = (2.0, 2.0, 3.0)


def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hu, labels, RAS affine): a marker at the patient's right, anterior, superior corner, and a
    second one at the left, posterior, inferior corner, labelled differently."""
    hu = np.full(SHAPE, -500, np.int16)
    labels = np.zeros(SHAPE, np.uint8)
    hu[15:19, 10:13, 4:6] = 100   # high i = right (R), high j = anterior (A), high k = superior (S)
    labels[15:19, 10:13, 4:6] = LIVER_LABEL
    hu[0:3, 0:2, 0:2] = 300       # left, posterior, inferior: not liver
    labels[0:3, 0:2, 0:2] = 2
    affine = np.diag([*ZOOMS, 1.0])
    affine[:3, 3] = (-30.0, 12.0, 400.0)
    return hu, labels, affine


def _save(tmp_path, name, array, affine):
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _written(tmp_path, hu, labels, affine, name):
    series_dir = write_nifti_as_dicom(_save(tmp_path, f"{name}_ct", hu, affine), tmp_path / name, name)
    series = load_series(series_dir)
    images = np.stack([hu_from_dataset(pydicom.dcmread(io.BytesIO(s.data))) for s in series.slices])
    return series, images, reference_from_nifti(series, _save(tmp_path, f"{name}_seg", labels, affine))


def test_nifti_written_as_dicom_is_radiological_and_reference_matches(tmp_path):
    hu, labels, affine = _volume()
    series, images, reference = _written(tmp_path, hu, labels, affine, "ras")

    assert images.shape == (6, 20, 20)  # the 20x14 field of view padded with air to a square
    assert np.count_nonzero(images == 100) == hu[hu == 100].size
    positions = [float(s.header.ImagePositionPatient[2]) for s in series.slices]
    z, rows, cols = np.nonzero(images == 100)
    top = np.argmax(positions) if positions[0] < positions[-1] else np.argmin(positions)
    assert set(z) <= {top, top - 1 if top else top + 1}                # superior slices
    assert cols.max() < 10 and rows.max() < 10                          # patient right on the left, anterior on top
    z2, rows2, cols2 = np.nonzero(images == 300)
    assert cols2.min() >= 10 and rows2.min() >= 10                      # left, posterior: bottom right
    assert np.array_equal(reference.astype(bool), images == 100)        # the liver label on exactly its voxels
    assert (images[~reference.astype(bool)] != 100).all()


def test_axis_order_of_the_nifti_does_not_change_the_result(tmp_path):
    """The same anatomy stored with the first axis flipped (LAS, as dicom2nifti writes) gives the same slices."""
    hu, labels, affine = _volume()
    flipped = affine.copy()
    flipped[0, 0] = -ZOOMS[0]
    flipped[0, 3] = affine[0, 3] + (SHAPE[0] - 1) * ZOOMS[0]
    _, images, reference = _written(tmp_path, hu, labels, affine, "ras")
    _, images_las, reference_las = _written(tmp_path, hu[::-1], labels[::-1], flipped, "las")
    assert np.array_equal(images, images_las)
    assert np.array_equal(reference, reference_las)


def test_oblique_nifti_is_refused(tmp_path):
    hu, _, affine = _volume()
    c, s = np.cos(0.3), np.sin(0.3)
    oblique = affine.copy()
    oblique[:2, :2] = np.array([[c, -s], [s, c]]) * ZOOMS[0]
    with pytest.raises(SystemExit, match="axis-aligned"):
        write_nifti_as_dicom(_save(tmp_path, "oblique", hu, oblique), tmp_path / "oblique", "oblique")


def test_seg_reference_frames_follow_the_series_by_sop_instance_uid():
    """dcmqi's liver.dcm (pydicom-data) references its 3 source slices by UID; the bench matches frames to
    slices by that UID, whatever order the series is in, and refuses a slice the SEG does not cover."""
    from pathlib import Path

    import pydicom.data

    from bench.real_ct import reference_from_seg
    from ctseg.predict import Series, SliceFile

    path = Path(pydicom.data.get_testdata_file("liver.dcm"))
    seg = pydicom.dcmread(path)
    frames = seg.pixel_array.reshape(-1, int(seg.Rows), int(seg.Columns))
    uids = [str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for item in seg.PerFrameFunctionalGroupsSequence]
    assert len(set(uids)) == len(frames) == 3 and all(f.any() for f in frames)

    def series(order):
        return Series("x", tuple(SliceFile(f"s{i}", b"", pydicom.Dataset({})) for i in order))

    slices = series(reversed(range(3)))
    for s, i in zip(slices.slices, reversed(range(3))):
        s.header.SOPInstanceUID = uids[i]
    mask = reference_from_seg(slices, path)
    for k, i in enumerate(reversed(range(3))):
        assert np.array_equal(mask[k], (frames[i] > 0).astype(np.uint8))
    slices.slices[0].header.SOPInstanceUID = "1.2.3"
    with pytest.raises(SystemExit, match=r"has no frame for \['s2'\]"):
        reference_from_seg(slices, path)
