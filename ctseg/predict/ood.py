"""Is this series like what the model was trained on? Findings in words a radiologist reads.

Before the model runs (`check_input`), the series' slices become the per-slice features ingest
writes (`ctseg.features`: field of view, slice thickness, HU min/max/mean/std at the trained size);
TFDV computes their statistics and `tfdv.validate_statistics` compares them with the training
statistics the model carries (`ctseg.profile`), with the comparators and ranges of
`schemas/in_distribution.pbtxt` (Jensen-Shannon drift on the HU features, the curated schema's HU
ranges, the training range of field of view and thickness). After it runs (`check_prediction`), the
predicted organ volume, fraction of slices with organ and 3D components before the clean-up are
compared with the profile's patients. Each finding is one `Finding`; none means in distribution.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np

from ctseg import features
from ctseg.profile import HU_SAMPLE_KEY, SERIES_FEATURES, Profile, field_of_view_mm, hu_sample

MARGIN_TAG = "training_range_margin="
# The training range divided by 1 + Z and by 1 - Z: what the model saw of a feature its zoom augmentation (UnetConfig's
# max_scale) rescales, such as the field of view.
ZOOM_TAG = "training_range_zoom="
# "above" or "below": only values on that side of the range are findings.
SIDE_TAG = "one_sided="
# The upper bound is at least this value, measured on real CT, where the phantom's range is narrower than real data's.
UP_TO_TAG = "allowed_up_to="
SCHEMA_RANGE_TAG = "schema_range"
# What each feature is, for a person reading the finding.
WORDS = {
    "thickness_mm": "slice thickness", "field_of_view_mm": "field of view", "hu_min": "darkest pixel per slice",
    "hu_max": "brightest pixel per slice", "hu_mean": "mean HU per slice", "hu_std": "HU spread per slice",
    HU_SAMPLE_KEY: "HU",
    "volume_ml": "predicted volume", "organ_slice_fraction": "slices with organ",
    "components_before_cleanup": "separate pieces before the clean-up",
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One way the series or its prediction differs from the training data."""
    stage: str                      # "input" (before the model ran) or "prediction"
    feature: str
    value: float
    message: str                    # the line the user reads
    training_range: Optional[tuple[float, float]] = None
    allowed_range: Optional[tuple[float, float]] = None
    distance: Optional[float] = None  # Jensen-Shannon divergence for a drift finding
    threshold: Optional[float] = None

    def to_json(self) -> dict:
        """JSON values, an open side of a range (one-sided features) as null: JSON has no infinity."""
        def plain(v):
            return [round(float(x), 4) if np.isfinite(x) else None for x in v] if isinstance(v, tuple) else v
        return {k: plain(v) for k, v in dataclasses.asdict(self).items()}


def curated_schema():
    """schemas/in_distribution.pbtxt as a TFDV Schema."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from ctseg.schemas import IN_DISTRIBUTION_FILE

    with open(IN_DISTRIBUTION_FILE) as f:
        return text_format.Parse(f.read(), schema_pb2.Schema())


def _schema_features(schema) -> dict:
    return {f.name: f for f in schema.feature}


def _tag(feature, prefix: str) -> Optional[str]:
    tags = [t for t in feature.annotation.tag if t.startswith(prefix)]
    return tags[0][len(prefix):] if tags else None


def margin(feature) -> Optional[float]:
    value = _tag(feature, MARGIN_TAG)
    return float(value) if value is not None else None


def allowed_range(feature, lo: float, hi: float) -> Optional[tuple[float, float]]:
    """The range a curated feature allows around the training range [lo, hi]: divided by the zoom, widened by the
    margin, raised to the allowed upper bound, open on one side; None for a feature without a training range."""
    zoom, fraction = _tag(feature, ZOOM_TAG), margin(feature)
    if zoom is None and fraction is None:
        return None
    if zoom is not None:
        lo, hi = lo / (1 + float(zoom)), hi / (1 - float(zoom))
    if fraction is not None:
        lo, hi = widened(lo, hi, fraction)
    up_to = _tag(feature, UP_TO_TAG)
    if up_to is not None:
        hi = max(hi, float(up_to))
    side = _tag(feature, SIDE_TAG)
    if side == "above":
        lo = min(lo, 0.0)   # every feature with a side is a count, a fraction or a length
    elif side == "below":
        hi = float("inf")
    return lo, hi


def hint(feature) -> str:
    return feature.annotation.comment[0] if feature.annotation.comment else ""


def widened(lo: float, hi: float, fraction: float) -> tuple[float, float]:
    """`fraction` of the range's width (at least of its midpoint, for a range of one value) on each side."""
    width = (hi - lo) or abs(hi + lo) / 2
    return lo - fraction * width, hi + fraction * width


