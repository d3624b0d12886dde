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


# Where the error goes: the accounting on small arrays whose answer is known voxel by voxel.

def _labels_with_blobs() -> tuple[np.ndarray, np.ndarray]:
    """(labels, reference): a liver (label 5) and, beside it, a heart, a left kidney, a kidney cyst, a back
    muscle (autochthon, not a named structure) and unlabelled space."""
    labels = np.zeros((4, 12, 12), np.uint8)
    labels[:, 0:4, 0:4] = LIVER_LABEL
    labels[:, 0:4, 6:10] = 51       # heart
    labels[:, 6:8, 0:4] = 3         # kidney_left
    labels[:, 6:8, 6:8] = 24        # kidney_cyst_right
    labels[:, 10:12, 0:4] = 86      # autochthon_left
    return labels, (labels == LIVER_LABEL).astype(np.uint8)


def test_false_positives_are_attributed_to_the_structure_they_fall_in():
    from bench.real_ct import OTHER_LABELLED, OUTSIDE_LABELS, STRUCTURES, false_positives_by_structure

    labels, reference = _labels_with_blobs()
    predicted = reference.copy()
    predicted[0, 0:2, 6:9] = 1      # 6 voxels of heart
    predicted[1, 6, 0:4] = 1        # 4 of kidney_left
    predicted[1, 6, 6] = 1          # 1 of a kidney cyst: still the kidneys
    predicted[2, 10, 0:2] = 1       # 2 of a back muscle: another labelled structure
    predicted[3, 4:6, 10:12] = 1    # 4 in no label
    ml = false_positives_by_structure(predicted, reference, labels, ml_per_voxel=0.5)
    assert list(ml) == [name for name, _ in STRUCTURES] + [OTHER_LABELLED, OUTSIDE_LABELS]
    assert ml["heart"] == 3.0 and ml["kidneys"] == 2.5
    assert ml[OTHER_LABELLED] == 1.0 and ml[OUTSIDE_LABELS] == 2.0
    assert sum(ml.values()) == 0.5 * np.count_nonzero(predicted & ~reference.astype(bool))  # true liver not counted
    assert all(ml[name] == 0 for name in ("stomach", "aorta", "spleen", "lungs"))


def test_heart_labelled_liver_is_none_when_the_scan_does_not_show_the_heart():
    from bench.real_ct import heart_labelled_liver_ml

    labels, reference = _labels_with_blobs()
    predicted = reference.copy()
    predicted[:, 0, 6:8] = 1
    assert heart_labelled_liver_ml(predicted, labels, 0.5) == 4.0
    assert heart_labelled_liver_ml(reference, labels, 0.5) == 0.0
    assert heart_labelled_liver_ml(predicted, np.where(labels == 51, 0, labels), 0.5) is None


def test_dome_is_the_superior_fraction_of_the_liver_slices_whatever_the_series_order():
    from bench.real_ct import dome_slices

    reference = np.zeros((12, 4, 4), np.uint8)
    reference[1:11, 1:3, 1:3] = 1                      # liver on 10 slices: ceil(1.5) = 2 dome slices
    z_up = np.arange(12) * 2.0                          # feet first: the last slices are superior
    assert np.flatnonzero(dome_slices(reference, z_up)).tolist() == [9, 10]
    assert np.flatnonzero(dome_slices(reference, -z_up)).tolist() == [1, 2]
    assert np.flatnonzero(dome_slices(reference[:3], z_up[:3])).tolist() == [2]  # 2 liver slices: at least 1


def test_border_is_measured_in_mm_in_plane():
    from bench.real_ct import border_voxels

    reference = np.zeros((1, 20, 20), np.uint8)
    reference[0, 2:18, 2:18] = 1
    one_mm = border_voxels(reference, (1.0, 1.0))       # 3 rings of 1 mm pixels
    assert one_mm[0, 2:18, 2].all() and one_mm[0, 10, 4] and not one_mm[0, 10, 5]
    assert not one_mm[0, 0, 0]                          # outside the liver is never border
    three_mm = border_voxels(reference, (3.0, 3.0))     # one ring of 3 mm pixels
    assert three_mm[0, 10, 2] and not three_mm[0, 10, 3]
    anisotropic = border_voxels(reference, (1.0, 3.0))  # 1 mm between rows, 3 mm between columns
    assert anisotropic[0, 4, 10] and not anisotropic[0, 5, 10] and not anisotropic[0, 10, 3]
    edge = np.ones((1, 9, 9), np.uint8)                 # a liver cut by the image's edge: the edge is border
    assert border_voxels(edge, (1.0, 1.0))[0, 0, 4] and not border_voxels(edge, (1.0, 1.0))[0, 4, 4]


