"""One patient's CT series: the files of a folder, an IRCAD patient folder or a zip, their headers
checked to be one single-frame CT series and ordered by position, the UIDs a DICOM Segmentation
needs filled in, and the series' geometry (slice spacing, volume of a mask in ml).
"""
from __future__ import annotations

import copy
import dataclasses
import io
import os
from typing import Sequence

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from ctseg import geometry
from ctseg.dicom import (
    CT_IMAGE_STORAGE,
    DicomError,
    looks_like_dicom,
    not_single_frame,
    slice_position_mm,
    slice_sort_key,
    spacing_mm,
    thickness_mm,
)
from ctseg.errors import CtsegError


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
    derived: tuple[str, ...] = ()  # header values the files lacked, derived from others (`complete_slice_thickness`)
    skipped: tuple[str, ...] = ()  # entries beside the slices that are not files, or not DICOM at all (`NotDicom`)

    @property
    def uid(self) -> str:
        return str(self.slices[0].header.SeriesInstanceUID)

    @property
    def shape(self) -> tuple[int, int]:
        h = self.slices[0].header
        return int(h.Rows), int(h.Columns)

    @property
    def flip_axes(self) -> tuple[int, ...]:
        """Axes of a (slices, rows, columns) array to flip so that the slices face as the model was trained
        (`ctseg.geometry.in_plane_flips`); the mask is flipped back."""
        rows, cols = geometry.in_plane_flips(self.slices[0].header)
        return tuple(axis for axis, flip in ((1, rows), (2, cols)) if flip)

    def headers_only(self) -> "Series":
        """The series without its files' bytes (the input's size): what the outputs need once the model has
        read the pixels."""
        return dataclasses.replace(self, slices=tuple(SliceFile(s.name, b"", s.header) for s in self.slices))

    @property
    def geometry_notes(self) -> tuple[str, ...]:
        """What predict did about the series' geometry, for summary.json."""
        names = {1: "the top of the image is the patient's back", 2: "the left of the image is the patient's left"}
        return tuple(f"{names[axis]} (ImageOrientationPatient): the slices were flipped for the model and the mask "
                     "flipped back" for axis in self.flip_axes)


def series_files(src: str | os.PathLike, skipped: list[str] | None = None) -> list[tuple[str, bytes]]:
    """(name, bytes) of every candidate slice of one patient, through `ctseg.ircad`: a folder of DICOM
    files, an IRCAD patient folder (its PATIENT_DICOM folder or .zip), or a zip of either, also when
    the zip wraps the patient in one folder. DICOMDIR index files are left out; entries that are not
    files (a named pipe, a dangling link) are appended to `skipped` with the reason."""
    from ctseg import ircad

    try:
        files = ircad.read_series(str(src), skipped)
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


DICOM_FIRST_GROUPS = (b"\x02\x00", b"\x08\x00")  # a DICOM file without preamble starts with group 0002 or 0008


class NotDicom(DicomError):
    """A file with no DICOM header and no DICOM element (a README, a report, a picture): it cannot be a
    slice, so `load_series` skips it and lists it rather than refusing the series."""


class Localizer(NotDicom):
    """A scout or topogram beside the slices: split off and listed, as a file that is not a slice is."""


def read_header(name: str, data: bytes) -> pydicom.Dataset:
    """The header of a file that should be a single-frame grey-scale CT slice, or a DicomError why not."""
    dicom_signature = data[128:132] == b"DICM" or data[:2] in DICOM_FIRST_GROUPS  # damaged, it may still be a slice
    failure = DicomError if dicom_signature else NotDicom
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    except Exception as e:  # pydicom raises many types for files that are not DICOM
        raise failure(name, f"not readable as DICOM ({type(e).__name__}: {e})") from e
    if not looks_like_dicom(ds):
        raise failure(name, "not a DICOM file (no DICOM header or identifying elements)")
    if "Rows" not in ds or "Columns" not in ds or "SeriesInstanceUID" not in ds:
        raise DicomError(name, "not a DICOM image (no Rows, Columns or SeriesInstanceUID)")
    reason = not_single_frame(ds)
    if reason:
        raise DicomError(name, reason)
    modality = str(ds.get("Modality", "")).strip()
    if modality != "CT" and (modality or str(ds.get("SOPClassUID", "")) != CT_IMAGE_STORAGE):
        raise DicomError(name, f"modality {modality or '?'} is not CT")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if not photometric.startswith("MONOCHROME") or int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise DicomError(name, f"{photometric} image is not a grey-scale CT slice")
    if geometry.is_localizer(ds):
        raise Localizer(name, "a localizer (ImageType LOCALIZER), not a slice of the series")
    reason = geometry.not_axial(ds)
    if reason:
        raise DicomError(name, reason)
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
    mixed = geometry.mixed_spacing([s.name for s in slices], [spacing_mm(s.header) for s in slices])
    if mixed:
        more = f" (and {len(mixed) - 1} more)" if len(mixed) > 1 else ""
        raise CtsegError(f"{mixed[0][0]}: {mixed[0][1]}{more}: one pixel spacing per series is what the Segmentation "
                         "and the volume can describe")
    flips = {geometry.in_plane_flips(s.header) for s in slices}
    if len(flips) > 1:
        raise CtsegError(f"{source} mixes slices of different in-plane orientations (ImageOrientationPatient); "
                         "give one series")