def training_range(statistics, name: str) -> Optional[tuple[float, float]]:
    """min and max of a numeric feature in TFDV statistics."""
    for dataset in statistics.datasets:
        for f in dataset.features:
            if f.path.step and f.path.step[-1] == name and f.HasField("num_stats"):
                return float(f.num_stats.min), float(f.num_stats.max)
    return None


def check_schema(profile: Profile):
    """The schema a series is validated with: the curated comparators, the curated schema's HU ranges,
    and field of view and thickness within the range the curated schema allows around the training range."""
    from google.protobuf import text_format
    from tensorflow_metadata.proto.v0 import schema_pb2

    from ctseg.schemas import SCHEMA_FILE

    with open(SCHEMA_FILE) as f:
        slice_schema = _schema_features(text_format.Parse(f.read(), schema_pb2.Schema()))
    schema = schema_pb2.Schema()
    for curated in curated_schema().feature:
        if curated.name not in (*SERIES_FEATURES, HU_SAMPLE_KEY):
            continue
        feature = schema.feature.add()
        feature.CopyFrom(curated)
        feature.ClearField("annotation")
        if SCHEMA_RANGE_TAG in curated.annotation.tag:
            feature.float_domain.CopyFrom(slice_schema[curated.name].float_domain)
        trained = training_range(profile.statistics, curated.name)
        allowed = allowed_range(curated, *trained) if trained is not None else None
        if allowed is not None:
            feature.float_domain.min, feature.float_domain.max = allowed
    return schema


def series_feature_rows(headers: Sequence, hu_at_model_size: np.ndarray) -> list[dict]:
    """The per-slice features ingest writes for a series (headers in position order, HU resized to the
    model's size as ingest resizes them), as rows of SERIES_FEATURES."""
    from ctseg.dicom import spacing_mm, thickness_mm

    rows = []
    for header, hu in zip(headers, hu_at_model_size):
        hu = np.clip(np.rint(hu), -32768, 32767)
        rows.append({features.FIELD_OF_VIEW_KEY: field_of_view_mm(spacing_mm(header)[1], header.Columns),
                     features.THICKNESS_KEY: thickness_mm(header),
                     **features.hu_statistics(hu), HU_SAMPLE_KEY: hu_sample(hu)})
    return rows


def _number(value: float, unit: str = "", decimals: int | None = None) -> str:
    """1,102 (from 100 up), 67.6 (from 10), 0.63 (below 10), or with fixed `decimals`."""
    if decimals is None:
        decimals = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:,.{decimals}f}{unit}"


def _span(lo: float, hi: float, unit: str, decimals: int | None = None) -> str:
    low, high = _number(lo, decimals=decimals), _number(hi, decimals=decimals)
    return f"{low}{unit}" if low == high else f"{low} to {high}{unit}" if lo < 0 else f"{low}-{high}{unit}"