def test_rim_is_outside_the_liver_within_3_mm_in_plane():
    from bench.real_ct import rim_voxels

    reference = np.zeros((2, 20, 20), np.uint8)
    reference[0, 8:12, 8:12] = 1
    rim = rim_voxels(reference, (1.0, 1.0))
    assert rim[0, 8, 5] and not rim[0, 8, 4] and rim[0, 6, 6] and not rim[0, 5, 5]  # 3 mm, 4 mm, 2.8 mm, 4.2 mm
    assert not (rim & (reference > 0)).any() and not rim[1].any()


def _liver_block() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(reference, hu, z_mm): a 10-slice liver of 12x12 pixels (1 mm) at 100 HU, feet first."""
    reference = np.zeros((10, 16, 16), np.uint8)
    reference[:, 2:14, 2:14] = 1
    hu = np.where(reference > 0, 100.0, -100.0)
    return reference, hu, np.arange(10) * 3.0


def test_misses_go_to_the_first_place_that_holds_them():
    from bench.real_ct import MISS_PLACES, misses_by_place

    reference, hu, z_mm = _liver_block()
    predicted = reference.copy()
    predicted[9, 7:9, 7:9] = 0       # 4 voxels on the most superior slice, hypodense too: dome
    hu[9, 7:9, 7:9] = 50
    predicted[4, 2, 2:7] = 0         # 5 voxels on the outer ring: border
    predicted[4, 3, 3] = 0           # 1 voxel 2 mm inside, hypodense: border comes first
    hu[4, 3, 3] = 20
    predicted[5, 7:9, 7:10] = 0      # 6 interior voxels 30 HU below the median: hypodense
    hu[5, 7:9, 7:10] = 70
    predicted[6, 8, 8] = 0           # 1 interior voxel 10 HU below the median: other
    hu[6, 8, 8] = 90
    reference[3, 15, 0:3] = 1        # a piece of its own on slice 3, 3 voxels on the image's edge, never touched:
    hu[3, 15, 0:3] = 100             # piece comes before border
    reference[7, 15, 4:8] = 1        # another, one of its 4 voxels predicted: border, not piece
    hu[7, 15, 4:8] = 100
    predicted[7, 15, 4] = 1
    ml = misses_by_place(predicted, reference, hu, z_mm, (1.0, 1.0), ml_per_voxel=0.25)
    assert list(ml) == list(MISS_PLACES)
    assert ml == {"dome": 1.0, "piece": 0.75, "border": 2.25, "hypodense": 1.5, "other": 0.25}


def test_outline_by_side_finds_the_side_drawn_too_wide_and_the_side_that_stops_short():
    """A prediction moved 2 pixels (4 mm) towards the front: about 4 mm outside at the front (less where the
    quarter takes in the corners), about 4 mm short at the back, level at the sides; the false positives in front
    and the misses behind; in the facing the flips give."""
    from bench.real_ct import SIDES, outline_by_side

    reference = np.zeros((3, 40, 40), np.uint8)
    reference[:, 10:30, 10:30] = 1
    predicted = np.roll(reference, -2, axis=1)          # rows grow to the back: two rows towards the front
    sides = outline_by_side(predicted, reference, (2.0, 2.0), ml_per_voxel=0.5)
    assert list(sides) == list(SIDES)
    assert 3.0 < sides["anterior"]["mean_distance_mm"] <= 4.0 and -4.0 <= sides["posterior"]["mean_distance_mm"] < -3.0
    assert sides["anterior"]["false_positive_ml"] == 3 * 2 * 20 * 0.5 and sides["anterior"]["missed_ml"] == 0
    assert 55.0 <= sides["posterior"]["missed_ml"] <= 60.0 and sides["posterior"]["false_positive_ml"] == 0
    assert all(abs(sides[side]["mean_distance_mm"]) < 0.5 for side in ("patient right", "patient left"))
    assert outline_by_side(reference, reference, (2.0, 2.0), 0.5)["posterior"]["mean_distance_mm"] == 0.0
    flipped = outline_by_side(predicted[:, ::-1], reference[:, ::-1], (2.0, 2.0), 0.5, flip_axes=(1,))
    assert flipped == sides
    wider = np.zeros_like(reference)
    wider[:, 10:30, 10:33] = 1                          # columns grow to the patient's left: 3 pixels too wide there
    left = outline_by_side(wider, reference, (2.0, 2.0), 0.5)["patient left"]
    assert 5.0 < left["mean_distance_mm"] <= 6.0 and left["false_positive_ml"] == 3 * 3 * 20 * 0.5


def test_where_the_error_goes_reads_voxel_size_and_height_from_the_headers():
    """The row's ml come from PixelSpacing and the slice positions (2 x 2 x 3 mm = 0.012 ml a voxel), the
    dome from ImagePositionPatient's z, and a case without a label map has no false-positive structures."""
    from bench.real_ct import percentages, table, where_the_error_goes
    from ctseg.predict import Series, SliceFile

    reference, hu, _ = _liver_block()
    labels = np.where(reference > 0, LIVER_LABEL, 0).astype(np.uint8)
    labels[:, 0:2, :] = 51
    headers = []
    for k in range(10):                                 # series order: head first
        header = pydicom.Dataset()
        header.PixelSpacing, header.SliceThickness = [2.0, 2.0], 3.0
        header.ImagePositionPatient, header.ImageOrientationPatient = [0.0, 0.0, 30.0 - 3.0 * k], [1, 0, 0, 0, 1, 0]
        headers.append(SliceFile(f"s{k}", b"", header))
    series = Series("x", tuple(headers))
    predicted = reference.copy()
    predicted[0, 7, 7] = 0                              # slice 0 is the most superior: dome
    predicted[:, 0, 0:5] = 1                            # 50 voxels of heart
    row = where_the_error_goes(predicted, reference, labels, hu, series)
    assert row["false_positive_ml"] == row["false_positive_by_structure_ml"]["heart"] == 0.6
    assert row["false_positive_rim_ml"] == 0.0          # 2 pixels of 2 mm from the liver: beyond the 3 mm rim
    assert row["dome_in_scan"] is False                 # liver on the top slice: its dome is above the scan
    assert row["heart_labelled_liver_ml"] == 0.6 and row["heart_in_scan"] is True
    assert row["false_positive_by_structure_pct"]["heart"] == 100.0
    assert row["missed_by_place_ml"]["dome"] == round(0.012, 1) and row["missed_by_place_pct"]["dome"] == 100.0
    no_map = where_the_error_goes(predicted, reference, None, hu, series)
    assert no_map["false_positive_by_structure_ml"] is None and no_map["heart_in_scan"] is None
    assert no_map["false_positive_ml"] == 0.6
    assert percentages({"a": 0.0}) is None
    markdown = table([{"short": "c", "dice": 0.9, "volume_ml": 2.0, "reference_volume_ml": 2.0, **no_map,
                       "out_of_distribution": None},
                      {"short": "d", "dice": 0.8, "volume_ml": 3.0, "reference_volume_ml": 2.0, **row,
                       "out_of_distribution": ["field_of_view_mm", "hu_sample"]}], [])
    assert "| in heart | n/a | 0.6 (100%) |" in markdown and "| heart labelled liver, ml | n/a | 0.6 |" in markdown
    assert "| `ctseg predict`'s out-of-distribution findings | no profile | field_of_view_mm, hu_sample |" in markdown
    assert "| outline's mean distance from the reference's, mm (+ outside): anterior / posterior" in markdown
    assert row["outline_by_side"]["anterior"]["false_positive_ml"] == 0.6  # the heart lies in front of the liver


