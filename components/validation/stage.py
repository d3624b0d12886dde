"""The five validation components between ingest and the Trainer, wired as one stage."""
from __future__ import annotations

from typing import NamedTuple, Optional

from tfx import types
from tfx.components import ExampleValidator, SchemaGen, StatisticsGen
from tfx.components.schema_gen.import_schema_gen.component import ImportSchemaGen

from ctseg.components.validation.component import ValidationGate
from ctseg.schemas import SCHEMA_FILE


class ValidationStage(NamedTuple):
    statistics_gen: StatisticsGen
    schema_gen: SchemaGen
    import_schema_gen: ImportSchemaGen
    example_validator: ExampleValidator
    gate: ValidationGate


def validation_stage(examples: types.BaseChannel, schema_file: str = SCHEMA_FILE, *,
                     skew_threshold: Optional[float] = None, fail_on_skew: bool = False,
                     require_uniform_source_size: bool = True) -> ValidationStage:
    """The five components between ingest and the Trainer; make the Trainer wait with `add_upstream_node(stage.gate)`.

    Statistics are computed with the curated schema so that the pixel bytes are measured as bytes
    (length) instead of being counted as categorical strings; SchemaGen's inferred schema is kept
    for reference when the curated one needs updating.
    """
    import_schema_gen = ImportSchemaGen(schema_file=schema_file)
    curated = import_schema_gen.outputs["schema"]
    statistics_gen = StatisticsGen(examples=examples, schema=curated)
    statistics = statistics_gen.outputs["statistics"]
    schema_gen = SchemaGen(statistics=statistics, infer_feature_shape=True)
    example_validator = ExampleValidator(statistics=statistics, schema=curated)
    gate = ValidationGate(statistics=statistics, anomalies=example_validator.outputs["anomalies"], schema=curated,
                          examples=examples, skew_threshold=skew_threshold, fail_on_skew=fail_on_skew,
                          require_uniform_source_size=require_uniform_source_size)
    return ValidationStage(statistics_gen, schema_gen, import_schema_gen, example_validator, gate)
