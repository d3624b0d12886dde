"""The prediction as summary.json: volume, slices, model, series, geometry and which reader decoded what."""
from __future__ import annotations

from typing import Iterable

from ctseg.dicom import spacing_mm
from ctseg.predict.inference import Prediction
from ctseg.predict.reader import READERS
from ctseg.predict.series import slice_spacing_mm, volume_ml


def reader_counts(readers: Iterable[str]) -> dict[str, int]:
    readers = list(readers)
    return {r: readers.count(r) for r in READERS if r in readers}


def summary(prediction: Prediction) -> dict:
    series, model = prediction.series, prediction.model
    row_mm, col_mm = spacing_mm(series.slices[0].header)
    return {
        "volume_ml": round(volume_ml(prediction.mask, series), 3),
        "slices": len(series.slices),
        "slices_with_liver": prediction.slices_with_liver,
        "model_version": model.version,
        "model_path": str(model.path),
        "model_input_size": list(model.size),
        "series_instance_uid": series.uid,
        "source": series.source,
        "spacing_mm": [row_mm, col_mm],
        "slice_spacing_mm": round(slice_spacing_mm(series), 6),
        "readers": reader_counts(prediction.readers),
        "generated_uids": list(series.generated),
        "derived_attributes": list(series.derived),
        "skipped_files": list(series.skipped),
        "geometry_notes": list(series.geometry_notes),
        "cleanup": prediction.cleanup,
        "components_before_cleanup": prediction.components_before_cleanup,
        "out_of_distribution": prediction.out_of_distribution,
    }
