"""The simple abdomen (ctseg/phantom/simple.py): IRCAD layout that ingest reads, and the contrast it promises."""
import numpy as np
import pydicom
import pytest

from ctseg.dicom import hu_from_dataset
from ctseg.phantom.simple import (
    CONTRAST_HU,
    LIVER,
    NOISE_HU,
    ORGANS,
    SOFT,
    SUPERSAMPLE,
    SimpleAbdomen,
    simple_geometries,
    write_simple_abdomen,
)

SIZE, SLICES = 64, 10


@pytest.fixture(scope="module")
def simple(tmp_path_factory):
    return write_simple_abdomen(tmp_path_factory.mktemp("simple") / "ircad", patients=3, slices=SLICES, size=SIZE,
                                seed=3)


def _series(folder):
    return [pydicom.dcmread(folder / f"image_{i}") for i in range(SLICES)]


def test_ingest_reads_every_slice_with_the_liver_mask(simple):
    from bench.segmentation import ingest_folder
    from ctseg import features

    examples = [features.decode_example(r) for r in ingest_folder(simple, 32)]
    assert len(examples) == 3 * SLICES
    assert sorted({e["patient_id"] for e in examples}) == ["3Dircadb1.1", "3Dircadb1.2", "3Dircadb1.3"]
    with_liver = [e for e in examples if e["mask"].any()]
    assert 0.5 * len(examples) <= len(with_liver) < len(examples)   # the liver starts and ends inside the scan
    for patient in simple.iterdir():
        assert sorted(d.name for d in (patient / "MASKS_DICOM").iterdir()) == sorted(ORGANS)


def test_liver_is_only_15_to_35_hu_above_soft_tissue_with_white_noise_of_12_hu(simple):
    for g in simple_geometries(3, SLICES, 3, SIZE):
        phantom = SimpleAbdomen(g, SIZE)
        images = _series(simple / g.patient_id / "PATIENT_DICOM")
        liver_hu, soft_hu, spleen_hu, noise = [], [], [], []
        for i, ds in enumerate(images):
            hu = hu_from_dataset(ds)
            labels, _ = phantom.labels(phantom.height(i))
            blocks = labels.reshape(SIZE, SUPERSAMPLE, SIZE, SUPERSAMPLE).transpose(0, 2, 1, 3).reshape(SIZE, SIZE, -1)
            pure = {label: np.all(blocks == label, axis=-1) for label in (LIVER, SOFT)}
            liver_hu += list(hu[pure[LIVER]])
            soft = pure[SOFT]
            soft_hu += list(hu[soft])
            both = soft[:, :-1] & soft[:, 1:]       # horizontal neighbours in soft tissue: white noise is uncorrelated
            noise.append(np.corrcoef(hu[:, :-1][both], hu[:, 1:][both])[0, 1])
            spleen = pydicom.dcmread(simple / g.patient_id / "MASKS_DICOM" / "spleen" / f"image_{i}").pixel_array > 0
            spleen_hu += list(hu[spleen])
        contrast = np.median(liver_hu) - np.median(soft_hu)
        assert CONTRAST_HU[0] - 3 <= contrast <= CONTRAST_HU[1] + 3
        assert abs(contrast - g.contrast_hu) < 3
        assert abs(np.std(soft_hu) - NOISE_HU) < 1.5
        assert abs(np.mean(noise)) < 0.1
        assert abs(np.median(spleen_hu) - np.median(liver_hu)) < 5


def test_liver_narrows_to_small_cross_sections_at_its_ends_and_shapes_differ(simple):
    shapes = []
    for patient in sorted(simple.iterdir()):
        areas = np.array([m.pixel_array.astype(bool).sum() for m in _series(patient / "MASKS_DICOM" / "liver")])
        present = np.flatnonzero(areas)
        assert areas[present[0]] < 0.4 * areas.max() and areas[present[-1]] < 0.4 * areas.max()
        shapes.append(areas)
    assert not np.array_equal(shapes[0], shapes[1])
