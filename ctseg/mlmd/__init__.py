"""What ML Metadata knows about pipeline runs, read through `ml_metadata`'s `MetadataStore` API (contexts,
executions, events, artifacts), so the same code works on the SQLite store of local runs and on a
cluster's MLMD gRPC service. TFX records a pipeline run as a context of type `pipeline_run` named by the
run id, each node as a `node` context named `<pipeline>.<node id>`, and associates every execution with
both. Everything returned is plain data (dicts, dataclasses of JSON types), so `--json` output and
`ctseg run`'s summary need no formatting code of their own.

`store` opens a store; `runs` lists and describes runs; `lineage` walks a model back to its data;
`failures` records what TFX leaves out when a local run stops; `records` turns MLMD messages into plain
data (an artifact's files are decoded by its component: `ctseg.components.evaluation.evaluation_details`,
`ctseg.components.validation.anomalies_details`); `files` reads under an artifact's URI.
"""
