"""The validation stage in real LocalDagRunner runs on phantoms: clean data passes, corrupted data stops at the gate.

Each run is IrcadExampleGen -> StatisticsGen/SchemaGen/ImportSchemaGen/ExampleValidator -> ValidationGate ->
a stand-in for the Trainer that depends on the gate through `add_upstream_node` and only writes a
marker file; when the gate fails, the marker must not exist.
"""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from tfx.dsl.component.experimental.annotations import OutputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types.standard_artifacts import Model

from ctseg.components.ingest.component import IrcadExampleGen
from ctseg.components.validation import validation_stage
from ctseg.components.validation.executor import REPORT_FILE, SKEW_FILE
from ctseg.errors import CtsegError
from ctseg.phantom import write_phantom

SIZE, PATIENTS, SLICES, SEED = 64, 3, 12, 1  # the session fixture small_phantom (tests/conftest.py)
BAD_PATIENT = "3Dircadb1.2"


# --- phantoms corrupted on disk ------------------------------------------------------------------

def _rewrite(files, change):
    for path in files:
        ds = pydicom.dcmread(path, force=True)
        change(ds)
        ds.save_as(path, write_like_original=False)


def masks_with_three_labels(root: Path) -> None:
    """One patient's liver masks store 0/1/7 (a second label merged in) instead of 0/255."""
    def relabel(ds):
        stored = ds.pixel_array.copy()
        stored[stored != 0] = 1
        stored[:4, :4] = 7
        ds.PixelData = stored.astype(np.uint8).tobytes()
    _rewrite(sorted((root / BAD_PATIENT / "MASKS_DICOM" / "liver").iterdir()), relabel)


def ct_without_intercept(root: Path) -> None:
    """One patient's CT lost RescaleIntercept: its stored values (HU + 1024) are read as HU."""
    def drop(ds):
        del ds.RescaleIntercept
    _rewrite(sorted((root / BAD_PATIENT / "PATIENT_DICOM").iterdir()), drop)


def patient_at_other_size(root: Path) -> None:
    """One patient written at 96 px while the others are 64 px (inside the schema's source size range)."""
    other = write_phantom(root.parent / "other_size", patients=PATIENTS, slices=SLICES, size=96, seed=SEED)
    shutil.rmtree(root / BAD_PATIENT)
    shutil.copytree(other / BAD_PATIENT, root / BAD_PATIENT)


@component
def TrainerStandIn(model: OutputArtifact[Model]):
    """A cheap component in the Trainer's place: it leaves a marker file when it runs."""
    Path(model.uri).mkdir(parents=True, exist_ok=True)
    (Path(model.uri) / "trained").write_text("ran")


def run_validation(phantom: Path, tmp: Path, corrupt=None) -> dict:
    """Runs the stage on a copy of `phantom` (optionally corrupted); returns the outcome and where things are."""
    from tfx.orchestration import metadata, pipeline
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    root = Path(shutil.copytree(phantom, tmp / "ircad"))
    if corrupt:
        corrupt(root)
    example_gen = IrcadExampleGen(data_root=str(root), organ="liver", image_size=SIZE,
                                  split_ratios={"train": 0.75, "eval": 0.25}, max_bad_fraction=0.0)
    stage = validation_stage(example_gen.outputs["examples"])
    trainer = TrainerStandIn()
    trainer.add_upstream_node(stage.gate)
    pipeline_root = tmp / "pipeline_root"
    p = pipeline.Pipeline(
        pipeline_name="validation_test", pipeline_root=str(pipeline_root),
        components=[example_gen, *stage, trainer],
        metadata_connection_config=metadata.sqlite_metadata_connection_config(str(tmp / "metadata.db")),
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])
    error = None
    try:
        LocalDagRunner().run(p)
    except Exception as e:  # the gate's CtsegError, possibly wrapped by the runner
        error = e
    return {"error": error, "root": pipeline_root,
            "trained": list(pipeline_root.glob("TrainerStandIn/model/*/trained")),
            "reports": list(pipeline_root.glob(f"ValidationGate/report/*/{REPORT_FILE}"))}


def gate_error(outcome) -> CtsegError:
    """The gate's error, found through the exception chain whatever the runner wraps it in."""
    err = outcome["error"]
    while err is not None and not isinstance(err, CtsegError):
        err = err.__cause__ or err.__context__
    assert err is not None, f"expected the gate to stop the run, got {outcome['error']!r}"
    return err


pytestmark = pytest.mark.slow  # every test here runs a TFX pipeline


@pytest.fixture(scope="module")
def clean_run(small_phantom, tmp_path_factory):
    return run_validation(small_phantom, tmp_path_factory.mktemp("clean"))


@pytest.fixture(scope="module", params=[masks_with_three_labels, ct_without_intercept, patient_at_other_size],
                ids=["masks-0-1-7", "no-intercept", "other-size"])
def corrupted_run(request, small_phantom, tmp_path_factory):
    return request.param.__name__, run_validation(small_phantom, tmp_path_factory.mktemp(request.param.__name__),
                                                  request.param)


