"""From the model's per-slice probabilities to one patient's liver mask: threshold, resize, 3D clean-up.

The evaluator and `ctseg predict` both go through these functions, so the mask a user gets is the
mask that was scored. The clean-up uses what a per-slice network cannot know: the liver is one
connected organ in 3D (stray islands on ribs, spleen or bowel are false positives) and a solid one
(vessels and lesions inside it belong to the liver mask, as IRCAD draws it).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from ctseg.serving import is_organ


@dataclasses.dataclass(frozen=True)
class Cleanup:
    """What the 3D clean-up does: keep only the largest 26-connected component of the volume, then fill
    holes slice by slice (a hole enclosed in 3D is enclosed in every slice through it, so this also
    fills those)."""
    largest_component: bool = True
    fill_holes: bool = True

    @classmethod
    def off(cls) -> "Cleanup":
        return cls(largest_component=False, fill_holes=False)

    @classmethod
    def parse(cls, text: str) -> "Cleanup":
        """'on' (default), 'off', or a comma list of 'largest_component' and 'fill_holes'."""
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


def largest_component(volume: np.ndarray) -> np.ndarray:
    """The largest 26-connected foreground component of a (slices, rows, cols) binary volume."""
    from scipy import ndimage

    volume = np.asarray(volume) != 0
    labels, count = ndimage.label(volume, structure=np.ones((3, 3, 3), bool))
    if count <= 1:
        return volume.astype(np.uint8)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return (labels == int(np.argmax(sizes))).astype(np.uint8)


def fill_holes(volume: np.ndarray) -> np.ndarray:
    """Background regions that do not touch a slice's border, filled, slice by slice."""
    from scipy import ndimage

    volume = np.asarray(volume) != 0
    in_plane = np.zeros((1, 3, 3), bool)
    in_plane[0] = ndimage.generate_binary_structure(2, 1)
    return ndimage.binary_fill_holes(volume, structure=in_plane).astype(np.uint8)


def clean_volume(volume: np.ndarray, cleanup: Cleanup = Cleanup()) -> np.ndarray:
    """A patient's binary mask (slices in position order, rows, cols) after `cleanup`, as uint8 0/1."""
    volume = (np.asarray(volume) != 0).astype(np.uint8)
    if volume.ndim != 3:
        raise ValueError(f"clean-up needs a (slices, rows, cols) volume, got shape {volume.shape}")
    if cleanup.largest_component:
        volume = largest_component(volume)
    if cleanup.fill_holes:
        volume = fill_holes(volume)
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
