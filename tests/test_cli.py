"""The `ctseg` command's registry: every command module is listed, and a broken one is an error, not a gap."""
from __future__ import annotations

import pkgutil
import sys

import pytest

import ctseg.commands
from ctseg import cli


def test_every_command_module_is_registered_and_shown_in_help(capsys):
    modules = {m.name for m in pkgutil.iter_modules(ctseg.commands.__path__)}
    with_register = {name for name in modules
                     if hasattr(__import__(f"ctseg.commands.{name}", fromlist=["_"]), "register")}
    assert with_register == set(cli.COMMANDS)
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    shown = capsys.readouterr().out
    assert all(f"    {name} " in shown for name in cli.COMMANDS), shown


def test_a_command_module_that_fails_to_import_stops_the_cli_naming_it(monkeypatch):
    monkeypatch.delitem(sys.modules, "ctseg.commands.stats", raising=False)
    monkeypatch.setitem(sys.modules, "ctseg.commands.stats", None)  # what a failed import leaves behind
    with pytest.raises(ImportError, match=r"the `stats` command \(ctseg.commands.stats\) failed to import"):
        cli.main(["--help"])


@pytest.mark.parametrize("flags, size", [([], 128), (["--preset", "full"], 256),
                                         (["--preset", "full", "--image-size", "96"], 96)])
def test_ctseg_run_ingests_and_trains_at_the_presets_size(flags, size, tmp_path):
    import json

    from ctseg.commands.pipeline_options import pipeline_knobs
    from ctseg.models.unet.config import UnetConfig
    from ctseg.pipeline.local_runner import build_local_pipeline

    args = cli.build_parser().parse_args(["run", "--data", str(tmp_path), "--workdir", str(tmp_path), *flags])
    by_id = {c.id: c for c in build_local_pipeline(data_root=args.data, workdir=args.workdir,
                                                   **pipeline_knobs(args)).components}
    trainer_config = json.loads(by_id["Trainer"].exec_properties["custom_config"])
    assert by_id["IrcadExampleGen"].exec_properties["image_size"] == size
    assert UnetConfig.from_custom_config(trainer_config).image_size == size


# Each knob of `create_pipeline`: options that set it away from its default, and where the built pipeline
# shows it (component id, exec property, decoded value).
KNOBS = {
    "organ": (["--organ", "spleen"], ("IrcadExampleGen", "organ", "spleen")),
    "image_size": (["--image-size", "96"], ("IrcadExampleGen", "image_size", 96)),
    "split_ratios": (["--split-ratios", '{"train": 2, "eval": 1}'],
                     ("IrcadExampleGen", "split_ratios", {"train": 2, "eval": 1})),
    "max_bad_fraction": (["--max-bad-fraction", "0.25"], ("IrcadExampleGen", "max_bad_fraction", 0.25)),
    "custom_config": (["--preset", "small", "--epochs", "3", "--config", '{"seed": 4}'],
                      ("Trainer", "custom_config", {"preset": "small", "epochs": 3, "seed": 4})),
    "train_steps": (["--train-steps", "7"], ("Trainer", "train_args", {"num_steps": 7})),
    "eval_steps": (["--eval-steps", "3"], ("Trainer", "eval_args", {"num_steps": 3})),
    "dice_threshold": (["--dice-threshold", "0.7"], ("SegmentationEvaluator", "dice_threshold", 0.7)),
    "dice_tolerance": (["--dice-tolerance", "0.05"], ("SegmentationEvaluator", "dice_tolerance", 0.05)),
    "cleanup": (["--cleanup", "off"], ("SegmentationEvaluator", "cleanup", "off")),
    "compare_to_serving": (["--no-baseline"], ("SegmentationEvaluator", "serving_dir", None)),
    "schema_file": (["--schema-file", "/elsewhere/schema.pbtxt"],
                    ("ImportSchemaGen", "schema_file", "/elsewhere/schema.pbtxt")),
    "enable_cache": (["--no-cache"], (None, "enable_cache", False)),
}


def _shown(pipeline, component_id, key):
    import json

    if component_id is None:
        return getattr(pipeline, key)
    value = {c.id: c for c in pipeline.components}[component_id].exec_properties[key]
    try:
        return json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError:
        return value


def test_every_create_pipeline_knob_is_an_option_of_run_and_of_compile(tmp_path):
    """One options group for both commands: each knob set on the command line reaches the pipeline each
    command builds (the local one and the one compiled for Kubeflow)."""
    import inspect

    from ctseg.commands.compile import cluster_pipeline_args
    from ctseg.commands.pipeline_options import RUNNER_ARGUMENTS, pipeline_knobs
    from ctseg.pipeline.kubeflow_runner import build_cluster_pipeline
    from ctseg.pipeline.local_runner import build_local_pipeline
    from ctseg.pipeline.pipeline import create_pipeline

    assert set(inspect.signature(create_pipeline).parameters) - RUNNER_ARGUMENTS == set(KNOBS)
    options = [o for flags, _ in KNOBS.values() for o in flags]
    run = cli.build_parser().parse_args(["run", "--data", str(tmp_path), "--workdir", str(tmp_path), *options])
    compile_ = cli.build_parser().parse_args(["compile", "--data", str(tmp_path), "--pipeline-root", "gs://b/root",
                                              *options])
    built = {"run": build_local_pipeline(data_root=run.data, workdir=run.workdir, **pipeline_knobs(run)),
             "compile": build_cluster_pipeline(**cluster_pipeline_args(compile_))}
    for command, pipeline in built.items():
        for knob, (_, (component_id, key, expected)) in KNOBS.items():
            shown = _shown(pipeline, component_id, key)
            if isinstance(expected, dict):  # the Trainer's config also carries image_size and code_version
                shown = {k: shown[k] for k in expected}
            assert shown == expected, (command, knob, shown)


@pytest.mark.parametrize("argv, verbose", [(["run", "-v"], True), (["-v", "run"], True), (["run", "--verbose"], True),
                                           (["run"], False), (["runs", "-v"], True), (["phantom", "x", "-v"], True)])
def test_verbose_is_taken_before_or_after_the_command(argv, verbose):
    assert cli.build_parser().parse_args(argv).verbose is verbose


@pytest.mark.parametrize("command", [["runs"], ["lineage", "serving/1"]])
def test_runs_and_lineage_read_the_store_of_the_given_work_dir(command, tmp_path, capsys):
    assert cli.main([*command, "--workdir", str(tmp_path / "work")]) == 2
    assert f"no ML Metadata store at {tmp_path / 'work' / 'metadata.sqlite'}" in capsys.readouterr().err


def test_compile_offers_the_same_presets_as_run(capsys):
    for argv in (["run", "--preset", "huge"],
                 ["compile", "--data", "d", "--pipeline-root", "gs://b", "--preset", "huge"]):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args(argv)
        assert "invalid choice: 'huge' (choose from 'full', 'small')" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["compile", "--data", "d", "--pipeline-root", "gs://b", "--out", "spec.yaml"],
    ["compile", "--data", "d", "--pipeline-root", "gs://b", "--output", "spec.yaml"],
    ["stats", "root", "--out", "spec.yaml"], ["stats", "root", "--html", "spec.yaml"],
    ["phantom", "--out", "spec.yaml"], ["predict", "series", "--model", "m", "--out", "spec.yaml"],
])
def test_every_output_path_is_out_and_older_spellings_still_work(argv):
    assert cli.build_parser().parse_args(argv).out == "spec.yaml"
