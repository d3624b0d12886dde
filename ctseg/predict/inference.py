"""The model on a series: the slices in position order through the served model's `segment_hu`, resized
back to the series' size, thresholded and cleaned up in 3D as the evaluator scores it.

The series is streamed: the slices are read a batch at a time and only their HU at the model's size are
kept; the model runs on chunks of them (`ServedModel.chunk_probabilities`, overlapping by a 2.5D model's
context) and each chunk's probabilities become uint8 masks straight away, so the series' size is held only
as the one uint8 mask the outputs need (and the model's size as the model's input)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import numpy as np

from ctseg import postprocess
from ctseg.dicom import window
from ctseg.errors import CtsegError
from ctseg.predict.overlay import tile_indices
from ctseg.predict.reader import READERS, read_hu
from ctseg.predict.series import Series
from ctseg.profile import count_components
from ctseg.serving import ServedModel


@dataclasses.dataclass
class Prediction:
    series: Series
    model: ServedModel
    mask: np.ndarray          # uint8 0/1, (slices, rows, cols) in series order
    windowed: dict[int, np.ndarray]  # uint8 liver-window renderings of the overlay's slices (`tile_indices`), by index
    readers: list[str]        # which reader decoded each slice
    cleanup: str = "off"      # the 3D clean-up applied to `mask` (postprocess.Cleanup)
    components_before_cleanup: Optional[int] = None  # 3D pieces of the mask at the model's size, before clean-up
    out_of_distribution: Optional[list] = None  # ood.Finding of the series and prediction; None: not checked

    @property
    def slices_with_liver(self) -> int:
        return int(self.mask.any(axis=(1, 2)).sum())


def windowed_slices(series: Series, indices: Sequence[int]) -> dict[int, np.ndarray]:
    """uint8 liver-window renderings of the slices at `indices`, by index, read from their files again:
    a picture needs a few slices, and keeping the whole series' would cost its size in bytes."""
    return {int(i): np.rint(window(hu.numpy()) * 255).astype(np.uint8)
            for i, (hu, _) in zip(indices, read_hu(series, indices))}


def predict_series(series: Series, model: ServedModel, batch_size: int = 16, progress: bool = False,
                   cleanup: postprocess.Cleanup = postprocess.Cleanup(),
                   before_model: Optional[Callable[[np.ndarray], None]] = None) -> Prediction:
    """Runs the model on the series (HU resized to the trained size, the slices in position order so a
    2.5D model sees each slice's neighbours, probabilities resized back, organ where `serving.is_organ`),
    then cleans the patient's mask up (HU outside parenchyma's, then in 3D), as the evaluator scores it
    (`ctseg.postprocess`).
    `before_model` gets the series' HU at the model's size before the model runs (the input check).
    `batch_size` slices are read, and sent to the model, at a time."""
    import tensorflow as tf
    from tqdm import tqdm

    count = len(series.slices)
    small = np.empty((count, *model.size), np.float32)
    codes: list[int] = []
    with tqdm(total=count, unit="slice", desc="predict", disable=not progress) as bar:
        try:
            for hu, code in read_hu(series).batch(batch_size).prefetch(1):
                facing = tf.reverse(hu, series.flip_axes) if series.flip_axes else hu  # as the model was trained
                small[len(codes):len(codes) + len(code)] = model.at_model_size(facing).numpy()
                codes.extend(int(c) for c in code.numpy())
                bar.update(len(code))
        except tf.errors.OpError as e:  # a pydicom decode failure inside the reader names its file
            raise CtsegError(f"{series.source}: a slice could not be decoded: {e.message.splitlines()[0]}") from e
    if before_model is not None:
        before_model(small)
    mask = np.empty((count, *series.shape), np.uint8)
    at_model_size = np.empty((count, *model.size), np.uint8)
    for start, probabilities in model.chunk_probabilities(small, batch_size):
        at_model_size[start:start + len(probabilities)] = postprocess.binarize(probabilities)
        gated = postprocess.gate_probabilities(probabilities, small[start:start + len(probabilities)], cleanup)
        mask[start:start + len(probabilities)] = postprocess.source_mask(gated, series.shape)
    components = count_components(at_model_size)
    mask = np.flip(postprocess.clean_volume(mask, cleanup, in_place=True, hu_at_model_size=small), series.flip_axes)
    del small
    return Prediction(series, model, mask, windowed_slices(series, tile_indices(mask)), [READERS[c] for c in codes],
                      str(cleanup), components)
