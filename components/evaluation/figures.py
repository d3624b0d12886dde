"""The picture of an evaluation: CT slice, true mask and predicted mask for chosen patients."""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from ctseg.dicom import window
from ctseg.serving import is_organ

TRUTH_RGB = (0.1, 0.85, 0.2)
PREDICTION_RGB = (0.95, 0.15, 0.1)
OVERLAY_ALPHA = 0.45


@dataclasses.dataclass(frozen=True)
class GridRow:
    """One row of the grid: a slice of one patient and what the model made of it."""
    label: str                  # e.g. "best: 3Dircadb1.2, Dice 0.941"
    hu: np.ndarray              # (H, W) Hounsfield units
    truth: np.ndarray           # (H, W) 0/1
    probabilities: np.ndarray   # (H, W) in [0, 1]


def overlay(hu: np.ndarray, mask: np.ndarray, rgb: tuple[float, float, float]) -> np.ndarray:
    """RGB image of the liver-windowed slice with `mask` tinted in `rgb`."""
    grey = window(hu)
    out = np.repeat(grey[..., None], 3, axis=-1)
    m = np.asarray(mask) != 0
    out[m] = (1 - OVERLAY_ALPHA) * out[m] + OVERLAY_ALPHA * np.asarray(rgb, np.float32)
    return out


def write_grid(rows: list[GridRow], path: str | os.PathLike, title: str = "") -> str:
    """Writes a PNG with one row per slice: image | true mask | predicted mask (true outline in green).

    `path` may be on an object store (gs://, s3://), and its folder need not exist yet: on Kubeflow
    Pipelines nothing creates an output artifact's folder before the executor runs.
    """
    import io

    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if not rows:
        raise ValueError("no rows to draw")
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows) + 0.4), squeeze=False)
    for ax_row, row in zip(axes, rows):
        predicted = is_organ(np.asarray(row.probabilities))
        ax_row[0].imshow(window(row.hu), cmap="gray", vmin=0, vmax=1)
        ax_row[0].set_ylabel(row.label, fontsize=9)
        ax_row[1].imshow(overlay(row.hu, row.truth, TRUTH_RGB))
        ax_row[2].imshow(overlay(row.hu, predicted, PREDICTION_RGB))
        if np.any(row.truth) and not np.all(row.truth):
            ax_row[2].contour(np.asarray(row.truth, np.float32), levels=[0.5], colors=[TRUTH_RGB], linewidths=0.8)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[0], ("CT (liver window)", "true mask", "predicted mask (true outline)")):
        ax.set_title(name, fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=80)
    plt.close(fig)
    from tfx.dsl.io import fileio

    fileio.makedirs(os.path.dirname(os.fspath(path)))
    with fileio.open(os.fspath(path), "wb") as f:
        f.write(png.getvalue())
    return str(path)
