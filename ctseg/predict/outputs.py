"""Writing the four outputs into one folder, atomically (a temporary folder renamed into place)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from pydicom.uid import generate_uid

from ctseg.errors import CtsegError
from ctseg.predict.inference import Prediction
from ctseg.predict.ircad_masks import mask_dataset, mask_names
from ctseg.predict.overlay import overlay_png
from ctseg.predict.seg import segmentation_dataset
from ctseg.predict.series import ORGAN
from ctseg.predict.summary import summary


def check_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """`out` if it is missing or empty (or `overwrite`); a CtsegError before any work otherwise."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CtsegError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CtsegError(f"--out {out} is not empty (an earlier prediction?); give an empty or new folder, "
                         f"or --overwrite to replace its contents")
    return out


def write_outputs(prediction: Prediction, out: str | os.PathLike, extra_summary: dict | None = None) -> dict:
    """Writes seg.dcm, MASKS_DICOM/liver/image_N, summary.json and overlay.png as the folder `out`
    (replacing what was there); returns the summary, with `extra_summary`'s fields (the CLI's blessing).

    Everything is written into a temporary folder beside `out` and renamed into place at the end, so a
    failure leaves no half-written output and no earlier prediction's files mixed with new ones.
    """
    import shutil
    import tempfile

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        result = _write_into(prediction, partial, extra_summary or {})
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            partial.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return result


def _write_into(prediction: Prediction, out: Path, extra_summary: dict) -> dict:
    masks_dir = out / "MASKS_DICOM" / ORGAN
    masks_dir.mkdir(parents=True, exist_ok=True)
    segmentation_dataset(prediction).save_as(out / "seg.dcm")
    series_uid = generate_uid()
    for name, s, m in zip(mask_names(prediction.series), prediction.series.slices, prediction.mask):
        mask_dataset(s.header, m, series_uid).save_as(masks_dir / name, write_like_original=False)
    overlay_png(prediction, out / "overlay.png")
    result = {**summary(prediction), **extra_summary}
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
