"""A synthetic CT phantom written in the exact 3D-IRCADb-01 layout.

The real IRCAD data may not be redistributed, so this is the embedded default that every demo and
test runs on. Values are Hounsfield units stored as IRCAD stores them (unsigned, intercept -1024).
The liver is a smoothly deformed, patient-specific shape with vessels and lesions inside it; the
spleen, kidneys and contrast-filled vessels have similar densities, so a threshold alone does not
segment it. Image rows run anterior to posterior, columns patient right to left (radiological view).
"""
from __future__ import annotations

import dataclasses
import io
import os
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from ctseg.dicom import CT_IMAGE_STORAGE

AIR_HU = -1000.0
FAT_HU = -100.0
MUSCLE_HU = 45.0
BONE_CORTICAL_HU = 900.0
BONE_CANCELLOUS_HU = 280.0
CONTRAST_VESSEL_HU = 170.0
HU_INTERCEPT = -1024.0
ORGAN_MASKS = ("liver", "spleen")  # IRCAD ships several organ folders; only the chosen one is trained on
ZIP_DATE = (2010, 1, 1, 0, 0, 0)


@dataclasses.dataclass(frozen=True)
class PatientGeometry:
    """The per-patient parameters that make each phantom patient a different body."""
    patient_id: str
    num_slices: int
    spacing_mm: float
    thickness_mm: float
    liver_hu: float
    spleen_hu: float
    liver_span: tuple[float, float]      # fraction of the scan (inferior..superior) that holds liver
    seed: tuple[int, int]


def _smooth(rng: np.random.Generator, terms: int = 3, scale: float = 1.0):
    """A random smooth function of t in [0, 1] (sum of low-frequency sines)."""
    freq = rng.uniform(0.3, 1.5, terms)
    phase = rng.uniform(0, 2 * np.pi, terms)
    amp = rng.uniform(0.3, 1.0, terms) * scale / terms
    return lambda t: float(np.sum(amp * np.sin(2 * np.pi * freq * t + phase)))


class _DeformedEllipse:
    """An ellipse whose boundary is perturbed by angular harmonics that drift smoothly with t."""

    def __init__(self, rng, harmonics=(2, 3, 4, 5), strength=0.12):
        self.k = np.array(harmonics)
        self.amp = rng.uniform(0.3, 1.0, len(harmonics)) * strength / np.sqrt(self.k)
        self.phase = [_smooth(rng, 2, 2.0) for _ in harmonics]
        self.phase0 = rng.uniform(0, 2 * np.pi, len(harmonics))

    def inside(self, u, v, t, cx, cy, rx, ry):
        if rx <= 0 or ry <= 0:
            return np.zeros(u.shape, bool)
        du, dv = (u - cx) / rx, (v - cy) / ry
        rho = np.hypot(du, dv)
        near = rho < 1.0 + np.sum(self.amp) + 1e-6
        out = np.zeros(u.shape, bool)
        if not near.any():
            return out
        theta = np.arctan2(dv[near], du[near])
        boundary = np.ones_like(theta)
        for k, a, ph, p0 in zip(self.k, self.amp, self.phase, self.phase0):
            boundary += a * np.cos(k * theta + p0 + ph(t))
        out[near] = rho[near] < boundary
        return out


def _disc(u, v, cx, cy, r):
    return (u - cx) ** 2 + (v - cy) ** 2 < r * r


