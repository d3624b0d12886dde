"""ValidationGate: the TFX component that stops a run on anomalies before any GPU hour is spent."""
from __future__ import annotations

from typing import Optional

from tfx import types
from tfx.dsl.components.base import base_component, executor_spec
from tfx.types import standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from ctseg.code_version import CODE_VERSION_KEY, code_version
from ctseg.components.validation import executor

STATISTICS_KEY = "statistics"
ANOMALIES_KEY = "anomalies"
SCHEMA_KEY = "schema"
EXAMPLES_KEY = "examples"
REPORT_KEY = "report"
SKEW_THRESHOLD_KEY = "skew_threshold"
FAIL_ON_SKEW_KEY = "fail_on_skew"
UNIFORM_SOURCE_SIZE_KEY = "require_uniform_source_size"


class ValidationReport(types.Artifact):
    """The gate's readable verdict (report.txt, findings.json); published only when the data passed."""
    TYPE_NAME = "ctseg.ValidationReport"  # KFP needs <namespace>.<Name> for custom artifact types


class ValidationGateSpec(types.ComponentSpec):
    PARAMETERS = {
        SKEW_THRESHOLD_KEY: ExecutionParameter(type=float, optional=True),
        FAIL_ON_SKEW_KEY: ExecutionParameter(type=bool, optional=True),
        UNIFORM_SOURCE_SIZE_KEY: ExecutionParameter(type=bool, optional=True),
        CODE_VERSION_KEY: ExecutionParameter(type=str, optional=True),  # in TFX's cache key: changed code reruns
    }
    INPUTS = {
        STATISTICS_KEY: ChannelParameter(type=standard_artifacts.ExampleStatistics),
        ANOMALIES_KEY: ChannelParameter(type=standard_artifacts.ExampleAnomalies),
        SCHEMA_KEY: ChannelParameter(type=standard_artifacts.Schema),
        # Read only when there are anomalies, to name the patients behind them.
        EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples, optional=True),
    }
    OUTPUTS = {REPORT_KEY: ChannelParameter(type=ValidationReport)}


class ValidationGate(base_component.BaseComponent):
    """Fails the run with every anomaly in words; reports train/eval skew of the features that matter.

    Make the Trainer wait for it with `trainer.add_upstream_node(gate)`: a failed gate means the
    Trainer, Evaluator and Pusher never run.
    """

    SPEC_CLASS = ValidationGateSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(executor.Executor)

    def __init__(self, statistics: types.BaseChannel, anomalies: types.BaseChannel, schema: types.BaseChannel,
                 examples: Optional[types.BaseChannel] = None, skew_threshold: Optional[float] = None,
                 fail_on_skew: bool = False, require_uniform_source_size: bool = True):
        """`skew_threshold` overrides the schema's Jensen-Shannon thresholds; skew fails the run only with
        `fail_on_skew`."""
        super().__init__(spec=ValidationGateSpec(
            statistics=statistics, anomalies=anomalies, schema=schema, examples=examples,
            skew_threshold=skew_threshold, fail_on_skew=fail_on_skew,
            require_uniform_source_size=require_uniform_source_size,
            code_version=code_version(executor.Executor.__module__),
            report=types.Channel(type=ValidationReport)))
