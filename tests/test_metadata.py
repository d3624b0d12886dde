"""ctseg.mlmd, `ctseg runs` and `ctseg lineage` against the ML Metadata of real LocalDagRunner runs.

One module-scoped store holds four runs of a small real pipeline (ImportExampleGen, StatisticsGen,
SchemaGen, ExampleValidator, a gate, Trainer, the latest-blessed-model Resolver, an evaluator, Pusher):
a complete run, a cached rerun, a run whose model is not blessed and a run the gate stops.
"""
import json
import os
import socket
import textwrap
from pathlib import Path

import numpy as np
import pytest
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from ctseg import cli
from ctseg.errors import CtsegError
from ctseg.mlmd.failures import record_failure
from ctseg.mlmd.lineage import lineage
from ctseg.mlmd.runs import describe_run, find_run, list_runs
from ctseg.mlmd.store import connect
from ctseg.pipeline.pipeline import serving_pusher

pytestmark = pytest.mark.timeout(300)

PIPELINE = "mdtest"
PATIENT_DICE = {"3Dircadb1.1": 0.8, "3Dircadb1.2": 0.7}
HYPERPARAMETERS = {"learning_rate": 0.01, "epochs": 1}
RESOLVER = "latest_blessed_model_resolver"
GATE_ERROR = "the data failed validation: 2 anomalies in Split-train"

TRAINER_MODULE = '''
import tensorflow as tf


def run_fn(fn_args):
    module = tf.Module()
    module.learning_rate = tf.Variable(float(fn_args.custom_config["learning_rate"]))
    tf.saved_model.save(module, fn_args.serving_model_dir)
'''


@component
def Gate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies], fail: Parameter[int] = 0):
    if fail:
        raise CtsegError(GATE_ERROR)


@component
def Evaluate(model: InputArtifact[standard_artifacts.Model],
             evaluation: OutputArtifact[standard_artifacts.ModelEvaluation],
             blessing: OutputArtifact[standard_artifacts.ModelBlessing], dice_threshold: Parameter[float] = 0.5):
    """Writes what SegmentationEvaluator writes: metrics.json and the blessing's custom properties."""
    mean = float(np.mean(list(PATIENT_DICE.values())))
    blessed = mean >= dice_threshold
    reason = f"mean per-patient Dice {mean:.3f} {'>=' if blessed else '<'} threshold {dice_threshold}"
    with open(os.path.join(evaluation.uri, "metrics.json"), "w") as f:
        json.dump({"split": "eval", "mean_patient_dice": mean, "blessed": blessed, "reason": reason,
                   "patients": [{"patient_id": p, "dice": d} for p, d in PATIENT_DICE.items()]}, f)
    for artifact in (evaluation, blessing):
        artifact.set_float_custom_property("mean_patient_dice", mean)
        artifact.set_string_custom_property("reason", reason)
    blessing.set_int_custom_property("blessed", int(blessed))


def _pipeline(root: Path, *, fail: int = 0, dice_threshold: float = 0.5):
    example_gen = tfx.components.ImportExampleGen(input_base=str(root / "data"))
    statistics = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    schema = tfx.components.SchemaGen(statistics=statistics.outputs["statistics"])
    validator = tfx.components.ExampleValidator(statistics=statistics.outputs["statistics"],
                                                schema=schema.outputs["schema"])
    gate = Gate(anomalies=validator.outputs["anomalies"], fail=fail)
    trainer = tfx.components.Trainer(module_file=str(root / "module" / "trainer_module.py"),
                                     examples=example_gen.outputs["examples"], schema=schema.outputs["schema"],
                                     custom_config=HYPERPARAMETERS)
    trainer.add_upstream_node(gate)
    baseline = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id(RESOLVER)
    evaluate = Evaluate(model=trainer.outputs["model"], dice_threshold=dice_threshold)
    pusher = serving_pusher(trainer.outputs["model"], evaluate.outputs["blessing"], str(root / "serving"))
    return tfx.dsl.Pipeline(
        pipeline_name=PIPELINE, pipeline_root=str(root / "pipeline"),
        components=[example_gen, statistics, schema, validator, gate, trainer, baseline, evaluate, pusher],
        enable_cache=True,
        metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(root / "metadata.sqlite")),
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"])


def _write_examples(folder: Path) -> None:
    import tensorflow as tf

    from ctseg.features import slice_example

    folder.mkdir(parents=True)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 1
    with tf.io.TFRecordWriter(str(folder / "slices.tfrecord")) as writer:
        for patient in range(1, 4):
            for index in range(4):
                writer.write(slice_example(
                    hu=np.full((8, 8), 40.0 * index), mask=mask, patient_id=f"3Dircadb1.{patient}",
                    slice_index=index, spacing_mm=0.7, thickness_mm=2.0, source_shape=(8, 8),
                    mask_distinct_values=2, source_mask=mask).SerializeToString())




