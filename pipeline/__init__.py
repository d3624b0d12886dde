"""The ctseg TFX pipeline: one function builds it (`ctseg.pipeline.pipeline.create_pipeline`); runners are thin
entry points."""
