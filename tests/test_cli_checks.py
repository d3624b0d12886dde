"""The CLI answers bad knobs and missing paths in one sentence, before anything heavy runs.

No pipeline runs here: each case must be refused before TensorFlow, TFX or Beam is imported, which
the subprocess cases check through `sys.modules` (a count, not a timing).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ctseg import cli
from ctseg.features import MAX_IMAGE_SIZE

HEAVY = ("tensorflow", "tfx", "apache_beam", "tensorflow_data_validation", "ml_metadata", "kfp")


def _refused(argv: list[str], capsys) -> str:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "[Errno" not in captured.err, captured.err
    assert captured.out == "", captured.out  # no summary of an earlier run after the error
    return captured.err


KNOB_CASES = [
    (["--epochs", "0"], "(--image-size, --preset/--epochs/--config): invalid custom_config: epochs must be at "
                        "least 1, got 0"),
    (["--image-size", "0"], f"--image-size must be between 8 and {MAX_IMAGE_SIZE} pixels, got 0"),
    (["--image-size", "7"], "--image-size must be between 8"),
    (["--image-size", str(MAX_IMAGE_SIZE * 2)], f"between 8 and {MAX_IMAGE_SIZE} pixels, got {MAX_IMAGE_SIZE * 2}"),
    (["--image-size", "100"], "image_size 100 must be divisible by 2**depth = 16"),
    (["--preset", "full", "--config", '{"depth": 5}', "--image-size", "272"], "divisible by 2**depth = 32"),
    (["--dice-threshold", "1.5"], "--dice-threshold must be between 0 and 1, got 1.5"),
    (["--dice-tolerance", "-0.1"], "--dice-tolerance must be between 0 and 1"),
    (["--max-bad-fraction", "2"], "--max-bad-fraction must be between 0 and 1"),
    (["--organ", "../x"], "--organ must be the name of a MASKS_DICOM folder"),
    (["--split-ratios", '{"train": 1}'], "--split-ratios must name train and eval"),
    (["--split-ratios", "[1]"], "--split-ratios must be a JSON object of split weights"),
    (["--config", "{"], "--config is not JSON"),
    (["--config", '{"epoch": 3}'], "custom_config has unknown keys ['epoch']"),
    (["--cleanup", "sometimes"], "--cleanup: clean-up 'sometimes'"),
    (["--train-steps", "0"], "--train-steps must be at least 1 when given, got 0"),
    (["--eval-steps", "-1"], "--eval-steps must be at least 1"),
]
COMMANDS = {"run": ["run"], "compile": ["compile", "--data", "gs://b/d", "--pipeline-root", "gs://b/r"]}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("knobs, says", KNOB_CASES)
def test_pipeline_knobs_are_checked_before_the_work_dir_is_touched(command, knobs, says, tmp_path, capsys):
    workdir = tmp_path / "work"
    err = _refused([*COMMANDS[command], "--workdir", str(workdir), *knobs], capsys)
    assert says in err
    assert not workdir.exists()


@pytest.mark.parametrize("knobs, says", [
    (["--phantom-patients", "1"], "--phantom-patients must be at least 2"),
    (["--phantom-slices", "0"], "--phantom-slices must be at least 1"),
])
def test_phantom_knobs_are_checked_before_the_work_dir_is_touched(knobs, says, tmp_path, capsys):
    workdir = tmp_path / "work"
    assert says in _refused(["run", "--workdir", str(workdir), *knobs], capsys)
    assert not workdir.exists()


def test_runs_limit_must_be_positive(tmp_path, capsys):
    assert "--limit must be at least 1" in _refused(["runs", "--limit", "0", "--metadata", str(tmp_path)], capsys)


def _cli_in_fresh_python(*argv: str, env: dict | None = None) -> tuple[int, str, list[str]]:
    """Runs the CLI in a new interpreter; returns its exit code, stderr and the heavy modules it imported."""
    code = ("import sys, json; from ctseg.cli import main; rc = main(sys.argv[1:]); "
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
            "; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})
    return done.returncode, done.stderr, json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("argv, says", [
    (["stats", "/nonexistent"], "/nonexistent: no such folder"),
    (["run", "--data", "/nonexistent"], "--data /nonexistent does not exist"),
    (["run", "--data", "/nonexistent", "--epochs", "0"], "--data /nonexistent does not exist"),
    (["run", "--epochs", "0"], "epochs must be at least 1"),
    (["compile", "--data", "gs://b/d", "--pipeline-root", "gs://b/r", "--dice-threshold", "2"],
     "--dice-threshold must be between 0 and 1"),
    (["runs", "--metadata", "/nonexistent.sqlite"], "no ML Metadata store at /nonexistent.sqlite"),
])
def test_cheap_checks_come_before_heavy_imports(argv, says):
    rc, err, heavy = _cli_in_fresh_python(*argv)
    assert rc == 2 and says in err, err
    assert heavy == [], f"{' '.join(argv)} imported {heavy} before refusing"


def test_runs_on_a_file_that_is_not_a_database_says_so(tmp_path, capsys):
    not_db = tmp_path / "notes.sqlite"
    not_db.write_text("these are my notes, not ML Metadata\n")
    err = _refused(["runs", "--metadata", str(not_db)], capsys)
    assert f"{not_db} is not an ML Metadata store: it is not an SQLite database" in err
    assert "query" not in err and "CREATE TABLE" not in err

    import sqlite3

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE notes (text)")
    err = _refused(["runs", "--metadata", str(other)], capsys)
    assert "is not an ML Metadata store (an SQLite database without ML Metadata's tables)" in err
    assert "CREATE TABLE" not in err
    err = _refused(["runs", "--metadata", str(tmp_path)], capsys)
    assert "is a folder, not an ML Metadata store" in err


def test_workdir_errors_are_sentences_without_errno(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    err = _refused(["run", "--workdir", str(a_file), "--data", str(tmp_path)], capsys)
    assert f"cannot use {a_file} as the work dir: it is a file, not a folder" in err
    err = _refused(["run", "--workdir", str(a_file / "below"), "--data", str(tmp_path)], capsys)
    assert f"cannot use {a_file / 'below'} as the work dir: a file stands where a folder is needed" in err
