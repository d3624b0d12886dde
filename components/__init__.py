"""Custom TFX components of the ctseg pipeline."""
