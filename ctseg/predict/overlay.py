"""The prediction as a PNG montage of slices with the organ tinted."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ctseg.predict.inference import Prediction

OVERLAY_TILES = 16


def tile_indices(mask: np.ndarray, max_tiles: int = OVERLAY_TILES) -> list[int]:
    """The slices the montage shows: up to `max_tiles` spread evenly over those with organ (the middle
    slice if none has any)."""
    with_liver = np.flatnonzero(mask.any(axis=(1, 2)))
    chosen = with_liver if len(with_liver) else np.array([len(mask) // 2])
    chosen = chosen[np.unique(np.linspace(0, len(chosen) - 1, min(max_tiles, len(chosen))).round().astype(int))]
    return [int(i) for i in chosen]


def overlay_png(prediction: Prediction, path: Path) -> Path:
    """A montage of the slices `prediction.windowed` holds (`tile_indices`), liver tinted red."""
    from PIL import Image

    tiles = []
    for i in sorted(prediction.windowed):
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
