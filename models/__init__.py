"""Models trained by the pipeline's Trainer (module files for `tfx.v1.components.Trainer`)."""
