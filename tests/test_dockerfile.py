"""The cluster's image, checked without a Docker engine: parse the Dockerfile and hold it to the repo."""
from __future__ import annotations

import fnmatch
import re
from pathlib import Path

import pytest
import tomli
from dockerfile_parse import DockerfileParser

REPO = Path(__file__).resolve().parent.parent
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|make|python3(\.10)?-dev|-dev\b|cmake)")


@pytest.fixture(scope="module")
def dockerfile():
    return DockerfileParser(str(REPO / "Dockerfile"))


def stages(parser):
    """Instructions grouped by FROM: [[from, ...], ...]."""
    groups = []
    for item in parser.structure:
        if item["instruction"] == "FROM":
            groups.append([])
        if groups:
            groups[-1].append(item)
    return groups


def copy_sources(item):
    """Local sources of one COPY (none for COPY --from=stage)."""
    words = item["value"].split()
    if any(w.startswith("--from") for w in words):
        return []
    return [w for w in words[:-1] if not w.startswith("--")]


def dockerignored(path: str) -> bool:
    """Docker's .dockerignore rule for a top-level path: the last matching pattern wins, `!` re-includes."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").removeprefix("**/")
        if fnmatch.fnmatch(path, pattern):
            ignored = not negate
    return ignored


def test_bases_are_pinned_cuda_images_matching_tensorflow(dockerfile):
    import importlib.util

    bases = dockerfile.parent_images
    assert len(bases) == 2, "a build stage and a final stage"
    # TensorFlow's own record of the CUDA/cuDNN it was built against.
    build_info = Path(importlib.util.find_spec("tensorflow").submodule_search_locations[0],
                      "python", "platform", "build_info.py").read_text()
    cuda = re.search(r"'cuda_version', '([\d.]+)'", build_info)[1]
    cudnn = re.search(r"'cudnn_version', '(\d+)'", build_info)[1]
    for base in bases:
        name, _, tag = base.rpartition(":")
        assert name == "nvidia/cuda" and tag and tag != "latest", base
        assert tag.startswith(cuda + ".") and f"cudnn{cudnn}" in tag, (base, cuda, cudnn)
        assert tag.endswith("ubuntu22.04"), "Ubuntu 22.04 ships the Python 3.10 TFX 1.15 needs"


def test_every_copy_source_exists_and_reaches_the_build_context(dockerfile):
    sources = [s for item in dockerfile.structure if item["instruction"] == "COPY" for s in copy_sources(item)]
    assert "requirements.lock" in sources and "schemas" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: not in the repo"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
    assert dockerignored(".venv") and dockerignored(".git") and dockerignored("tests")


def test_every_project_package_is_copied_before_the_project_is_installed(dockerfile):
    build = stages(dockerfile)[0]
    package_dirs = set(tomli.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values())
    copied = {s for item in build if item["instruction"] == "COPY" for s in copy_sources(item)}
    install = next(i for i, item in enumerate(build) if "--no-deps" in item["value"] and " ." in item["value"])
    copied_before = {s for item in build[:install] if item["instruction"] == "COPY" for s in copy_sources(item)}
    assert {"ctseg", "components", "pipeline", "models", "schemas"} <= package_dirs
    missing = package_dirs - copied_before
    assert not missing, f"package folders not copied before `pip install .`: {missing}"
    assert {"pyproject.toml", "README.md"} <= copied, "setuptools reads both to build the project"


def test_the_lock_file_is_what_is_installed_into_the_venv_on_path(dockerfile):
    build, final = stages(dockerfile)
    runs = [item["value"] for item in build if item["instruction"] == "RUN"]
    sync = [r for r in runs if "requirements.lock" in r]
    assert sync and re.search(r"uv pip sync .*--python /opt/venv/bin/python requirements\.lock", sync[0])
    assert any("python3.10 -m venv /opt/venv" in r for r in runs)
    path = next(item["value"] for item in final if item["instruction"] == "ENV" and "PATH=" in item["value"])
    # The compiled spec runs `python -m tfx...`: the first python on PATH must be the venv's.
    assert re.search(r"PATH=/opt/venv/bin:", path)
    copies = [item["value"] for item in final if item["instruction"] == "COPY"]
    assert "--from=build /opt/venv /opt/venv" in copies


def test_schema_lands_where_the_compiled_spec_reads_it(dockerfile):
    from ctseg.pipeline.kubeflow_runner import IMAGE_SCHEMA_FILE

    final = stages(dockerfile)[-1]
    copies = [item["value"].split() for item in final if item["instruction"] == "COPY"]
    assert ["schemas", str(Path(IMAGE_SCHEMA_FILE).parent)] in copies
    assert (REPO / "schemas" / Path(IMAGE_SCHEMA_FILE).name).is_file()


def test_final_stage_runs_as_a_created_non_root_user_without_build_tools(dockerfile):
    final = stages(dockerfile)[-1]
    users = [item["value"].strip() for item in final if item["instruction"] == "USER"]
    assert users and users[-1] not in ("root", "0"), users
    runs = " ".join(item["value"] for item in final if item["instruction"] == "RUN")
    assert re.search(rf"useradd .*\b{re.escape(users[-1])}\b", runs), "the USER must be created in the final stage"
    assert not BUILD_TOOLS.search(runs), "build tools belong in the build stage"
    assert "rm -rf /var/lib/apt/lists/*" in runs
    assert "pip install" not in runs and "uv " not in runs
    last_user = max(i for i, item in enumerate(final) if item["instruction"] == "USER")
    assert all(item["instruction"] != "RUN" for item in final[last_user:]), "nothing runs as root after USER"


def test_build_stage_leaves_no_caches_in_the_venv(dockerfile):
    runs = [item["value"] for item in stages(dockerfile)[0] if item["instruction"] == "RUN"]
    installs = [r for r in runs if re.search(r"\b(uv )?pip (install|sync)\b", r)]
    assert installs and all("--no-cache" in r for r in installs), installs