def test_a_probe_is_padded_to_a_scanner_field_of_view_without_moving_its_anatomy(tmp_path):
    """A chest crop is written into a wider field of view (air around it), so the model sees organs at the
    scale of a whole scan; the heart mask still lands on its voxels."""
    from bench.real_ct import HEART_LABEL, heart_from_nifti

    hu, labels, affine = _volume()
    series_dir = write_nifti_as_dicom(_save(tmp_path, "crop_ct", hu, affine), tmp_path / "crop", "crop",
                                      field_of_view_mm=61.0)
    series = load_series(series_dir)
    images = np.stack([hu_from_dataset(pydicom.dcmread(io.BytesIO(s.data))) for s in series.slices])
    assert images.shape == (6, 31, 31)                  # ceil(61 / 2) pixels of 2 mm
    heart = heart_from_nifti(series, _save(tmp_path, "heart", (labels == LIVER_LABEL).astype(np.uint8), affine))
    assert set(np.unique(heart)) == {0, HEART_LABEL}
    assert np.array_equal(heart == HEART_LABEL, images == 100)


def test_reference_rings_tell_an_outline_on_the_edge_from_one_drawn_outside_it():
    from bench.real_ct import RING_NAMES, reference_rings_hu

    yy, xx = np.mgrid[:80, :80]
    radius = np.hypot(yy - 40, xx - 40)
    hu = np.where(radius <= 25, 55.0, -100.0)[None]                 # a liver disc of 55 HU in fat
    on_edge = reference_rings_hu((radius <= 25)[None], hu, (1.0, 1.0))
    outside = reference_rings_hu((radius <= 28)[None], hu, (1.0, 1.0))   # drawn 3 mm wide
    assert list(on_edge) == list(RING_NAMES)
    assert on_edge["0-1.5 mm"] == 55.0 and on_edge["over 10 mm"] == 55.0
    assert outside["0-1.5 mm"] == -100.0 and outside["1.5-3 mm"] == -100.0 and outside["6-10 mm"] == 55.0
    coarse = reference_rings_hu((radius <= 25)[None], hu, (3.0, 3.0))    # 3 mm pixels: no 0-1.5 mm ring
    assert coarse["0-1.5 mm"] is None and coarse["1.5-3 mm"] == 55.0