def _range_finding(name: str, values: np.ndarray, trained, allowed, curated, from_schema: bool) -> Optional[Finding]:
    """None when no value is outside in float64 (TFDV compares float32 statistics)."""
    lo_ok, hi_ok = allowed
    outside = values[(values < lo_ok) | (values > hi_ok)]
    if not len(outside):
        return None
    worst = float(outside.max() if outside.max() > hi_ok else outside.min())
    if name == features.THICKNESS_KEY:
        message = f"slices are {_span(values.min(), values.max(), ' mm', 1)} thick; " \
                  f"the model was trained on {_span(*trained, ' mm', 1)}"
    elif name == features.FIELD_OF_VIEW_KEY:
        message = f"the field of view is {_span(values.min(), values.max(), ' mm', 0)} wide; the model was " \
                  f"trained on {_span(*trained, ' mm', 0)}, seen as {_span(lo_ok, hi_ok, ' mm', 0)} through its zoom " \
                  "augmentation"
    else:
        expected = _span(lo_ok, hi_ok, " HU", 0) if from_schema else f"{_span(*trained, ' HU', 0)} in training"
        message = f"{WORDS.get(name, name)} {_number(worst, ' HU', 0)} on {len(outside)} of {len(values)} slices " \
                  f"(expected {expected})"
    if hint(curated) and name != features.THICKNESS_KEY:
        message += f": {hint(curated)}"
    return Finding("input", name, worst, message, trained, (lo_ok, hi_ok))


def validate(rows: list[dict], profile: Profile):
    """(the check schema, TFDV's Anomalies) of the series' per-slice rows against the training statistics;
    the Anomalies' drift_skew_info holds every feature's Jensen-Shannon divergence, over its threshold or not."""
    import tensorflow_data_validation as tfdv

    from ctseg.profile import feature_statistics

    schema = check_schema(profile)
    return schema, tfdv.validate_statistics(feature_statistics(rows), schema, previous_statistics=profile.statistics)


def input_findings(rows: list[dict], profile: Profile) -> list[Finding]:
    """The series' per-slice feature rows against the training statistics, through tfdv.validate_statistics."""
    from tensorflow_metadata.proto.v0 import anomalies_pb2

    schema, anomalies = validate(rows, profile)
    curated, checked = _schema_features(curated_schema()), _schema_features(schema)
    out_of_range = {anomalies_pb2.AnomalyInfo.FLOAT_TYPE_BIG_FLOAT, anomalies_pb2.AnomalyInfo.FLOAT_TYPE_SMALL_FLOAT}
    findings = []
    for name in SERIES_FEATURES:
        reasons = {r.type for r in anomalies.anomaly_info[name].reason} if name in anomalies.anomaly_info else set()
        if reasons & out_of_range and checked[name].HasField("float_domain"):
            domain = checked[name].float_domain
            values = np.asarray([r[name] for r in rows], np.float64)
            trained = training_range(profile.statistics, name)
            from_schema = margin(curated[name]) is None
            found = _range_finding(name, values, trained, (domain.min, domain.max), curated[name], from_schema)
            findings += [found] if found else []
    for info in anomalies.drift_skew_info:
        name = info.path.step[-1]
        for m in info.drift_measurements:
            if m.value > m.threshold:
                findings.append(Finding(
                    "input", name, round(m.value, 3),
                    f"{WORDS.get(name, name)} histogram unlike the training data (Jensen-Shannon {m.value:.2f}, "
                    f"threshold {m.threshold:.2f}): {hint(curated[name])}",
                    training_range(profile.statistics, name), None, round(m.value, 3), m.threshold))
    return findings


def check_input(headers: Sequence, hu_at_model_size: np.ndarray, profile: Profile) -> list[Finding]:
    return input_findings(series_feature_rows(headers, hu_at_model_size), profile)


