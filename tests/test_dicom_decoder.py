"""The decoder ingest uses, against the real DICOM files that ship inside pydicom.

`pydicom.data.get_testdata_files()` would also try to download pydicom-data from GitHub, so the
files are listed from the package's own `test_files` folder: truncated, compressed, big-endian,
multi-frame, colour and non-image files.
"""
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest

from ctseg import dicom, ircad

TEST_FILES = Path(pydicom.data.DATA_ROOT) / "test_files"
SHIPPED = sorted(p for p in TEST_FILES.rglob("*") if p.is_file() and p.suffix != ".py")


def _reference_pixels(path: Path):
    """pydicom's own pixel_array for a single-frame monochrome image, or None when pydicom cannot give one."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            if not str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME"):
                return None, ds
            arr = ds.pixel_array
        except Exception:
            return None, None
    return (arr if arr.ndim == 2 else None), ds


def _decode(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dicom.read_dataset(path.read_bytes(), str(path))
        return dicom.pixel_array(ds, str(path)), dicom.hu_from_dataset(ds, str(path))


def _to_bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_every_shipped_file_decodes_like_pydicom_or_is_rejected_with_a_reason():
    assert len(SHIPPED) > 100
    decoded, rejected = [], {}
    for path in SHIPPED:
        reference, ref_ds = _reference_pixels(path)
        try:
            pixels, hu = _decode(path)
        except dicom.DicomError as e:
            assert e.source == str(path) and str(path) in str(e)
            assert len(e.reason) > 10, e.reason
            rejected[path.name] = e.reason
            continue
        assert reference is not None, f"{path.name}: decoded though pydicom gives no monochrome 2-D image"
        np.testing.assert_array_equal(pixels, reference, err_msg=path.name)
        slope = float(ref_ds.get("RescaleSlope", 1) or 1)
        intercept = float(ref_ds.get("RescaleIntercept", 0) or 0)
        np.testing.assert_allclose(hu, reference.astype(np.float64) * slope + intercept, rtol=1e-6, err_msg=path.name)
        decoded.append(path.name)
    assert len(decoded) >= 25
    for name in ("JPEG2000.dcm", "JPGExtended.dcm", "693_J2KI.dcm", "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                 "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "liver_expb_1frame.dcm"):
        assert name in decoded  # compressed (pylibjpeg) and big-endian transfer syntaxes
    assert "truncated" in rejected["MR_truncated.dcm"] or "length" in rejected["MR_truncated.dcm"]
    assert "multi-frame" in rejected["rtdose.dcm"]
    assert "no pixel data" in rejected["rtplan.dcm"] and "no pixel data" in rejected["rtstruct.dcm"]
    assert rejected["README.txt"].startswith("not a DICOM file")
    assert "grey-scale" in rejected["SC_rgb_rle.dcm"]
    assert "cannot be decoded" in rejected["JPEG-lossy.dcm"]  # a codec pylibjpeg lacks: a reason, not a crash
    assert "header cannot be read" in rejected["badVR.dcm"]


@pytest.mark.parametrize("variant", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                     "MR_small_bigendian.dcm", "MR_small_expb.dcm", "MR_small_implicit.dcm"])
def test_lossless_and_big_endian_variants_give_the_uncompressed_pixels(variant):
    expected, _ = _decode(TEST_FILES / "MR_small.dcm")
    pixels, _ = _decode(TEST_FILES / variant)
    np.testing.assert_array_equal(pixels, expected)


def test_ct_slice_is_in_hounsfield_units_through_rescale():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert float(ds.RescaleIntercept) != 0 or float(ds.RescaleSlope) != 1
    ct = ircad.decode_slice((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm", 128)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(ct.hu, expected, atol=1e-3)  # same size: the resize is the identity
    assert ct.source_shape == (128, 128) and ct.spacing_mm == pytest.approx(float(ds.PixelSpacing[0]))


def test_out_of_int16_values_are_rejected_not_clipped():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    ds.RescaleSlope = 1000
    with pytest.raises(dicom.DicomError, match="outside the int16 range"):
        ircad.decode_slice(_to_bytes(ds), "scaled.dcm", 64)


@pytest.mark.parametrize("shape,size", [((512, 512), 256), ((300, 512), 128), ((64, 64), 100), ((128, 96), 64)])
def test_resize_matches_tensorflow_antialiased_bilinear(shape, size):
    import tensorflow as tf

    hu = np.random.default_rng(0).normal(0, 300, shape).astype(np.float32)
    expected = tf.image.resize(hu[None, :, :, None], (size, size), method="bilinear", antialias=True)[0, :, :, 0]
    np.testing.assert_allclose(dicom.resize_hu(hu, size), expected.numpy(), atol=0.05)


@pytest.mark.parametrize("size", [32, 100, 256])
def test_mask_resize_is_nearest_neighbour(size):
    import tensorflow as tf

    mask = (np.random.default_rng(1).random((128, 128)) > 0.5).astype(np.uint8)
    out = dicom.resize_mask(mask, size)
    assert out.dtype == np.uint8 and set(np.unique(out)) <= {0, 1}
    expected = tf.image.resize(mask[None, :, :, None], (size, size), method="nearest")[0, :, :, 0].numpy()
    np.testing.assert_array_equal(out, expected)


def test_odd_mask_values_are_binarised_and_counted():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    stored = np.zeros((128, 128), np.int16)
    stored[10:20, 10:20], stored[40:50, 40:50] = 1, 7
    ds.PixelData = stored.tobytes()
    mask = ircad.decode_mask(_to_bytes(ds), "odd_mask", 64)
    assert mask.distinct_values == 3
    assert set(np.unique(mask.mask)) == {0, 1} and mask.mask.sum() == 2 * 5 * 5


def test_distinct_values_matches_unique():
    rng = np.random.default_rng(2)
    for arr in (rng.integers(0, 2, (64, 64)).astype(np.uint8) * 255, np.zeros((8, 8), np.uint8),
                rng.integers(0, 3, (64, 64)).astype(np.uint8), rng.integers(0, 4000, (32, 32)).astype(np.uint16),
                rng.integers(-5, 5, (16, 16)).astype(np.int16)):
        assert dicom.distinct_values(arr) == np.unique(arr).size
