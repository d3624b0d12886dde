"""The wheel's package map (pyproject.toml) against the repo: one top-level import package, `ctseg`."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import tomli

REPO = Path(__file__).resolve().parent.parent
SETUPTOOLS = tomli.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
# Folders mapped under `ctseg`; importing them by their folder name would load a second copy of each module.
MAPPED_FOLDERS = ("components", "pipeline", "models", "kubeflow", "schemas")


def folder_of(package: str) -> Path:
    """Where setuptools takes `package` from, by the longest package-dir prefix (as setuptools resolves it)."""
    parts = package.split(".")
    for i in range(len(parts), 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in SETUPTOOLS["package-dir"]:
            return REPO / SETUPTOOLS["package-dir"][prefix] / Path(*parts[i:])
    return REPO / Path(*parts)


def test_every_package_folder_is_listed_and_every_listed_package_exists():
    listed = set(SETUPTOOLS["packages"])
    assert {p.split(".")[0] for p in listed} == {"ctseg"}
    for package in listed:
        assert (folder_of(package) / "__init__.py").is_file(), f"{package}: no {folder_of(package)}/__init__.py"
    on_disk = set()
    for package, folder in SETUPTOOLS["package-dir"].items():
        for init in (REPO / folder).rglob("__init__.py"):
            on_disk.add(".".join([package, *init.parent.relative_to(REPO / folder).parts]))
    assert on_disk <= listed, f"packages the wheel would leave out: {sorted(on_disk - listed)}"


def test_the_schema_ships_as_package_data():
    from ctseg.schemas import SCHEMA_FILE

    assert "*.pbtxt" in SETUPTOOLS["package-data"]["ctseg.schemas"]
    assert Path(SCHEMA_FILE).is_file() and Path(SCHEMA_FILE).parent == folder_of("ctseg.schemas")


def test_no_module_imports_a_mapped_folder_by_its_bare_name():
    offenders = []
    for path in REPO.glob("**/*.py"):
        if any(part.startswith(".") or part in ("build", "out") for part in path.relative_to(REPO).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            offenders += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                          if n.split(".")[0] in MAPPED_FOLDERS]
    assert not offenders, offenders


def test_kubeflow_folder_holds_no_python():
    assert not list((REPO / "kubeflow").glob("**/*.py"))


BUILD_RUN_PIPELINE = """
import json, sys
import ctseg
from ctseg.cli import build_parser
from ctseg.commands.pipeline_options import pipeline_knobs
from ctseg.pipeline.local_runner import build_local_pipeline
from ctseg.pipeline.pipeline import trainer_code_version

args = build_parser().parse_args(["run", "--data", sys.argv[1], "--workdir", sys.argv[2]])
pipeline = build_local_pipeline(data_root=args.data, workdir=args.workdir, **pipeline_knobs(args))
by_id = {c.id: c for c in pipeline.components}
config = by_id["Trainer"].exec_properties["custom_config"]
print(json.dumps({"ctseg": ctseg.__file__, "schema_file": by_id["ImportSchemaGen"].exec_properties["schema_file"],
                  "custom_config": json.loads(config) if isinstance(config, str) else config,
                  "run_fn": by_id["Trainer"].exec_properties["run_fn"], "code_version": trainer_code_version()}))
"""


@pytest.mark.slow
def test_ctseg_run_from_the_installed_wheel_finds_the_schema_and_hashes_the_trainer_code(installed_wheel,
                                                                                        small_phantom):
    import zipfile

    from ctseg.pipeline.pipeline import trainer_code_version

    with zipfile.ZipFile(installed_wheel.wheel) as wheel:
        top_level = {name.split("/")[0] for name in wheel.namelist()}
    assert top_level == {"ctseg", installed_wheel.wheel.name.split("-py3")[0] + ".dist-info"}, top_level

    assert "compile" in installed_wheel.run("ctseg", "--help").stdout
    built = json.loads(installed_wheel.run("python", "-c", BUILD_RUN_PIPELINE, str(small_phantom), "out").stdout
                       .strip().splitlines()[-1])
    assert Path(built["ctseg"]).is_relative_to(installed_wheel.site_packages)
    schema = Path(built["schema_file"])
    assert schema.is_relative_to(installed_wheel.site_packages / "ctseg" / "schemas") and schema.is_file()
    assert schema.read_text() == (REPO / "schemas" / "schema.pbtxt").read_text()
    # The same files installed give the same digest as the work tree: the Trainer's cache key is the code's.
    assert built["code_version"] == built["custom_config"]["code_version"] == trainer_code_version()
    assert built["run_fn"] == "ctseg.models.unet.trainer.run_fn"