def _check_positions(slices: Sequence[SliceFile]) -> None:
    """Every slice has a position and no two share one (checked before the model runs: highdicom needs
    the positions, and two slices at one place are a duplicated file or a second series mixed in)."""
    missing = [s.name for s in slices if slice_position_mm(s.header) is None]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CtsegError(f"{missing[0]}{more}: no ImagePositionPatient, so the slice cannot be placed in the series "
                         "nor in the Segmentation")
    for before, after in zip(slices, slices[1:]):
        if round(slice_position_mm(before.header), 3) == round(slice_position_mm(after.header), 3):
            raise CtsegError(f"{after.name}: same ImagePositionPatient as {before.name}: two slices at one position "
                             "(a duplicated file, or a second series mixed in)")
    gaps = geometry.position_gaps([s.name for s in slices], [slice_position_mm(s.header) for s in slices])
    if gaps:
        more = f" (and {len(gaps) - 1} more gaps)" if len(gaps) > 1 else ""
        raise CtsegError(f"{gaps[0][1]}{more}; predict needs the whole series: a 2.5D model reads each slice's "
                         "neighbours, and the volume would leave the gap out")


def complete_slice_thickness(slices: Sequence[SliceFile]) -> tuple[list[SliceFile], list[str]]:
    """Headers (in position order) with a SliceThickness value, and a sentence if one was filled in.

    SliceThickness is Type 2 (may be empty; exports and de-identification leave it so), but highdicom
    0.22 cannot write a Segmentation of a single-frame source without its value: seg/sop.py:2228-2235
    reads it into the source's pixel measures and content.py:412 (PixelMeasuresSequence.__eq__) compares
    it, an AttributeError when absent. A series of several slices gets the spacing of its positions, the
    slice depth `slice_spacing_mm` gives `volume_ml` (and ITK and dcm2niix use); a single slice without
    it is refused before the model runs rather than given a made-up value."""
    if not any(_blank(s.header, "SliceThickness") for s in slices):
        return list(slices), []
    step = geometry.median_step_mm([slice_position_mm(s.header) for s in slices])
    if step is None:
        name = next(s.name for s in slices if _blank(s.header, "SliceThickness"))
        raise CtsegError(f"{name}: no SliceThickness, and no second slice position to take the spacing from; "
                         "highdicom, which writes seg.dcm, needs it to describe the segmentation's voxels, so this "
                         "series cannot be segmented")
    spacing = round(step, 6)
    completed = []
    for s in slices:
        if _blank(s.header, "SliceThickness"):
            header = copy_header(s.header)
            header.SliceThickness = spacing
            s = SliceFile(s.name, s.data, header)
        completed.append(s)
    return completed, [f"SliceThickness missing: the spacing of the slice positions ({spacing:g} mm) used for the "
                       "Segmentation's pixel measures"]


def load_series(src: str | os.PathLike) -> Series:
    """One patient's CT series, header-checked and in position order; CtsegError naming the bad file(s)."""
    not_files: list[str] = []
    files = series_files(src, not_files)
    slices, bad, skipped = [], [], []
    for name, data in files:
        try:
            slices.append(SliceFile(name, data, read_header(name, data)))
        except NotDicom as e:
            skipped.append(e)
        except DicomError as e:
            bad.append(e)
    if skipped and not slices and not bad:
        bad = skipped
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        what = "no CT DICOM slices" if not slices else f"{len(bad)} file(s) that are not CT slices"
        raise CtsegError(f"{src}: {what}: " + "; ".join(str(e) for e in bad[:3]) + more)
    slices, generated = complete_uids(slices)
    _check_one_series(slices, str(src))
    slices.sort(key=lambda s: slice_sort_key(s.header, s.name))
    _check_positions(slices)
    slices, thickness = complete_slice_thickness(slices)
    return Series(str(src), tuple(slices), tuple(generated), tuple(thickness),
                  tuple(not_files) + tuple(str(e) for e in skipped))


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
        header = copy_header(s.header)
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


def copy_header(header: pydicom.Dataset) -> pydicom.Dataset:
    """A copy whose elements can change without changing the source (Dataset(ds) shares them), with the
    source's file meta (an empty one if it has none)."""
    ds = pydicom.Dataset({tag: copy.deepcopy(element) for tag, element in header.items()})
    ds.file_meta = getattr(header, "file_meta", pydicom.dataset.FileMetaDataset())
    return ds


def slice_spacing_mm(series: Series) -> float:
    """The series' slice depth (`ctseg.geometry.slice_depth_mm`: the median step of positions along the
    normal, else SliceThickness), as the evaluator's volumes and surface distances take it."""
    depth = geometry.slice_depth_mm([slice_position_mm(s.header) for s in series.slices],
                                    thickness_mm(series.slices[0].header))
    if depth is not None:
        return depth
    raise CtsegError(f"{series.source}: cannot tell the slice spacing (no ImagePositionPatient steps "
                     f"and no SliceThickness in {series.slices[0].name})")


def volume_ml(mask: np.ndarray, series: Series) -> float:
    """Voxels x row spacing x column spacing x slice spacing, in millilitres (1 ml = 1000 mm^3)."""
    row_mm, col_mm = spacing_mm(series.slices[0].header)
    return float(np.count_nonzero(mask)) * row_mm * col_mm * slice_spacing_mm(series) / 1000.0


ORGAN = "liver"
