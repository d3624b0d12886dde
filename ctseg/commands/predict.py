"""`ctseg predict SERIES --model SERVING_DIR_OR_VERSION --out OUT`: segment the liver of one CT series."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "predict", help="segment the liver of one patient's CT series with a pushed model",
        description="Run the pushed model on one patient's CT series (a folder or zip of DICOM slices, or an "
                    "IRCAD patient folder) and write the liver as a DICOM Segmentation (seg.dcm), as "
                    "IRCAD-style masks (MASKS_DICOM/liver/image_N), its volume (summary.json) and an "
                    "overlay montage (overlay.png). "
                    "It also says when the series is unlike what the model was trained on, from the training "
                    "profile the model carries (assets.extra/, written by the Trainer): before the model runs, "
                    "slice thickness and pixel spacing against the training range, the darkest, brightest, mean "
                    "and spread of HU per slice against the ranges of a CT slice and, as histograms, against the "
                    "training slices (Jensen-Shannon divergence; thresholds in schemas/in_distribution.pbtxt); "
                    "after it runs, the predicted volume and the fraction of slices with liver against the "
                    "training patients, and the pieces of liver before the clean-up against the model's eval "
                    "patients. Each finding is a 'warning: out of distribution:' line and an entry of "
                    "summary.json's out_of_distribution, and is named in seg.dcm's ContentDescription.")
    p.add_argument("series", help="folder or .zip of one patient's CT DICOM slices, or an IRCAD patient folder")
    p.add_argument("--model", required=True,
                   help="the Pusher's serving dir (highest numeric version is used), one version dir in it, or a "
                        "Trainer output (<pipeline_root>/Trainer/model/<id>/Format-Serving); a model that is not "
                        "blessed, or whose blessing cannot be found, gets a warning")
    p.add_argument("--metadata", metavar="SQLITE",
                   help="ML Metadata store in which to look up a Trainer model's blessing (default: the work "
                        "dir's metadata.sqlite beside the pipeline root or serving dir, if there is one)")
    p.add_argument("--require-blessed", action="store_true",
                   help="refuse a model that is not blessed or whose blessing cannot be determined")
    p.add_argument("--require-in-distribution", action="store_true",
                   help="make any out-of-distribution finding an error: nothing is written (for a finding about "
                        "the series, the model does not even run); also refuses a model without a training profile")
    p.add_argument("--out", required=True, help="output folder (created if missing)")
    p.add_argument("--batch-size", type=int, default=16, help="slices per model call (default 16)")
    p.add_argument("--cleanup", default="on",
                   help="clean-up of the mask, as the evaluator scores it: 'on' (default: no liver where the HU "
                        "cannot be liver tissue, keep the largest connected component, drop end slices of another "
                        "tissue, fill holes), 'off', or a comma list of "
                        "parenchyma_hu,largest_component,foreign_ends,fill_holes")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier prediction in --out (a folder holding only what predict writes, its "
                        "summary.json among them); any other non-empty folder is refused")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    from pathlib import Path

    from ctseg.errors import CtsegError
    from ctseg.interrupts import interrupts_raise
    from ctseg.postprocess import Cleanup

    if args.batch_size < 1:
        raise CtsegError("--batch-size must be at least 1")
    try:
        cleanup = Cleanup.parse(args.cleanup)
    except ValueError as e:
        raise CtsegError(f"--cleanup: {e}") from e
    if not Path(args.series).exists():
        raise CtsegError(f"{args.series}: no such file or folder")
    from ctseg.blessing import check_blessing
    from ctseg.predict import check_output_dir, predict, read_locations  # TensorFlow is imported later, by the model

    check_output_dir(args.out, args.overwrite, read_locations(args.series, args.model, args.metadata))
    blessing = check_blessing(args.model, args.metadata)
    if args.require_blessed and blessing.blessed is not True:
        state = "not blessed" if blessing.blessed is False else "of unknown blessing"
        raise CtsegError(f"--require-blessed: model {blessing.model_dir} is {state}: {blessing.reason}")
    if blessing.warning():
        print(f"warning: {blessing.warning()}", file=sys.stderr)
    check = in_distribution_check(args.model, args.metadata, args.require_in_distribution)
    extra = {**blessing.summary(), "training_profile": check.profile.source if check else None}
    with interrupts_raise():  # SIGTERM and SIGHUP as Ctrl-C: the half-written output is removed
        result = predict(args.series, args.model, args.out, batch_size=args.batch_size,
                         progress=sys.stderr.isatty(), overwrite=args.overwrite, cleanup=cleanup,
                         extra_summary=extra, in_distribution=check)
    for finding in result.get("out_of_distribution") or []:
        print(f"warning: out of distribution: {finding['message']}", file=sys.stderr)
    for note in result.get("generated_uids", []) + result.get("derived_attributes", []):
        print(f"note: {note}", file=sys.stderr)
    for skipped in result.get("skipped_files", []):
        print(f"note: skipped {skipped}", file=sys.stderr)
    print(f"liver volume {result['volume_ml']:.1f} ml in {result['slices_with_liver']} of {result['slices']} "
          f"slices (model version {result['model_version']}); wrote seg.dcm, MASKS_DICOM/liver, "
          f"summary.json, overlay.png to {args.out}")
    return 0


def in_distribution_check(model, metadata, require: bool):
    """The out-of-distribution check for the model's training profile (from its folder, else ML Metadata);
    None, with a warning, for a model without one; a CtsegError then if `require`."""
    import sys

    from ctseg.errors import CtsegError
    from ctseg.predict.ood import Check
    from ctseg.profile import find_profile
    from ctseg.serving import resolve_model_dir

    model_dir = resolve_model_dir(model)
    profile = find_profile(model_dir, metadata)
    if profile is None:
        why = (f"model {model_dir} carries no training profile (assets.extra/training_profile.json) and ML "
               f"Metadata records none for it, so the series cannot be compared with its training data")
        if require:
            raise CtsegError(f"--require-in-distribution: {why}")
        print(f"warning: {why}", file=sys.stderr)
        return None
    return Check(profile, require)
