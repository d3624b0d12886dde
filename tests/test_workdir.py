"""The work dir lock as `ctseg run` takes it: once by the CLI, again by the runner, on one path."""
from __future__ import annotations

from pathlib import Path

import pytest

from ctseg.workdir import WorkdirLock, prepare_workdir


@pytest.mark.parametrize("spelling", ["symlink", "dotdot"])
def test_the_run_takes_its_own_lock_again_however_the_work_dir_is_spelled(spelling, tmp_path):
    """The CLI locks the work dir it was given; the local runner locks `LocalPaths`' resolved path."""
    real = tmp_path / "Wreal"
    real.mkdir()
    if spelling == "symlink":
        given = tmp_path / "Wlink"
        given.symlink_to(real)
    else:
        (tmp_path / "sub").mkdir()
        given = tmp_path / "sub" / ".." / "Wreal"
    workdir = prepare_workdir(given)
    with WorkdirLock(workdir) as outer:
        with WorkdirLock(Path(workdir).resolve()) as inner:
            assert inner is outer
        with WorkdirLock(given) as again:
            assert again is outer
    assert workdir == real
