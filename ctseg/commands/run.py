"""`ctseg run`: the whole pipeline on this machine (LocalDagRunner, ML Metadata in SQLite)."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

from ctseg.commands import DEFAULT_WORKDIR


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="run the pipeline locally: ingest, validate, train, evaluate, push",
        description="Run the whole pipeline on this machine with TFX's LocalDagRunner (ML Metadata in SQLite). "
                    "Without --data it writes the synthetic phantom under WORKDIR/data and runs on that. "
                    "Re-running with nothing changed reuses cached steps.")
    p.add_argument("--data", help="IRCAD folder or 3Dircadb1.zip (default: the embedded phantom)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR,
                   help="where pipeline outputs, metadata.sqlite and serving/ go (default: ./out)")
    p.add_argument("--organ", default="liver", help="MASKS_DICOM/<organ> to segment (default liver)")
    p.add_argument("--image-size", type=int, default=None, help="slice size after ingest (default: the preset's)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    p.add_argument("--preset", choices=("small", "full"), default="small",
                   help="model preset: small for CPU (default), full for GPU")
    p.add_argument("--dice-threshold", type=float, default=0.90, help="bless only at or above this mean patient Dice")
    p.add_argument("--dice-tolerance", type=float, default=0.01,
                   help="how much worse than the model serving a new one may be")
    p.add_argument("--max-bad-fraction", type=float, default=0.0,
                   help="fraction of a patient's slices that may be quarantined before the run fails")
    p.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    p.add_argument("--phantom-patients", type=int, default=14, help="patients in the default phantom (default 14)")
    p.add_argument("--phantom-slices", type=int, default=40, help="slices per phantom patient (default 40)")
    p.add_argument("--phantom-seed", type=int, default=0, help="seed of the default phantom")
    p.set_defaults(func=run)


def _default_data(args) -> Path:
    from ctseg.phantom import write_phantom

    root = Path(args.workdir) / "data" / f"phantom-p{args.phantom_patients}-s{args.phantom_slices}-seed{args.phantom_seed}"
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
        from ctseg.metadata import connect

        if not self.metadata_path.exists():
            return 0
        return max((e.id for e in connect(sqlite_path=str(self.metadata_path)).get_executions()), default=0)

    def poll(self) -> None:
        from ctseg.metadata import connect, execution_lines

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


def pipeline_knobs(args) -> dict:
    """`create_pipeline` keyword arguments from the parsed command line."""
    config = {"preset": args.preset}
    if args.epochs is not None:
        config["epochs"] = args.epochs
    knobs = dict(organ=args.organ, custom_config=config, dice_threshold=args.dice_threshold,
                 dice_tolerance=args.dice_tolerance, max_bad_fraction=args.max_bad_fraction,
                 enable_cache=not args.no_cache)
    if args.image_size:
        knobs["image_size"] = args.image_size
    return knobs


def run(args) -> int:
    from ctseg.errors import CtsegError
    from ctseg.pipeline.local_runner import LocalPaths, run_local
    from ctseg.summary import print_run_summary

    data_root = Path(args.data) if args.data else _default_data(args)
    if not data_root.exists():
        raise CtsegError(f"--data {data_root} does not exist (give an IRCAD folder or 3Dircadb1.zip)")
    paths = LocalPaths(Path(args.workdir).resolve())
    knobs = pipeline_knobs(args)
    print(f"running the ctseg pipeline on {data_root} (work dir {paths.workdir})", flush=True)
    progress = StageProgress(paths.metadata_path)
    progress.start()
    started = time.time()
    failure = None
    try:
        run_local(data_root=str(data_root.resolve()), workdir=paths.workdir, **knobs)
    except Exception as e:  # the summary below says which step failed and why
        failure = e
    finally:
        progress.finish()
    print_run_summary(paths, started_at=started, failure=failure)
    return 1 if failure else 0