@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Runs the pipeline four times into one store; returns the root and the run ids by name."""
    root = tmp_path_factory.mktemp("mlmd")
    _write_examples(root / "data")
    (root / "module").mkdir()
    (root / "module" / "trainer_module.py").write_text(textwrap.dedent(TRAINER_MODULE))
    ids = {}
    for name, knobs in [("complete", {}), ("cached", {}), ("not_blessed", {"dice_threshold": 0.99}),
                        ("failed", {"fail": 1})]:
        try:
            tfx.orchestration.LocalDagRunner().run(_pipeline(root, **knobs))
        except CtsegError as e:
            assert name == "failed", e
            # what `ctseg run` does with the exception of a failed run
            writable = connect(str(root / "metadata.sqlite"), writable=True)
            assert record_failure(writable, "latest", str(e))
        ids[name] = list_runs(connect(str(root / "metadata.sqlite")))[0].run_id
    return root, ids


@pytest.fixture(scope="module")
def store(runs):
    return connect(str(runs[0] / "metadata.sqlite"))


@pytest.mark.slow
def test_list_runs_newest_first_with_state_dice_blessing_and_push(store, runs):
    _, ids = runs
    listed = {r.run_id: r for r in list_runs(store)}
    assert list(listed) == [ids["failed"], ids["not_blessed"], ids["cached"], ids["complete"]]
    complete, cached = listed[ids["complete"]], listed[ids["cached"]]
    not_blessed, failed = listed[ids["not_blessed"]], listed[ids["failed"]]
    assert {r.pipeline for r in listed.values()} == {PIPELINE}
    assert complete.state == "complete" and complete.executions.get("cached", 0) == 0
    assert complete.dice == pytest.approx(0.75) and complete.blessed is True
    assert complete.pushed_version and (runs[0] / "serving" / complete.pushed_version).is_dir()
    assert complete.duration_s > 0
    assert cached.state == "complete" and cached.executions == {"cached": 8, "complete": 1}  # + the resolver
    assert cached.pushed_version == complete.pushed_version and cached.blessed is True
    assert not_blessed.state == "complete" and not_blessed.blessed is False and not_blessed.pushed_version is None
    assert not_blessed.dice == pytest.approx(0.75)
    assert failed.state == "failed" and failed.executions["failed"] == 1
    assert failed.dice is None and failed.blessed is None and failed.pushed_version is None
    assert len(list_runs(store, limit=2)) == 2


def _by_node(described):
    return {e["node_id"]: e for e in described["executions"]}


def _artifacts(described, type_name):
    return [a for a in described["artifacts"] if a["type"] == type_name]


@pytest.mark.slow
def test_describe_complete_run_shows_executions_and_key_properties(store, runs):
    root, ids = runs
    d = describe_run(store, ids["complete"])
    assert d["run_id"] == ids["complete"] and d["state"] == "complete"
    nodes = [e["node_id"] for e in d["executions"]]
    assert nodes[0] == "ImportExampleGen"
    assert nodes.index("StatisticsGen") < nodes.index("Trainer") < nodes.index("Evaluate") < nodes.index("Pusher")
    assert {e["state"] for e in d["executions"]} == {"complete"}
    assert all(e["error"] is None and e["duration_s"] is not None for e in d["executions"])
    trainer = _by_node(d)["Trainer"]
    assert trainer["properties"]["custom_config"] == HYPERPARAMETERS

    [examples] = _artifacts(d, "Examples")
    assert examples["producer"] == "ImportExampleGen" and examples["properties"]["split_names"] == ["train", "eval"]
    [anomalies] = _artifacts(d, "ExampleAnomalies")
    assert anomalies["properties"]["anomalies"] == 0
    assert set(anomalies["properties"]["anomalies_per_split"]) == {"train", "eval"}
    [evaluation] = _artifacts(d, "ModelEvaluation")
    assert evaluation["properties"]["dice_per_patient"] == PATIENT_DICE
    [blessing] = _artifacts(d, "ModelBlessing")
    assert blessing["properties"]["blessed"] == 1 and "threshold 0.5" in blessing["properties"]["reason"]
    [pushed] = _artifacts(d, "PushedModel")
    destination = pushed["properties"]["pushed_destination"]
    assert destination == str(root / "serving" / d["pushed_version"]) and os.path.isdir(destination)
    assert trainer["outputs"]["model"] == [a["id"] for a in _artifacts(d, "Model")]


@pytest.mark.slow
def test_describe_cached_rerun_reuses_the_artifacts(store, runs):
    _, ids = runs
    first, cached = describe_run(store, ids["complete"]), describe_run(store, ids["cached"])
    assert {e["state"] for e in cached["executions"] if e["node_id"] != RESOLVER} == {"cached"}
    assert [e["node_id"] for e in cached["executions"]] == [e["node_id"] for e in first["executions"]]
    assert {a["id"] for a in cached["artifacts"]} == {a["id"] for a in first["artifacts"]}


@pytest.mark.slow
def test_describe_failed_run_names_the_failed_step_and_its_error(store, runs):
    _, ids = runs
    d = describe_run(store, ids["failed"])
    assert d["state"] == "failed"
    gate = _by_node(d)["Gate"]
    assert gate["state"] == "failed" and gate["error"] == GATE_ERROR
    assert "Trainer" not in _by_node(d) and not _artifacts(d, "Model")
    assert _artifacts(d, "ExampleAnomalies")[0]["id"] in gate["inputs"]["anomalies"]


@pytest.mark.slow
def test_describe_not_blessed_run_shows_the_reason_and_no_push(store, runs):
    _, ids = runs
    d = describe_run(store, ids["not_blessed"])
    nodes = _by_node(d)
    assert nodes["Trainer"]["state"] == "cached" and nodes["Evaluate"]["state"] == "complete"
    [blessing] = _artifacts(d, "ModelBlessing")
    assert blessing["properties"]["blessed"] == 0 and "< threshold 0.99" in blessing["properties"]["reason"]
    [evaluation] = _artifacts(d, "ModelEvaluation")
    assert evaluation["properties"]["blessed"] is False
    [pushed] = _artifacts(d, "PushedModel")
    assert pushed["properties"]["pushed"] == 0 and "pushed_destination" not in pushed["properties"]
    assert d["blessed"] is False and d["pushed_version"] is None


@pytest.mark.slow
def test_run_can_be_named_by_prefix_or_latest(store, runs):
    _, ids = runs
    assert find_run(store, "latest").name == ids["failed"]
    assert find_run(store, ids["complete"][:-1]).name == ids["complete"]
    with pytest.raises(CtsegError, match="no pipeline run 'nope'"):
        describe_run(store, "nope")
    with pytest.raises(CtsegError, match="matches 4 runs"):
        find_run(store, ids["complete"][:4])


@pytest.mark.slow
def test_lineage_from_pushed_model_reaches_run_hyperparameters_and_input_data(store, runs):
    root, ids = runs
    version = describe_run(store, ids["complete"])["pushed_version"]
    found = lineage(store, str(root / "serving" / version) + "/")
    assert found["pushed_model"]["properties"]["pushed_version"] == version
    assert found["pushed_model"]["pushed_by"]["run_id"] == ids["complete"]
    assert found["run_id"] == ids["complete"] and found["trainer"]["node_id"] == "Trainer"
    assert found["trainer"]["state"] == "complete"
    assert found["hyperparameters"] == HYPERPARAMETERS
    assert found["data_path"] == str(root / "data")
    [examples] = found["examples"]
    assert examples["producer"]["node_id"] == "ImportExampleGen"
    assert set(found["derived"]) == {"ExampleStatistics", "Schema", "ExampleAnomalies"}
    assert found["derived"]["ExampleStatistics"][0]["uri"].startswith(str(root / "pipeline" / "StatisticsGen"))
    by_model_id = lineage(store, str(found["model"]["id"]))
    assert by_model_id["pushed_model"] is None and by_model_id["run_id"] == ids["complete"]
    assert by_model_id["data_path"] == found["data_path"]


@pytest.mark.slow
def test_lineage_of_an_unknown_path_is_a_clear_error(store, tmp_path):
    with pytest.raises(CtsegError, match="no pushed model version or model"):
        lineage(store, str(tmp_path))
    with pytest.raises(CtsegError, match="no artifact with id 99999"):
        lineage(store, "99999")


def test_connect_errors_name_the_store(tmp_path):
    with pytest.raises(CtsegError, match="missing.sqlite"):
        connect(str(tmp_path / "missing.sqlite"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(CtsegError, match=f"127.0.0.1:{port}"):
            connect(host="127.0.0.1", port=port)


@pytest.mark.slow
def test_cli_runs_show_and_lineage(runs, capsys):
    root, ids = runs
    store_args = ["--metadata", str(root / "metadata.sqlite")]
    assert cli.main(["runs", *store_args]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["RUN", "PIPELINE", "STARTED", "STATE"]
    assert [line.split()[0] for line in table[1:]] == [ids[k] for k in ("failed", "not_blessed", "cached", "complete")]
    assert table[1].split()[4] == "failed"  # after the date and the time

    assert cli.main(["runs", *store_args, "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)][-1] == ids["complete"]

    assert cli.main(["runs", "show", "latest", *store_args]) == 0
    shown = capsys.readouterr().out
    assert "FAILED" in shown and f"error: {GATE_ERROR}" in shown

    assert cli.main(["runs", "show", ids["complete"], *store_args]) == 0
    shown = capsys.readouterr().out
    assert "Dice per patient:" in shown and "3Dircadb1.2" in shown and "pushed_destination" in shown

    version = list_runs(connect(str(root / "metadata.sqlite")))[-1].pushed_version
    assert cli.main(["lineage", str(root / "serving" / version), *store_args, "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["data_path"] == str(root / "data")
    assert cli.main(["lineage", str(root / "serving" / version), *store_args]) == 0
    text = capsys.readouterr().out
    assert f"Input data          {root / 'data'}" in text and "learning_rate = 0.01" in text
    # TFX's ImportExampleGen fingerprints its input files (io_utils.generate_fingerprint); lineage shows it.
    assert f"Input fingerprint   {found['data_fingerprint']}" in text and found["data_fingerprint"].startswith("split:")

    assert cli.main(["runs", "show", "nope", *store_args]) == 2
    assert "no pipeline run 'nope'" in capsys.readouterr().err
