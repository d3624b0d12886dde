"""Pure functions that turn TFDV statistics, schema and anomalies protos into findings and text.

A `Finding` is one reason to stop the run, phrased for a person: which split, which feature, what
the schema expects (and why, from the feature's `annotation.comment`) and what the data holds.
The gate, `ctseg stats` and the tests all read the same words from here.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

from tensorflow_metadata.proto.v0 import anomalies_pb2, schema_pb2, statistics_pb2

from ctseg import features as F

Stats = statistics_pb2.DatasetFeatureStatistics
SKEW_FEATURES_NOTE = "Jensen-Shannon divergence of the histograms, 0 = same distribution, 1 = disjoint"
QUANTILES = statistics_pb2.Histogram.QUANTILES


@dataclasses.dataclass(frozen=True)
class Finding:
    split: str
    feature: str
    expected: str
    found: str
    patients: tuple[str, ...] = ()

    def __str__(self) -> str:
        who = f"; in patient {', '.join(self.patients)}" if self.patients else ""
        return f"[{self.split}] {self.feature}: expected {self.expected}; found {self.found}{who}"


@dataclasses.dataclass(frozen=True)
class Skew:
    """Train/eval divergence of one feature; `exceeded` when above the threshold."""
    feature: str
    split: str
    divergence: float
    threshold: float
    train_mean: float | None
    other_mean: float | None

    @property
    def exceeded(self) -> bool:
        return self.divergence > self.threshold

    def __str__(self) -> str:
        means = f"mean {_num(self.train_mean)} in train vs {_num(self.other_mean)} in {self.split}"
        flag = "SKEWED, above" if self.exceeded else "within"
        return f"{self.feature}: divergence {self.divergence:.3f} ({flag} {self.threshold:g}); {means}"


# --- reading statistics -------------------------------------------------------------------------

def feature_stats(stats: Stats, name: str) -> statistics_pb2.FeatureNameStatistics | None:
    for feat in stats.features:
        if (feat.path.step and feat.path.step[-1] == name) or feat.name == name:
            return feat
    return None


def numeric_range(stats: Stats, name: str) -> tuple[float, float] | None:
    feat = feature_stats(stats, name)
    if feat is None or not feat.HasField("num_stats"):
        return None
    return feat.num_stats.min, feat.num_stats.max


def numeric_mean(stats: Stats, name: str) -> float | None:
    feat = feature_stats(stats, name)
    return feat.num_stats.mean if feat is not None and feat.HasField("num_stats") else None


def byte_lengths(stats: Stats, name: str) -> tuple[float, float] | None:
    feat = feature_stats(stats, name)
    if feat is None or not feat.HasField("bytes_stats"):
        return None
    return feat.bytes_stats.min_num_bytes, feat.bytes_stats.max_num_bytes


def quantile(stats: Stats, name: str, q: float) -> float | None:
    """An approximate quantile from TFDV's equi-depth histogram (q in [0, 1])."""
    feat = feature_stats(stats, name)
    if feat is None or not feat.HasField("num_stats"):
        return None
    for hist in feat.num_stats.histograms:
        if hist.type == QUANTILES and hist.buckets:
            index = min(int(q * len(hist.buckets)), len(hist.buckets) - 1)
            return hist.buckets[index].high_value if q > 0 else hist.buckets[0].low_value
    return None


def slices_per_patient(stats: Stats) -> tuple[dict[str, int], int]:
    """Slice counts of the most frequent patients (TFDV keeps the top values) and the number of patients."""
    feat = feature_stats(stats, F.PATIENT_KEY)
    if feat is None or not feat.HasField("string_stats"):
        return {}, 0
    counts = {v.value: int(v.frequency) for v in feat.string_stats.top_values}
    return dict(sorted(counts.items())), int(feat.string_stats.unique)


# --- anomalies in words -------------------------------------------------------------------------

