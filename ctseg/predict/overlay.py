"""The prediction as a PNG montage of slices with the organ tinted."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ctseg.predict.inference import Prediction


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
