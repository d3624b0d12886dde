"""Writing the phantom as DICOM in the 3D-IRCADb-01 layout: folders, or the published nested zips.

Stored as 3D-IRCADb-01 stores it: files numbered feet first (image_0 is the most inferior slice),
ImagePositionPatient (0, 0, thickness x index), no FrameOfReferenceUID, and CT either unsigned with
RescaleIntercept -1024 or, for some patients, signed with intercept 0.
"""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ctseg.cpu_kernels import usable_cores
from ctseg.dicom import CT_IMAGE_STORAGE
from ctseg.phantom.render import PROTOCOLS, PatientGeometry, PatientPhantom, patient_geometries
from ctseg.phantom.tissues import PHASES

HU_INTERCEPT = -1024.0
ZIP_DATE = (2010, 1, 1, 0, 0, 0)


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _series_header(g: PatientGeometry, size: int, *, seed: int, series: str, is_mask: bool) -> Dataset:
    """What every file of one series shares; `_at_slice` fills in the rest."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.Modality = "CT"
    ds.Manufacturer = "ctseg synthetic phantom"
    ds.PatientName = g.patient_id
    ds.PatientID = g.patient_id
    ds.StudyDate = ds.SeriesDate = "20100101"
    ds.StudyInstanceUID = _uid(seed, g.patient_id, "study")
    ds.SeriesInstanceUID = _uid(seed, g.patient_id, series)
    ds.SeriesDescription = series
    ds.SeriesNumber = 2 if is_mask else 1
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [g.spacing_mm, g.spacing_mm]
    ds.SliceThickness = g.thickness_mm
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 1 if g.signed_storage and not is_mask else 0
    if is_mask:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = (16, 16, 15) if g.signed_storage else (16, 12, 11)
        ds.RescaleIntercept = 0.0 if g.signed_storage else HU_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 60, 400
        if g.phase != "native":
            ds.ContrastBolusAgent = "IV iodinated contrast"
        ds.ImageComments = f"contrast phase: {g.phase}"
    return ds


def _at_slice(header: Dataset, g: PatientGeometry, index: int, pixels: np.ndarray, *, seed: int) -> Dataset:
    """The series' header made slice `index`'s dataset, in place (a series' files are written one at a time)."""
    is_mask = header.SeriesNumber == 2
    header.file_meta.MediaStorageSOPInstanceUID = _uid(seed, g.patient_id, header.SeriesDescription, index)
    header.SOPInstanceUID = header.file_meta.MediaStorageSOPInstanceUID
    header.InstanceNumber = index + 1
    header.ImagePositionPatient = [0.0, 0.0, round(index * g.thickness_mm, 3)]
    header.SliceLocation = header.ImagePositionPatient[2]
    if is_mask:
        header.PixelData = pixels.astype(np.uint8).tobytes()
    else:
        header.PixelData = pixels.astype("<i2" if g.signed_storage else "<u2").tobytes()
    return header


def _dataset(g: PatientGeometry, size: int, index: int, pixels: np.ndarray, *, seed: int,
             series: str, is_mask: bool) -> Dataset:
    """One file's dataset on its own (the simple phantom; `render_patient` keeps each series' header)."""
    return _at_slice(_series_header(g, size, seed=seed, series=series, is_mask=is_mask), g, index, pixels, seed=seed)


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


def render_patient(g: PatientGeometry, size: int, seed: int,
                   slices: range | None = None) -> Iterator[tuple[int, dict[str, bytes]]]:
    """Yields (slice index, {relative IRCAD path: DICOM bytes}) for one patient's `slices` (default all), image_0
    the most inferior. Each slice draws from its own seed, so any range gives the same files as the whole."""
    phantom = PatientPhantom(g, size)
    headers: dict[str, Dataset] = {}

    def header(series: str, is_mask: bool) -> Dataset:
        if series not in headers:
            headers[series] = _series_header(g, size, seed=seed, series=series, is_mask=is_mask)
        return headers[series]

    for i in range(g.num_slices) if slices is None else slices:
        rendered = phantom.slice(i)
        stored = np.rint(rendered.hu if g.signed_storage else rendered.hu - HU_INTERCEPT)
        image = _at_slice(header("PATIENT_DICOM", False), g, i, stored, seed=seed)
        files = {f"PATIENT_DICOM/image_{i}": _to_bytes(image)}
        for organ, m in rendered.masks.items():
            mask = _at_slice(header(f"MASKS_DICOM/{organ}", True), g, i, m.astype(np.uint8) * 255, seed=seed)
            files[f"MASKS_DICOM/{organ}/image_{i}"] = _to_bytes(mask)
        yield i, files


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name])
    return buf.getvalue()


# Below this many 512 px slice-equivalents the phantom is written in this process: a worker's start-up (a fresh
# interpreter importing numpy and pydicom, about a second) would cost more than it saves.
PARALLEL_MIN_SLICES_512 = 64


