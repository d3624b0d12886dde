"""Prediction on one patient's CT series: the exported model's `segment_hu` signature, slice by slice.

`load_series` reads a folder, an IRCAD patient folder or a zip into header-checked slices in
position order; `read_hu` is the `tf.data` reader that turns them into Hounsfield units;
`predict_series` resizes to the trained size, runs the model in batches and resizes back;
`write_outputs` writes the DICOM Segmentation, IRCAD-style mask DICOMs, the summary and an overlay.

Which reader decodes which file (decided from the header by `choose_reader`, recorded per slice):

- tensorflow-io (`tfio.image.decode_dicom_image`, DCMTK inside) for single-frame MONOCHROME2 images
  of at most 16 bits in an uncompressed, deflated, RLE, lossless-JPEG, JPEG-LS or JPEG 2000 transfer
  syntax, with RescaleSlope >= 1 and no Modality LUT Sequence: the CT series this project sees.
  DCMTK does not return stored values: it renders the modality-LUT range of every storable value
  (from BitsStored and PixelRepresentation) linearly onto the output range, so `scale='preserve'`
  gives 2x the stored value for a 12-bit slice and saturates at 65535 for signed 16-bit CT. We ask
  for `float32, scale='auto'` (that range onto [0, 1]) and invert it exactly with the header's
  BitsStored and PixelRepresentation, then apply RescaleSlope/Intercept ourselves.
- pydicom (`ctseg.dicom.hu_from_dataset`, as ingest uses) for everything else: RescaleSlope < 1
  (DCMTK's rendering then has fewer levels than the stored values), lossy JPEG (the two JPEG
  libraries differ by +-1), MONOCHROME1 (DCMTK inverts it), a Modality LUT Sequence, more than 16
  bits; and as a fallback for any file tfio returns no pixels for, or pixels of the wrong shape.
"""
from __future__ import annotations

import copy
import dataclasses
import io
import json
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ctseg.dicom import (CT_IMAGE_STORAGE, DicomError, hu_from_dataset, read_dataset, rescale, slice_position_mm,
                         slice_sort_key, spacing_mm, thickness_mm, window)
from ctseg import postprocess
from ctseg.errors import CtsegError
from ctseg.serving import ServedModel, load_model

ORGAN = "liver"
READERS = ("tfio", "pydicom", "pydicom-fallback")  # index = the reader code `read_hu` yields per slice
MASK_FOREGROUND = 255  # IRCAD stores mask foreground as 255
TFIO_TRANSFER_SYNTAXES = frozenset({
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",  # raw, deflated
    "1.2.840.10008.1.2.5",                                                                        # RLE
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",                                           # lossless JPEG
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",                                           # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",                                           # JPEG 2000
})
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# LossyImageCompressionMethod (C.7.6.1.1.5) of the lossy transfer syntaxes, for sources that omit it
LOSSY_METHODS = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
                 "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
                 "1.2.840.10008.1.2.4.203": "ISO_15444_15"}
# CID 7150 "Segmentation Property Categories"; pydicom's codedict has two codes under this name
ANATOMICAL_STRUCTURE = ("123037004", "SCT", "Anatomical Structure")


@dataclasses.dataclass(frozen=True)
class SliceFile:
    """One source file: its name for messages, its bytes, and its header (no pixels)."""
    name: str
    data: bytes
    header: pydicom.Dataset


@dataclasses.dataclass(frozen=True)
class Series:
    """One CT series in position order (`ctseg.dicom.slice_sort_key`); `generated` says which UIDs the
    files lacked and were filled in (`complete_uids`)."""
    source: str
    slices: tuple[SliceFile, ...]
    generated: tuple[str, ...] = ()

    @property
    def uid(self) -> str:
        return str(self.slices[0].header.SeriesInstanceUID)

    @property
    def shape(self) -> tuple[int, int]:
        h = self.slices[0].header
        return int(h.Rows), int(h.Columns)


# ---- reading the series ---------------------------------------------------------------------------

