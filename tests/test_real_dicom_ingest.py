"""Ingest on real DICOM no one here wrote (the pydicom-data package): each file is read as pydicom reads it,
or quarantined with its reason.

693_*.dcm are one real 512x512 CT slice as JPEG 2000 lossless (J2KR) and lossy (J2KI), each beside its
uncompressed twin (UNCR, UNCI: explicit VR little endian); eCT_Supplemental.dcm is an Enhanced CT multi-frame
file and liver.dcm a DICOM SEG of a liver. The masks beside the CT slices are written here (IRCAD ships
a mask file per slice); the images are untouched copies.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import tensorflow as tf

from ctseg import dicom
from ctseg.features import decode_example

CT_SLICES = ("693_UNCR.dcm", "693_UNCI.dcm", "693_J2KR.dcm", "693_J2KI.dcm")
NOT_SLICES = {"eCT_Supplemental.dcm": "Enhanced CT multi-frame image (2 frames)",
              "liver.dcm": "a DICOM Segmentation (SEG), not a CT image"}
SIZE = 64


def _mask_like(source: Path, out: Path) -> np.ndarray:
    """A binary mask file with the geometry of `source` (stored 0/255, uncompressed, as IRCAD stores them)."""
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("693_UNCR.dcm"))
    mask = np.zeros((int(ds.Rows), int(ds.Columns)), np.int16)
    mask[150:330, 120:300] = 255
    ds.PixelData = mask.tobytes()
    ds.save_as(out)
    return mask != 0


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, run_ingest):
    root = tmp_path_factory.mktemp("real") / "data"
    masks = {}
    for name in (*CT_SLICES, *NOT_SLICES):
        patient = root / name.removesuffix(".dcm")
        (patient / "PATIENT_DICOM").mkdir(parents=True)
        (patient / "MASKS_DICOM/liver").mkdir(parents=True)
        shutil.copy(pydicom.data.get_testdata_file(name), patient / "PATIENT_DICOM/image_0")
        masks[patient.name] = _mask_like(patient / "PATIENT_DICOM/image_0", patient / "MASKS_DICOM/liver/image_0")
    tmp = tmp_path_factory.mktemp("real_run")
    run_ingest(tmp, root, image_size=SIZE)
    files = sorted(str(p) for p in (tmp / "out").glob("Split-*/*.gz"))
    by_patient = {}
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        example = decode_example(record.numpy())
        by_patient[example["patient_id"]] = example
    quarantine = [json.loads(line) for line in (tmp / "out/quarantine.jsonl").read_text().splitlines()]
    return by_patient, quarantine, masks


@pytest.mark.parametrize("name", CT_SLICES)
def test_real_ct_in_each_transfer_syntax_is_read_as_pydicom_reads_it(real_run, name):
    by_patient, _, masks = real_run
    example = by_patient[name.removesuffix(".dcm")]
    ds = pydicom.dcmread(pydicom.data.get_testdata_file(name))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_array_equal(example["image_hu"], np.rint(dicom.resize_hu(hu, SIZE)).astype(np.int16))
    mask = masks[name.removesuffix(".dcm")].astype(np.uint8)
    np.testing.assert_array_equal(example["mask"], dicom.resize_mask(mask, SIZE))
    assert (example["source_rows"], example["source_columns"]) == (512, 512)
    assert example["spacing_mm"] == pytest.approx(float(ds.PixelSpacing[0]))
    assert example["hu_min"] < -900 and example["hu_max"] > 100  # air around the body and contrast/bone inside it


def test_compressed_slices_give_the_examples_of_their_uncompressed_twins(real_run):
    by_patient, _, _ = real_run
    for compressed, twin in (("693_J2KR", "693_UNCR"), ("693_J2KI", "693_UNCI")):
        np.testing.assert_array_equal(by_patient[compressed]["image_hu"], by_patient[twin]["image_hu"])
    lossy = by_patient["693_UNCI"]["image_hu"].astype(np.int32) - by_patient["693_UNCR"]["image_hu"]
    assert 0 < np.abs(lossy).max() < 300  # lossy JPEG 2000: close to, not equal to, the original


def test_enhanced_ct_and_seg_are_quarantined_with_their_reason(real_run):
    by_patient, quarantine, _ = real_run
    reasons = {Path(q["file"]).parent.parent.name: q["reason"] for q in quarantine
               if q["file"].endswith("PATIENT_DICOM/image_0")}
    for name, reason in NOT_SLICES.items():
        patient = name.removesuffix(".dcm")
        assert reason in reasons[patient] and patient not in by_patient
    assert len(quarantine) == len(NOT_SLICES) and set(by_patient) == {n.removesuffix(".dcm") for n in CT_SLICES}
