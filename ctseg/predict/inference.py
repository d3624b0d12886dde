"""The model on a series: every slice through the served model's `segment_hu` at the series' size."""
from __future__ import annotations

import dataclasses

import numpy as np

from ctseg.dicom import window
from ctseg.errors import CtsegError
from ctseg.predict.reader import READERS, read_hu
from ctseg.predict.series import Series
from ctseg.serving import ServedModel


@dataclasses.dataclass
class Prediction:
    series: Series
    model: ServedModel
    mask: np.ndarray          # uint8 0/1, (slices, rows, cols) in series order
    windowed: np.ndarray      # uint8 liver-window rendering of the source, for the overlay
    readers: list[str]        # which reader decoded each slice

    @property
    def slices_with_liver(self) -> int:
        return int(self.mask.reshape(len(self.mask), -1).any(axis=1).sum())


def predict_series(series: Series, model: ServedModel, batch_size: int = 16, progress: bool = False) -> Prediction:
    """Runs the model on every slice at the series' size (`ServedModel.segment`: resized to the trained
    size and back, organ where `serving.is_organ`)."""
    import tensorflow as tf
    from tqdm import tqdm

    rows, cols = series.shape

    segment = tf.function(lambda hu: model.segment(hu, (rows, cols)))

    masks, windowed, codes = [], [], []
    with tqdm(total=len(series.slices), unit="slice", desc="predict", disable=not progress) as bar:
        try:
            for hu, code in read_hu(series).batch(batch_size).prefetch(1):
                masks.append(segment(hu).numpy())
                windowed.append(np.rint(window(hu.numpy()) * 255).astype(np.uint8))
                codes.extend(int(c) for c in code.numpy())
                bar.update(len(code))
        except tf.errors.OpError as e:  # a pydicom decode failure inside the reader names its file
            raise CtsegError(f"{series.source}: a slice could not be decoded: {e.message.splitlines()[0]}") from e
    return Prediction(series, model, np.concatenate(masks), np.concatenate(windowed), [READERS[c] for c in codes])