def series_files(src: str | os.PathLike) -> list[tuple[str, bytes]]:
    """(name, bytes) of every candidate slice of one patient, through `ctseg.ircad`: a folder of DICOM
    files, an IRCAD patient folder (its PATIENT_DICOM folder or .zip), or a zip of either, also when
    the zip wraps the patient in one folder. DICOMDIR index files are left out."""
    from ctseg import ircad

    try:
        files = ircad.read_series(str(src))
    except CtsegError as first:
        try:
            patients = ircad.find_patients(str(src))
        except CtsegError:
            raise first from None
        if len(patients) > 1:
            names = ", ".join(p.patient_id for p in patients[:3])
            raise CtsegError(f"{src} holds {len(patients)} patients ({names}...); "
                             "predict takes one patient's series") from None
        with ircad.open_patient(patients[0], ORGAN) as patient:
            if patient.images is None:
                raise first from None
            files = {name: patient.images.read(name) for name in patient.image_files}
    return [(name, data) for name, data in sorted(files.items()) if name.upper() != "DICOMDIR"]


def read_header(name: str, data: bytes) -> pydicom.Dataset:
    """The header of a file that should be a single-frame grey-scale CT slice, or a DicomError why not."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for files that are not DICOM
        raise DicomError(name, f"not readable as DICOM ({type(e).__name__}: {e})") from e
    if "Rows" not in ds or "Columns" not in ds or "SeriesInstanceUID" not in ds:
        raise DicomError(name, "not a DICOM image (no Rows, Columns or SeriesInstanceUID)")
    modality = str(ds.get("Modality", "")).strip()
    sop_class = str(ds.get("SOPClassUID", ""))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if sop_class == SEGMENTATION_STORAGE or modality == "SEG":
        raise DicomError(name, "a DICOM Segmentation (SEG), not a CT image")
    if sop_class == ENHANCED_CT_STORAGE:
        raise DicomError(name, f"Enhanced CT multi-frame image ({frames} frames); predict reads single-frame "
                               "CT Image Storage slices, one per file")
    if frames > 1:
        raise DicomError(name, f"multi-frame image ({frames} frames); predict expects one CT slice per file")
    if modality != "CT" and sop_class != CT_IMAGE_STORAGE:
        raise DicomError(name, f"modality {modality or '?'} is not CT")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if not photometric.startswith("MONOCHROME") or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(name, f"{photometric} image is not a grey-scale CT slice")
    return ds


def _check_one_series(slices: Sequence[SliceFile], source: str) -> None:
    by_uid: dict[str, list[str]] = {}
    for s in slices:
        by_uid.setdefault(str(s.header.SeriesInstanceUID), []).append(s.name)
    if len(by_uid) > 1:
        parts = "; ".join(f"{uid} ({len(names)} files, e.g. {names[0]})" for uid, names in by_uid.items())
        raise CtsegError(f"{source} mixes {len(by_uid)} series: {parts}; give one series")
    rows, cols = int(slices[0].header.Rows), int(slices[0].header.Columns)
    for s in slices:
        if (int(s.header.Rows), int(s.header.Columns)) != (rows, cols):
            raise CtsegError(f"{s.name}: {s.header.Rows}x{s.header.Columns} slice in a series of "
                             f"{rows}x{cols} slices (e.g. {slices[0].name})")


def _check_slice_thickness(slices: Sequence[SliceFile]) -> None:
    """SliceThickness is Type 2 (may be empty), but highdicom 0.22 cannot write a Segmentation of a
    single-frame source without its value: seg/sop.py:2228-2235 reads it into the source's pixel measures
    and content.py:412 (PixelMeasuresSequence.__eq__) compares it, an AttributeError when absent.
    Refused here, before the model runs, rather than made up."""
    for s in slices:
        if not str(s.header.get("SliceThickness", "") or "").strip():
            raise CtsegError(f"{s.name}: no SliceThickness; highdicom, which writes seg.dcm, needs it to "
                             "describe the segmentation's voxels, so this series cannot be segmented")


def load_series(src: str | os.PathLike) -> Series:
    """One patient's CT series, header-checked and in position order; CtsegError naming the bad file(s)."""
    files = series_files(src)
    slices, bad = [], []
    for name, data in files:
        try:
            slices.append(SliceFile(name, data, read_header(name, data)))
        except DicomError as e:
            bad.append(e)
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        what = "no CT DICOM slices" if not slices else f"{len(bad)} file(s) that are not CT slices"
        raise CtsegError(f"{src}: {what}: " + "; ".join(str(e) for e in bad[:3]) + more)
    slices, generated = complete_uids(slices)
    _check_one_series(slices, str(src))
    _check_slice_thickness(slices)
    slices.sort(key=lambda s: slice_sort_key(s.header, s.name))
    return Series(str(src), tuple(slices), tuple(generated))


