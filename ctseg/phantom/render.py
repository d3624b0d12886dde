"""One phantom patient: its geometry, contrast phase and tissue HU, rendered slice by slice."""
from __future__ import annotations

import dataclasses

import numpy as np

from ctseg.phantom.anatomy import T_BOTTOM, T_TOP, Anatomy
from ctseg.phantom.physics import Scanner, SmoothField, upsample
from ctseg.phantom.tissues import LABEL, PHASE_PROBABILITIES, PHASES, TABLE

INTERNAL_SIZE = 256      # anatomy is painted at this size and resampled: smooth edges, fast writing
MIXED = 255              # label of pixels whose two sub-slices disagree (partial volume)

# Scan ranges of the protocols liver CT is acquired with, in the anatomy's height units (anatomy.py: 0 to 1
# is an abdominal scan, kidneys to just above the dome). IRCAD-like abdominal scans run from the kidneys to
# the heart; abdomen-pelvis scans go down to the symphysis, the liver on about 40% of their slices;
# chest-abdomen scans start at the carina, with the heart, lung bases and great vessels above the liver.
PROTOCOLS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "abdomen": ((-0.05, 0.05), (1.0, 1.15)),
    "abdomen_pelvis": ((T_BOTTOM + 0.05, T_BOTTOM + 0.25), (0.95, 1.08)),
    "chest_abdomen": ((-0.05, 0.1), (T_TOP - 0.35, T_TOP)),
}
PROTOCOL_PROBABILITIES = (0.5, 0.25, 0.25)
ARMS_DOWN_PROBABILITY = 0.3      # arms beside the body instead of above the head (trauma, frail patients)
SIGNED_PROBABILITY = 0.3         # 16-bit signed storage with RescaleIntercept 0, as some IRCAD patients have


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
    protocol: str = "abdomen"     # PROTOCOLS: which heights the slices cover
    scan_range: tuple[float, float] = (0.0, 1.0)   # anatomy heights of the first (inferior) and last slice
    arms_down: bool = False
    signed_storage: bool = False  # stored as signed 16-bit HU (intercept 0) instead of unsigned with -1024


def patient_geometries(patients: int, slices: int, seed: int, *, phases: tuple[str, ...] = PHASES,
                       noise_hu: tuple[float, float] = (8.0, 25.0),
                       protocols: tuple[str, ...] = tuple(PROTOCOLS)) -> list[PatientGeometry]:
    """Per-patient acquisitions; `phases`, `noise_hu` and `protocols` narrow what is drawn.

    `slices` is the number of slices an abdominal scan of the patient has; longer protocols have
    proportionally more, at the same slice thickness, so every patient shows its liver on about as
    many slices whatever the protocol.
    """
    unknown = set(phases) - set(PHASES)
    if unknown or not phases:
        raise ValueError(f"phases must be a non-empty subset of {PHASES}, not {phases}")
    if not protocols or set(protocols) - set(PROTOCOLS):
        raise ValueError(f"protocols must be a non-empty subset of {tuple(PROTOCOLS)}, not {protocols}")
    protocol_weights = np.array([p for name, p in zip(PROTOCOLS, PROTOCOL_PROBABILITIES) if name in protocols])
    allowed_protocols = [name for name in PROTOCOLS if name in protocols]
    if not 0 <= noise_hu[0] <= noise_hu[1]:
        raise ValueError(f"noise_hu must be a range (low, high) of standard deviations, not {noise_hu}")
    weights = np.array([p for ph, p in zip(PHASES, PHASE_PROBABILITIES) if ph in phases])
    allowed = [ph for ph in PHASES if ph in phases]
    out = []
    for k in range(patients):
        rng = np.random.default_rng((seed, k))
        abdominal_slices = slices * rng.uniform(0.8, 1.2)
        spacing_mm = round(float(rng.uniform(0.56, 0.87)), 3)
        thickness_mm = round(float(rng.uniform(1.6, 4.0)), 1)
        phase = str(rng.choice(allowed, p=weights / weights.sum()))
        noise = round(float(rng.uniform(*noise_hu)), 1)
        protocol = str(rng.choice(allowed_protocols, p=protocol_weights / protocol_weights.sum()))
        (lo0, lo1), (hi0, hi1) = PROTOCOLS[protocol]
        scan_range = (round(float(rng.uniform(lo0, lo1)), 3), round(float(rng.uniform(hi0, hi1)), 3))
        out.append(PatientGeometry(
            patient_id=f"3Dircadb1.{k + 1}",
            num_slices=max(8, int(round(abdominal_slices * (scan_range[1] - scan_range[0])))),
            spacing_mm=spacing_mm, thickness_mm=thickness_mm, phase=phase, noise_hu=noise, seed=(seed, k),
            protocol=protocol, scan_range=scan_range,
            arms_down=bool(rng.uniform() < ARMS_DOWN_PROBABILITY),
            signed_storage=bool(rng.uniform() < SIGNED_PROBABILITY),
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
        self.anatomy = Anatomy(rng, min(size, INTERNAL_SIZE), arms=geometry.arms_down)
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
        """Anatomy height of slice `index` (0 = most inferior) within the protocol's scan range."""
        lo, hi = self.g.scan_range
        return lo + (hi - lo) * index / max(self.g.num_slices - 1, 1)

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
