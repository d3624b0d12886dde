"""From the model's per-slice probabilities to one patient's liver mask: threshold, resize, 3D clean-up.

The evaluator and `ctseg predict` both go through these functions, so the mask a user gets is the
mask that was scored. The clean-up uses what a per-slice network cannot know or see: the liver is one
connected organ in 3D (stray islands on ribs, spleen or bowel are false positives) and a solid one
(vessels and lesions inside it belong to the liver mask, as IRCAD draws it), and its tissue has HU that
the network's window shows (contrast-filled blood above it, a heart chamber in the arterial phase, is not).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ctseg.serving import is_organ

# How far the median HU of one slice of the organ may stray from the organ's own median. On the 17 livers measured
# (three real scans, the default phantom's 14 patients) no slice's median strayed by more than 14 HU, end slices
# included; the colon that models take below ts-112's liver tip reads 31-39 HU below that liver (docs/BENCHMARKS.md,
# "A sixteenth session").
ORGAN_SLICE_HU_TOLERANCE = 20.0

# Liver parenchyma's HU in any phase and condition: above fat, which even a severely fatty liver stays
# above, and below 260 HU, where the model's input window (centre 60, width 400) saturates. The liver itself
# enhances to at most ~130-170 HU (docs/PHANTOM.md's table: portal phase 95-130, hyperdense lesions up to
# 170); what lies above is bone, calcium, metal and contrast-filled blood (arterial 220-450 HU), all of
# which the network sees as one white, so it cannot tell a bright heart chamber beside the dome from liver.
PARENCHYMA_HU = (-50.0, 260.0)


@dataclasses.dataclass(frozen=True)
class Cleanup:
    """What the clean-up does: first zero the probability of pixels whose HU at the model's size lie outside
    `PARENCHYMA_HU` (what cannot be liver tissue, decided by physics where the network's window is blind) or
    that lie beside a denser one (`beside_denser`: partial volume, and the liver's clearance from bone), then
    keep only the largest 26-connected component of the thresholded volume, then fill holes slice by slice (a
    hole enclosed in 3D is enclosed in every slice through it, so this also fills those, and it gives back the
    bright vessels, calcifications and lesions inside the liver, with their rims, that the first step took).
    Between the component and the filling, `foreign_ends` drops the slices at either end of the mask whose tissue
    is not the organ's (`trim_foreign_ends`): a neighbour the component ran into beyond the liver's tip or dome."""
    parenchyma_hu: bool = True
    largest_component: bool = True
    foreign_ends: bool = True
    fill_holes: bool = True

    @classmethod
    def off(cls) -> "Cleanup":
        return cls(**{f.name: False for f in dataclasses.fields(cls)})

    @classmethod
    def parse(cls, text: str) -> "Cleanup":
        """'on' (default), 'off', or a comma list of its steps ('parenchyma_hu', 'largest_component',
        'foreign_ends', 'fill_holes')."""
        text = (text or "on").strip().lower()
        if text in ("on", "true", "1", "default"):
            return cls()
        if text in ("off", "none", "false", "0"):
            return cls.off()
        steps = {s.strip() for s in text.split(",") if s.strip()}
        known = {f.name for f in dataclasses.fields(cls)}
        if not steps or steps - known:
            raise ValueError(f"clean-up {text!r}: give 'on', 'off', or a comma list of {sorted(known)}")
        return cls(**{name: name in steps for name in known})

    def __str__(self) -> str:
        steps = [f.name for f in dataclasses.fields(self) if getattr(self, f.name)]
        return ",".join(steps) if steps else "off"


def binarize(probabilities: np.ndarray) -> np.ndarray:
    return is_organ(np.asarray(probabilities)).astype(np.uint8)


def outside_parenchyma(hu: np.ndarray, hu_range: tuple[float, float] = PARENCHYMA_HU) -> np.ndarray:
    """Pixels whose HU cannot be liver parenchyma (`PARENCHYMA_HU`)."""
    hu = np.asarray(hu)
    return (hu < hu_range[0]) | (hu > hu_range[1])


def beside_denser(hu_at_model_size: np.ndarray, hu_range: tuple[float, float] = PARENCHYMA_HU) -> np.ndarray:
    """Pixels of (N, h, w) slices next to one denser than parenchyma (the 8 neighbours in the slice).

    Partial volume makes a bone's edge pixels read as soft tissue, and the liver keeps clear of bone: the
    diaphragm and intercostal muscles lie between it and the ribs, the crura between it and the spine. One
    pixel of the model's 128 px grid is 2.3-3.9 mm; of the real references' liver voxels, at most 0.04% lie
    within 3 mm of bone (docs/BENCHMARKS.md, "Clear of bone")."""
    from scipy import ndimage

    hu = np.asarray(hu_at_model_size)
    in_slice = np.ones((1,) * (hu.ndim - 2) + (3, 3), bool)
    return ndimage.binary_dilation(hu > hu_range[1], structure=in_slice)


def gate_probabilities(probabilities: np.ndarray, hu_at_model_size: np.ndarray,
                       cleanup: Cleanup = Cleanup()) -> np.ndarray:
    """The model's (N, h, w) probabilities with those of pixels outside parenchyma's HU, or beside one denser
    (`beside_denser`), set to 0 when `cleanup` says so; `hu_at_model_size` are the HU the model read (the same
    pixels). Before the resize to the source size, so a gated pixel's neighbourhood fades out as the threshold
    would have drawn it."""
    probabilities = np.asarray(probabilities, np.float32)
    if not cleanup.parenchyma_hu:
        return probabilities
    if np.shape(hu_at_model_size) != probabilities.shape:
        raise ValueError(f"HU {np.shape(hu_at_model_size)} and probabilities {probabilities.shape} differ in shape")
    gate = outside_parenchyma(hu_at_model_size) | beside_denser(hu_at_model_size)
    return np.where(gate, np.float32(0), probabilities)


CHUNK_SLICES = 32  # slices the clean-up works on at a time: its working memory is a chunk's, not the series'
NEIGHBOURS_3D = np.ones((3, 3, 3), bool)  # 26-connectivity


def _chunks(volume: np.ndarray, chunk_slices: int):
    return [(start, volume[start:start + chunk_slices]) for start in range(0, len(volume), chunk_slices)]


def _touching(below: np.ndarray, above: np.ndarray) -> np.ndarray:
    """(2, K) label pairs of two adjacent slices' labels whose voxels touch in 26-connectivity."""
    rows, cols = below.shape
    pairs = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            b = below[max(dy, 0):rows + min(dy, 0), max(dx, 0):cols + min(dx, 0)]
            a = above[max(-dy, 0):rows + min(-dy, 0), max(-dx, 0):cols + min(-dx, 0)]
            both = (b > 0) & (a > 0)
            pairs.append((b[both].astype(np.int64) << 32) | a[both])
    keys = np.unique(np.concatenate(pairs))
    return np.stack([keys >> 32, keys & 0xFFFFFFFF])


def keep_largest_component(volume: np.ndarray, chunk_slices: int = CHUNK_SLICES) -> np.ndarray:
    """Keeps only the largest 26-connected foreground component of a uint8 0/1 (slices, rows, cols) volume, in
    place, and returns it. The volume is labelled `chunk_slices` at a time and the pieces that touch across
    chunk borders joined, so the labels never take the series' size in int32; the component kept is the one a
    labelling of the whole volume keeps (of equal largest ones, the first in slice, row, column order)."""
    from scipy import ndimage, sparse
    from scipy.sparse import csgraph

    sizes, edges, offset, last = [], [], 0, None
    for _, chunk in _chunks(volume, chunk_slices):
        labels, count = ndimage.label(chunk, structure=NEIGHBOURS_3D)
        sizes.append(np.bincount(labels.ravel(), minlength=count + 1)[1:])
        labels[labels > 0] += offset  # one id per piece of the whole volume; 0 stays background
        if last is not None:
            edges.append(_touching(last, labels[0]))
        last, offset = labels[-1].copy(), offset + count
    if offset <= 1:
        return volume
    pairs = np.concatenate(edges, axis=1) - 1 if edges else np.zeros((2, 0), np.int64)
    graph = sparse.coo_matrix((np.ones(pairs.shape[1], bool), (pairs[0], pairs[1])), shape=(offset, offset))
    _, component = csgraph.connected_components(graph, directed=False)
    component_sizes = np.bincount(component, weights=np.concatenate(sizes))
    largest = np.flatnonzero(component_sizes == component_sizes.max())
    keep = np.concatenate([[0], component == component[np.isin(component, largest)][0]]).astype(np.uint8)
    offset = 0
    for start, chunk in _chunks(volume, chunk_slices):
        labels, count = ndimage.label(chunk, structure=NEIGHBOURS_3D)
        labels[labels > 0] += offset
        volume[start:start + len(chunk)] = keep[labels]
        offset += count
    return volume


def fill_holes_in_place(volume: np.ndarray, chunk_slices: int = CHUNK_SLICES) -> np.ndarray:
    """Fills, in place, background regions of a uint8 0/1 (slices, rows, cols) volume that do not touch a
    slice's border, slice by slice (`chunk_slices` at a time: the filling is in-plane); returns the volume."""
    from scipy import ndimage

    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = ndimage.generate_binary_structure(2, 1)
    for start, chunk in _chunks(volume, chunk_slices):
        volume[start:start + len(chunk)] = ndimage.binary_fill_holes(chunk, structure=in_plane)
    return volume


def slice_hu_medians(volume: np.ndarray, hu_at_model_size: np.ndarray) -> tuple[float, list]:
    """The median HU of a mask's pixels over the whole volume and per slice (None where a slice has no pixel), read
    at the model's size: `volume` (slices, rows, cols) is sampled onto the square (slices, h, h) grid of
    `hu_at_model_size` as ingest samples a mask (`ctseg.dicom.resize_mask`)."""
    from ctseg.dicom import resize_mask

    hu = np.asarray(hu_at_model_size)
    if len(hu) != len(volume) or hu.shape[1] != hu.shape[2]:
        raise ValueError(f"HU of shape {hu.shape} for a mask of {len(volume)} slices: need one square slice each")
    inside = resize_mask(volume, hu.shape[1]) != 0
    per_slice = [float(np.median(h[m])) if m.any() else None for h, m in zip(hu, inside)]
    return (float(np.median(hu[inside])) if inside.any() else float("nan")), per_slice


def trim_foreign_ends(volume: np.ndarray, hu_at_model_size: np.ndarray,
                      tolerance_hu: float = ORGAN_SLICE_HU_TOLERANCE) -> np.ndarray:
    """Clears, in place, the slices at either end of a uint8 0/1 mask beyond the first and the last slice whose
    pixels' median HU keeps within `tolerance_hu` of the mask's own median, and returns the mask (unchanged when no
    slice agrees). The liver is one tissue: its slices' medians keep within `ORGAN_SLICE_HU_TOLERANCE` of the
    organ's, partial volume at the tip and the dome included, so an end run of slices of another HU is a neighbour
    the largest component ran on into (on ts-112, 65-72 ml of fluid-filled colon below the tip). Only whole end
    slices go: a lesion inside the liver never ends the mask."""
    organ, medians = slice_hu_medians(volume, hu_at_model_size)
    agreeing = [z for z, m in enumerate(medians) if m is not None and abs(m - organ) <= tolerance_hu]
    if agreeing:
        volume[:agreeing[0]] = 0
        volume[agreeing[-1] + 1:] = 0
    return volume


def _binary(volume) -> np.ndarray:
    return (np.asarray(volume) != 0).astype(np.uint8)


def largest_component(volume: np.ndarray) -> np.ndarray:
    """The largest 26-connected foreground component of a (slices, rows, cols) binary volume."""
    return keep_largest_component(_binary(volume))


def fill_holes(volume: np.ndarray) -> np.ndarray:
    """Background regions that do not touch a slice's border, filled, slice by slice."""
    return fill_holes_in_place(_binary(volume))


def clean_volume(volume: np.ndarray, cleanup: Cleanup = Cleanup(), in_place: bool = False,
                 hu_at_model_size: np.ndarray | None = None) -> np.ndarray:
    """A patient's binary mask (slices in position order, rows, cols) after `cleanup`, as uint8 0/1.
    `in_place`: `volume` is a uint8 0/1 array, cleaned where it lies (no copy of the series' size).
    `hu_at_model_size`: the HU the model read, (slices, h, w); `foreign_ends` needs them and is skipped without."""
    if np.ndim(volume) != 3:
        raise ValueError(f"clean-up needs a (slices, rows, cols) volume, got shape {np.shape(volume)}")
    if not in_place:
        volume = _binary(volume)
    elif volume.dtype != np.uint8:
        raise ValueError(f"an in-place clean-up needs a uint8 0/1 volume, got {volume.dtype}")
    if cleanup.largest_component:
        keep_largest_component(volume)
    if cleanup.foreign_ends and hu_at_model_size is not None:
        before = volume.any(axis=(1, 2))
        trim_foreign_ends(volume, hu_at_model_size)
        if cleanup.largest_component and (volume.any(axis=(1, 2)) != before).any():
            keep_largest_component(volume)  # the slices cleared may have been all that joined two parts
    if cleanup.fill_holes:
        fill_holes_in_place(volume)
    return volume


def resize_probabilities(probabilities, shape: tuple[int, int]):
    """(N, h, w) probabilities → (N, rows, cols) by bilinear interpolation (a tf.Tensor; works inside
    tf.function). Interpolating probabilities before the threshold gives smooth edges at the source size."""
    import tensorflow as tf

    probabilities = tf.convert_to_tensor(probabilities, tf.float32)
    if tuple(probabilities.shape[1:]) == tuple(shape):
        return probabilities
    return tf.image.resize(probabilities[..., None], shape, method="bilinear")[..., 0]


def source_mask(probabilities, shape: tuple[int, int]) -> np.ndarray:
    """(N, h, w) model-size probabilities → uint8 0/1 masks at the source (rows, cols), before clean-up."""
    return binarize(np.asarray(resize_probabilities(probabilities, shape)))