def _patient_files(g: PatientGeometry, size: int, seed: int, out: Path | None,
                   on_slice: Callable[[], object] | None = None, slices: range | None = None) -> dict[str, bytes]:
    """One patient rendered: its files written under `out` (folder form, returns {}; `slices` may pick a part of
    them) or, with `out` None, its PATIENT_DICOM.zip and MASKS_DICOM.zip by their path in the published archive.
    `on_slice` runs after each slice."""
    per_patient: dict[str, bytes] = {}
    for _, files in render_patient(g, size, seed, slices):
        if out is None:
            per_patient.update(files)
        else:
            for rel, data in files.items():
                path = out / g.patient_id / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
        if on_slice:
            on_slice()
    if out is not None:
        return {}
    return {f"3Dircadb1/{g.patient_id}/{part}.zip": _zip_bytes({k: v for k, v in per_patient.items()
                                                               if k.startswith(part + "/")})
            for part in ("PATIENT_DICOM", "MASKS_DICOM")}


def _phantom_workers(geometries: list[PatientGeometry], size: int) -> int:
    """A process per core (at most one per patient) when the phantom is big enough to pay for starting them."""
    work = sum(g.num_slices for g in geometries) * (size / 512) ** 2
    if work < PARALLEL_MIN_SLICES_512:
        return 1
    return max(1, min(usable_cores(), len(geometries)))


SLICES_PER_JOB = 16


def _work_units(geometries: list[PatientGeometry], as_zip: bool) -> list[tuple[PatientGeometry, range]]:
    """Jobs for the workers, longest first: a zip holds a whole patient; folders are written in runs of
    SLICES_PER_JOB slices, so the workers finish together instead of one rendering the last long scan alone."""
    step = max(g.num_slices for g in geometries) if as_zip else SLICES_PER_JOB
    units = [(g, range(lo, min(lo + step, g.num_slices))) for g in geometries for lo in range(0, g.num_slices, step)]
    return sorted(units, key=lambda unit: -len(unit[1]))


def write_phantom(out: str | os.PathLike, *, patients: int = 3, slices: int = 60, size: int = 512,
                  seed: int = 0, as_zip: bool = False, progress: bool = False, phases: tuple[str, ...] = PHASES,
                  noise_hu: tuple[float, float] = (8.0, 25.0), protocols: tuple[str, ...] = tuple(PROTOCOLS),
                  workers: int | None = None) -> Path:
    """Writes the phantom; returns the dataset folder, or the outer zip with `as_zip`.

    `phases`, `noise_hu` and `protocols` narrow the contrast phases, noise levels and scan ranges
    patients draw from (default: all three phases, 8-25 HU, abdomen, abdomen-pelvis and
    chest-abdomen scans, as real scans vary); a narrower phantom is an easier one.
    Patients are rendered on `workers` processes (default: one per core for a phantom of more than a few
    dozen 512 px slices); each patient draws from its own seed, so the files are the same bytes either way.

    Folder form: OUT/3Dircadb1.<k>/PATIENT_DICOM/image_<i> and OUT/3Dircadb1.<k>/MASKS_DICOM/<organ>/image_<i>.
    Zip form: OUT (or OUT/3Dircadb1.zip when OUT is not a .zip path) holding
    3Dircadb1/3Dircadb1.<k>/PATIENT_DICOM.zip and MASKS_DICOM.zip, as the published archive does.
    """
    if patients < 1 or slices < 1 or size < 16:
        raise ValueError("need at least 1 patient, 1 slice and a size of 16 pixels")
    out = Path(out)
    geometries = patient_geometries(patients, slices, seed, phases=phases, noise_hu=noise_hu, protocols=protocols)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=sum(g.num_slices for g in geometries), unit="slice", desc="phantom")
    target = None if as_zip else out
    workers = _phantom_workers(geometries, size) if workers is None else workers
    outer: dict[str, bytes] = {}
    if workers <= 1:
        for g in geometries:  # in this process the bar advances a slice at a time
            outer.update(_patient_files(g, size, seed, target, on_slice=bar.update if bar else None))
    else:
        import concurrent.futures
        import multiprocessing

        # spawn, not fork: the caller may hold TensorFlow's or Beam's threads, which a forked child inherits broken
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            jobs = {pool.submit(_patient_files, g, size, seed, target, slices=part): len(part)
                    for g, part in _work_units(geometries, as_zip)}
            for job in concurrent.futures.as_completed(jobs):
                outer.update(job.result())
                if bar:
                    bar.update(jobs[job])
    if bar:
        bar.close()
    if not as_zip:
        return out
    zip_path = out if out.suffix == ".zip" else out / "3Dircadb1.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_STORED) as zf:  # inner zips are already deflated
        for name in sorted(outer):
            zf.writestr(zipfile.ZipInfo(name, date_time=ZIP_DATE), outer[name])
    return zip_path
