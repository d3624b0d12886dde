"""The `ctseg` command's registry: every command module is listed, and a broken one is an error, not a gap."""
from __future__ import annotations

import pkgutil
import sys

import pytest

import ctseg.commands
from ctseg import cli


def test_every_command_module_is_registered_and_shown_in_help(capsys):
    modules = {m.name for m in pkgutil.iter_modules(ctseg.commands.__path__)}
    with_register = {name for name in modules if hasattr(__import__(f"ctseg.commands.{name}", fromlist=["_"]), "register")}
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


@pytest.mark.parametrize("flags, size", [([], 128), (["--preset", "full"], 256), (["--preset", "full", "--image-size", "96"], 96)])
def test_ctseg_run_ingests_and_trains_at_the_presets_size(flags, size, tmp_path):
    import json

    from ctseg.commands.run import pipeline_knobs
    from ctseg.models.unet.config import UnetConfig
    from ctseg.pipeline.local_runner import build_local_pipeline

    args = cli.build_parser().parse_args(["run", "--data", str(tmp_path), "--workdir", str(tmp_path), *flags])
    by_id = {c.id: c for c in build_local_pipeline(data_root=args.data, workdir=args.workdir,
                                                   **pipeline_knobs(args)).components}
    trainer_config = json.loads(by_id["Trainer"].exec_properties["custom_config"])
    assert by_id["IrcadExampleGen"].exec_properties["image_size"] == size
    assert UnetConfig.from_custom_config(trainer_config).image_size == size
