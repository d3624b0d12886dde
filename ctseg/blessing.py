"""Whether the model given to `ctseg predict --model` was blessed by the pipeline's evaluation.

A pushed version folder (`<serving_dir>/<version>`, or the serving dir itself, whose newest version is
used) is blessed by construction: TFX's Pusher pushes only models whose ModelBlessing says blessed.
A Trainer output (`<pipeline_root>/<Trainer>/model/<execution id>/Format-Serving`) or any other
SavedModel may not be: its blessing is looked up in ML Metadata, in the store given by `--metadata`
or else the work dir's `metadata.sqlite` beside the pipeline root (`ctseg run`'s layout, see
`ctseg.pipeline.local_runner.LocalPaths`). The evaluator writes, as TFX's Evaluator does, a
ModelBlessing with the int custom property `blessed` (1/0) and `current_model_id` naming the model it
judged (tfx/components/evaluator/constants.py; ctseg.components.evaluation.executor.write_blessing).
A model is blessed when any of its evaluations blessed it: a rerun that finds it already the latest
blessed model records "not blessed again" (ctseg.components.evaluation.metrics.blessing_decision).
Nothing here imports TensorFlow.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Optional

from ctseg.errors import CtsegError
from ctseg.serving import TRAINER_EXPORT_DIR, resolve_model_dir
from ctseg.workdir import METADATA_FILE

BLESSED_KEY = "blessed"  # tfx.components.evaluator.constants.ARTIFACT_PROPERTY_BLESSED_KEY
CURRENT_MODEL_ID_KEY = "current_model_id"  # ...ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY
PUSHED_DESTINATION_KEY = "pushed_destination"  # tfx/components/pusher/executor.py _PUSHED_DESTINATION_KEY


@dataclasses.dataclass(frozen=True)
class Blessing:
    """`blessed`: True, False or None (cannot be determined), and why, in one sentence."""
    model_dir: Path
    kind: str  # "pushed", "trainer" or "saved_model"
    blessed: Optional[bool]
    reason: str
    store: Optional[str] = None

    def summary(self) -> dict:
        return {"blessed": self.blessed, "blessing_reason": self.reason, "model_kind": self.kind,
                "blessing_store": self.store}

    def warning(self) -> Optional[str]:
        if self.blessed is True:
            return None
        what = "is NOT blessed" if self.blessed is False else "has a blessing that cannot be determined"
        return (f"model {self.model_dir} {what}: {self.reason}; its segmentations were not validated by the "
                f"pipeline's evaluation (use a pushed version from the serving dir, or --require-blessed to refuse)")


def model_kind(model_dir: Path) -> str:
    parent = model_dir.parent
    if model_dir.name == TRAINER_EXPORT_DIR and parent.name.isdigit() and parent.parent.name == "model":
        return "trainer"
    if model_dir.name.isdigit():
        return "pushed"
    return "saved_model"


def default_store(model_dir: Path, kind: str) -> Optional[Path]:
    """WORKDIR/metadata.sqlite for WORKDIR/pipeline/<node>/model/<id>/Format-Serving or WORKDIR/serving/<version>."""
    if kind == "trainer":
        return model_dir.parents[3].parent / METADATA_FILE
    if kind == "pushed":
        return model_dir.parent.parent / METADATA_FILE
    return None


def check_blessing(model: str | os.PathLike, metadata: Optional[str] = None) -> Blessing:
    """The blessing of the model `ctseg predict` will load from `model`; a CtsegError only for a
    `metadata` store that was given explicitly and cannot be read."""
    model_dir = resolve_model_dir(model).absolute()
    kind = model_kind(model_dir)
    store_path = Path(metadata) if metadata else default_store(model_dir, kind)
    if store_path is not None and (metadata or store_path.is_file()):
        try:
            found = _from_store(model_dir, str(store_path))
        except CtsegError as e:
            if metadata:
                raise
            found = (None, f"the ML Metadata store beside it cannot be read ({e})")
        if found is not None:
            return Blessing(model_dir, kind, *found, store=str(store_path))
        if kind == "pushed" and not metadata:
            return Blessing(model_dir, kind, None, f"it is not recorded as pushed in {store_path}, the work "
                                                   "dir's ML Metadata store beside its serving dir", str(store_path))
        return Blessing(model_dir, kind, None, f"neither a pushed model nor a Trainer model with this path is "
                                               f"recorded in the ML Metadata store {store_path}", str(store_path))
    looked = f" (no {store_path})" if store_path is not None else ""
    if kind == "pushed":
        return Blessing(model_dir, kind, True, "a version folder of a serving dir, which the Pusher fills with "
                                               f"blessed models only (not confirmed in ML Metadata{looked})")
    if kind == "trainer":
        return Blessing(model_dir, kind, None, f"a Trainer output, but no ML Metadata store to look up its "
                                               f"evaluation{looked}; give it with --metadata")
    return Blessing(model_dir, kind, None, "neither a pushed version nor a Trainer output, and no ML Metadata "
                                           "store given (--metadata) to look it up")


def _from_store(model_dir: Path, store_path: str) -> Optional[tuple[Optional[bool], str]]:
    """(blessed, reason) from ML Metadata, or None when the store knows no model at this path."""
    from ctseg.mlmd.store import connect

    store = connect(store_path)
    path = str(model_dir)
    pushed = [a for a in store.get_artifacts_by_type("PushedModel")
              if path in (a.uri, _custom(a, PUSHED_DESTINATION_KEY))]
    if pushed:
        a = max(pushed, key=lambda a: a.id)
        return True, f"pushed by the Pusher (PushedModel {a.id}), which pushes only blessed models"
    models = [a for uri in (path, str(model_dir.parent)) for a in store.get_artifacts_by_uri(uri)
              if store.get_artifact_types_by_id([a.type_id])[0].name == "Model"]
    if not models:
        return None
    model = models[0]
    blessings = sorted((b for b in store.get_artifacts_by_type("ModelBlessing")
                        if _custom(b, CURRENT_MODEL_ID_KEY) == model.id), key=lambda b: b.id)
    if not blessings:
        return None, (f"model {model.id} has no ModelBlessing in {store_path} "
                      "(its evaluation did not run or did not finish)")
    yes = [b for b in blessings if _custom(b, BLESSED_KEY) == 1]
    chosen = yes[0] if yes else blessings[-1]
    why = _custom(chosen, "reason") or _custom(chosen, "blessing_message") or ""
    verdict = "blessed" if yes else "not blessed"
    because = f": {why}" if why else ""
    return bool(yes), f"model {model.id} is {verdict} by its evaluation (ModelBlessing {chosen.id}{because})"


def _custom(artifact, key: str):
    if key not in artifact.custom_properties:
        return None
    value = artifact.custom_properties[key]
    return value.int_value if value.HasField("int_value") else value.string_value or None
