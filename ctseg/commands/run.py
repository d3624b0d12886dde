"""`ctseg run`: the whole pipeline on this machine (LocalDagRunner, ML Metadata in SQLite)."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from ctseg.commands import DEFAULT_WORKDIR
from ctseg.components.evaluation import DEFAULT_DICE_THRESHOLD, DEFAULT_DICE_TOLERANCE


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
    p.add_argument("--dice-threshold", type=float, default=DEFAULT_DICE_THRESHOLD,
                   help=f"bless only at or above this mean patient Dice (default {DEFAULT_DICE_THRESHOLD})")
    p.add_argument("--dice-tolerance", type=float, default=DEFAULT_DICE_TOLERANCE,
                   help=f"how much worse than the model serving a new one may be (default {DEFAULT_DICE_TOLERANCE})")
    p.add_argument("--max-bad-fraction", type=float, default=0.0,
                   help="fraction of a patient's slices that may be quarantined before the run fails")
    p.add_argument("--config", default="{}",
                   help="more Trainer custom_config keys as JSON, e.g. '{\"seed\": 1, \"context_slices\": 2}' "
                        "(models/unet/trainer.py lists them)")
    p.add_argument("--cleanup", default="on",
                   help="the evaluator's 3D clean-up of predictions: on (default), off, or largest_component,fill_holes")
    p.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")
    p.add_argument("--wait", action="store_true",
                   help="if another `ctseg run` is using the work dir, start when it ends (default: refuse)")
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


def _fraction(value: float, option: str) -> None:
    from ctseg.errors import CtsegError

    if not 0.0 <= value <= 1.0:
        raise CtsegError(f"{option} must be between 0 and 1, got {value}")


def check_knobs(args) -> dict:
    """Every knob checked in words before anything heavy runs; returns the Trainer's custom_config.

    The model's own checks (`UnetConfig.validate`: epochs, 2**depth) and ingest's image-size bounds
    (`ctseg.features`) are the ones the pipeline would apply, so the CLI cannot disagree with them.
    """
    from ctseg.errors import CtsegError
    from ctseg.features import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from ctseg.models.unet.config import PRESETS, UnetConfig

    if args.epochs is not None and args.epochs < 1:
        raise CtsegError(f"--epochs must be at least 1, got {args.epochs}")
    preset = PRESETS[args.preset]
    size = preset["image_size"] if args.image_size is None else args.image_size
    if not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:
        raise CtsegError(f"--image-size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {size}")
    step = 2 ** preset["depth"]
    if size % step:
        raise CtsegError(f"--image-size {size} must be divisible by {step} (2**depth of the {args.preset} preset's "
                         f"UNET), e.g. {max(step, size // step * step)} or {(size // step + 1) * step}")
    _fraction(args.dice_threshold, "--dice-threshold")
    _fraction(args.dice_tolerance, "--dice-tolerance")
    _fraction(args.max_bad_fraction, "--max-bad-fraction")
    try:
        extra = json.loads(args.config)
    except json.JSONDecodeError as e:
        raise CtsegError(f"--config is not JSON: {e}") from e
    if not isinstance(extra, dict):
        raise CtsegError(f"--config must be a JSON object of custom_config keys, not {args.config!r}")
    try:
        from ctseg.postprocess import Cleanup
        Cleanup.parse(args.cleanup)
    except ValueError as e:
        raise CtsegError(f"--cleanup: {e}") from e
    if not args.data:
        if args.phantom_patients < 2:
            raise CtsegError(f"--phantom-patients must be at least 2 (one to train, one to evaluate), "
                             f"got {args.phantom_patients}")
        if args.phantom_slices < 1:
            raise CtsegError(f"--phantom-slices must be at least 1, got {args.phantom_slices}")
    config = {"preset": args.preset, "image_size": size, **extra}
    if args.epochs is not None:
        config["epochs"] = args.epochs
    UnetConfig.from_custom_config(config)  # anything the checks above missed, in the model's words
    return config


def pipeline_knobs(args) -> dict:
    """`create_pipeline` keyword arguments from the parsed command line, every knob checked first."""
    config = check_knobs(args)
    return dict(organ=args.organ, image_size=config["image_size"], custom_config=config,
                dice_threshold=args.dice_threshold, dice_tolerance=args.dice_tolerance,
                max_bad_fraction=args.max_bad_fraction, enable_cache=not args.no_cache, cleanup=args.cleanup)


def run(args) -> int:
    from ctseg.errors import CtsegError
    from ctseg.workdir import WorkdirLock, prepare_workdir

    if args.data and not Path(args.data).exists():
        raise CtsegError(f"--data {args.data} does not exist (give an IRCAD folder or 3Dircadb1.zip)")
    knobs = pipeline_knobs(args)
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
