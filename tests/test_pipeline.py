"""The whole pipeline, as `ctseg run` builds it, in real LocalDagRunner runs (ML Metadata in SQLite).

One module-scoped work dir holds four runs: a first run that trains, blesses and pushes; a rerun
with nothing changed (cached); a rerun whose threshold is out of reach (not blessed, not pushed);
and `ctseg run` itself on the same store. The pushed model then segments an eval patient.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ctseg import ircad
from ctseg.cli import main as cli_main
from ctseg.dicom import mask_from_dataset, read_dataset
from ctseg.mlmd.lineage import lineage
from ctseg.mlmd.runs import describe_run
from ctseg.mlmd.store import connect
from ctseg.phantom import write_phantom
from ctseg.pipeline.local_runner import run_local

PATIENTS, SLICES, SOURCE_SIZE, IMAGE_SIZE = 10, 20, 128, 128
# Every slice kept (no empty-slice dropping): on this small phantom it halves the model's over-segmentation.
# One pass an epoch (no min_epoch_steps): the pipeline is under test here, not the recipe's schedule. 20 epochs,
# not 40: 95% of the suite's slowest fixture was the Trainer; on 2026-12-05 the eval patients' volume errors were
# 7.5% and 2.6% after 20 epochs, 10.0% and 2.4% after 40 (val Dice 0.916 and 0.933). The blog post's network without
# normalisation: the default's instance-normalised one needs more than these 200 steps (16% and 10% over the volume
# here; within 1-5% after the recipe's 800 steps, docs/BENCHMARKS.md, run R), and its export is tested in test_trainer.
KNOBS = dict(image_size=IMAGE_SIZE, dice_threshold=0.6,
             custom_config={"epochs": 20, "keep_empty_probability": 1.0, "min_epoch_steps": 0, "normalization": "none"})


pytestmark = pytest.mark.slow  # every test here runs a TFX pipeline


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_phantom(tmp_path_factory.mktemp("pipeline") / "ircad", patients=PATIENTS, slices=SLICES,
                         size=SOURCE_SIZE, seed=11)


@pytest.fixture(scope="module")
def workdir(data_root, tmp_path_factory):
    """Runs the three pipeline runs once; returns the work dir and each run's description."""
    work = tmp_path_factory.mktemp("work")
    runs = {}
    for name, extra in (("first", {}), ("cached", {}), ("strict", {"dice_threshold": 0.999})):
        paths = run_local(data_root=str(data_root), workdir=work, **{**KNOBS, **extra})
        store = connect(sqlite_path=str(paths.metadata_path))
        runs[name] = describe_run(store, "latest")
        served = paths.serving_dir
        runs[name]["versions"] = sorted(p.name for p in served.iterdir()) if served.exists() else []
    return work, runs


def _states(run: dict) -> dict[str, str]:
    return {e["node_id"]: e["state"] for e in run["executions"]}


def _artifact(run: dict, type_name: str) -> dict:
    (found,) = [a for a in run["artifacts"] if a["type"] == type_name and a["producer"]]
    return found


def test_first_run_trains_blesses_and_pushes(workdir):
    work, runs = workdir
    run = runs["first"]
    assert run["state"] == "complete"
    assert set(_states(run).values()) == {"complete"}
    assert {"IrcadExampleGen", "StatisticsGen", "ExampleValidator", "ValidationGate", "Trainer",
            "SegmentationEvaluator", "Pusher"} <= set(_states(run))
    examples = _artifact(run, "Examples")["properties"]
    assert examples["patients"] == PATIENTS and examples["quarantined"] == 0
    assert examples["slices_train"] > 0 and examples["slices_eval"] > 0
    evaluation = _artifact(run, "ModelEvaluation")["properties"]
    assert evaluation["mean_patient_dice"] >= KNOBS["dice_threshold"]
    assert run["blessed"] is True
    assert len(runs["first"]["versions"]) == 1
    version_dir = work / "serving" / run["pushed_version"]
    assert (version_dir / "saved_model.pb").exists()


def test_rerun_with_nothing_changed_reuses_cached_steps(workdir):
    _, runs = workdir
    states = _states(runs["cached"])
    for node in ("IrcadExampleGen", "StatisticsGen", "ExampleValidator", "ValidationGate", "Trainer",
                 "SegmentationEvaluator", "Pusher"):
        assert states[node] == "cached", (node, states)
    assert runs["cached"]["state"] == "complete"
    # the evaluation and the push are the first run's: no second copy of the model is pushed
    assert runs["cached"]["versions"] == runs["first"]["versions"]


def test_out_of_reach_threshold_is_not_blessed_and_pushes_nothing(workdir):
    _, runs = workdir
    run = runs["strict"]
    assert run["state"] == "complete"          # not blessed is an answer, not a failure
    assert _states(run)["Trainer"] == "cached"
    assert run["blessed"] is False and run["pushed_version"] is None
    assert "below the threshold" in _artifact(run, "ModelEvaluation")["properties"]["reason"]
    assert runs["strict"]["versions"] == runs["cached"]["versions"]


