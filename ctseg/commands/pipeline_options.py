"""The pipeline's knobs on the command line, shared by `ctseg run` and `ctseg compile`: one argument
group, one check (`ctseg.knobs.check_pipeline_knobs`, the functions the components call) and one
mapping onto `create_pipeline`'s arguments."""
from __future__ import annotations

import json

from ctseg.components.evaluation import DEFAULT_DICE_THRESHOLD, DEFAULT_DICE_TOLERANCE
from ctseg.errors import CtsegError

# `create_pipeline` arguments that each runner sets itself (paths, store, Beam runner), not knobs.
RUNNER_ARGUMENTS = frozenset({"pipeline_name", "pipeline_root", "data_root", "serving_dir",
                              "metadata_connection_config", "beam_pipeline_args", "baseline_metadata"})
# The Trainer's custom_config comes from three options.
_OPTIONS = {"custom_config": "--preset/--epochs/--config"}


def option_name(knob: str) -> str:
    """A `create_pipeline` argument as the command line spells it."""
    return _OPTIONS.get(knob, "--" + knob.replace("_", "-"))


def add_pipeline_options(parser, *, preset: str, schema_file: str, schema_help: str) -> None:
    """The knobs of `create_pipeline`; `preset` and `schema_file` are the command's defaults."""
    from ctseg.models.unet.config import PRESETS

    g = parser.add_argument_group("pipeline knobs (the same for `ctseg run` and `ctseg compile`)")
    g.add_argument("--organ", default="liver", help="MASKS_DICOM/<organ> to segment (default liver)")
    g.add_argument("--image-size", type=int, default=None, help="slice size after ingest (default: the preset's)")
    g.add_argument("--preset", choices=sorted(PRESETS), default=preset,
                   help="model preset: small for CPU, full for GPU (default: %(default)s)")
    g.add_argument("--epochs", type=int, default=None, help="training epochs (default: the preset's)")
    g.add_argument("--config", default="{}",
                   help="more Trainer custom_config keys as JSON, e.g. '{\"seed\": 1, \"context_slices\": 2}' "
                        "(models/unet/trainer.py lists them)")
    g.add_argument("--train-steps", type=int, default=None,
                   help="training batches in all, split over the epochs (default: each epoch one pass over the "
                        "balanced train split)")
    g.add_argument("--eval-steps", type=int, default=None,
                   help="validation batches per epoch (default: one pass over the eval split)")
    g.add_argument("--split-ratios", default=None, metavar="JSON",
                   help='patients per split by weight, e.g. \'{"train": 0.8, "eval": 0.2}\' (default 0.75/0.25)')
    g.add_argument("--max-bad-fraction", type=float, default=0.0,
                   help="fraction of a patient's slices that may be quarantined before the run fails (default 0)")
    g.add_argument("--dice-threshold", type=float, default=DEFAULT_DICE_THRESHOLD,
                   help=f"bless only at or above this mean patient Dice (default {DEFAULT_DICE_THRESHOLD})")
    g.add_argument("--dice-tolerance", type=float, default=DEFAULT_DICE_TOLERANCE,
                   help=f"how much worse than the model serving a new one may be (default {DEFAULT_DICE_TOLERANCE})")
    g.add_argument("--no-baseline", action="store_true",
                   help="judge each model on --dice-threshold alone, not against the model serving")
    g.add_argument("--cleanup", default="on",
                   help="the evaluator's 3D clean-up of predictions: on (default), off, "
                        "or a comma list such as largest_component,fill_holes")
    g.add_argument("--schema-file", default=schema_file, help=schema_help)
    g.add_argument("--no-cache", action="store_true", help="run every step even if a cached result exists")


def _json_option(text: str | None, option: str, what: str):
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise CtsegError(f"{option} is not JSON: {e}") from None
    if not isinstance(value, dict):
        raise CtsegError(f"{option} must be a JSON object of {what}, not {text!r}")
    return value


def pipeline_knobs(args) -> dict:
    """`create_pipeline` keyword arguments from the parsed options, every knob checked first."""
    from ctseg.pipeline.knobs import check_pipeline_knobs

    config = {"preset": args.preset, **_json_option(args.config, "--config", "custom_config keys")}
    if args.epochs is not None:
        config["epochs"] = args.epochs
    knobs = dict(organ=args.organ, image_size=args.image_size, custom_config=config,
                 split_ratios=_json_option(args.split_ratios, "--split-ratios", "split weights"),
                 max_bad_fraction=args.max_bad_fraction, train_steps=args.train_steps, eval_steps=args.eval_steps,
                 dice_threshold=args.dice_threshold, dice_tolerance=args.dice_tolerance, cleanup=args.cleanup)
    knobs["image_size"] = check_pipeline_knobs(**knobs, spell=option_name)
    return dict(knobs, compare_to_serving=not args.no_baseline, schema_file=args.schema_file,
                enable_cache=not args.no_cache)
