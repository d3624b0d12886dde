"""Builds the ctseg TFX pipeline. Every path and knob is an argument, so the local runner and the
Kubeflow compiler build the same pipeline object (as in TFX's penguin example and templates).
"""
from __future__ import annotations

from typing import Any, Sequence

from tfx import v1 as tfx

from ctseg.code_version import CODE_VERSION_KEY, code_version
from ctseg.components.evaluation import DEFAULT_DICE_THRESHOLD, DEFAULT_DICE_TOLERANCE
from ctseg.pipeline.knobs import check_pipeline_knobs
from ctseg.schemas import SCHEMA_FILE

TRAINER_RUN_FN = "ctseg.models.unet.trainer.run_fn"


def trainer_code_version() -> str:
    """A digest of the code `run_fn`'s module imports, passed to the Trainer so that TFX's cache notices
    code changes.

    The Trainer is given `run_fn` as an import path (it works unchanged inside the cluster's image),
    so TFX cannot fingerprint a module file itself.
    """
    return code_version(TRAINER_RUN_FN.rpartition(".")[0])


def trainer_step(examples, schema=None, *, image_size: int, custom_config: dict[str, Any] | None = None,
                 train_steps: int | None = None, eval_steps: int | None = None):
    """TFX's Trainer running `TRAINER_RUN_FN` on `examples` of `image_size` px, keyed on the model code."""
    config = {"image_size": image_size, CODE_VERSION_KEY: trainer_code_version(), **(custom_config or {})}
    return tfx.components.Trainer(
        run_fn=TRAINER_RUN_FN,
        examples=examples,
        schema=schema,
        train_args=tfx.proto.TrainArgs(num_steps=train_steps) if train_steps else tfx.proto.TrainArgs(),
        eval_args=tfx.proto.EvalArgs(num_steps=eval_steps) if eval_steps else tfx.proto.EvalArgs(),
        custom_config=config,
    )


def serving_pusher(model, model_blessing, serving_dir: str):
    """TFX's Pusher of a blessed model into `serving_dir/<version>/`, the folder TF Serving and `ctseg predict` read."""
    return tfx.components.Pusher(
        model=model,
        model_blessing=model_blessing,
        push_destination=tfx.proto.PushDestination(
            filesystem=tfx.proto.PushDestination.Filesystem(base_directory=serving_dir)),
    )


def create_pipeline(
    *,
    pipeline_name: str,
    pipeline_root: str,
    data_root: str,
    serving_dir: str,
    metadata_connection_config: Any = None,
    schema_file: str = SCHEMA_FILE,
    organ: str = "liver",
    image_size: int | None = None,
    split_ratios: dict[str, float] | None = None,
    max_bad_fraction: float = 0.0,
    custom_config: dict[str, Any] | None = None,
    train_steps: int | None = None,
    eval_steps: int | None = None,
    dice_threshold: float = DEFAULT_DICE_THRESHOLD,
    dice_tolerance: float = DEFAULT_DICE_TOLERANCE,
    cleanup: str = "on",
    beam_pipeline_args: Sequence[str] | None = None,
    enable_cache: bool = True,
    compare_to_serving: bool = True,
    baseline_metadata: str | None = None,
) -> tfx.dsl.Pipeline:
    """Ingest → statistics/schema/validation gate → Trainer → evaluation against the model serving → Pusher.

    `image_size` (ingest's slice size, which the Trainer must match) defaults to the Trainer's: its
    `custom_config` preset's size, or `custom_config["image_size"]`. `split_ratios` defaults to
    IrcadExampleGen's (`DEFAULT_SPLIT_RATIOS`).
    The evaluator's baseline is the newest version under `serving_dir` (what the Pusher last pushed);
    `compare_to_serving=False` judges models on `dice_threshold` alone. `baseline_metadata`
    ("sqlite:PATH" or "grpc:HOST:PORT") is where the evaluator looks up the baseline's Model artifact
    id; by default the SQLite store of `metadata_connection_config`, if any. `cleanup` is the
    evaluator's 3D clean-up of predictions (`ctseg.postprocess.Cleanup`: on, off, or its steps), the
    same that `ctseg predict --cleanup` applies.
    """
    from ctseg.components.evaluation.component import SegmentationEvaluator
    from ctseg.components.ingest.component import IrcadExampleGen
    from ctseg.components.validation import validation_stage

    image_size = check_pipeline_knobs(  # None: the Trainer's preset decides (custom_config "preset", default small)
        organ=organ, image_size=image_size, custom_config=custom_config, split_ratios=split_ratios,
        max_bad_fraction=max_bad_fraction, dice_threshold=dice_threshold, dice_tolerance=dice_tolerance,
        cleanup=cleanup, train_steps=train_steps, eval_steps=eval_steps)

    example_gen = IrcadExampleGen(
        data_root=data_root, organ=organ, image_size=image_size,
        split_ratios=split_ratios, max_bad_fraction=max_bad_fraction)
    examples = example_gen.outputs["examples"]
    validation = validation_stage(examples, schema_file)
    import_schema, gate = validation[2], validation[-1]

    trainer = trainer_step(examples, import_schema.outputs["schema"], image_size=image_size,
                           custom_config=custom_config, train_steps=train_steps, eval_steps=eval_steps)
    trainer.add_upstream_node(gate)

    if baseline_metadata is None and metadata_connection_config is not None:
        sqlite = metadata_connection_config.sqlite.filename_uri
        baseline_metadata = f"sqlite:{sqlite}" if sqlite else None
    evaluator = SegmentationEvaluator(
        examples=examples,
        model=trainer.outputs["model"],
        serving_dir=serving_dir if compare_to_serving else None,
        metadata=baseline_metadata if compare_to_serving else None,
        dice_threshold=dice_threshold,
        dice_tolerance=dice_tolerance,
        cleanup=cleanup,
    )
    pusher = serving_pusher(trainer.outputs["model"], evaluator.outputs["blessing"], serving_dir)
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, *validation, trainer, evaluator, pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args or []),
    )

