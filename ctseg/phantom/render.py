"""One phantom patient: its geometry, contrast phase and tissue HU, rendered slice by slice."""
from __future__ import annotations

import dataclasses

import numpy as np

from ctseg.phantom.anatomy import Anatomy
from ctseg.phantom.physics import Scanner, SmoothField, upsample
from ctseg.phantom.tissues import LABEL, PHASE_PROBABILITIES, PHASES, TABLE

INTERNAL_SIZE = 256      # anatomy is painted at this size and resampled: smooth edges, fast writing
MIXED = 255              # label of pixels whose two sub-slices disagree (partial volume)


@dataclasses.dataclass(frozen=True)
class PatientGeometry:
    """The per-patient acquisition: what differs between scans before any anatomy is drawn."""
    patient_id: str
    num_slices: int
    spacing_mm: float
    thickness_mm: float
    phase: str                    # native, arterial or portal (tissues.PHASES)
    noise_hu: float               # standard deviation of the correlated scanner noise
    seed: tuple[int, int]


def patient_geometries(patients: int, slices: int, seed: int, *, phases: tuple[str, ...] = PHASES,
                       noise_hu: tuple[float, float] = (8.0, 25.0)) -> list[PatientGeometry]:
    """Per-patient acquisitions; `phases` and `noise_hu` narrow the contrast phases and noise drawn."""
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        raise ValueError(f"phases must be a non-empty subset of {PHASES}, not {phases}")
    if not 0 <= noise_hu[0] <= noise_hu[1]:
        raise ValueError(f"noise_hu must be a range (low, high) of standard deviations, not {noise_hu}")
    weights = np.array([p for ph, p in zip(PHASES, PHASE_PROBABILITIES) if ph in phases])
    allowed = [ph for ph in PHASES if ph in phases]
    out = []
    for k in range(patients):
        rng = np.random.default_rng((seed, k))
        out.append(PatientGeometry(
            patient_id=f"3Dircadb1.{k + 1}",
            num_slices=max(8, int(round(slices * rng.uniform(0.8, 1.2)))),
            spacing_mm=round(float(rng.uniform(0.56, 0.87)), 3),
            thickness_mm=round(float(rng.uniform(1.6, 4.0)), 1),
            phase=str(rng.choice(allowed, p=weights / weights.sum())),
            noise_hu=round(float(rng.uniform(*noise_hu)), 1),
            seed=(seed, k),
        ))
    return out


def tissue_means(rng: np.random.Generator, phase: str) -> np.ndarray:
    """Each tissue's mean HU for one patient, inside its phase's range (tissues.TABLE).

    Enhancement is shared: a patient whose injection, timing and cardiac output put the liver high in
    its range puts the spleen, vessels and bowel wall high too, so the liver stays among its neighbours.
    """
    strength = rng.uniform()
    out = []
    for t in TABLE:
        lo, hi = t.range(phase)
        f = np.clip(strength + rng.uniform(-0.3, 0.3), 0, 1) if t.native != (lo, hi) else rng.uniform()
        out.append(lo + f * (hi - lo))
    return np.array(out, np.float32)


@dataclasses.dataclass
class Slice:
    hu: np.ndarray                       # float32, size x size
    masks: dict[str, np.ndarray]         # organ name (IRCAD folder name) -> bool
    labels: np.ndarray                   # tissue label (tissues.LABEL) where both sub-slices agree, else MIXED


class PatientPhantom:
    """Renders one patient: anatomy at INTERNAL_SIZE, two sub-slices per slice for partial volume,
    tissue HU and texture, then resampled to `size` with the scanner's blur, noise and streaks."""

    def __init__(self, geometry: PatientGeometry, size: int):
        self.g, self.size = geometry, size
        rng = np.random.default_rng(geometry.seed + (1,))
        self.anatomy = Anatomy(rng, min(size, INTERNAL_SIZE))
        self.tissue_hu = tissue_means(rng, geometry.phase)
        self.texture_hu = np.array([t.texture_hu for t in TABLE], np.float32)
        self.coarse = SmoothField(rng, 16, (2, 6))
        self.fine = SmoothField(rng, 16, (12, 30))
        self.scanner = Scanner(rng, size, geometry.noise_hu)
        self.noise_seed = geometry.seed + (2,)

    def organ_names(self) -> list[str]:
        return ["liver", "spleen", "gallbladder", "rightkidney", "leftkidney"] + [
            f"livertumor{i + 1:02d}" for i in range(len(self.anatomy.lesions))]

    def _t(self, index: float) -> float:
        return index / max(self.g.num_slices - 1, 1)

    def _tissue(self, labels: np.ndarray, t: float) -> np.ndarray:
        axis = self.anatomy_axis
        field = (self.coarse(axis, t) + self.fine(axis, t)) * np.float32(np.sqrt(0.5))
        return self.tissue_hu[labels] + self.texture_hu[labels] * field

    @property
    def anatomy_axis(self) -> np.ndarray:
        n = self.anatomy.n
        return ((np.arange(n) + 0.5) / n * 2 - 1).astype(np.float32)

    def slice(self, index: int) -> Slice:
        """Slice `index`, 0 = most inferior; each slice averages two sub-slices a half-thickness apart."""
        subs = [self.anatomy.render(self._t(index + d)) for d in (-0.25, 0.25)]
        t = self._t(index)
        hu = sum(self._tissue(labels, t) for labels, _ in subs) / len(subs)
        names = set(subs[0][1]) | set(subs[1][1])
        fraction = {name: sum(m[name].astype(np.float32) for _, m in subs if name in m) / len(subs) for name in names}
        rng = np.random.default_rng(self.noise_seed + (index,))
        image = self.scanner.acquire(upsample(hu, self.size), rng)
        image = self.scanner.streaks(image, self._dense_centres(subs[0][0]), rng)
        masks = {name: np.zeros((self.size, self.size), bool) for name in self.organ_names()}
        for name, f in fraction.items():
            masks[name] = upsample(f, self.size) > 0.5
        labels = np.where(subs[0][0] == subs[1][0], subs[0][0], MIXED).astype(np.uint8)
        return Slice(np.clip(image, -1024, 3071), masks, _nearest(labels, self.size))

    def _dense_centres(self, labels: np.ndarray) -> list[tuple[float, float]]:
        """Output-pixel centres of the spine and, in enhanced phases, the aorta: where streaks start."""
        scale = self.size / labels.shape[0]
        out = []
        for tissue in ("bone_cortical",) + (("blood_artery",) if self.g.phase == "arterial" else ()):
            rows, cols = np.nonzero(labels == LABEL[tissue])
            if len(rows):
                out.append((float(np.median(rows)) * scale, float(np.median(cols)) * scale))
        return out


def _nearest(labels: np.ndarray, size: int) -> np.ndarray:
    idx = (np.arange(size) * labels.shape[0]) // size
    return labels[idx][:, idx]
