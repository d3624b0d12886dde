"""ctseg: liver segmentation from CT DICOM with TFX."""

__version__ = "0.1.0"


def __getattr__(name):
    # TFX's Kubeflow v2 entrypoint imports a custom artifact type by its schema title, `ctseg.ValidationReport`
    # (tfx/orchestration/kubeflow/v2/container/kubeflow_v2_entrypoint_utils.py:252-283, TFX 1.15.1).
    if name == "ValidationReport":
        from ctseg.components.validation.component import ValidationReport

        return ValidationReport
    raise AttributeError(f"module 'ctseg' has no attribute {name!r}")
