"""`ctseg run`: the whole pipeline on this machine (LocalDagRunner, ML Metadata in SQLite)."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from ctseg.commands import DEFAULT_WORKDIR
from ctseg.commands.pipeline_options import add_pipeline_options, pipeline_knobs
from ctseg.schemas import SCHEMA_FILE


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run the pipeline locally: ingest, validate, train, evaluate, push",
        description="Run the whole pipeline on this machine with TFX's LocalDagRunner (ML Metadata in SQLite). "
                    "Without --data it writes the synthetic phantom under WORKDIR/data and runs on that. "
                    "Re-running with nothing changed reuses cached steps.")
    p.add_argument("--data", help="IRCAD folder or 3Dircadb1.zip (default: the embedded phantom)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help="where pipeline outputs, metadata.sqlite and serving/ go (default: ./out)")
    add_pipeline_options(p, preset="small", schema_file=SCHEMA_FILE,
                         schema_help="the curated schema (default: the one installed with ctseg)")
    p.add_argument("--wait", action="store_true",
                   help="if another `ctseg run` is using the work dir, start when it ends (default: refuse)")
    p.add_argument("--phantom-patients", type=int, default=14, help="patients in the default phantom (default 14)")
    p.add_argument("--phantom-slices", type=int, default=40, help="slices per phantom patient (default 40)")
    p.add_argument("--phantom-seed", type=int, default=0, help="seed of the default phantom")
    p.set_defaults(func=run)


def _default_data(args) -> Path:
    from ctseg.phantom import write_phantom

    name = f"phantom-p{args.phantom_patients}-s{args.phantom_slices}-seed{args.phantom_seed}"
    root = Path(args.workdir) / "data" / name
    if not root.exists():
        print(f"writing the synthetic phantom ({args.phantom_patients} patients) to {root}", flush=True)
        tmp = root.with_name(root.name + ".partial")
        write_phantom(tmp, patients=args.phantom_patients, slices=args.phantom_slices, size=512,
                      seed=args.phantom_seed, progress=sys.stderr.isatty())
        tmp.rename(root)
    return root


class StageProgress(threading.Thread):
    """Prints each pipeline step as ML Metadata records it, so a long run shows where it is."""

    def __init__(self, metadata_path: Path, interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.metadata_path, self.interval_s = metadata_path, interval_s
        self.stop = threading.Event()
        self.seen: dict[int, str] = {}
        self.first_id = self._last_execution_id()

    def _last_execution_id(self) -> int:
        from ctseg.mlmd.store import connect

        if not self.metadata_path.exists():
            return 0
        return max((e.id for e in connect(sqlite_path=str(self.metadata_path)).get_executions()), default=0)

    def poll(self) -> None:
        from ctseg.mlmd.runs import execution_lines
        from ctseg.mlmd.store import connect

        if not self.metadata_path.exists():
            return
        store = connect(sqlite_path=str(self.metadata_path))
        for execution_id, state, line in execution_lines(store, after_id=self.first_id):
            if self.seen.get(execution_id) != state:
                self.seen[execution_id] = state
                print(line, flush=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception:  # the store may be mid-write; progress is best effort
                pass
            self.stop.wait(self.interval_s)

    def finish(self) -> None:
        self.stop.set()
        self.join()
        try:
            self.poll()
        except Exception:
            pass


def check_phantom(args) -> None:
    """The default phantom's size, when no --data is given."""
    from ctseg.errors import CtsegError

    if args.data:
        return
    if args.phantom_patients < 2:
        raise CtsegError(f"--phantom-patients must be at least 2 (one to train, one to evaluate), "
                         f"got {args.phantom_patients}")
    if args.phantom_slices < 1:
        raise CtsegError(f"--phantom-slices must be at least 1, got {args.phantom_slices}")


def run(args) -> int:
    from ctseg.errors import CtsegError
    from ctseg.workdir import WorkdirLock, prepare_workdir

    if args.data and not Path(args.data).exists():
        raise CtsegError(f"--data {args.data} does not exist (give an IRCAD folder or 3Dircadb1.zip)")
    knobs = pipeline_knobs(args)
    check_phantom(args)
    workdir = prepare_workdir(args.workdir)
    with WorkdirLock(workdir, wait=args.wait, on_wait=lambda text: print(text, flush=True)):
        data_root = Path(args.data) if args.data else _default_data(args)
        return _run_locked(data_root, workdir, knobs)


def _run_locked(data_root: Path, workdir: Path, knobs: dict) -> int:
    from ctseg.pipeline.local_runner import LocalPaths, new_run_id, run_local
    from ctseg.summary import print_run_summary

    run_id = new_run_id()
    paths = LocalPaths(workdir.resolve(), run_id)
    print(f"running the ctseg pipeline on {data_root} (work dir {paths.workdir}, run {run_id})", flush=True)
    progress = StageProgress(paths.metadata_path)
    progress.start()
    started = time.time()
    failure = None
    try:
        run_local(data_root=str(data_root.resolve()), workdir=paths.workdir, run_id=run_id, **knobs)
    except (Exception, KeyboardInterrupt) as e:  # the summary below says which step failed and why
        failure = e
    finally:
        progress.finish()
    print_run_summary(paths, run_id, started_at=started, failure=failure)
    if isinstance(failure, KeyboardInterrupt):
        return 130
    return 1 if failure else 0
