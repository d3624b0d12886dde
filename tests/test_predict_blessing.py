"""`ctseg predict` says whether its model was blessed: a Trainer output that the evaluation did
not bless gets a warning and `"blessed": false` in summary.json, `--require-blessed` refuses it, a
model whose blessing cannot be found gets `null` and a warning, a pushed version `true`.

The store is real: two LocalDagRunner runs (ML Metadata in SQLite) of a Trainer whose model is the
Trainer's own UNET exported by `ctseg.serving.export_model` (tests/tiny_unet.py), an evaluation step
that writes its ModelBlessing with the project's `write_blessing` (as SegmentationEvaluator does), and
TFX's own Pusher: the first run blesses and pushes, the second does not bless.
"""
import json
import shutil
from pathlib import Path

import pytest
from tfx import v1 as tfx
from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from ctseg.cli import main as cli_main
from ctseg.pipeline.pipeline import serving_pusher

pytestmark = pytest.mark.timeout(600)


@component
def Train(model: OutputArtifact[standard_artifacts.Model], seed: Parameter[int] = 0):
    from tiny_unet import export_tiny_unet

    export_tiny_unet(Path(model.uri) / "Format-Serving", seed=seed)


@component
def Evaluate(model: InputArtifact[standard_artifacts.Model], blessing: OutputArtifact[standard_artifacts.ModelBlessing],
             bless: Parameter[int] = 1):
    from ctseg.components.evaluation.executor import write_blessing

    blessing.set_string_custom_property("reason", "blessed: test verdict" if bless else "not blessed: test verdict")
    write_blessing(blessing, model, None, bool(bless), {})


def _pipeline(work: Path, seed: int, bless: int):
    train = Train(seed=seed).with_id("Trainer")
    evaluate = Evaluate(model=train.outputs["model"], bless=bless)
    pusher = serving_pusher(train.outputs["model"], evaluate.outputs["blessing"], str(work / "serving"))
    return tfx.dsl.Pipeline(
        pipeline_name="blessing", pipeline_root=str(work / "pipeline"), components=[train, evaluate, pusher],
        enable_cache=False, metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
            str(work / "metadata.sqlite")))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> dict:
    """{work, blessed: Trainer export of run 1, unblessed: that of run 2, serving}."""
    work = tmp_path_factory.mktemp("blessing") / "work"
    for seed, bless in ((1, 1), (2, 0)):
        tfx.orchestration.LocalDagRunner().run(_pipeline(work, seed, bless))
    exports = sorted((work / "pipeline" / "Trainer" / "model").iterdir(), key=lambda p: int(p.name))
    assert len(exports) == 2
    assert len(list((work / "serving").iterdir())) == 1  # the Pusher pushed run 1's model only
    return {"work": work, "blessed": exports[0] / "Format-Serving", "unblessed": exports[1] / "Format-Serving",
            "serving": work / "serving"}


def _predict(series: Path, model: Path, out: Path, capsys, *extra: str) -> tuple[int, str, dict]:
    code = cli_main(["predict", str(series), "--model", str(model), "--out", str(out), *extra])
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    return code, err, summary


@pytest.mark.slow
def test_an_unblessed_trainer_model_is_warned_about_and_recorded(workdir, small_phantom, tmp_path, capsys):
    code, err, summary = _predict(small_phantom / "3Dircadb1.1", workdir["unblessed"], tmp_path / "out", capsys)
    assert code == 0
    assert "warning:" in err and "is NOT blessed" in err and "not blessed: test verdict" in err
    assert summary["blessed"] is False and summary["model_kind"] == "trainer"
    assert "not blessed" in summary["blessing_reason"]
    assert summary["blessing_store"] == str(workdir["work"] / "metadata.sqlite")


@pytest.mark.slow
def test_require_blessed_refuses_an_unblessed_model_before_writing(workdir, small_phantom, tmp_path, capsys):
    out = tmp_path / "out"
    code, err, _ = _predict(small_phantom / "3Dircadb1.1", workdir["unblessed"], out, capsys, "--require-blessed")
    assert code == 2 and "--require-blessed" in err and "is not blessed" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_a_blessed_trainer_model_and_a_pushed_version_are_blessed(workdir, small_phantom, tmp_path, capsys):
    for name, model, kind in (("trainer", workdir["blessed"].parent, "trainer"),
                              ("serving", workdir["serving"], "pushed")):
        code, err, summary = _predict(small_phantom / "3Dircadb1.1", model, tmp_path / name, capsys,
                                      "--require-blessed")
        assert code == 0, err
        # this test's Trainer writes no training profile; no other warning may appear
        assert "warning" not in "\n".join(line for line in err.splitlines()
                                           if "carries no training profile" not in line)
        assert summary["blessed"] is True and summary["model_kind"] == kind, summary
    assert "PushedModel" in summary["blessing_reason"]


@pytest.mark.slow
def test_without_a_store_the_blessing_is_unknown(workdir, small_phantom, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "pipeline" / "Trainer" / "model" / "9" / "Format-Serving"
    shutil.copytree(workdir["unblessed"], moved)
    code, err, summary = _predict(small_phantom / "3Dircadb1.1", moved, tmp_path / "out", capsys)
    assert code == 0
    assert "cannot be determined" in err and "--metadata" in err
    assert summary["blessed"] is None and summary["blessing_store"] is None

    code, err, summary = _predict(small_phantom / "3Dircadb1.1", moved, tmp_path / "out2", capsys,
                                  "--metadata", str(workdir["work"] / "metadata.sqlite"))
    assert summary["blessed"] is None and "is recorded in the ML Metadata store" in summary["blessing_reason"]

    code, err, _ = _predict(small_phantom / "3Dircadb1.1", moved, tmp_path / "out3", capsys, "--require-blessed")
    assert code == 2 and "of unknown blessing" in err
