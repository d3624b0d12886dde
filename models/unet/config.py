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

NORMALIZATIONS = ("none", "instance")

PRESETS: dict[str, dict[str, Any]] = {
    # A few CPU minutes on the 128 px phantom; 12 base filters beat 8 on the phantom and on real CT at 1.1x the
    # training time (docs/BENCHMARKS.md, "Capacity and schedule"); 20 epochs of at least 40 batches (800 steps)
    # scored as 25 (1,000) did on real CT in four seeds ("20 epochs or 25"), and with instance normalisation 18
    # (720) as 20 did, in 9/10 of the time that the normalisation had lengthened ("18 epochs").
    "small": dict(image_size=128, depth=4, base_filters=12, dropout=0.1, batch_size=16, epochs=18),
    # The blog post's network: 256 px, 32..256 filters per level and 512 in the bottleneck, dropout 0.5.
    "full": dict(image_size=256, depth=4, base_filters=32, dropout=0.5, batch_size=16, epochs=40, normalization="none"),
}


@dataclasses.dataclass(frozen=True)
class UnetConfig:
    preset: str = "small"
    image_size: int = 128
    depth: int = 4
    base_filters: int = 12
    dropout: float = 0.1
    # After each 3x3 conv, "instance": every channel of every slice to zero mean and unit variance, then the learnt
    # scale and offset, as nnU-Net does; "none": the blog post's network. Instance normalisation took the phantom
    # from 0.945 to 0.955 and the real-CT spread of four seeds from 0.029 to 0.010 (docs/BENCHMARKS.md, run R).
    normalization: str = "instance"
    context_slices: int = 1  # 2.5D: k neighbours above and below each slice as input channels (measured: BENCHMARKS)
    window_center: float = LIVER_WINDOW[0]
    window_width: float = LIVER_WINDOW[1]
    epochs: int = 18
    # Batches an epoch, at least (nnU-Net fixes an epoch at 250 batches whatever the data): with one pass an epoch,
    # a few patients give a few hundred steps in all, and the network stops at a position prior (a liver-shaped
    # blob wherever livers usually lie) before it learns the contrast (docs/BENCHMARKS.md, "Low contrast").
    min_epoch_steps: int = 40
    batch_size: int = 16
    learning_rate: float = 1e-3
    dice_weight: float = 1.0
    bce_weight: float = 1.0
    keep_empty_probability: float = 0.4
    # No left-right flip by default: the liver is on the patient's right and the heart on the left, and a
    # flipped training slice teaches a left-sided liver where the heart lies (docs/BENCHMARKS.md, run F).
    flip_probability: float = 0.0
    rotate_probability: float = 0.3
    max_rotation_degrees: float = 10.0
    scale_probability: float = 0.3
    # Zoom 0.7-1.3 (nnU-Net's default scaling is 0.7-1.4): the field of view and the patient's size set how big a
    # liver is on the model's 128 px, and a narrow zoom taught where a liver usually ends (docs/BENCHMARKS.md, run P).
    max_scale: float = 0.3
    elastic_probability: float = 0.2
    elastic_max_px: float = 3.0
    hu_scale_probability: float = 0.3
    max_hu_scale: float = 0.1
    hu_shift_probability: float = 0.3
    max_hu_shift: float = 30.0
    shading_probability: float = 0.0
    max_shading_hu: float = 50.0
    blur_probability: float = 0.2
    max_blur_sigma_px: float = 1.0
    median_probability: float = 0.2
    # A coarser pixel grid on a quarter of the slices, as nnU-Net does: real series come at 3 mm voxels or noisy
    # 512 px, the phantom always as a smooth 512-to-128 px resampling (docs/BENCHMARKS.md, run Q).
    low_resolution_probability: float = 0.25
    min_resolution_scale: float = 0.5
    noise_probability: float = 0.3
    noise_std_min_hu: float = 5.0
    noise_std_hu: float = 25.0
    # Stochastic weight averaging (SWA, Izmailov et al. 2018; SWAD, Cha et al. 2021, for shifted domains): the mean
    # of the weights at the end of each epoch from this fraction of the epochs on is the trained model (0: off).
    average_weights_from: float = 0.0
    early_stopping_patience: int = 10
    shuffle_buffer: int = 1024
    seed: int = 0
    jit_compile: bool = False  # XLA for the train step; off until a GPU measurement says it helps (docs/BENCHMARKS.md)
    code_version: str = ""  # digest of the code run_fn imports, set by the pipeline so TFX's cache notices changes

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

    @property
    def channels(self) -> int:
        return 2 * self.context_slices + 1

    def validate(self) -> None:
        problems = []
        if self.image_size % (2 ** self.depth):
            problems.append(f"image_size {self.image_size} must be divisible by 2**depth = {2 ** self.depth}")
        problems += [f"{k} must be at least 1, got {getattr(self, k)}"
                     for k in ("depth", "base_filters", "batch_size", "epochs") if getattr(self, k) < 1]
        if self.normalization not in NORMALIZATIONS:
            problems.append(f"normalization {self.normalization!r} must be one of {list(NORMALIZATIONS)}")
        if not 0 <= self.context_slices <= 8:
            problems.append(f"context_slices {self.context_slices} must be 0 to 8 (neighbours on each side)")
        if self.dice_weight < 0 or self.bce_weight < 0 or self.dice_weight + self.bce_weight <= 0:
            problems.append(f"dice_weight {self.dice_weight} and bce_weight {self.bce_weight} must not be negative "
                            "and not both 0")
        if self.window_width <= 0:
            problems.append(f"window_width {self.window_width} must be positive")
        probabilities = {k: getattr(self, k) for k in ("dropout", "keep_empty_probability")}
        probabilities.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                              if f.name.endswith("_probability")})
        problems += [f"{k} = {v} is not in [0, 1]" for k, v in probabilities.items() if not 0.0 <= v <= 1.0]
        if not 0.0 <= self.average_weights_from < 1.0:
            problems.append(f"average_weights_from {self.average_weights_from} must be in [0, 1): the fraction of the "
                            "epochs after which their weights are averaged (0: off)")
        if not 0.0 < self.min_resolution_scale <= 1.0:
            problems.append(f"min_resolution_scale = {self.min_resolution_scale} must be in (0, 1]")
        for k in ("max_scale", "max_hu_scale"):
            if not 0.0 <= getattr(self, k) < 1.0:
                problems.append(f"{k} = {getattr(self, k)} must be in [0, 1)")
        for k in ("max_rotation_degrees", "elastic_max_px", "max_hu_shift", "max_shading_hu", "max_blur_sigma_px",
                  "noise_std_min_hu", "noise_std_hu", "min_epoch_steps"):
            if getattr(self, k) < 0:
                problems.append(f"{k} = {getattr(self, k)} must not be negative")
        if problems:
            raise CtsegError("invalid custom_config: " + "; ".join(problems))
