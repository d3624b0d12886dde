"""The ValidationGate executor: reads the anomalies and statistics, writes the report, raises on anomalies."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import tensorflow_data_validation as tfdv
from tensorflow_data_validation.utils import anomalies_util
from tensorflow_metadata.proto.v0 import statistics_pb2
from tfx import types
from tfx.components.statistics_gen import stats_artifact_utils
from tfx.dsl.components.base import base_executor
from tfx.types import artifact_utils
from tfx.utils import io_utils

from ctseg.components.validation import ANOMALIES_FILE, report
from ctseg.errors import CtsegError

REPORT_FILE = "report.txt"
SKEW_FILE = "skew.json"
TRAIN_SPLIT = "train"

log = logging.getLogger(__name__)


def load_split_statistics(artifact: types.Artifact) -> dict[str, statistics_pb2.DatasetFeatureStatistics]:
    return {split: stats_artifact_utils.load_statistics(artifact, split).proto().datasets[0]
            for split in artifact_utils.decode_split_names(artifact.split_names)}


def load_split_anomalies(artifact: types.Artifact) -> dict[str, Any]:
    return {split: anomalies_util.load_anomalies_binary(os.path.join(artifact_utils.get_split_uri([artifact], split),
                                                           ANOMALIES_FILE))
            for split in artifact_utils.decode_split_names(artifact.split_names)}


def scalar_rows(examples: types.Artifact):
    """The numeric features and patient of every slice in every split (pixels are skipped), for naming patients."""
    import tensorflow as tf

    from ctseg import features as F

    for split in artifact_utils.decode_split_names(examples.split_names):
        files = tf.io.gfile.glob(os.path.join(artifact_utils.get_split_uri([examples], split), "*"))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP").as_numpy_iterator():
            yield F.scalar_values(record)


def compute_skews(stats_by_split, schema, threshold):
    """TFDV's skew comparators between train and every other split (train plays 'training', the other 'serving')."""
    train = stats_by_split.get(TRAIN_SPLIT)
    if train is None:
        return []
    schema = report.skew_schema(schema, threshold)
    out = []
    for split, other in stats_by_split.items():
        if split == TRAIN_SPLIT:
            continue
        anomalies = tfdv.validate_statistics(
            statistics_pb2.DatasetFeatureStatisticsList(datasets=[train]), schema,
            serving_statistics=statistics_pb2.DatasetFeatureStatisticsList(datasets=[other]))
        out += report.skews_from_anomalies(anomalies, split, train, other)
    return out


class Executor(base_executor.BaseExecutor):
    """Raises CtsegError listing every finding if the data is bad; else writes report.txt and skew.json."""

    def Do(self, input_dict: dict[str, list[types.Artifact]], output_dict: dict[str, list[types.Artifact]],
           exec_properties: dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        stats_artifact = artifact_utils.get_single_instance(input_dict["statistics"])
        anomalies_artifact = artifact_utils.get_single_instance(input_dict["anomalies"])
        schema = io_utils.SchemaReader().read(
            io_utils.get_only_uri_in_dir(artifact_utils.get_single_uri(input_dict["schema"])))
        out_artifact = artifact_utils.get_single_instance(output_dict["report"])

        stats_by_split = load_split_statistics(stats_artifact)
        findings = [f for split, anomalies in load_split_anomalies(anomalies_artifact).items()
                    for f in report.anomaly_findings(split, anomalies, schema, stats_by_split.get(split))]
        findings += report.consistency_findings(
            stats_by_split, require_uniform_source_size=bool(exec_properties.get("require_uniform_source_size", True)))
        if findings and input_dict.get("examples"):
            rows = scalar_rows(artifact_utils.get_single_instance(input_dict["examples"]))
            findings = report.with_patients(findings, report.patient_ranges(rows), schema)
        skews = compute_skews(stats_by_split, schema, exec_properties.get("skew_threshold"))

        text = report.report_text(findings, skews, report.statistics_summary(stats_by_split), anomalies_artifact.uri)
        (log.warning if findings else log.info)("%s", text)
        fail_on_skew = bool(exec_properties.get("fail_on_skew", False))
        if findings or (fail_on_skew and any(s.exceeded for s in skews)):
            # TFX deletes a failed execution's outputs, so the message itself carries everything.
            raise CtsegError(report.gate_message(findings, skews if fail_on_skew else [], anomalies_artifact.uri,
                                                 stats_artifact.uri))
        io_utils.write_string_file(os.path.join(out_artifact.uri, REPORT_FILE), text)
        io_utils.write_string_file(os.path.join(out_artifact.uri, SKEW_FILE), json.dumps({
            "anomalies_uri": anomalies_artifact.uri,
            "statistics_uri": stats_artifact.uri,
            "skew": [dict(vars(s), exceeded=s.exceeded) for s in skews]}, indent=2))
        out_artifact.set_int_custom_property("skewed_features", sum(s.exceeded for s in skews))
