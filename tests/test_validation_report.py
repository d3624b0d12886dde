"""The pure functions behind the gate's words, on hand-made statistics and anomalies protos."""
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from ctseg.components.validation import SCHEMA_FILE, report


def _stats(num_examples=10, **features) -> statistics_pb2.DatasetFeatureStatistics:
    """`name=(min, max)` gives numeric stats, `name=("bytes", min, max)` byte-length stats."""
    ds = statistics_pb2.DatasetFeatureStatistics(num_examples=num_examples)
    for name, value in features.items():
        feat = ds.features.add()
        feat.path.step.append(name)
        if value[0] == "bytes":
            feat.bytes_stats.min_num_bytes, feat.bytes_stats.max_num_bytes = value[1], value[2]
        else:
            feat.num_stats.min, feat.num_stats.max = value
            feat.num_stats.common_stats.num_non_missing = num_examples
    return ds


def _schema() -> schema_pb2.Schema:
    with open(SCHEMA_FILE) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


CLEAN = dict(height=(64, 64), width=(64, 64), source_rows=(512, 512), source_columns=(512, 512),
             image_hu=("bytes", 8192, 8192), mask=("bytes", 4096, 4096), liver_fraction=(0.0, 0.2))


def test_curated_schema_explains_every_feature_and_bounds_the_physical_ones():
    schema = _schema()
    assert all(f.annotation.comment for f in schema.feature)
    domains = {f.name: f.WhichOneof("domain_info") for f in schema.feature}
    for name in ("liver_fraction", "hu_min", "hu_max", "hu_mean", "spacing_mm", "thickness_mm"):
        assert domains[name] == "float_domain", name
    bounds = {f.name: (f.float_domain.min, f.float_domain.max) for f in schema.feature if f.HasField("float_domain")}
    assert bounds["liver_fraction"] == (0.0, 1.0)
    air_hu, intercept = -1000.0, -1024.0
    # air read without the intercept fails
    assert bounds["hu_min"][0] < air_hu < bounds["hu_min"][1] < air_hu - intercept


def test_consistent_statistics_give_no_findings():
    assert report.consistency_findings({"train": _stats(**CLEAN), "eval": _stats(**CLEAN)}) == []


def test_a_patient_at_another_source_size_is_found_across_splits():
    other = dict(CLEAN, source_rows=(512, 1024))
    findings = report.consistency_findings({"train": _stats(**CLEAN), "eval": _stats(**other)})
    assert [(f.split, f.feature) for f in findings] == [("all", "source_rows")]
    assert "512 to 1024" in findings[0].found and "eval: 512 to 1024" in findings[0].found
    assert report.consistency_findings({"train": _stats(**CLEAN), "eval": _stats(**other)},
                                       require_uniform_source_size=False) == []


def test_pixel_bytes_must_match_height_and_width():
    bad = dict(CLEAN, mask=("bytes", 8192, 8192))
    findings = report.consistency_findings({"train": _stats(**bad)})
    assert [(f.feature, f.expected.split()[0], f.found) for f in findings] == [("mask", "4096", "8192 to 8192 bytes")]


def test_a_split_without_liver_is_a_finding():
    findings = report.consistency_findings({"eval": _stats(**dict(CLEAN, liver_fraction=(0.0, 0.0)))})
    assert [(f.split, f.feature) for f in findings] == [("eval", "liver_fraction")]


def test_anomaly_is_put_in_words_with_the_schema_reason_and_the_observed_range():
    anomalies = anomalies_pb2.Anomalies()
    info = anomalies.anomaly_info["mask_distinct_values"]
    info.reason.add(type=anomalies_pb2.AnomalyInfo.INT_TYPE_BIG_INT, description="Unexpectedly large value: 3.")
    anomalies.anomaly_info["patient_id"].reason.add(type=anomalies_pb2.AnomalyInfo.FEATURE_TYPE_LOW_FRACTION_PRESENT,
                                                     description="present in 90% of examples")
    stats = _stats(mask_distinct_values=(2, 3))
    by_feature = {f.feature: f for f in report.anomaly_findings("train", anomalies, _schema(), stats)}
    mask = by_feature["mask_distinct_values"]
    assert mask.expected.startswith("values in [1, 2] (a binary mask")
    assert "min 2, max 3 over 10 slices" in mask.found and "Unexpectedly large value: 3." in mask.found
    assert by_feature["patient_id"].expected.startswith("a value in every slice")
    assert str(mask).startswith("[train] mask_distinct_values: expected values in [1, 2]")


def test_gate_message_lists_findings_and_artifacts_and_only_exceeded_skew():
    finding = report.Finding("train", "hu_min", "values in [-3100, -500]", "max 24")
    skews = [report.Skew("hu_mean", "eval", 0.9, 0.3, -600.0, 400.0), report.Skew("hu_std", "eval", 0.1, 0.3, 1, 1)]
    message = report.gate_message([finding], skews, "/a/anomalies/4", "/a/statistics/3")
    assert "1 anomalies and 1 skewed features" in message
    assert "- [train] hu_min: expected values in [-3100, -500]; found max 24" in message
    assert "hu_mean: divergence 0.900 (SKEWED" in message and "hu_std" not in message
    assert "full anomalies artifact: /a/anomalies/4" in message and "ctseg stats /a/statistics/3" in message


def test_findings_name_the_patients_outside_the_bounds_or_off_the_common_size():
    rows = [{"patient_id": p, "mask_distinct_values": v, "source_rows": size}
            for p, v, size in (("p1", 2, 512), ("p1", 1, 512), ("p2", 3, 1024), ("p3", 2, 512))]
    findings = [report.Finding("train", "mask_distinct_values", "values in [1, 2]", "max 3"),
                report.Finding("all", "source_rows", "one value", "512 to 1024"),
                report.Finding("train", "(dataset)", "examples", "none")]
    named = report.with_patients(findings, report.patient_ranges(rows), _schema())
    assert [f.patients for f in named] == [("p2",), ("p2",), ()]
    assert str(named[0]).endswith("; in patient p2")
