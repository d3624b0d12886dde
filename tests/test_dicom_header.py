"""The raw header reader ingest tries before pydicom (`ctseg.dicom_header`), against pydicom on real DICOM no one
here wrote (pydicom's test files and pydicom-data) and on the phantom: every file it takes decodes to what pydicom's
parse gives, and everything it does not understand is left to pydicom, whose outcome (pixels or a reason) is kept."""
import io
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from ctseg import dicom, dicom_header, slice_decode

TEST_FILES = Path(pydicom.data.DATA_ROOT) / "test_files"
DATA_STORE = Path(pydicom.data.get_testdata_file("693_UNCR.dcm")).parent
SHIPPED = sorted(p for root in (TEST_FILES, DATA_STORE) for p in root.rglob("*") if p.is_file() and p.suffix != ".py")


def _outcome(decode, ds, name):
    """What a decode gives: its fields, or the reason of its DicomError."""
    try:
        result = decode(ds, name, 64)
    except dicom.DicomError as e:
        return e.reason
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in vars(result).items()}


def _same_decodes(data: bytes, name: str) -> dicom_header.RawHeader:
    raw = dicom_header.parse(data)
    assert raw is not None, name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dicom.read_dataset(data, name)
    for decode in (slice_decode.ct_slice, slice_decode.mask_slice):
        assert _outcome(decode, raw, name) == _outcome(decode, ds, name), (name, decode.__name__)
    return raw


def _bytes(ds, **kwargs) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, **kwargs)
    return buf.getvalue()


def test_every_file_it_takes_decodes_as_pydicom_and_it_takes_every_file_of_raw_pixels():
    """pydicom's path reads uncompressed little-endian pixels without a copy (`dicom._raw_pixels`); every such file
    is taken by the raw reader, and nothing else is."""
    taken, raw_pixel_files = [], []
    for path in SHIPPED:
        data = path.read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds = dicom.read_dataset(data, path.name)
                if dicom._raw_pixels(ds) is not None:
                    raw_pixel_files.append(path.name)
            except dicom.DicomError:
                pass
        if dicom_header.parse(data) is not None:
            _same_decodes(data, path.name)
            taken.append(path.name)
    assert sorted(taken) == sorted(raw_pixel_files)
    assert len(taken) >= 40 and {"CT_small.dcm", "693_UNCR.dcm", "693_UNCI.dcm", "MR_small_implicit.dcm"} <= set(taken)
    for name in ("693_J2KR.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm", "MR_truncated.dcm", "badVR.dcm",
                 "rtplan.dcm", "README.txt"):
        assert name not in taken


def test_values_are_pydicoms():
    raw = _same_decodes((TEST_FILES / "CT_small.dcm").read_bytes(), "CT_small.dcm")
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert raw.get("ImagePositionPatient") == [float(v) for v in ds.ImagePositionPatient]
    assert raw.get("ImageOrientationPatient") == [float(v) for v in ds.ImageOrientationPatient]
    assert raw.get("PixelSpacing") == [float(v) for v in ds.PixelSpacing]
    assert raw.get("RescaleIntercept") == float(ds.RescaleIntercept) and raw.get("InstanceNumber") == ds.InstanceNumber
    assert raw.get("SOPClassUID") == ds.SOPClassUID and raw.ImageType == list(ds.ImageType)
    assert (raw.Rows, raw.Columns, raw.BitsAllocated, raw.PixelRepresentation) == (128, 128, 16, 1)
    assert raw.get("NumberOfFrames") is None and "NumberOfFrames" not in raw


def test_the_phantom_is_read_without_pydicom(tmp_path):
    from ctseg.phantom import write_phantom

    write_phantom(tmp_path, patients=1, slices=4, size=64, seed=3)
    files = [*tmp_path.rglob("PATIENT_DICOM/image_*"), *tmp_path.rglob("MASKS_DICOM/liver/image_*")]
    assert len(files) >= 8
    for path in files:
        _same_decodes(path.read_bytes(), str(path))


def test_ircad_quirks_no_preamble_signed_pixels_intercept_zero():
    """3D-IRCADb-01 files have no preamble and some patients store signed 16-bit CT with RescaleIntercept 0."""
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    assert ds.PixelRepresentation == 1
    ds.RescaleIntercept = 0
    data = _bytes(ds)
    assert data[128:132] == b"DICM"
    _same_decodes(data, "with preamble")
    bare = data[132:]                      # the file meta straight at the start, as IRCAD writes it
    assert bare[:2] == b"\x02\x00"
    raw = _same_decodes(bare, "no preamble")
    assert raw.get("RescaleIntercept") == 0.0


def test_sequences_of_undefined_length_are_stepped_over():
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    inner = Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator = "T-62000", "SRT"
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.AnatomicRegionSequence = Sequence([inner])
    ds.ReferencedImageSequence = Sequence([item, Dataset()])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.ReferencedImageSequence[0]["AnatomicRegionSequence"].is_undefined_length = True
    for item in ds.ReferencedImageSequence:
        item.is_undefined_length_sequence_item = True
    data = _bytes(ds)
    assert b"\xfe\xff\xdd\xe0" in data      # a sequence delimiter: the undefined length was written
    for transfer_syntax in (None, ImplicitVRLittleEndian):
        if transfer_syntax:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
            ds.is_implicit_VR = True
            data = _bytes(ds)
        raw = _same_decodes(data, "with sequences")
        assert raw.get("InstanceNumber") == ds.InstanceNumber


REFUSED = {"truncated": "pixel data cannot be decoded", "no file meta": "pixel data cannot be decoded",
           "a DS that is not a number": "a header value cannot be read "
            "(ValueError: could not convert string to float: 'x')"}


@pytest.mark.parametrize("spoil", ["truncated", "no file meta", "Rows as SS", "repeated element",
                                   "two pixel spacings too many", "a DS that is not a number"])
def test_what_it_does_not_understand_is_left_to_pydicom(spoil):
    ds = pydicom.dcmread(TEST_FILES / "CT_small.dcm")
    data = _bytes(ds)
    if spoil == "truncated":
        data = data[:-1000]
    elif spoil == "no file meta":
        del ds.file_meta                       # the dataset alone, as some old archives store it
        ds.preamble = None
        data = _bytes(ds, write_like_original=True)
        assert data[:2] == b"\x08\x00"
    elif spoil == "Rows as SS":
        data = data.replace(b"\x28\x00\x10\x00US", b"\x28\x00\x10\x00SS", 1)
    elif spoil == "repeated element":
        at = data.index(b"\x28\x00\x10\x00US")
        data = data[:at] + data[at:at + 10] + data[at:]
    elif spoil == "two pixel spacings too many":
        ds.PixelSpacing = [0.5, 0.5, 0.5, 0.5]
        data = _bytes(ds)
    elif spoil == "a DS that is not a number":
        data = data.replace(b"\x28\x00\x53\x10DS\x02\x001 ", b"\x28\x00\x53\x10DS\x02\x00x ", 1)
        assert b"DS\x02\x00x " in data
    assert dicom_header.parse(data) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ct = slice_decode.decode_slice(data, "f.dcm", 64)
        except dicom.DicomError as e:
            assert e.source == "f.dcm", e
            assert spoil in REFUSED, e
            assert REFUSED[spoil] in e.reason, e
            return
        expected = slice_decode.ct_slice(dicom.read_dataset(data, "f.dcm"), "f.dcm", 64)
    assert spoil not in REFUSED
    np.testing.assert_array_equal(ct.hu, expected.hu)
    assert ct.sort_key == expected.sort_key and ct.spacing_mm == expected.spacing_mm