def _blank(header: pydicom.Dataset, keyword: str) -> bool:
    return not str(header.get(keyword, "") or "").strip()


def complete_uids(slices: Sequence[SliceFile]) -> tuple[list[SliceFile], list[str]]:
    """Headers with the UIDs a DICOM Segmentation needs, and a sentence for each one filled in.

    De-identification often blanks SOPClassUID, SOPInstanceUID, SeriesInstanceUID and
    StudyInstanceUID while the file meta keeps MediaStorageSOPClassUID/MediaStorageSOPInstanceUID;
    older exports lack FrameOfReferenceUID. highdicom 0.22 looks the SOP class up in a table
    (highdicom/_module_utils.py:207 `SOP_CLASS_UID_IOD_KEY_MAP[sop_class_uid]`: KeyError '' for a blank
    one) and refuses CT without a frame of reference (highdicom/seg/sop.py:1502-1525, "Source images
    have no Frame Of Reference UID, but it is required by the IOD"). The file meta's values come
    first; series-level UIDs are generated once for the whole series, an instance UID per file.
    """
    missing = {k for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID",
                           "FrameOfReferenceUID") if any(_blank(s.header, k) for s in slices)}
    if not missing:
        return list(slices), []
    shared = {k: generate_uid() for k in ("SeriesInstanceUID", "StudyInstanceUID", "FrameOfReferenceUID")}
    notes: dict[str, str] = {}
    completed = []
    for s in slices:
        header = _copy_header(s.header)
        header.file_meta = getattr(s.header, "file_meta", pydicom.dataset.FileMetaDataset())
        meta = header.file_meta
        for keyword, from_meta in (("SOPClassUID", "MediaStorageSOPClassUID"),
                                   ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            if not _blank(header, keyword):
                continue
            if not _blank(meta, from_meta):
                setattr(header, keyword, str(meta.get(from_meta)))
                notes.setdefault(keyword, f"{keyword} blank: taken from the file meta's {from_meta}")
            elif keyword == "SOPClassUID":
                header.SOPClassUID = CT_IMAGE_STORAGE
                notes.setdefault(keyword, "SOPClassUID blank here and in the file meta: CT Image Storage assumed")
            else:
                header.SOPInstanceUID = generate_uid()
                notes.setdefault(keyword, "SOPInstanceUID blank here and in the file meta: generated per file")
        for keyword, uid in shared.items():
            if _blank(header, keyword):
                setattr(header, keyword, uid)
                notes.setdefault(keyword, f"{keyword} missing: generated one for the series ({uid})")
        completed.append(SliceFile(s.name, s.data, header))
    return completed, list(notes.values())


# ---- the tf.data reader ---------------------------------------------------------------------------

def choose_reader(header: pydicom.Dataset) -> str:
    """'tfio' where DCMTK's rendering can be inverted exactly (see the module docstring), else 'pydicom'."""
    syntax = str(getattr(getattr(header, "file_meta", None), "TransferSyntaxUID", "") or "1.2.840.10008.1.2")
    slope, _ = rescale(header)
    ok = (syntax in TFIO_TRANSFER_SYNTAXES
          and str(header.get("PhotometricInterpretation", "MONOCHROME2")).strip() == "MONOCHROME2"
          and int(header.get("BitsAllocated", 16)) <= 16
          and slope >= 1.0
          and "ModalityLUTSequence" not in header)
    return "tfio" if ok else "pydicom"


def _stored_range(header: pydicom.Dataset) -> tuple[float, float]:
    """Lowest storable value and the number of steps above it, from BitsStored and PixelRepresentation."""
    bits = int(header.get("BitsStored", header.get("BitsAllocated", 16)))
    signed = int(header.get("PixelRepresentation", 0)) == 1
    return (-(2.0 ** (bits - 1)) if signed else 0.0), 2.0 ** bits - 1


def read_hu(series: Series):
    """A `tf.data.Dataset` of (hu float32 [rows, cols], reader code int32) per slice, in series order.

    The reader code indexes READERS: tfio, pydicom by choice, or pydicom after tfio returned nothing.
    """
    import tensorflow as tf
    import tensorflow_io as tfio

    rows, cols = series.shape
    names = [s.name for s in series.slices]

    def pydicom_hu(index):
        i = int(index)
        return hu_from_dataset(read_dataset(series.slices[i].data, names[i]), names[i]).astype(np.float32)

    def via_pydicom(index, code):
        hu = tf.numpy_function(pydicom_hu, [index], tf.float32, stateful=False)
        return tf.reshape(hu, [rows, cols]), tf.constant(code, tf.int32)

    def decode(index, contents, use_tfio, low, steps, slope, intercept):
        def via_tfio():
            x = tfio.image.decode_dicom_image(contents, dtype=tf.float32, scale="auto", on_error="lossy")
            decoded = tf.equal(tf.size(x), rows * cols)

            def invert():
                stored = tf.round(tf.reshape(x, [rows, cols]) * steps) + low
                return stored * slope + intercept, tf.constant(0, tf.int32)

            return tf.cond(decoded, invert, lambda: via_pydicom(index, 2))

        return tf.cond(use_tfio, via_tfio, lambda: via_pydicom(index, 1))

    headers = [s.header for s in series.slices]
    ranges = np.array([_stored_range(h) for h in headers], np.float32).reshape(-1, 2)
    slope_intercept = np.array([rescale(h) for h in headers], np.float32).reshape(-1, 2)
    columns = (np.arange(len(headers), dtype=np.int64), [s.data for s in series.slices],
               np.array([choose_reader(h) == "tfio" for h in headers]),
               ranges[:, 0], ranges[:, 1], slope_intercept[:, 0], slope_intercept[:, 1])
    return tf.data.Dataset.from_tensor_slices(columns).map(decode, num_parallel_calls=tf.data.AUTOTUNE,
                                                           deterministic=True)


# ---- the model ------------------------------------------------------------------------------------

# ---- prediction -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Prediction:
    series: Series
    model: ServedModel
    mask: np.ndarray          # uint8 0/1, (slices, rows, cols) in series order
    windowed: np.ndarray      # uint8 liver-window rendering of the source, for the overlay
    readers: list[str]        # which reader decoded each slice
    cleanup: str = "off"      # the 3D clean-up applied to `mask` (postprocess.Cleanup)

    @property
    def slices_with_liver(self) -> int:
        return int(self.mask.reshape(len(self.mask), -1).any(axis=1).sum())


def predict_series(series: Series, model: ServedModel, batch_size: int = 16, progress: bool = False,
                   cleanup: postprocess.Cleanup = postprocess.Cleanup()) -> Prediction:
    """Runs the model on the series (HU resized to the trained size, the slices in position order so a
    2.5D model sees each slice's neighbours, probabilities resized back, >= 0.5), then cleans the
    patient's mask up in 3D, as the evaluator scores it (`ctseg.postprocess`)."""
    import tensorflow as tf
    from tqdm import tqdm

    rows, cols = series.shape
    small, windowed, codes = [], [], []
    with tqdm(total=len(series.slices), unit="slice", desc="predict", disable=not progress) as bar:
        try:
            for hu, code in read_hu(series).batch(batch_size).prefetch(1):
                small.append(tf.image.resize(hu[..., None], model.size, antialias=True)[..., 0].numpy())  # ingest's kernel
                windowed.append(np.rint(window(hu.numpy()) * 255).astype(np.uint8))
                codes.extend(int(c) for c in code.numpy())
                bar.update(len(code))
        except tf.errors.OpError as e:  # a pydicom decode failure inside the reader names its file
            raise CtsegError(f"{series.source}: a slice could not be decoded: {e.message.splitlines()[0]}") from e
    probabilities = model.series_probabilities(np.concatenate(small), batch_size)
    masks = [postprocess.source_mask(probabilities[i:i + batch_size], (rows, cols))
             for i in range(0, len(probabilities), batch_size)]
    mask = postprocess.clean_volume(np.concatenate(masks), cleanup)
    return Prediction(series, model, mask, np.concatenate(windowed), [READERS[c] for c in codes], str(cleanup))


# ---- geometry -------------------------------------------------------------------------------------

def slice_spacing_mm(series: Series) -> float:
    """Distance between slices: the median step of positions along the normal, else SliceThickness."""
    positions = [slice_position_mm(s.header) for s in series.slices]
    if len(positions) > 1 and None not in positions:
        step = float(np.median(np.abs(np.diff(positions))))
        if step > 0:
            return step
    thickness = thickness_mm(series.slices[0].header)
    if thickness > 0:
        return thickness
    raise CtsegError(f"{series.source}: cannot tell the slice spacing (no ImagePositionPatient steps "
                     f"and no SliceThickness in {series.slices[0].name})")


def volume_ml(mask: np.ndarray, series: Series) -> float:
    """Voxels x row spacing x column spacing x slice spacing, in millilitres (1 ml = 1000 mm^3)."""
    row_mm, col_mm = spacing_mm(series.slices[0].header)
    return float(np.count_nonzero(mask)) * row_mm * col_mm * slice_spacing_mm(series) / 1000.0


# ---- outputs --------------------------------------------------------------------------------------

def _copy_header(header: pydicom.Dataset) -> pydicom.Dataset:
    """A copy whose elements can change without changing the source (Dataset(ds) shares them)."""
    return pydicom.Dataset({tag: copy.deepcopy(element) for tag, element in header.items()})


# Type 2 attributes highdicom copies from the source; IRCAD files lack some, so they go in empty
STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
               "StudyDate", "StudyTime", "ReferringPhysicianName")


