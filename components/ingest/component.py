"""IrcadExampleGen: the first pipeline stage, 3D-IRCADb-01 DICOM (folder or `3Dircadb1.zip`) to split Examples."""
from __future__ import annotations

import json
from typing import Optional

from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import channel, component_spec, standard_artifacts

from ctseg import ircad
from ctseg.code_version import CODE_VERSION_KEY, code_version
from ctseg.components.ingest import executor
from ctseg.knobs import DEFAULT_SPLIT_RATIOS, check_ingest


class IrcadExampleGenSpec(component_spec.ComponentSpec):
    PARAMETERS = {
        "data_root": component_spec.ExecutionParameter(type=str),
        "organ": component_spec.ExecutionParameter(type=str),
        "image_size": component_spec.ExecutionParameter(type=int),
        "split_ratios": component_spec.ExecutionParameter(type=str),  # JSON: {"train": 0.75, "eval": 0.25}
        "max_bad_fraction": component_spec.ExecutionParameter(type=float),
        # Part of TFX's cache key, so that changed data or changed ingest code is ingested again.
        executor.FINGERPRINT_KEY: component_spec.ExecutionParameter(type=str, optional=True),
        CODE_VERSION_KEY: component_spec.ExecutionParameter(type=str, optional=True),
    }
    INPUTS = {}
    OUTPUTS = {executor.EXAMPLES_KEY: component_spec.ChannelParameter(type=standard_artifacts.Examples)}


class IrcadExampleGen(base_component.BaseComponent):
    """Ingests the 3D-IRCADb-01 CT scans at `data_root` into `Examples` with one tf.train.Example per slice.

    `data_root` is the extracted folder or the published `3Dircadb1.zip` (nested zips are read in
    memory), on any filesystem tf.io.gfile reads. Images become Hounsfield units
    (RescaleSlope/Intercept), ordered by ImagePositionPatient, resized to `image_size` (masks by
    nearest neighbour, non-zero → 1); only `MASKS_DICOM/<organ>` is read.

    Splits are by patient, never by slice: a patient goes to the split whose share of [0, 1)
    (cumulative `split_ratios`, in the order train, eval, test) holds a SHA-256 hash of its id, so
    its split does not depend on the other patients. When that leaves a split empty and there are
    at least as many patients as splits, the empty split takes, from a split with two or more
    patients, the patient whose hash is nearest its share.

    Bad files (corrupt, non-image, unpaired, mismatched size, empty patient, missing organ folder)
    go to `<examples.uri>/quarantine.jsonl` (patient_id, file, reason) and the log. The run fails
    with a CtsegError naming the worst files when more than `max_bad_fraction` of any patient's
    slices are bad. Custom properties on the artifact: patients, slices_<split>, slices_with_liver,
    quarantined, skipped, data_root, input_fingerprint.

    `input_fingerprint` (default: `ircad.data_fingerprint(data_root)`, taken when the component is
    built, i.e. before the step runs) and `code_version` (a digest of the ingest code) are exec
    properties: TFX's cache key includes them, so a rerun on changed data, or with changed ingest
    code, ingests again instead of reusing the old Examples. Data that cannot be read when the
    pipeline is built gets a fingerprint unique to this build, so it is never served from the cache.
    """

    SPEC_CLASS = IrcadExampleGenSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(executor.Executor)

    def __init__(self, data_root: str, organ: str = "liver", image_size: int = 256,
                 split_ratios: Optional[dict[str, float]] = None, max_bad_fraction: float = 0.0,
                 input_fingerprint: Optional[str] = None):
        ratios = dict(split_ratios or DEFAULT_SPLIT_RATIOS)
        check_ingest(organ, image_size, max_bad_fraction, ratios)
        super().__init__(spec=IrcadExampleGenSpec(
            data_root=str(data_root), organ=organ, image_size=int(image_size),
            split_ratios=json.dumps(ratios), max_bad_fraction=float(max_bad_fraction),
            input_fingerprint=input_fingerprint or ircad.build_fingerprint(str(data_root)),
            code_version=code_version(executor.Executor.__module__),
            examples=channel.Channel(type=standard_artifacts.Examples)))
