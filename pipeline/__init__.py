"""The ctseg TFX pipeline: one function builds it (`pipeline.create_pipeline`); runners are thin entry points."""
