"""The "simple abdomen": a low-contrast dataset in the 3D-IRCADb-01 layout that the recipe must also learn from.

Nothing here imitates a scanner. A body ellipse of fat around soft tissue; a liver only 15-35 HU
brighter than that soft tissue (drawn per patient); a spleen at the liver's density on the other side;
two kidneys and the spine; white Gaussian noise of 12 HU. Organs are smooth shapes that differ per
patient and narrow to small cross-sections at the liver's top and bottom. A recipe tuned only to the
realistic phantom can fail here in ways a user's own 15-20 low-contrast patients would show
(docs/BENCHMARKS.md, "Low contrast: the simple abdomen").

Written as dicom_io writes the phantom (feet first, ImagePositionPatient (0, 0, thickness x index),
unsigned with intercept -1024 or signed with intercept 0), with masks for liver, spleen and kidneys.

    .venv/bin/python -m ctseg.phantom.simple --out DIR [--patients 12] [--slices 32] [--size 256] [--seed 0]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

import numpy as np

from ctseg.phantom.dicom_io import _dataset, _to_bytes

ORGANS = ("liver", "spleen", "rightkidney", "leftkidney")
AIR, LIVER, SPLEEN, KIDNEY, FAT, SOFT, BONE, MARROW = range(8)
NOISE_HU = 12.0
CONTRAST_HU = (15.0, 35.0)     # liver minus surrounding soft tissue
SUPERSAMPLE = 2                # labels painted at 2x and averaged: partial volume at the organ borders
SIGNED_PROBABILITY = 0.3


@dataclasses.dataclass(frozen=True)
class SimpleGeometry:
    """One patient's acquisition and anatomy, all drawn from `seed`; lengths in mm, heights in [0, 1]
    of the scan (0 = the most inferior slice)."""
    patient_id: str
    num_slices: int
    spacing_mm: float
    thickness_mm: float
    seed: tuple[int, int]
    soft_hu: float
    contrast_hu: float
    signed_storage: bool
    liver_range: tuple[float, float]   # heights of the liver's bottom and top
    phase: str = "portal"              # what the DICOM header says; the HU here are not a phase's
    noise_hu: float = NOISE_HU

    @property
    def liver_hu(self) -> float:
        return self.soft_hu + self.contrast_hu


def simple_geometries(patients: int, slices: int, seed: int, size: int = 256) -> list[SimpleGeometry]:
    """Per-patient draws; the anatomy in mm does not depend on `size`, only the pixel spacing does."""
    out = []
    for k in range(patients):
        rng = np.random.default_rng((seed, k, 17))
        bottom, top = float(rng.uniform(0.06, 0.2)), float(rng.uniform(0.8, 0.94))
        thickness_mm = rng.uniform(3.5, 5.5)        # the validation gate's diagnostic range is 0.5-6 mm
        out.append(SimpleGeometry(
            patient_id=f"3Dircadb1.{k + 1}", num_slices=slices,
            spacing_mm=round(float(rng.uniform(340.0, 400.0)) / size, 4),  # a 340-400 mm field of view
            thickness_mm=round(float(thickness_mm), 1),
            seed=(seed, k), soft_hu=round(float(rng.uniform(35.0, 55.0)), 1),
            contrast_hu=round(float(rng.uniform(*CONTRAST_HU)), 1),
            signed_storage=bool(rng.uniform() < SIGNED_PROBABILITY), liver_range=(bottom, top)))
    return out


def _profile(h, lo: float, hi: float, power: float, skew: float = 1.0):
    """0 outside [lo, hi], rising smoothly to 1 inside: how wide an organ is at height `h`; small near its ends."""
    u = np.clip((np.asarray(h, np.float64) - lo) / (hi - lo), 0.0, 1.0) ** skew
    return np.sin(np.pi * u) ** power


class _Blob:
    """A smooth closed shape: an ellipse with low angular harmonics on its radius that drift with height."""

    def __init__(self, rng, centre_mm, axes_mm, span, power, skew=1.0, harmonics=0.12, drift_mm=8.0):
        self.centre, self.axes = np.array(centre_mm, float), np.array(axes_mm, float)
        self.span, self.power, self.skew = span, power, skew
        self.angle = rng.uniform(-0.4, 0.4)
        self.drift = rng.uniform(-drift_mm, drift_mm, (2, 2))        # centre moves along a gentle curve
        self.amp = rng.uniform(0, harmonics, (3, 2))                  # harmonics k = 2, 3, 4: base and change
        self.phase = rng.uniform(0, 2 * np.pi, (3, 2))

    def inside(self, x_mm, y_mm, h: float):
        scale = _profile(h, *self.span, self.power, self.skew)
        if scale <= 0.02:
            return np.zeros(np.shape(x_mm), bool)
        u = np.clip((h - self.span[0]) / (self.span[1] - self.span[0]), 0, 1)
        cx, cy = self.centre + self.drift[0] * np.sin(np.pi * u) + self.drift[1] * (u - 0.5)
        c, s = np.cos(self.angle), np.sin(self.angle)
        dx, dy = x_mm - cx, y_mm - cy
        ex = (c * dx + s * dy) / (self.axes[0] * scale)
        ey = (-s * dx + c * dy) / (self.axes[1] * scale)
        theta = np.arctan2(ey, ex)
        radius = 1.0
        for i, k in enumerate((2, 3, 4)):
            amp = self.amp[i, 0] * (1 + 0.5 * np.sin(2 * np.pi * u + self.phase[i, 1]))
            radius = radius + amp * np.cos(k * theta + self.phase[i, 0] + self.amp[i, 1] * 4 * u)
        return np.hypot(ex, ey) < radius


class SimpleAbdomen:
    """Labels and HU of one patient's slices; `slice(i)` gives (HU float32, {organ: bool mask})."""

    def __init__(self, g: SimpleGeometry, size: int):
        self.g, self.size = g, size
        rng = np.random.default_rng(g.seed + (1,))
        self.body_centre = rng.uniform(-12, 12, 2)
        self.body_axes = np.array([rng.uniform(140, 170), rng.uniform(100, 125)])
        self.fat_mm = rng.uniform(10, 25)
        self.fat_hu, self.kidney_hu = rng.uniform(-110, -80), rng.uniform(130, 190)
        ax, ay = self.body_axes - self.fat_mm
        bx, by = self.body_centre
        lo, hi = g.liver_range
        span = hi - lo
        # Image columns run from the patient's right to left, rows from anterior to posterior.
        self.liver = _Blob(rng, (bx - ax * rng.uniform(0.35, 0.5), by - ay * rng.uniform(0.0, 0.2)),
                           (rng.uniform(60, 80), rng.uniform(55, 75)), (lo, hi), rng.uniform(0.5, 0.8),
                           skew=rng.uniform(0.7, 1.0))
        # The left lobe reaches across the midline in front, overlapping the right lobe so the liver is one organ.
        (lx, ly), (la, lb) = self.liver.centre, self.liver.axes
        self.left_lobe = _Blob(rng, (lx + la * rng.uniform(0.6, 0.8), ly - lb * rng.uniform(0.2, 0.4)),
                               (rng.uniform(35, 50), rng.uniform(20, 28)),
                               (lo + span * rng.uniform(0.35, 0.45), hi - span * rng.uniform(0.1, 0.2)),
                               rng.uniform(0.5, 0.8), harmonics=0.08, drift_mm=4.0)
        self.spleen = _Blob(rng, (bx + ax * rng.uniform(0.5, 0.62), by + ay * rng.uniform(0.2, 0.4)),
                            (rng.uniform(25, 35), rng.uniform(35, 50)),
                            (lo + span * rng.uniform(0.3, 0.45), lo + span * rng.uniform(0.8, 0.95)),
                            rng.uniform(0.5, 0.8))
        kidney_x, kidney_y = rng.uniform(55, 70), by + ay * rng.uniform(0.45, 0.6)
        self.kidneys = {name: _Blob(rng, (bx + side * kidney_x, kidney_y), (rng.uniform(22, 28), rng.uniform(30, 38)),
                                    (lo - span * rng.uniform(0.05, 0.2) + shift,
                                     lo + span * rng.uniform(0.3, 0.4) + shift),
                                    0.6, harmonics=0.05)
                        for name, side, shift in (("rightkidney", -1, -0.03), ("leftkidney", 1, 0.03))}
        self.spine_centre = np.array([bx, by + ay - rng.uniform(30, 40)])
        self.spine_mm = rng.uniform(16, 20)
        n = size * SUPERSAMPLE
        fov_mm = g.spacing_mm * size
        axis = ((np.arange(n) + 0.5) / n - 0.5) * fov_mm
        self.y_mm, self.x_mm = np.meshgrid(axis, axis, indexing="ij")

    def height(self, index: int) -> float:
        return index / max(self.g.num_slices - 1, 1)

    def labels(self, h: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Tissue labels at the supersampled grid, and each organ's region (kidneys apart)."""
        x, y = self.x_mm, self.y_mm
        bx, by = self.body_centre
        (ax, ay), fat = self.body_axes, self.fat_mm
        labels = np.full(x.shape, AIR, np.uint8)
        labels[((x - bx) / ax) ** 2 + ((y - by) / ay) ** 2 < 1] = FAT
        inner = ((x - bx) / (ax - fat)) ** 2 + ((y - by) / (ay - fat)) ** 2 < 1
        labels[inner] = SOFT
        deep = ((x - bx) / (ax - fat - 4)) ** 2 + ((y - by) / (ay - fat - 4)) ** 2 < 1
        regions = {"liver": deep & (self.liver.inside(x, y, h) | self.left_lobe.inside(x, y, h)),
                   "spleen": deep & self.spleen.inside(x, y, h)}
        regions.update({name: deep & blob.inside(x, y, h) for name, blob in self.kidneys.items()})
        labels[regions["liver"]] = LIVER
        labels[regions["spleen"]] = SPLEEN
        for name in self.kidneys:
            labels[regions[name]] = KIDNEY
        r = np.hypot(x - self.spine_centre[0], y - self.spine_centre[1])
        labels[r < self.spine_mm] = BONE
        labels[r < self.spine_mm - 3] = MARROW
        painted = {"liver": LIVER, "spleen": SPLEEN, "rightkidney": KIDNEY, "leftkidney": KIDNEY}
        return labels, {name: region & (labels == painted[name]) for name, region in regions.items()}

    def tissue_hu(self) -> np.ndarray:
        g = self.g
        return np.array([-1000.0, g.liver_hu, g.liver_hu, self.kidney_hu, self.fat_hu, g.soft_hu, 700.0, 230.0],
                        np.float32)

    def slice(self, index: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        labels, regions = self.labels(self.height(index))
        hu = _downsample(self.tissue_hu()[labels])
        rng = np.random.default_rng(self.g.seed + (2, index))
        hu = hu + rng.normal(0.0, self.g.noise_hu, hu.shape).astype(np.float32)
        masks = {name: _downsample(region.astype(np.float32)) >= 0.5 for name, region in regions.items()}
        return np.clip(hu, -1024, 3071), masks


def _downsample(a: np.ndarray) -> np.ndarray:
    n = a.shape[0] // SUPERSAMPLE
    return a.reshape(n, SUPERSAMPLE, n, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


def write_simple_abdomen(out: str | os.PathLike, *, patients: int = 12, slices: int = 32, size: int = 256,
                         seed: int = 0) -> Path:
    """Writes OUT/3Dircadb1.<k>/PATIENT_DICOM/image_<i> and MASKS_DICOM/<organ>/image_<i>; returns OUT."""
    if patients < 1 or slices < 2 or size < 16:
        raise ValueError("need at least 1 patient, 2 slices and a size of 16 pixels")
    out = Path(out)
    for g in simple_geometries(patients, slices, seed, size):
        phantom = SimpleAbdomen(g, size)
        for i in range(g.num_slices):
            hu, masks = phantom.slice(i)
            stored = np.rint(hu if g.signed_storage else hu + 1024)
            files = {"PATIENT_DICOM": _dataset(g, size, i, stored, seed=seed, series="PATIENT_DICOM", is_mask=False)}
            for organ in ORGANS:
                files[f"MASKS_DICOM/{organ}"] = _dataset(g, size, i, masks[organ].astype(np.uint8) * 255, seed=seed,
                                                         series=f"MASKS_DICOM/{organ}", is_mask=True)
            for series, ds in files.items():
                path = out / g.patient_id / series / f"image_{i}"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_to_bytes(ds))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--size", type=int, default=256, help="rows and columns (256, or 512 as IRCAD stores them)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    path = write_simple_abdomen(args.out, patients=args.patients, slices=args.slices, size=args.size, seed=args.seed)
    print(f"wrote {args.patients} simple-abdomen patients to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