def _with_type2_study_attributes(header: pydicom.Dataset, name: str = "") -> pydicom.Dataset:
    """The header as highdicom needs it: empty Type 2 attributes, and for a lossy source the compression
    method, which highdicom 0.22 copies unconditionally (seg/sop.py:1644-1653) though sources omit it:
    taken from the transfer syntax, else a DicomError."""
    missing = [k for k in STUDY_TYPE2 if k not in header]
    lossy = str(header.get("LossyImageCompression", "")) == "01"
    method = "LossyImageCompressionMethod" not in header and lossy
    if not missing and not method:
        return header
    ds = _copy_header(header)
    ds.file_meta = header.file_meta
    for keyword in missing:
        setattr(ds, keyword, None)
    if method:
        syntax = str(getattr(header.file_meta, "TransferSyntaxUID", ""))
        if syntax not in LOSSY_METHODS or "LossyImageCompressionRatio" not in header:
            raise DicomError(name, "marked lossy (LossyImageCompression 01) without its compression method or "
                                   f"ratio, and its transfer syntax {syntax or '?'} does not tell them")
        ds.LossyImageCompressionMethod = LOSSY_METHODS[syntax]
    return ds


def segmentation_dataset(prediction: Prediction):
    """The liver mask as a BINARY DICOM Segmentation referencing every source instance."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    model = prediction.model
    segment = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Liver",
        segmented_property_category=hd.sr.CodedConcept(*ANATOMICAL_STRUCTURE),
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="ctseg UNET", family=codes.cid7162.ArtificialIntelligence, version=model.version),
    )
    series = prediction.series
    try:
        return _segmentation(hd, series, prediction.mask, segment, model)
    except DicomError as e:
        raise CtsegError(f"{series.source}: no DICOM Segmentation can reference {e}") from e
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # highdicom's checks of the source headers
        raise CtsegError(f"{series.source}: highdicom cannot write a DICOM Segmentation referencing this series "
                         f"({type(e).__name__}: {e})") from e


def _segmentation(hd, series: Series, mask: np.ndarray, segment, model: ServedModel):
    from ctseg import __version__

    return hd.seg.Segmentation(
        source_images=[_with_type2_study_attributes(s.header, s.name) for s in series.slices],
        pixel_array=mask.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment],
        series_instance_uid=generate_uid(),
        series_number=300,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="ctseg",
        manufacturer_model_name="ctseg UNET",
        software_versions=__version__,
        device_serial_number=model.version,
        series_description="ctseg liver segmentation",
        omit_empty_frames=False,
    )


def mask_names(series: Series) -> list[str]:
    """IRCAD file names for the masks: the source's own `image_N` names when it has them, so ingest
    pairs each mask with its slice; else `image_<position index>`."""
    names = [s.name for s in series.slices]
    if all(re.fullmatch(r"image_\d+", n) for n in names):
        return names
    return [f"image_{i}" for i in range(len(names))]


def mask_dataset(source: pydicom.Dataset, mask: np.ndarray, series_uid: str) -> pydicom.Dataset:
    """An IRCAD-style mask slice: the source slice's header and geometry, 8-bit pixels 0/255."""
    ds = _copy_header(source)
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth",
                    "SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.SeriesDescription = f"MASKS_DICOM/{ORGAN} (ctseg prediction)"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.where(np.asarray(mask) != 0, MASK_FOREGROUND, 0).astype(np.uint8).tobytes()
    ds.is_little_endian, ds.is_implicit_VR = True, False
    return ds


