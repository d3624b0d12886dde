"""Hyperparameters of the UNET and its input pipeline, read from the Trainer's `custom_config`.

One frozen dataclass so the model, the input pipeline, the export and the benchmarks agree on
every value; `from_custom_config` rejects unknown keys and impossible values with a `CtsegError`
instead of training something else than was asked for.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ctseg.dicom import LIVER_WINDOW
from ctseg.errors import CtsegError

PRESETS: dict[str, dict[str, Any]] = {
    # Fits a few CPU minutes on the 128 px phantom.
    "small": dict(image_size=128, depth=4, base_filters=8, dropout=0.1, batch_size=16),
    # The blog post's network: 256 px, 32..256 filters per level and 512 in the bottleneck, dropout 0.5.
    "full": dict(image_size=256, depth=4, base_filters=32, dropout=0.5, batch_size=16),
}


@dataclasses.dataclass(frozen=True)
class UnetConfig:
    preset: str = "small"
    image_size: int = 128
    depth: int = 4
    base_filters: int = 8
    dropout: float = 0.1
    window_center: float = LIVER_WINDOW[0]
    window_width: float = LIVER_WINDOW[1]
    epochs: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    bce_weight: float = 1.0
    keep_empty_probability: float = 0.4
    flip_probability: float = 0.5
    rotate_probability: float = 0.3
    max_rotation_degrees: float = 10.0
    median_probability: float = 0.2
    noise_probability: float = 0.2
    noise_std_hu: float = 20.0
    early_stopping_patience: int = 10
    shuffle_buffer: int = 1024
    seed: int = 0
    jit_compile: bool = False  # XLA for the train step; off until a GPU measurement says it helps (docs/BENCHMARKS.md)
    code_version: str = ""  # digest of models/unet set by the pipeline, so TFX's cache notices code changes

    @classmethod
    def from_custom_config(cls, custom: Mapping[str, Any] | None) -> "UnetConfig":
        """Preset values first, then the explicit keys; unknown keys are an error (a typo would be silent)."""
        custom = dict(custom or {})
        preset = custom.get("preset", cls.preset)
        if preset not in PRESETS:
            raise CtsegError(f"custom_config preset {preset!r} is not one of {sorted(PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(custom) - names)
        if unknown:
            raise CtsegError(f"custom_config has unknown keys {unknown}; known keys: {sorted(names)}")
        values = {**PRESETS[preset], **custom, "preset": preset}
        types = {f.name: type(f.default) for f in dataclasses.fields(cls)}
        not_bool = sorted(k for k, v in values.items() if types[k] is bool and not isinstance(v, bool))
        if not_bool:  # bool("false") is True: only real booleans are accepted
            raise CtsegError(f"custom_config {not_bool} must be true or false")
        try:
            values = {k: types[k](v) for k, v in values.items()}
        except (TypeError, ValueError) as e:
            raise CtsegError(f"custom_config value of the wrong type: {e}") from e
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        problems = []
        if self.image_size % (2 ** self.depth):
            problems.append(f"image_size {self.image_size} must be divisible by 2**depth = {2 ** self.depth}")
        if self.depth < 1 or self.base_filters < 1 or self.batch_size < 1 or self.epochs < 1:
            problems.append("depth, base_filters, batch_size and epochs must be at least 1")
        if self.window_width <= 0:
            problems.append(f"window_width {self.window_width} must be positive")
        probabilities = {k: getattr(self, k) for k in ("dropout", "keep_empty_probability", "flip_probability",
                                                       "rotate_probability", "median_probability", "noise_probability")}
        problems += [f"{k} = {v} is not in [0, 1]" for k, v in probabilities.items() if not 0.0 <= v <= 1.0]
        if problems:
            raise CtsegError("invalid custom_config: " + "; ".join(problems))