def _patient_finding(name: str, value: float, rows: list[dict], curated, what: str, unit: str, whose: str,
                     scale: float = 1.0, step: float = 0.0) -> Optional[Finding]:
    """A finding when `value` lies outside the range the curated feature allows around the training range
    (`allowed_range`), widened by `step`, the smallest change the value can show (a fraction of a series' slices
    moves in steps of one slice)."""
    values = [r[name] for r in rows if r.get(name) is not None]
    if not values:
        return None
    lo, hi = min(values), max(values)
    allowed = allowed_range(curated, lo, hi)
    if allowed is None:
        return None
    allowed = (allowed[0] - step, allowed[1] + step)
    if allowed[0] <= value <= allowed[1]:
        return None
    above = value > allowed[1]

    def shown(v):
        return _number(v * scale, unit, 0 if abs(v * scale) >= 100 else 1)

    message = (f"{what} {shown(value)}: {'above' if above else 'below'} every {whose} "
               f"({'largest' if above else 'smallest'} {shown(hi if above else lo)}): {hint(curated)}")
    return Finding("prediction", name, round(value, 3), message, (lo, hi), allowed)


def check_prediction(volume_ml: float, organ_slice_fraction: float, components_before_cleanup: Optional[int],
                     profile: Profile, slices: int = 0) -> list[Finding]:
    """The prediction against the profile's training patients (volume, slices with organ) and the
    model's predictions on its eval patients (components before the clean-up). A series of `slices`
    slices can differ from the training range by one slice without a finding: on a short series that
    is a change of several percent that no prediction could avoid."""
    curated = _schema_features(curated_schema())
    organ = profile.organ
    found = [
        _patient_finding("volume_ml", volume_ml, profile.patients, curated["volume_ml"], f"predicted {organ}", " ml",
                         "training patient"),
        _patient_finding("organ_slice_fraction", organ_slice_fraction, profile.patients,
                         curated["organ_slice_fraction"], f"{organ} on", "% of slices", "training patient",
                         scale=100.0, step=1.0 / slices if slices else 0.0),
    ]
    if components_before_cleanup is not None:
        found.append(_patient_finding("components_before_cleanup", float(components_before_cleanup),
                                      profile.eval_predictions, curated["components_before_cleanup"],
                                      f"{organ} predicted in", " separate pieces",
                                      "eval patient of the model"))
    return [f for f in found if f is not None]


def refusal(findings: Sequence[Finding], stage: str) -> str:
    what = "the series is" if stage == "input" else "the prediction is"
    lines = "; ".join(f.message for f in findings)
    written = "nothing was written" if stage == "input" else "nothing was written (the model ran)"
    return f"--require-in-distribution: {what} unlike the model's training data: {lines}; {written}"


@dataclasses.dataclass
class Check:
    """The out-of-distribution check of one predict run: `before_model` on the series' HU at the model's
    size, `after_model` on the prediction (recording the findings on it). With `require`, a finding is a
    CtsegError: before the model runs for the input, before anything is written for the prediction."""
    profile: Profile
    require: bool = False
    findings: list = dataclasses.field(default_factory=list)

    def before_model(self, headers: Sequence):
        def check(hu_at_model_size: np.ndarray) -> None:
            found = check_input(headers, hu_at_model_size, self.profile)
            self.findings.extend(found)
            if self.require and found:
                from ctseg.errors import CtsegError
                raise CtsegError(refusal(found, "input"))
        return check

    def after_model(self, prediction) -> list[Finding]:
        from ctseg.predict.series import volume_ml

        slices = max(len(prediction.mask), 1)
        found = check_prediction(volume_ml(prediction.mask, prediction.series), prediction.slices_with_liver / slices,
                                 prediction.components_before_cleanup, self.profile, slices)
        self.findings.extend(found)
        prediction.out_of_distribution = [f.to_json() for f in self.findings]
        if self.require and found:
            from ctseg.errors import CtsegError
            raise CtsegError(refusal(found, "prediction"))
        return self.findings


def content_description(findings: Sequence[dict], limit: int = 64) -> str:
    """The SEG's ContentDescription (LO, 64 characters): how many findings and on what."""
    names = ", ".join(dict.fromkeys(WORDS.get(f["feature"], f["feature"]) for f in findings))
    text = f"OUT OF DISTRIBUTION ({len(findings)}): {names}"
    return text if len(text) <= limit else text[:limit - 3] + "..."
