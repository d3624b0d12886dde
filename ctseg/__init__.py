"""ctseg: liver segmentation from CT DICOM with TFX."""

__version__ = "0.1.0"