def test_clean_phantom_passes_the_gate_and_trains(clean_run):
    assert clean_run["error"] is None, clean_run["error"]
    assert len(clean_run["trained"]) == 1
    report = clean_run["reports"][0].read_text()
    assert report.startswith("ctseg validation gate PASSED")
    assert "liver_fraction: divergence" in report and "split train:" in report and "split eval:" in report
    skew = json.loads((clean_run["reports"][0].parent / SKEW_FILE).read_text())["skew"]
    assert {s["feature"] for s in skew} == {"liver_fraction", "hu_mean", "hu_std"}
    assert all(0.0 <= s["divergence"] <= 1.0 for s in skew)


def test_clean_run_keeps_the_inferred_schema_for_reference(clean_run):
    inferred = list(clean_run["root"].glob("SchemaGen/schema/*/schema.pbtxt"))
    assert inferred and 'name: "liver_fraction"' in inferred[0].read_text()


EXPECTED_WORDS = {
    "masks_with_three_labels": ("mask_distinct_values", "values in [1, 2]", "max 3"),
    # the phantom's air noise reaches the -1024 HU floor, stored as 0: read without the intercept, hu_min is 0
    "ct_without_intercept": ("hu_min", "values in [-3100, -500]", "RescaleIntercept is missing", "max 0"),
    "patient_at_other_size": ("source_rows", "one value for every slice", "values from 64 to 96"),
}


def test_corrupted_phantom_is_stopped_at_the_gate(corrupted_run):
    name, outcome = corrupted_run
    message = str(gate_error(outcome))
    assert outcome["trained"] == [], "the Trainer ran although the gate failed"
    assert f"in patient {BAD_PATIENT}" in message
    for words in EXPECTED_WORDS[name]:
        assert words in message, f"{words!r} missing from the gate's message:\n{message}"
    anomalies_uri = message.split("full anomalies artifact: ")[1].split()[0]
    assert os.path.isdir(anomalies_uri) and "ExampleValidator" in anomalies_uri


def test_corrupted_run_names_only_real_problems(corrupted_run):
    """Each finding concerns the corrupted property; the untouched features raise nothing."""
    name, outcome = corrupted_run
    findings = [line.strip() for line in str(gate_error(outcome)).splitlines() if line.strip().startswith("- [")]
    flagged = {line.split("] ", 1)[1].split(":", 1)[0] for line in findings}
    allowed = {"masks_with_three_labels": {"mask_distinct_values"},
               "ct_without_intercept": {"hu_min", "hu_mean", "hu_max"},
               "patient_at_other_size": {"source_rows", "source_columns"}}[name]
    assert flagged and flagged <= allowed, findings
    assert outcome["reports"] == []  # the gate published no report, so nothing downstream can consume one


def test_ctseg_stats_summarises_the_newest_statistics_and_writes_tfdv_html(clean_run, tmp_path, capsys):
    from ctseg.cli import main

    html = tmp_path / "stats.html"
    assert main(["stats", str(clean_run["root"]), "--html", str(html)]) == 0
    out = capsys.readouterr().out
    artifact = Path(out.splitlines()[0].split("statistics: ")[1])
    assert artifact.parent == clean_run["root"] / "StatisticsGen" / "statistics"
    counts = {line.split()[1].rstrip(":"): int(line.split()[2])
              for line in out.splitlines() if line.startswith("split ")}
    assert set(counts) == {"train", "eval"} and sum(counts.values()) >= PATIENTS * 8
    assert "liver fraction:" in out and "slices per patient (" in out and "hu_mean" in out
    page = html.read_text()
    assert "facets-overview" in page and "proto-input=" in page


@pytest.mark.parametrize("path", ["missing", "empty"])
def test_ctseg_stats_says_what_is_wrong_with_the_path(path, tmp_path, capsys):
    from ctseg.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["stats", str(tmp_path / path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / path) in err


def _artifact(artifact_type, uri: Path, splits=None):
    from tfx.types import artifact_utils

    artifact = artifact_type()
    artifact.uri = str(uri)
    if splits:
        artifact.split_names = artifact_utils.encode_split_names(splits)
    return artifact


def test_skew_fails_the_gate_only_when_asked(clean_run, tmp_path):
    """The gate's executor on the clean run's artifacts: skew above a zero threshold is fatal only with fail_on_skew."""
    from tfx.types import standard_artifacts

    from ctseg.components.validation.component import ValidationReport
    from ctseg.components.validation.executor import Executor

    root = clean_run["root"]
    inputs = {
        "statistics": [_artifact(standard_artifacts.ExampleStatistics, next(root.glob("StatisticsGen/statistics/*")),
                                 ["train", "eval"])],
        "anomalies": [_artifact(standard_artifacts.ExampleAnomalies, next(root.glob("ExampleValidator/anomalies/*")),
                                ["train", "eval"])],
        "schema": [_artifact(standard_artifacts.Schema, next(root.glob("ImportSchemaGen/schema/*")))]}
    for fail_on_skew in (False, True):
        out = tmp_path / f"report_{fail_on_skew}"
        out.mkdir()
        outputs = {"report": [_artifact(ValidationReport, out)]}
        props = {"skew_threshold": 0.0, "fail_on_skew": fail_on_skew}
        if not fail_on_skew:
            Executor().Do(inputs, outputs, props)
            assert "SKEWED, above 0" in (out / REPORT_FILE).read_text()
            continue
        with pytest.raises(CtsegError, match=r"0 anomalies and \d skewed features"):
            Executor().Do(inputs, outputs, props)