class PatientPhantom:
    """Renders one phantom patient slice by slice: HU image and organ masks."""

    def __init__(self, geometry: PatientGeometry, size: int):
        self.g = geometry
        self.size = size
        rng = np.random.default_rng(geometry.seed)
        self.noise_rng = np.random.default_rng(geometry.seed + (7,))
        ax = (np.arange(size) + 0.5) / size * 2 - 1
        self.v, self.u = np.meshgrid(ax, ax, indexing="ij")  # v: anterior(-) to posterior(+), u: patient right(-) to left(+)
        self.body = (rng.uniform(0.80, 0.90), rng.uniform(0.58, 0.68))
        self.liver = _DeformedEllipse(rng, strength=0.14)
        self.left_lobe = _DeformedEllipse(rng, harmonics=(2, 3), strength=0.10)
        self.spleen = _DeformedEllipse(rng, harmonics=(2, 3), strength=0.10)
        self.liver_drift = (_smooth(rng, 3, 0.08), _smooth(rng, 3, 0.06))
        self.liver_size = (rng.uniform(0.27, 0.34), rng.uniform(0.30, 0.38))
        self.left_lobe_size = rng.uniform(0.6, 1.0)
        self.spleen_span = (rng.uniform(0.45, 0.6), rng.uniform(0.8, 0.95))
        self.kidney_span = (rng.uniform(0.05, 0.2), rng.uniform(0.45, 0.6))
        self.vessels = [(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.06, 0.14),
                         _smooth(rng, 2, 0.3), _smooth(rng, 2, 0.3)) for _ in range(rng.integers(3, 7))]
        lo, hi = geometry.liver_span
        self.lesions = [(rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), rng.uniform(0.08, 0.22),
                         rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)), rng.uniform(0.04, 0.12))
                        for _ in range(rng.integers(0, 4))]
        self.rib_angles = np.sort(rng.uniform(0, 2 * np.pi, 14))
        self.bowel = [(rng.uniform(-0.1, 0.5), rng.uniform(-0.45, 0.1), rng.uniform(0.05, 0.11),
                       _smooth(rng, 2, 0.3), rng.uniform() < 0.35) for _ in range(6)]

    def _liver_profile(self, t: float) -> float:
        lo, hi = self.g.liver_span
        s = (t - lo) / (hi - lo)
        if s <= 0 or s >= 1:
            return 0.0
        return float(np.sin(np.pi * s ** 0.75) ** 0.6)  # widest towards the dome, tapering to the tip

    def slice(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """HU image (float32) and organ masks (bool) of slice `index` (0 = most inferior)."""
        g, u, v = self.g, self.u, self.v
        t = index / max(g.num_slices - 1, 1)
        hu = np.full(u.shape, AIR_HU, np.float32)
        bx, by = self.body
        body = (u / bx) ** 2 + (v / by) ** 2 < 1
        inner = (u / (bx - 0.06)) ** 2 + (v / (by - 0.05)) ** 2 < 1
        cavity = (u / (bx - 0.11)) ** 2 + (v / (by - 0.10)) ** 2 < 1
        hu[body] = FAT_HU
        hu[inner] = MUSCLE_HU
        hu[cavity] = -80.0
        for cx, cy, r, drift, gas in self.bowel:
            m = _disc(u, v, cx * bx + drift(t) * 0.2, cy * by, r) & cavity
            hu[m] = -850.0 if gas else 25.0

        # spine and ribs
        sv = by - 0.12
        hu[_disc(u, v, 0.0, sv, 0.11)] = BONE_CORTICAL_HU
        hu[_disc(u, v, 0.0, sv, 0.085)] = BONE_CANCELLOUS_HU
        hu[_disc(u, v, 0.0, sv + 0.13, 0.035)] = 20.0
        if t > 0.3:
            for a in self.rib_angles:
                rx, ry = 0.93 * (bx - 0.06) * np.cos(a), 0.93 * (by - 0.05) * np.sin(a)
                if ry < sv - 0.1:
                    hu[_disc(u, v, rx, ry, 0.028)] = BONE_CORTICAL_HU * 0.8

        masks = {name: np.zeros(u.shape, bool) for name in ORGAN_MASKS}
        # kidneys: enhancing cortex around a darker medulla
        klo, khi = self.kidney_span
        if klo < t < khi:
            k = np.sin(np.pi * (t - klo) / (khi - klo)) ** 0.5
            for side in (-1, 1):
                cx, cy = side * 0.30, sv - 0.05
                hu[(((u - cx) / (0.10 * k + 1e-6)) ** 2 + ((v - cy) / (0.14 * k + 1e-6)) ** 2) < 1] = 150.0
                hu[(((u - cx) / (0.06 * k + 1e-6)) ** 2 + ((v - cy) / (0.09 * k + 1e-6)) ** 2) < 1] = g.liver_hu - 20
        # spleen, same density as liver, on the patient's left posterior
        slo, shi = self.spleen_span
        if slo < t < shi:
            k = np.sin(np.pi * (t - slo) / (shi - slo)) ** 0.6
            m = self.spleen.inside(u, v, t, 0.50 * bx, 0.25 * by, 0.17 * k, 0.24 * k) & inner
            hu[m] = g.spleen_hu
            masks["spleen"] = m
        # aorta and inferior vena cava, contrast-filled, next to the liver
        hu[_disc(u, v, 0.06, sv - 0.18, 0.055)] = CONTRAST_VESSEL_HU + 30
        hu[_disc(u, v, -0.13, sv - 0.2, 0.05)] = CONTRAST_VESSEL_HU - 40

        p = self._liver_profile(t)
        if p > 0:
            cx = -0.42 * bx + self.liver_drift[0](t)
            cy = -0.05 + self.liver_drift[1](t)
            rx, ry = self.liver_size[0] * p, self.liver_size[1] * p
            liver = self.liver.inside(u, v, t, cx, cy, rx, ry)
            lobe_p = p * self.left_lobe_size * np.clip((t - g.liver_span[0]) / (g.liver_span[1] - g.liver_span[0]) * 2 - 0.4, 0, 1)
            liver |= self.left_lobe.inside(u, v, t, cx + 0.24, cy - 0.10, 0.22 * lobe_p, 0.13 * lobe_p)
            liver &= inner & ~_disc(u, v, -0.13, sv - 0.2, 0.06)
            hu[liver] = g.liver_hu
            for vx, vy, r, dx, dy in self.vessels:
                m = _disc(u, v, cx + vx * rx + dx(t) * rx, cy + vy * ry + dy(t) * ry, r * min(rx, ry)) & liver
                hu[m] = CONTRAST_VESSEL_HU
            for lx, ly, lr, lt, lh in self.lesions:
                r = lr * min(rx, ry) * max(0.0, 1 - ((t - lt) / lh) ** 2) ** 0.5
                m = _disc(u, v, cx + lx * rx, cy + ly * ry, r) & liver
                hu[m] = g.liver_hu - 45
            masks["liver"] = liver
            masks["spleen"] &= ~liver
        hu[body] += self.noise_rng.normal(0.0, 12.0, int(body.sum())).astype(np.float32)
        return np.clip(hu, -1024, 3071), masks


def patient_geometries(patients: int, slices: int, seed: int) -> list[PatientGeometry]:
    out = []
    for k in range(patients):
        rng = np.random.default_rng((seed, k))
        liver_hu = rng.uniform(55, 110)
        lo = rng.uniform(0.25, 0.40)
        out.append(PatientGeometry(
            patient_id=f"3Dircadb1.{k + 1}",
            num_slices=max(8, int(round(slices * rng.uniform(0.8, 1.2)))),
            spacing_mm=round(float(rng.uniform(0.56, 0.87)), 3),
            thickness_mm=round(float(rng.uniform(1.6, 4.0)), 1),
            liver_hu=float(liver_hu),
            spleen_hu=float(liver_hu + rng.uniform(-12, 12)),
            liver_span=(lo, lo + rng.uniform(0.40, 0.55)),
            seed=(seed, k),
        ))
    return out


def _uid(*parts) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _dataset(g: PatientGeometry, size: int, index: int, pixels: np.ndarray, *, seed: int,
             series: str, is_mask: bool) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = _uid(seed, g.patient_id, series, index)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Manufacturer = "ctseg synthetic phantom"
    ds.PatientName = g.patient_id
    ds.PatientID = g.patient_id
    ds.StudyDate = ds.SeriesDate = "20100101"
    ds.StudyInstanceUID = _uid(seed, g.patient_id, "study")
    ds.SeriesInstanceUID = _uid(seed, g.patient_id, series)
    ds.FrameOfReferenceUID = _uid(seed, g.patient_id, "frame")
    ds.SeriesDescription = series
    ds.SeriesNumber = 2 if is_mask else 1
    ds.InstanceNumber = index + 1
    half = size * g.spacing_mm / 2
    ds.ImagePositionPatient = [-half, -half, round(-index * g.thickness_mm, 3)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.SliceLocation = ds.ImagePositionPatient[2]
    ds.PixelSpacing = [g.spacing_mm, g.spacing_mm]
    ds.SliceThickness = g.thickness_mm
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    if is_mask:
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelData = pixels.astype(np.uint8).tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.RescaleIntercept = HU_INTERCEPT
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = 60, 400
        ds.PixelData = pixels.astype("<u2").tobytes()
    return ds


def _to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, write_like_original=False)
    return buf.getvalue()


def render_patient(g: PatientGeometry, size: int, seed: int) -> Iterator[tuple[int, dict[str, bytes]]]:
    """Yields (slice index, {relative IRCAD path: DICOM bytes}) for one patient.

    Slice 0 is the most superior, as ImagePositionPatient z decreases with the index; the phantom's
    own index runs inferior to superior, so organs are rendered at t = 1 - i/(n-1).
    """
    phantom = PatientPhantom(g, size)
    for i in range(g.num_slices):
        hu, masks = phantom.slice(g.num_slices - 1 - i)
        stored = np.rint(hu - HU_INTERCEPT).astype(np.uint16)
        files = {f"PATIENT_DICOM/image_{i}": _to_bytes(_dataset(g, size, i, stored, seed=seed, series="PATIENT_DICOM", is_mask=False))}
        for organ, m in masks.items():
            files[f"MASKS_DICOM/{organ}/image_{i}"] = _to_bytes(
                _dataset(g, size, i, m.astype(np.uint8) * 255, seed=seed, series=f"MASKS_DICOM/{organ}", is_mask=True))
        yield i, files


def _zip_bytes(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, entries[name])
    return buf.getvalue()


def write_phantom(out: str | os.PathLike, *, patients: int = 3, slices: int = 60, size: int = 512,
                  seed: int = 0, as_zip: bool = False, progress: bool = False) -> Path:
    """Writes the phantom; returns the dataset folder, or the outer zip with `as_zip`.

    Folder form: OUT/3Dircadb1.<k>/PATIENT_DICOM/image_<i> and OUT/3Dircadb1.<k>/MASKS_DICOM/<organ>/image_<i>.
    Zip form: OUT (or OUT/3Dircadb1.zip when OUT is not a .zip path) holding
    3Dircadb1/3Dircadb1.<k>/PATIENT_DICOM.zip and MASKS_DICOM.zip, as the published archive does.
    """
    if patients < 1 or slices < 1 or size < 16:
        raise ValueError("need at least 1 patient, 1 slice and a size of 16 pixels")
    out = Path(out)
    geometries = patient_geometries(patients, slices, seed)
    total = sum(g.num_slices for g in geometries)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, unit="slice", desc="phantom")
    outer: dict[str, bytes] = {}
    for g in geometries:
        per_patient: dict[str, bytes] = {}
        for _, files in render_patient(g, size, seed):
            if as_zip:
                per_patient.update(files)
            else:
                for rel, data in files.items():
                    path = out / g.patient_id / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
            if bar:
                bar.update(1)
        if as_zip:
            for part in ("PATIENT_DICOM", "MASKS_DICOM"):
                inner = {k: v for k, v in per_patient.items() if k.startswith(part + "/")}
                outer[f"3Dircadb1/{g.patient_id}/{part}.zip"] = _zip_bytes(inner)
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
