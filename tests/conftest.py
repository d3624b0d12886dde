"""Shared fixtures: small phantoms (64-128 px, few patients) so the suite fits CI's budget on 2 cores,
one ingested phantom for the tests that need slice examples, and the project as an installed wheel."""
import os

from ctseg.cpu_kernels import prefer_onednn
from ctseg.quiet import silence

silence(verbose=bool(os.environ.get("CTSEG_VERBOSE")))
prefer_onednn()  # the kernels `ctseg` trains and predicts with

import dataclasses  # noqa: E402
import importlib.util  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

if importlib.util.find_spec("ctseg.components") is None:  # an install made before the package map
    pytest.exit("ctseg.components is not importable: the .venv's editable install predates the package map in "
                "pyproject.toml; run `make install`", returncode=4)

from ctseg.phantom import write_phantom  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SMALL_IMAGE_SIZE = 64
# A slow test (ingest, a pipeline run, training, Beam, a wheel build) carries `@pytest.mark.slow`, or its
# module `pytestmark = pytest.mark.slow` when every test in it is slow. A test that uses one of these
# shared fixtures without the mark is a collection error, so the fast suite cannot grow one by accident.
SLOW_SHARED_FIXTURES = {"ingested_phantom", "installed_wheel"}


def pytest_collection_modifyitems(items):
    unmarked = [item.nodeid for item in items if SLOW_SHARED_FIXTURES & set(getattr(item, "fixturenames", ()))
                and item.get_closest_marker("slow") is None]
    if unmarked:
        raise pytest.UsageError(f"mark these tests @pytest.mark.slow (they use {sorted(SLOW_SHARED_FIXTURES)}): "
                                f"{unmarked}")


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """3 patients, 64x64, ~12 slices each: enough to split by patient."""
    return write_phantom(tmp_path_factory.mktemp("phantom") / "ircad", patients=3, slices=12, size=64, seed=1)


@pytest.fixture(scope="session")
def small_phantom_zip(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("phantom_zip") / "3Dircadb1.zip", patients=3, slices=12,
                         size=64, seed=1, as_zip=True)


@pytest.fixture(scope="session")
def ingested_phantom(small_phantom, tmp_path_factory) -> dict:
    """`small_phantom` through the real ingest component once per session: {split: gzipped example files}."""
    from ctseg.pipeline.local_runner import run_ingest

    return run_ingest(data_root=small_phantom, workdir=tmp_path_factory.mktemp("ingested"),
                      image_size=SMALL_IMAGE_SIZE)


@dataclasses.dataclass(frozen=True)
class InstalledWheel:
    """ctseg installed from its wheel into a venv of its own; commands run outside the repo, so nothing
    of the work tree can be imported by accident."""
    venv: Path
    wheel: Path
    site_packages: Path
    cwd: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def run(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """Runs `args` (e.g. "ctseg", "--help", or "python", "-c", ...) with the venv's bin first on PATH."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        result = subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.cwd, env=env,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result


def _build_wheel(out: Path) -> Path:
    """Builds the wheel from a copy of what the Dockerfile copies (pyproject, README, the mapped folders)
    with setuptools' PEP 517 backend from .venv, so the work tree gets no build/ or egg-info."""
    import tomli

    src = out / "src"
    src.mkdir(parents=True)  # the loop below may copy a file before any folder creates it
    package_dirs = tomli.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"].values()
    for name in {"pyproject.toml", "README.md", *package_dirs}:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        options = {"ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        copy(REPO / name, src / name, **options)
    wheels = out / "dist"
    name = subprocess.run(
        [sys.executable, "-c", "import sys, setuptools.build_meta as b; print(b.build_wheel(sys.argv[1]))",
         str(wheels)],
        cwd=src, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return wheels / name


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> InstalledWheel:
    """The project's wheel installed non-editable into a fresh venv that borrows .venv's dependencies.

    The venv's own site-packages holds only ctseg (from the wheel); a .pth file appends .venv's
    site-packages and processes its .pth files (namespace packages) except the editable finder of
    the work tree, which would otherwise shadow the wheel. Use `installed_wheel.run("ctseg", ...)`
    or `installed_wheel.run("python", "-m", ...)`; see tests/test_packaging.py.
    """
    base = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(base)
    venv = base / "venv"
    subprocess.run([getattr(sys, "_base_executable", sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True)
    site_packages = Path(subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True).stdout.strip())
    deps = sysconfig.get_paths()["purelib"]
    (site_packages / "_ctseg_dev_deps.pth").write_text(
        f"import os, site, sys; d = {deps!r}; sys.path.append(d); "
        f"[site.addpackage(d, n, None) for n in sorted(os.listdir(d)) "
        f"if n.endswith('.pth') and not n.startswith('__editable__')]\n")
    uv = Path(sys.executable).with_name("uv")  # scripts/install.sh puts uv in .venv
    subprocess.run([str(uv), "pip", "install", "-q", "--no-deps", "--no-index",
                    "--python", str(venv / "bin" / "python"), str(wheel)], check=True)
    cwd = base / "elsewhere"
    cwd.mkdir()
    return InstalledWheel(venv=venv, wheel=wheel, site_packages=site_packages, cwd=cwd)


@pytest.fixture(scope="session")
def run_ingest():
    """`run_ingest(tmp, data_root, image_size=32, max_bad_fraction=1.0)`: the ingest executor alone."""
    return _run_ingest


def _run_ingest(tmp: Path, data_root, *, image_size: int = 32, max_bad_fraction: float = 1.0):
    """Runs IrcadExampleGen's executor alone (real Beam DirectRunner, no orchestrator); returns its Examples."""
    import json

    from tfx.dsl.components.base import base_beam_executor
    from tfx.types import standard_artifacts

    from ctseg.components.ingest.executor import Executor
    from ctseg.pipeline.local_runner import LOCAL_BEAM_ARGS

    executor = Executor(base_beam_executor.BaseBeamExecutor.Context(
        beam_pipeline_args=list(LOCAL_BEAM_ARGS), tmp_dir=str(tmp / "tmp") + "/", unique_id="1"))
    examples = standard_artifacts.Examples()
    examples.uri = str(tmp / "out")
    executor.Do({}, {"examples": [examples]}, {
        "data_root": str(data_root), "organ": "liver", "image_size": image_size,
        "split_ratios": json.dumps({"train": 0.75, "eval": 0.25}), "max_bad_fraction": max_bad_fraction})
    return examples


def pytest_sessionfinish(session, exitstatus):
    session.config.ctseg_exitstatus = int(exitstatus)


def pytest_unconfigure(config):
    """After a test read or wrote s3:// in this process, end it as the `ctseg` command does: tensorflow-io's
    S3 client would otherwise abort it at exit (ctseg.object_stores.exit_without_native_teardown)."""
    from ctseg import object_stores

    if object_stores.needs_native_teardown_skipped() and hasattr(config, "ctseg_exitstatus"):
        object_stores.exit_without_native_teardown(config.ctseg_exitstatus)
