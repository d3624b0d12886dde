"""Shared fixtures: small phantoms (64-128 px, few patients) so the suite fits CI's budget on 2 cores."""
import os

from ctseg.quiet import silence

silence(verbose=bool(os.environ.get("CTSEG_VERBOSE")))

import importlib.util  # noqa: E402

import pytest  # noqa: E402

if importlib.util.find_spec("ctseg.components") is None:  # an install made before the package map
    pytest.exit("ctseg.components is not importable: the .venv's editable install predates the package map in "
                "pyproject.toml; run `make install`", returncode=4)

from ctseg.phantom import write_phantom  # noqa: E402


@pytest.fixture(scope="session")
def small_phantom(tmp_path_factory):
    """3 patients, 64x64, ~12 slices each: enough to split by patient."""
    return write_phantom(tmp_path_factory.mktemp("phantom") / "ircad", patients=3, slices=12, size=64, seed=1)


@pytest.fixture(scope="session")
def small_phantom_zip(tmp_path_factory):
    return write_phantom(tmp_path_factory.mktemp("phantom_zip") / "3Dircadb1.zip", patients=3, slices=12,
                         size=64, seed=1, as_zip=True)
