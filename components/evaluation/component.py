"""SegmentationEvaluator: TFX's Evaluator contract (ModelEvaluation + ModelBlessing) for a segmentation model.

TFMA computes per-example metrics; volumetric Dice needs every slice of a patient pooled, so this
component scores the model itself and writes the blessing exactly as TFX's Evaluator does: Pusher
and `LatestBlessedModelStrategy` cannot tell the difference.

The baseline is the model actually serving: the newest version in the Pusher's serving directory,
read by the executor itself. No Resolver step is needed, so one mechanism works on TFX's local
runner, on open-source Kubeflow Pipelines (whose backend runs no `resolver` executors) and on
Vertex AI.
"""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types import standard_component_specs as keys
from tfx.types.component_spec import ChannelParameter, ExecutionParameter
from tfx.types.system_executions import Evaluate

from ctseg.code_version import CODE_VERSION_KEY, code_version
from ctseg.components.evaluation import DEFAULT_DICE_THRESHOLD, DEFAULT_DICE_TOLERANCE, check_blessing, executor

DEFAULT_BATCH_SIZE = 32


class SegmentationEvaluatorSpec(types.ComponentSpec):
    PARAMETERS = {
        executor.SPLIT_KEY: ExecutionParameter(type=str),
        executor.DICE_THRESHOLD_KEY: ExecutionParameter(type=float),
        executor.DICE_TOLERANCE_KEY: ExecutionParameter(type=float),
        executor.BATCH_SIZE_KEY: ExecutionParameter(type=int),
        executor.CLEANUP_KEY: ExecutionParameter(type=str, optional=True),
        executor.SERVING_DIR_KEY: ExecutionParameter(type=str, optional=True),
        executor.METADATA_KEY: ExecutionParameter(type=str, optional=True),
        CODE_VERSION_KEY: ExecutionParameter(type=str, optional=True),  # in TFX's cache key: changed code reruns
    }
    INPUTS = {
        keys.EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
        keys.MODEL_KEY: ChannelParameter(type=standard_artifacts.Model),
    }
    OUTPUTS = {
        keys.EVALUATION_KEY: ChannelParameter(type=standard_artifacts.ModelEvaluation),
        keys.BLESSING_KEY: ChannelParameter(type=standard_artifacts.ModelBlessing),
    }
    TYPE_ANNOTATION = Evaluate


class SegmentationEvaluator(base_component.BaseComponent):
    """Scores `model`, and the newest model serving under `serving_dir` as its baseline, on one split.

    Blessed when the mean per-patient volumetric Dice >= `dice_threshold` and, with a baseline,
    not below the baseline's by more than `dice_tolerance`; the model already serving is not blessed
    again. Without `serving_dir` the threshold alone decides. `metadata` ("sqlite:PATH" or
    "grpc:HOST:PORT", optional) is the ML Metadata store in which to look up the baseline's Model
    artifact id, recorded with its path.
    Both models' predictions go through the 3D clean-up `cleanup` ('on', 'off' or a comma list of its
    steps: `ctseg.postprocess.Cleanup`) before scoring, as `ctseg predict` applies it.
    """

    SPEC_CLASS = SegmentationEvaluatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, examples: types.BaseChannel, model: types.BaseChannel, *,
                 serving_dir: Optional[str] = None, metadata: Optional[str] = None,
                 dice_threshold: float = DEFAULT_DICE_THRESHOLD,
                 dice_tolerance: float = DEFAULT_DICE_TOLERANCE,
                 split: str = "eval", batch_size: int = DEFAULT_BATCH_SIZE, cleanup: str = "on"):
        cleanup = check_blessing(dice_threshold, dice_tolerance, cleanup)  # here, not in the executor
        spec = SegmentationEvaluatorSpec(
            examples=examples, model=model, serving_dir=serving_dir, metadata=metadata,
            split=split, dice_threshold=float(dice_threshold), dice_tolerance=float(dice_tolerance),
            batch_size=int(batch_size), cleanup=cleanup, code_version=code_version(executor.Executor.__module__),
            evaluation=types.Channel(type=standard_artifacts.ModelEvaluation),
            blessing=types.Channel(type=standard_artifacts.ModelBlessing))
        super().__init__(spec=spec)