def overlay_png(prediction: Prediction, path: Path, max_tiles: int = 16) -> Path:
    """A montage of up to `max_tiles` slices with liver (evenly spread), liver tinted red."""
    from PIL import Image

    with_liver = np.flatnonzero(prediction.mask.reshape(len(prediction.mask), -1).any(axis=1))
    chosen = with_liver if len(with_liver) else np.array([len(prediction.mask) // 2])
    chosen = chosen[np.unique(np.linspace(0, len(chosen) - 1, min(max_tiles, len(chosen))).round().astype(int))]
    tiles = []
    for i in chosen:
        grey = prediction.windowed[i].astype(np.float32)
        rgb = np.stack([grey] * 3, axis=-1)
        liver = prediction.mask[i].astype(bool)
        rgb[liver] = 0.55 * rgb[liver] + 0.45 * np.array([255.0, 40.0, 40.0])
        tiles.append(rgb.astype(np.uint8))
    columns = int(np.ceil(np.sqrt(len(tiles))))
    rows_n = int(np.ceil(len(tiles) / columns))
    h, w = tiles[0].shape[:2]
    sheet = np.zeros((rows_n * h, columns * w, 3), np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = tile
    Image.fromarray(sheet).save(path)
    return path


def reader_counts(readers: Iterable[str]) -> dict[str, int]:
    readers = list(readers)
    return {r: readers.count(r) for r in READERS if r in readers}


def summary(prediction: Prediction) -> dict:
    series, model = prediction.series, prediction.model
    row_mm, col_mm = spacing_mm(series.slices[0].header)
    return {
        "volume_ml": round(volume_ml(prediction.mask, series), 3),
        "slices": len(series.slices),
        "slices_with_liver": prediction.slices_with_liver,
        "model_version": model.version,
        "model_path": str(model.path),
        "model_input_size": list(model.size),
        "series_instance_uid": series.uid,
        "source": series.source,
        "spacing_mm": [row_mm, col_mm],
        "slice_spacing_mm": round(slice_spacing_mm(series), 6),
        "readers": reader_counts(prediction.readers),
        "cleanup": prediction.cleanup,
        "generated_uids": list(series.generated),
    }


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """`out` if it is missing or empty (or `overwrite`); a CtsegError before any work otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CtsegError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CtsegError(f"--out {out} is not empty (an earlier prediction?); give an empty or new folder, "
                         f"or --overwrite to replace its contents")
    return out


def write_outputs(prediction: Prediction, out: str | os.PathLike) -> dict:
    """Writes seg.dcm, MASKS_DICOM/liver/image_N, summary.json and overlay.png as the folder `out`
    (replacing what was there); returns the summary.

    Everything is written into a temporary folder beside `out` and renamed into place at the end, so a
    failure leaves no half-written output and no earlier prediction's files mixed with new ones.
    """
    import shutil
    import tempfile

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        result = _write_into(prediction, partial)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return result


def _write_into(prediction: Prediction, out: Path) -> dict:
    masks_dir = out / "MASKS_DICOM" / ORGAN
    masks_dir.mkdir(parents=True, exist_ok=True)
    segmentation_dataset(prediction).save_as(out / "seg.dcm")
    series_uid = generate_uid()
    for name, s, m in zip(mask_names(prediction.series), prediction.series.slices, prediction.mask):
        mask_dataset(s.header, m, series_uid).save_as(masks_dir / name, write_like_original=False)
    overlay_png(prediction, out / "overlay.png")
    result = summary(prediction)
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def predict(series_src: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
            batch_size: int = 16, progress: bool = False, overwrite: bool = False,
            cleanup: postprocess.Cleanup = postprocess.Cleanup()) -> dict:
    """The whole command: load, predict, write; returns the summary."""
    check_output_dir(out, overwrite)
    series = load_series(series_src)
    served = load_model(model)
    return write_outputs(predict_series(series, served, batch_size, progress, cleanup), out)