def _num(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 or value == 0 else f"{value:.4g}"


def _schema_feature(schema: schema_pb2.Schema, name: str) -> schema_pb2.Feature | None:
    return next((f for f in schema.feature if f.name == name), None)


def _bounds(feature: schema_pb2.Feature) -> str:
    domain = feature.WhichOneof("domain_info")
    if domain in ("int_domain", "float_domain"):
        d = getattr(feature, domain)
        lo = _num(d.min) if d.HasField("min") else "-inf"
        hi = _num(d.max) if d.HasField("max") else "+inf"
        return f"values in [{lo}, {hi}]"
    if domain == "image_domain" and feature.image_domain.HasField("max_image_byte_size"):
        return f"at most {feature.image_domain.max_image_byte_size} bytes"
    return "a valid value"


def expected_text(feature: schema_pb2.Feature | None, reason: str) -> str:
    """What the schema asks of `feature` for an anomaly of TFDV type `reason`, with the schema's why."""
    if feature is None:
        return "only the features in the curated schema"
    if "PRESENT" in reason or "MISSING" in reason:
        what = "a value in every slice"
    elif "NUMBER_VALUES" in reason or "VALUE_COUNT" in reason:
        what = "exactly one value per slice"
    elif "TYPE" in reason and not any(k in reason for k in ("SMALL", "BIG", "OUT_OF_RANGE")):
        what = f"type {schema_pb2.FeatureType.Name(feature.type)}"
    else:
        what = _bounds(feature)
    why = "; ".join(feature.annotation.comment)
    return f"{what} ({why})" if why else what


def observed_text(stats: Stats | None, name: str) -> str:
    """What the statistics say about `name`: its range over the split's slices."""
    if stats is None:
        return "no statistics"
    feat = feature_stats(stats, name)
    if feat is None:
        return "no such feature in the data"
    if feat.HasField("num_stats"):
        common = feat.num_stats.common_stats
        return (f"min {_num(feat.num_stats.min)}, max {_num(feat.num_stats.max)} over "
                f"{common.num_non_missing} slices ({common.num_missing} without it)")
    lengths = byte_lengths(stats, name)
    if lengths:
        return f"{_num(lengths[0])} to {_num(lengths[1])} bytes"
    common = feat.string_stats.common_stats
    return f"{common.num_non_missing} slices with it, {common.num_missing} without"


def anomaly_findings(split: str, anomalies: anomalies_pb2.Anomalies, schema: schema_pb2.Schema,
                     stats: Stats | None) -> list[Finding]:
    """One finding per anomalous feature, plus dataset-level anomalies and missing data."""
    out = []
    if anomalies.HasField("data_missing") and anomalies.data_missing:
        out.append(Finding(split, "(dataset)", "examples in the split", "no data"))
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        out.append(Finding(split, "(dataset)", "at least one example per split (schema dataset_constraints)",
                           info.description or info.short_description))
    for name in sorted(anomalies.anomaly_info):
        info = anomalies.anomaly_info[name]
        reason_types = [anomalies_pb2.AnomalyInfo.Type.Name(r.type) for r in info.reason]
        descriptions = "; ".join(r.description or r.short_description for r in info.reason) or info.description
        feature = _schema_feature(schema, name)
        out.append(Finding(split, name, expected_text(feature, " ".join(reason_types)),
                           f"{observed_text(stats, name)} (TFDV: {descriptions})"))
    return out


# --- checks TFDV's schema cannot express ----------------------------------------------------------

def _span(stats_by_split: Mapping[str, Stats], name: str) -> tuple[float, float] | None:
    ranges = [r for r in (numeric_range(s, name) for s in stats_by_split.values()) if r]
    return (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else None


def _uniform(stats_by_split: Mapping[str, Stats], name: str, why: str) -> list[Finding]:
    span = _span(stats_by_split, name)
    if span is None or span[0] == span[1]:
        return []
    per_split = ", ".join(f"{s}: {_num(r[0])} to {_num(r[1])}" for s, r in
                          ((s, numeric_range(st, name)) for s, st in stats_by_split.items()) if r)
    return [Finding("all", name, f"one value for every slice ({why})",
                    f"values from {_num(span[0])} to {_num(span[1])} ({per_split})")]


def _pixel_bytes(stats_by_split: Mapping[str, Stats], name: str, bytes_per_pixel: int) -> list[Finding]:
    height, width = _span(stats_by_split, F.HEIGHT_KEY), _span(stats_by_split, F.WIDTH_KEY)
    if not height or not width or height[0] != height[1] or width[0] != width[1]:
        return []
    expected = int(height[0] * width[0] * bytes_per_pixel)
    out = []
    for split, stats in stats_by_split.items():
        lengths = byte_lengths(stats, name)
        if lengths and (lengths[0] != expected or lengths[1] != expected):
            out.append(Finding(split, name, f"{expected} bytes (height x width x {bytes_per_pixel})",
                               f"{_num(lengths[0])} to {_num(lengths[1])} bytes"))
    return out


def consistency_findings(stats_by_split: Mapping[str, Stats], *,
                         require_uniform_source_size: bool = True) -> list[Finding]:
    """Dataset-wide rules the schema's per-value domains cannot state (see schemas/schema.pbtxt)."""
    out = []
    for key in (F.HEIGHT_KEY, F.WIDTH_KEY):
        out += _uniform(stats_by_split, key, "ingest resizes every slice to one size")
    if require_uniform_source_size:
        for key in (F.SOURCE_ROWS_KEY, F.SOURCE_COLUMNS_KEY):
            out += _uniform(stats_by_split, key, "every patient is scanned at one DICOM size, as in IRCAD; "
                                                 "a patient at another size was resampled differently")
    out += _pixel_bytes(stats_by_split, F.IMAGE_KEY, F.IMAGE_DTYPE.itemsize)
    out += _pixel_bytes(stats_by_split, F.MASK_KEY, F.MASK_DTYPE.itemsize)
    for split, stats in stats_by_split.items():
        span = numeric_range(stats, F.LIVER_FRACTION_KEY)
        if span is not None and span[1] <= 0:
            out.append(Finding(split, F.LIVER_FRACTION_KEY, "some slices with liver (else the masks are empty "
                               "or of another organ)", "no liver in any slice"))
    return out


# --- which patients ---------------------------------------------------------------------------

PatientRanges = Mapping[str, Mapping[str, tuple[float, float]]]  # feature -> patient -> (min, max)


def patient_ranges(rows: Iterable[Mapping[str, float | str]]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per feature and patient, the range of a scalar over the patient's slices (rows from the examples)."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for row in rows:
        patient = str(row[F.PATIENT_KEY])
        for name, value in row.items():
            if name == F.PATIENT_KEY:
                continue
            lo, hi = out.setdefault(name, {}).get(patient, (value, value))
            out[name][patient] = (min(lo, value), max(hi, value))
    return out


def _outside_domain(feature: schema_pb2.Feature, ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    domain = feature.WhichOneof("domain_info")
    if domain not in ("int_domain", "float_domain"):
        return []
    d = getattr(feature, domain)
    return [p for p, (lo, hi) in ranges.items()
            if (d.HasField("min") and lo < d.min) or (d.HasField("max") and hi > d.max)]


def _off_majority(ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    """Patients whose value differs from the one most patients share."""
    values = [r for r in ranges.values() if r[0] == r[1]]
    if not values:
        return sorted(ranges)
    common = max(set(values), key=values.count)
    return [p for p, r in ranges.items() if r != common]


def with_patients(findings: Iterable[Finding], ranges: PatientRanges, schema: schema_pb2.Schema) -> list[Finding]:
    """Names the patients behind each finding on a scalar feature; other findings are returned as they are."""
    out = []
    for f in findings:
        per_patient = ranges.get(f.feature)
        feature = _schema_feature(schema, f.feature)
        if per_patient and f.split == "all":
            out.append(dataclasses.replace(f, patients=tuple(sorted(_off_majority(per_patient)))))
        elif per_patient and feature is not None:
            out.append(dataclasses.replace(f, patients=tuple(sorted(_outside_domain(feature, per_patient)))))
        else:
            out.append(f)
    return out


# --- skew ---------------------------------------------------------------------------------------

def skew_schema(schema: schema_pb2.Schema, threshold: float | None) -> schema_pb2.Schema:
    """The schema's skew comparators, with every Jensen-Shannon threshold set to `threshold` if given."""
    out = schema_pb2.Schema()
    out.CopyFrom(schema)
    if threshold is not None:
        for feat in out.feature:
            if feat.HasField("skew_comparator"):
                feat.skew_comparator.jensen_shannon_divergence.threshold = threshold
    return out


def skews_from_anomalies(anomalies: anomalies_pb2.Anomalies, split: str, train: Stats, other: Stats) -> list[Skew]:
    """Reads TFDV's `drift_skew_info` measurements (from validate_statistics with serving statistics)."""
    out = []
    for info in anomalies.drift_skew_info:
        name = info.path.step[-1]
        for m in info.skew_measurements:
            out.append(Skew(name, split, m.value, m.threshold, numeric_mean(train, name), numeric_mean(other, name)))
    return sorted(out, key=lambda s: s.feature)


# --- text ---------------------------------------------------------------------------------------

def split_summary(split: str, stats: Stats) -> list[str]:
    """Count, per-feature min/mean/max, liver fraction distribution and slices per patient of one split."""
    lines = [f"split {split}: {stats.num_examples} slices"]
    for feat in sorted(stats.features, key=lambda f: f.path.step[-1] if f.path.step else f.name):
        name = feat.path.step[-1] if feat.path.step else feat.name
        if feat.HasField("num_stats"):
            n = feat.num_stats
            lines.append(f"  {name:<22} min {_num(n.min):>10}  mean {_num(n.mean):>10}  max {_num(n.max):>10}")
        elif feat.HasField("bytes_stats"):
            b = feat.bytes_stats
            lines.append(f"  {name:<22} {_num(b.min_num_bytes)} to {_num(b.max_num_bytes)} bytes")
    liver = feature_stats(stats, F.LIVER_FRACTION_KEY)
    if liver is not None and liver.HasField("num_stats"):
        with_liver = liver.num_stats.common_stats.num_non_missing - liver.num_stats.num_zeros
        qs = ", ".join(f"p{int(q * 100)} {_num(quantile(stats, F.LIVER_FRACTION_KEY, q))}" for q in (0.1, 0.5, 0.9))
        lines.append(f"  liver fraction: {with_liver} of {stats.num_examples} slices show liver; {qs}")
    counts, unique = slices_per_patient(stats)
    if counts:
        shown = ", ".join(f"{p} {c}" for p, c in counts.items())
        more = f" (top {len(counts)} of {unique} shown)" if unique > len(counts) else ""
        lines.append(f"  slices per patient ({unique} patients){more}: {shown}")
    return lines


def statistics_summary(stats_by_split: Mapping[str, Stats]) -> str:
    return "\n".join(line for split, stats in stats_by_split.items() for line in split_summary(split, stats))


def report_text(findings: Iterable[Finding], skews: Iterable[Skew], summary: str, anomalies_uri: str) -> str:
    findings, skews = list(findings), list(skews)
    verdict = (f"FAILED: {len(findings)} anomalies" if findings else "PASSED: no anomalies")
    lines = [f"ctseg validation gate {verdict}", *(f"  - {f}" for f in findings),
             f"anomalies artifact: {anomalies_uri}", "",
             f"train/eval skew ({SKEW_FEATURES_NOTE}):", *(f"  - [{s.split}] {s}" for s in skews or ["none computed"])]
    return "\n".join(lines + ["", summary])


def gate_message(findings: Iterable[Finding], skews: Iterable[Skew], anomalies_uri: str, statistics_uri: str) -> str:
    """The error the run stops with: each anomaly in words, then where the full artifacts are."""
    findings = list(findings)
    bad_skews = [s for s in skews if s.exceeded]
    parts = [f"validation gate stopped the run before training: {len(findings)} anomalies"
             + (f" and {len(bad_skews)} skewed features" if bad_skews else "")]
    parts += [f"- {f}" for f in findings]
    parts += [f"- skew [{s.split}] {s}" for s in bad_skews]
    parts.append(f"full anomalies artifact: {anomalies_uri}")
    parts.append(f"statistics: {statistics_uri} (summary: ctseg stats {statistics_uri}; add --out FILE.html for "
                 "TFDV's view)")
    return "\n  ".join(parts)