def test_ctseg_run_prints_an_actionable_summary(workdir, data_root, capsys):
    work, _ = workdir
    code = cli_main(["run", "--data", str(data_root), "--workdir", str(work), "--image-size", str(IMAGE_SIZE),
                     "--dice-threshold", "0.999", "--epochs", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    for expected in ("steps:", "IrcadExampleGen", f"data: {PATIENTS} patients", "validation: 0 anomalies",
                     "Model not blessed", "picture (best, median, worst patient)", "not pushed",
                     "TensorBoard: tensorboard --logdir", "metadata:"):
        assert expected in out, (expected, out)


def test_lineage_of_the_pushed_model_reaches_the_input_data(workdir, data_root):
    work, runs = workdir
    store = connect(sqlite_path=str(work / "metadata.sqlite"))
    found = lineage(store, str(work / "serving" / runs["first"]["pushed_version"]))
    assert str(data_root) in json.dumps(found)
    assert runs["first"]["run_id"] in json.dumps(found)
    assert found["data_fingerprint"] == ircad.data_fingerprint(str(data_root))  # what ingest read, in MLMD


def test_pushed_model_carries_its_training_profile_and_lineage_says_where_it_came_from(workdir, capsys):
    from ctseg import profile

    work, runs = workdir
    pushed = work / "serving" / runs["first"]["pushed_version"]
    carried = profile.read_profile(pushed / profile.PROFILE_DIR)
    assert carried is not None and len(carried.patients) >= 1 and carried.eval_predictions
    assert carried.statistics.datasets[0].num_examples == sum(p["slices"] for p in carried.patients)
    found = lineage(connect(sqlite_path=str(work / "metadata.sqlite")), str(pushed))["training_profile"]
    assert found["in_model"] and found["computed_by"]["node_id"] == "Trainer"
    recorded = found["recorded_by"][0]  # the strict rerun evaluates the same (cached) model again
    assert profile.read_profile(recorded["uri"]).patients == carried.patients
    assert cli_main(["lineage", str(pushed), "--metadata", str(work / "metadata.sqlite")]) == 0
    assert "recorded by the evaluation: ModelBlessing" in capsys.readouterr().out


def test_pushed_model_segments_eval_patients_to_their_volume(workdir, data_root, tmp_path):
    """`ctseg predict` with the pushed model on the eval patients (never trained on): within 10% of the true
    volume on average and every one within 15% (the model over-segments by about a pixel around the outline).
    The average, not the patient with the best Dice: which patient that is flips between phantoms whose
    volume errors all fall (13.8% and 4.2% before the phantom's segment IV, 11.7% and 2.5% with it)."""
    from ctseg.predict import load_series, predict, volume_ml

    work, runs = workdir
    evaluation = json.loads((Path(_artifact(runs["first"], "ModelEvaluation")["uri"]) / "metrics.json").read_text())
    errors = {}
    for patient in (p["patient_id"] for p in evaluation["patients"]):
        summary = predict(data_root / patient, work / "serving", tmp_path / patient)
        assert summary["model_version"] == runs["first"]["pushed_version"]
        truth = np.stack([mask_from_dataset(read_dataset(f))
                          for f in (data_root / patient / "MASKS_DICOM" / "liver").iterdir()])
        true_ml = volume_ml(truth, load_series(data_root / patient))
        errors[patient] = abs(summary["volume_ml"] - true_ml) / true_ml
    assert np.mean(list(errors.values())) < 0.10, errors
    assert max(errors.values()) < 0.15, errors


def test_predict_masks_are_the_masks_the_evaluator_scored(workdir, data_root):
    """The evaluator's source-resolution Dice is the Dice of what `ctseg predict` gives users: the same
    resize back, threshold and 3D clean-up. (Inputs differ by rounding only: the evaluator reads ingest's
    int16 HU at model size, predict resizes the DICOM's HU itself.)"""
    from ctseg.components.evaluation import metrics as M
    from ctseg.predict import load_series, mask_names, predict_series
    from ctseg.serving import load_model

    work, runs = workdir
    evaluation = json.loads((Path(_artifact(runs["first"], "ModelEvaluation")["uri"]) / "metrics.json").read_text())
    model = load_model(work / "serving")
    for row in evaluation["patients"]:
        series = load_series(data_root / row["patient_id"])
        prediction = predict_series(series, model)
        masks = data_root / row["patient_id"] / "MASKS_DICOM" / "liver"
        truth = np.stack([mask_from_dataset(read_dataset(masks / name)) for name in mask_names(series)])
        assert prediction.cleanup == evaluation["cleanup"] == "parenchyma_hu,largest_component,foreign_ends,fill_holes"
        assert M.dice(prediction.mask, truth) == pytest.approx(row["source_dice"], abs=0.01), row
