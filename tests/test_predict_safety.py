"""`ctseg predict` never writes over what it reads, and `--overwrite` replaces only an earlier prediction.

Each case runs the real CLI with a real (tiny, untrained) model on a small phantom, so that a check
that came too late would show as files lost, not as a message."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ctseg import predict as P
from ctseg.cli import main as cli_main
from ctseg.errors import CtsegError
from ctseg.phantom import write_phantom

sys.path.insert(0, str(Path(__file__).parent))
from tiny_unet import export_tiny_unet  # noqa: E402


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A `ctseg run` work dir as predict finds it: a lock file and a pushed model in serving/1."""
    work = tmp_path_factory.mktemp("safety") / "work"
    export_tiny_unet(work / "serving" / "1")
    (work / ".ctseg.lock").write_text("")
    return work


@pytest.fixture
def data(tmp_path) -> Path:
    return write_phantom(tmp_path / "D", patients=2, slices=4, size=64, seed=1)


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _predict(series: Path, model: Path, out: Path, *extra: str) -> int:
    return cli_main(["predict", str(series), "--model", str(model), "--out", str(out), "--overwrite", *extra])


@pytest.mark.parametrize("out, what", [
    ("D", "the same folder as the dataset holding the series"),
    ("D/..", "a folder above the input series"),
    ("D/3Dircadb1.1", "the same folder as the input series"),
    ("D/3Dircadb1.1/PATIENT_DICOM", "inside the input series"),
    ("D/predictions", "inside the dataset holding the series"),
    ("D/3Dircadb1.2", "inside the dataset holding the series"),
])
def test_out_over_the_data_is_refused_before_any_work(out, what, data, workdir, tmp_path, capsys):
    before = _files(tmp_path)
    assert _predict(data / "3Dircadb1.1", workdir / "serving", tmp_path / out) == 2
    err = capsys.readouterr().err
    assert what in err and "give an output folder outside it" in err and len(err.strip().splitlines()) == 1
    assert _files(tmp_path) == before


@pytest.mark.parametrize("out, what", [
    ("serving", "the same folder as the model"),
    ("serving/1/variables", "inside the model"),
    (".", "the same folder as the work dir of the model"),
    ("predictions", "inside the work dir of the model"),
    ("..", "a folder above the model"),
])
def test_out_over_the_model_or_its_work_dir_is_refused(out, what, data, workdir, capsys):
    before = _files(workdir)
    assert _predict(data / "3Dircadb1.1", workdir / "serving", workdir / out) == 2
    assert what in capsys.readouterr().err
    assert _files(workdir) == before


def test_a_symlink_to_the_data_is_the_data(data, workdir, tmp_path, capsys):
    (tmp_path / "link").symlink_to(data)
    before = _files(data)
    assert _predict(data / "3Dircadb1.1", workdir / "serving", tmp_path / "link") == 2
    assert "the same folder as the dataset holding the series" in capsys.readouterr().err
    assert _files(data) == before


def test_overwrite_replaces_an_earlier_prediction_only(data, workdir, tmp_path, capsys):
    out = tmp_path / "out"
    assert _predict(data / "3Dircadb1.1", workdir / "serving", out) == 0
    assert P.written_by_predict(out)
    assert _predict(data / "3Dircadb1.2", workdir / "serving", out) == 0  # an earlier prediction: replaced
    capsys.readouterr()
    (out / "notes.txt").write_text("a user's notes")
    assert _predict(data / "3Dircadb1.1", workdir / "serving", out) == 2
    assert "did not write" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "a user's notes"

    precious = tmp_path / "precious"
    shutil.copytree(data / "3Dircadb1.2", precious)
    before = _files(precious)
    assert _predict(data / "3Dircadb1.1", workdir / "serving", precious) == 2
    assert "did not write" in capsys.readouterr().err
    assert _files(precious) == before


def test_write_outputs_itself_leaves_a_foreign_folder_alone(data, tmp_path):
    from ctseg.serving import load_model

    out = tmp_path / "home"
    (out / "documents").mkdir(parents=True)
    prediction = P.predict_series(P.load_series(data / "3Dircadb1.1"), load_model(export_tiny_unet(tmp_path / "m")))
    with pytest.raises(CtsegError, match="did not write"):
        P.write_outputs(prediction, out)
    assert _files(out) == ["documents"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_writing_leaves_nothing_behind(sig, workdir, tmp_path):
    """SIGTERM (a scheduler stopping the job) and SIGHUP (the terminal closed) clean up as Ctrl-C does."""
    data = write_phantom(tmp_path / "D", patients=1, slices=60, size=64, seed=1)
    parent = tmp_path / "preds"
    parent.mkdir()
    run = subprocess.Popen([sys.executable, "-m", "ctseg.cli", "predict", str(data / "3Dircadb1.1"),
                            "--model", str(workdir / "serving"), "--out", str(parent / "out")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while not any(p.name.startswith(".out.partial-") for p in parent.iterdir()):
            assert run.poll() is None, f"predict ended before writing:\n{run.stdout.read()}"
            assert time.time() < deadline, "predict never started writing"
            time.sleep(0.002)
        run.send_signal(sig)
        output, _ = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 130, output
    assert "interrupted" in output
    assert list(parent.iterdir()) == []
