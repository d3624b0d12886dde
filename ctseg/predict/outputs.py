"""Writing the four outputs into one folder, atomically (a temporary folder renamed into place)."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from pydicom.uid import generate_uid

from ctseg.errors import CtsegError
from ctseg.interrupts import signals_ignored
from ctseg.ircad import IMAGES_DIR
from ctseg.predict.inference import Prediction
from ctseg.predict.ircad_masks import mask_dataset, mask_names
from ctseg.predict.overlay import overlay_png
from ctseg.predict.seg import segmentation_dataset
from ctseg.predict.series import ORGAN
from ctseg.predict.summary import summary
from ctseg.serving import resolve_model_dir
from ctseg.workdir import LOCK_FILE, os_error_sentence

OUTPUT_NAMES = frozenset({"seg.dcm", "MASKS_DICOM", "summary.json", "overlay.png"})
SUMMARY_KEYS = ("volume_ml", "slices", "model_version", "series_instance_uid")  # a summary.json predict wrote


def written_by_predict(folder: Path) -> bool:
    """Whether `folder` holds only what `write_outputs` writes (its summary.json among them), so that
    replacing it can lose nothing predict did not make."""
    names = {p.name for p in folder.iterdir()}
    if not names <= OUTPUT_NAMES or "summary.json" not in names:
        return False
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    masks = folder / "MASKS_DICOM"
    stray = [p for p in masks.rglob("*") if masks / ORGAN not in (p, p.parent)] if masks.is_dir() else []
    return isinstance(summary, dict) and all(k in summary for k in SUMMARY_KEYS) and not stray


def _dataset_root(series: Path) -> Path | None:
    """The folder of IRCAD patients that holds the patient `series` is (or is the PATIENT_DICOM of), if
    a sibling patient shows it to be one."""
    patient = series.parent if series.name == IMAGES_DIR else series
    if not any((patient / name).exists() for name in (IMAGES_DIR, f"{IMAGES_DIR}.zip")):
        return None
    try:
        siblings = [p for p in patient.parent.iterdir() if p != patient and p.is_dir()]
    except OSError:
        return None
    if any((p / name).exists() for p in siblings for name in (IMAGES_DIR, f"{IMAGES_DIR}.zip")):
        return patient.parent
    return None


def _model_workdir(model: str | os.PathLike) -> Path | None:
    """The `ctseg run` work dir a pushed or Trainer model lives in, recognised by its store or lock."""
    from ctseg.blessing import default_store, model_kind

    try:
        model_dir = resolve_model_dir(model).absolute()
    except CtsegError:
        return None
    store = default_store(model_dir, model_kind(model_dir))
    if store is None or not (store.is_file() or (store.parent / LOCK_FILE).is_file()):
        return None
    return store.parent


def read_locations(series: str | os.PathLike, model: str | os.PathLike,
                   metadata: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """(what, path) of everything predict reads, which `--out` must stay clear of (`check_output_dir`)."""
    series, model = Path(series), Path(model)
    found = [("the input series", series), ("the dataset holding the series", _dataset_root(series)),
             ("the model", model), ("the work dir of the model", _model_workdir(model))]
    if metadata:
        found.append(("the ML Metadata store", Path(metadata)))
    return [(what, path) for what, path in found if path is not None]


RELATIONS = ("the same folder as", "inside", "a folder above")


def _relation(out: Path, other: Path) -> str | None:
    if out == other:
        return RELATIONS[0]
    if other in out.parents:
        return RELATIONS[1]
    if out in other.parents:
        return RELATIONS[2]
    return None


def check_output_dir(out: str | os.PathLike, overwrite: bool = False,
                     inputs: Iterable[tuple[str, str | os.PathLike]] = ()) -> Path:
    """`out` if it is missing, empty, or (with `overwrite`) an earlier prediction; a CtsegError before any
    work otherwise. `inputs` are (what, path) that `out` must neither be, lie inside, nor hold: writing
    there would mix the outputs into what predict reads, or replace it."""
    out = Path(out)
    where = out.resolve()
    clashes = [(relation, what, path) for what, path in inputs
               for relation in [_relation(where, Path(path).resolve())] if relation]
    if clashes:
        relation, what, path = min(clashes, key=lambda c: RELATIONS.index(c[0]))
        raise CtsegError(f"--out {out} is {relation} {what} {path}; predict would write over what it reads: "
                         f"give an output folder outside it")
    if out.exists() and not out.is_dir():
        raise CtsegError(f"--out {out} is a file, not a folder")
    _check_writable(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise CtsegError(f"--out {out} is not empty (an earlier prediction?); give an empty or new folder, "
                             f"or --overwrite to replace an earlier prediction")
        if not written_by_predict(out):
            raise CtsegError(f"--out {out} holds files that ctseg predict did not write (no summary.json of its "
                             f"own, or other files beside its outputs); --overwrite replaces only an earlier "
                             f"prediction: give an empty or new folder")
    return out


def _check_writable(out: Path) -> None:
    """The folder beside `out`, where the outputs are first written, can be made: checked before the model runs."""
    parent = out.absolute().parent
    existing = next(p for p in (parent, *parent.parents) if p.exists())
    if not existing.is_dir():
        raise CtsegError(f"--out {out} cannot be made: {existing} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ctseg-write-test-", dir=existing))
    except OSError as e:
        raise os_error_sentence("the output folder", out, e) from None


def _write_error(out: Path, error: OSError) -> CtsegError:
    """The operating system's reason (disk full, file too large...) in one sentence: pydicom re-raises a
    failed write as an OSError whose text holds the data element, the cause is in the chain."""
    cause: BaseException | None = error
    while cause is not None and not (isinstance(cause, OSError) and cause.errno):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return os_error_sentence("the output folder", out, cause)
    return CtsegError(f"cannot write the outputs to {out}: {str(error).splitlines()[0] if str(error) else error!r}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_outputs(prediction: Prediction, out: str | os.PathLike, extra_summary: dict | None = None) -> dict:
    """Writes seg.dcm, MASKS_DICOM/liver/image_N, summary.json and overlay.png as the folder `out`
    (replacing what was there); returns the summary, with `extra_summary`'s fields (the CLI's blessing).

    Everything is written into a temporary folder beside `out` and renamed into place at the end, so a
    failure leaves no half-written output and no earlier prediction's files mixed with new ones.
    """
    import shutil

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        partial.chmod(0o777 & ~_umask())  # mkdtemp's 0700 would hide the outputs from everyone else
        result = _write_into(prediction, partial, extra_summary or {})
        if out.is_dir() and any(out.iterdir()) and not written_by_predict(out):
            raise CtsegError(f"{out} holds files that ctseg predict did not write; it is left as it is")
        with signals_ignored():
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                out.rename(old)
                partial.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                partial.rename(out)
    except OSError as e:
        shutil.rmtree(partial, ignore_errors=True)
        raise _write_error(out, e) from e
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
