"""The model on a series: the slices in position order through the served model's `segment_hu`, resized
back to the series' size, thresholded and cleaned up in 3D as the evaluator scores it."""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from ctseg import postprocess
from ctseg.dicom import window
from ctseg.errors import CtsegError
from ctseg.predict.reader import READERS, read_hu
from ctseg.predict.series import Series
from ctseg.profile import count_components
from ctseg.serving import ServedModel


@dataclasses.dataclass
class Prediction:
    series: Series
    model: ServedModel
    mask: np.ndarray          # uint8 0/1, (slices, rows, cols) in series order
    windowed: np.ndarray      # uint8 liver-window rendering of the source, for the overlay
    readers: list[str]        # which reader decoded each slice
    cleanup: str = "off"      # the 3D clean-up applied to `mask` (postprocess.Cleanup)
    components_before_cleanup: Optional[int] = None  # 3D pieces of the mask at the model's size, before clean-up
    out_of_distribution: Optional[list] = None  # ood.Finding of the series and prediction; None: not checked

    @property
    def slices_with_liver(self) -> int:
        return int(self.mask.reshape(len(self.mask), -1).any(axis=1).sum())


def predict_series(series: Series, model: ServedModel, batch_size: int = 16, progress: bool = False,
                   cleanup: postprocess.Cleanup = postprocess.Cleanup(),
                   before_model: Optional[Callable[[np.ndarray], None]] = None) -> Prediction:
    """Runs the model on the series (HU resized to the trained size, the slices in position order so a
    2.5D model sees each slice's neighbours, probabilities resized back, organ where `serving.is_organ`),
    then cleans the patient's mask up in 3D, as the evaluator scores it (`ctseg.postprocess`).
    `before_model` gets the series' HU at the model's size before the model runs (the input check)."""
    import tensorflow as tf
    from tqdm import tqdm

    rows, cols = series.shape
    small, windowed, codes = [], [], []
    with tqdm(total=len(series.slices), unit="slice", desc="predict", disable=not progress) as bar:
        try:
            for hu, code in read_hu(series).batch(batch_size).prefetch(1):
                facing = tf.reverse(hu, series.flip_axes) if series.flip_axes else hu  # as the model was trained
                small.append(tf.image.resize(facing[..., None], model.size,  # ingest's kernel
                                             antialias=True)[..., 0].numpy())
                windowed.append(np.rint(window(hu.numpy()) * 255).astype(np.uint8))
                codes.extend(int(c) for c in code.numpy())
                bar.update(len(code))
        except tf.errors.OpError as e:  # a pydicom decode failure inside the reader names its file
            raise CtsegError(f"{series.source}: a slice could not be decoded: {e.message.splitlines()[0]}") from e
    if before_model is not None:
        before_model(np.concatenate(small))
    probabilities = model.series_probabilities(np.concatenate(small), batch_size)
    masks = [postprocess.source_mask(probabilities[i:i + batch_size], (rows, cols))
             for i in range(0, len(probabilities), batch_size)]
    mask = np.flip(postprocess.clean_volume(np.concatenate(masks), cleanup), series.flip_axes)
    return Prediction(series, model, mask, np.concatenate(windowed), [READERS[c] for c in codes], str(cleanup),
                      count_components(postprocess.binarize(probabilities)))
