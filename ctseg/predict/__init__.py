"""Prediction on one patient's CT series: the exported model's `segment_hu` signature, slice by slice.

`load_series` reads a folder, an IRCAD patient folder or a zip into header-checked slices in
position order; `read_hu` is the `tf.data` reader that turns them into Hounsfield units;
`predict_series` resizes to the trained size, runs the model in chunks and resizes back;
`write_outputs` writes the DICOM Segmentation, IRCAD-style mask DICOMs, the summary and an overlay.

Modules: `series` (reading and checking the files, geometry), `reader` (the tf.data reader of
Hounsfield units, and which decoder reads which file), `inference` (the model on the series), one
module per output (`seg`, `ircad_masks`, `summary`, `overlay`) and `outputs` (all four, written
atomically). The names below are the package's API.
"""
from __future__ import annotations

import ctypes
import os

from ctseg import postprocess
from ctseg.dicom import ENHANCED_CT_STORAGE, SEGMENTATION_STORAGE
from ctseg.predict import ood
from ctseg.predict.inference import Prediction, predict_series, windowed_slices
from ctseg.predict.ircad_masks import MASK_FOREGROUND, mask_dataset, mask_names
from ctseg.predict.outputs import check_output_dir, read_locations, write_outputs, written_by_predict
from ctseg.predict.overlay import overlay_png, tile_indices
from ctseg.predict.reader import READERS, TFIO_TRANSFER_SYNTAXES, choose_reader, read_hu
from ctseg.predict.seg import ANATOMICAL_STRUCTURE, LOSSY_METHODS, STUDY_TYPE2, segmentation_dataset
from ctseg.predict.series import (
    ORGAN,
    Series,
    SliceFile,
    complete_slice_thickness,
    complete_uids,
    load_series,
    read_header,
    series_files,
    slice_spacing_mm,
    volume_ml,
)
from ctseg.predict.summary import reader_counts, summary
from ctseg.serving import load_model

__all__ = ["ANATOMICAL_STRUCTURE", "ENHANCED_CT_STORAGE", "LOSSY_METHODS", "MASK_FOREGROUND", "ORGAN", "Prediction",
           "READERS", "SEGMENTATION_STORAGE", "STUDY_TYPE2", "Series", "SliceFile", "TFIO_TRANSFER_SYNTAXES",
           "check_output_dir", "choose_reader", "complete_slice_thickness", "complete_uids", "load_series",
           "mask_dataset", "mask_names", "overlay_png", "predict_series", "read_header", "read_hu", "reader_counts",
           "read_locations", "segmentation_dataset", "series_files", "slice_spacing_mm", "summary", "tile_indices",
           "volume_ml", "windowed_slices", "write_outputs", "written_by_predict", "predict"]


def predict(series_src: str | os.PathLike, model: str | os.PathLike, out: str | os.PathLike,
            batch_size: int = 16, progress: bool = False, overwrite: bool = False,
            cleanup: postprocess.Cleanup = postprocess.Cleanup(), extra_summary: dict | None = None,
            in_distribution: "ood.Check | None" = None) -> dict:
    """The whole command: load, predict, write (the mask cleaned up in 3D by `cleanup`; `extra_summary`'s
    fields added to summary.json); returns the summary. `in_distribution` compares the series before the
    model runs and the prediction after it with the model's training profile (`ctseg.predict.ood`)."""
    check_output_dir(out, overwrite, read_locations(series_src, model))
    series = load_series(series_src)
    served = load_model(model)
    check = in_distribution.before_model([s.header for s in series.slices]) if in_distribution else None
    prediction = predict_series(series, served, batch_size, progress, cleanup, before_model=check)
    prediction.series = series = series.headers_only()  # the files' bytes go before the outputs are made
    return_freed_memory()
    if in_distribution:
        in_distribution.after_model(prediction)
    return write_outputs(prediction, out, extra_summary)


def return_freed_memory() -> None:
    """Hands memory freed inside the heap back to the system (glibc's `malloc_trim`; a no-op with another C
    library): the files' bytes were allocated inside the heap and the outputs' large arrays are mapped apart
    from it, so without it the freed bytes would stay resident while the outputs are made."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
