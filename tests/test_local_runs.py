"""Runs that are interrupted, concurrent or mis-summarised, on real LocalDagRunner runs.

The pipeline is `tests/tiny_pipeline.py` (two Python function components) so that each run takes
seconds; what is under test is `ctseg.pipeline.local_runner.run_pipeline`, the runner `ctseg run`
uses, the work dir lock, and what `ctseg runs` and the end-of-run summary make of the record.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ctseg import cli
from ctseg.errors import CtsegError
from ctseg.mlmd.runs import describe_run, list_runs
from ctseg.mlmd.store import connect
from ctseg.pipeline.local_runner import LocalPaths, run_pipeline
from ctseg.summary import print_run_summary
from ctseg.workdir import WorkdirBusy, WorkdirLock

sys.path.insert(0, str(Path(__file__).parent))
from tiny_pipeline import SLEEPING, tiny_pipeline  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # real pipeline runs (tiny ones)
TINY = Path(__file__).parent / "tiny_pipeline.py"


def _wait_for(path: Path, process: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.time() + timeout_s
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the run ended early:\n{process.stdout.read()}")
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.2)


def _store(workdir: Path):
    return connect(sqlite_path=str(workdir / "metadata.sqlite"))


@pytest.mark.parametrize("sig, state", [(signal.SIGTERM, "interrupted"),
                                        (signal.SIGKILL, "abandoned")])
def test_a_stopped_run_is_interrupted_or_abandoned_never_running_forever(sig, state, tmp_path, capsys):
    work = tmp_path / "work"
    work.mkdir()
    run = subprocess.Popen([sys.executable, str(TINY), str(work), "600"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(work / SLEEPING, run)
        (listed,) = list_runs(_store(work))
        assert listed.state == "running"
        described = describe_run(_store(work), listed.run_id)
        assert described["process"]["pid"] == run.pid and described["process"]["host"] == socket.gethostname()

        # a second run on the same work dir refuses, naming the holder
        with pytest.raises(WorkdirBusy, match=rf"in use by another `ctseg run` \(pid {run.pid} on .* run "
                                              rf"{listed.run_id}\).*--wait"):
            run_pipeline(tiny_pipeline(work), work)

        run.send_signal(sig)
        run.wait(timeout=120)
    finally:
        if run.poll() is None:
            run.kill()
    (listed,) = list_runs(_store(work))
    assert listed.state == state
    steps = {e["node_id"]: e for e in describe_run(_store(work), listed.run_id)["executions"]}
    if state == "interrupted":
        assert run.returncode != 0
        assert steps["Step"]["state"] == "canceled"
        assert steps["Step"]["error"] == f"interrupted by {signal.Signals(sig).name}"
    assert cli.main(["runs", "--metadata", str(work / "metadata.sqlite")]) == 0
    assert f" {state} " in capsys.readouterr().out

    # the lock went with the process, however it ended
    with WorkdirLock(work):
        pass


def test_wait_queues_behind_the_holder(tmp_path):
    work = tmp_path / "work"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from ctseg.workdir import WorkdirLock
        with WorkdirLock({str(work)!r}) as lock:
            lock.note(run_id="the-first-run")
            print("held", flush=True)
            time.sleep(3)
        """)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    said = []
    started = time.time()
    with WorkdirLock(work, wait=True, on_wait=said.append):
        assert time.time() - started > 2, "the lock was taken while the first holder still had it"
    holder.wait(timeout=60)
    assert len(said) == 1 and "waiting for another `ctseg run`" in said[0] and "the-first-run" in said[0]


def test_the_failure_and_the_summary_are_this_runs_not_the_newest(tmp_path, capsys):
    """Another run registered in the store after this one started must not get this run's error,
    nor be the run the summary describes (neither may pick the newest run in the store)."""
    work = tmp_path / "work"
    run_id = "2024-01-01T00:00:00.000001"
    with pytest.raises(CtsegError, match="the step broke"):
        run_pipeline(tiny_pipeline(work, fail="the step broke", newer_run_in=str(work / "metadata.sqlite")), work,
                     run_id=run_id)
    store = _store(work)
    assert [r.run_id for r in list_runs(store)] == ["9999-a-newer-run", run_id]
    steps = {e["node_id"]: e for e in describe_run(store, run_id)["executions"]}
    assert steps["Step"]["state"] == "failed" and "the step broke" in steps["Step"]["error"]
    assert describe_run(store, run_id)["process"]["state"] == "failed"

    print_run_summary(LocalPaths(work), run_id, started_at=time.time(), failure=CtsegError("the step broke"))
    out = capsys.readouterr().out
    assert out.count("the step broke") == 1, out  # once, under the step; the last line points to it
    assert f"run {run_id}: failed" in out and "The run stopped at Step: its error is above." in out
    assert "9999-a-newer-run" not in out


def test_a_complete_run_records_its_process_and_end(tmp_path):
    work = tmp_path / "work"
    paths = run_pipeline(tiny_pipeline(work), work)
    described = describe_run(_store(work), paths.run_id)
    assert described["state"] == "complete"
    assert described["process"]["state"] == "complete" and described["process"]["pid"] == os.getpid()
    assert described["process"]["ended"] >= described["process"]["started"]
