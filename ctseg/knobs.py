"""Checks of single pipeline knobs, named as the caller spells them: the components call them for what
they take, and `ctseg.pipeline.knobs.check_pipeline_knobs` (`create_pipeline`, the command line) calls
the same ones. Nothing here imports TensorFlow or TFX.
"""
from __future__ import annotations

import json
from typing import Callable, Mapping

from ctseg.errors import CtsegError
from ctseg.features import check_image_size

SPLITS = ("train", "eval", "test")
DEFAULT_SPLIT_RATIOS = {"train": 0.75, "eval": 0.25}
# How a knob is named in a message: its `create_pipeline` name by default, its option on the command line.
Spelling = Callable[[str], str]


def plain_name(name: str) -> str:
    return name


def check_fraction(value: float, name: str) -> float:
    if not 0.0 <= float(value) <= 1.0:
        raise CtsegError(f"{name} must be between 0 and 1, got {value}")
    return float(value)


def check_organ(organ: str, name: str = "organ") -> str:
    if not organ or "/" in organ or organ.startswith("."):
        raise CtsegError(f"{name} must be the name of a MASKS_DICOM folder such as 'liver', got {organ!r}")
    return organ


def parse_split_ratios(ratios: Mapping[str, float] | str, name: str = "split_ratios") -> dict[str, float]:
    """Validated split → weight, normalised to sum to 1, in the order train, eval, test."""
    if isinstance(ratios, str):
        try:
            ratios = json.loads(ratios)
        except json.JSONDecodeError as e:
            raise CtsegError(f"{name} is not JSON: {ratios!r}") from e
    if not isinstance(ratios, Mapping) or not {"train", "eval"} <= set(ratios) or set(ratios) - set(SPLITS):
        raise CtsegError(f"{name} must name train and eval (and optionally test), got {ratios!r}")
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in ratios.values()):
        raise CtsegError(f"{name} must be positive numbers, got {ratios!r}")
    total = float(sum(ratios.values()))
    return {split: ratios[split] / total for split in SPLITS if split in ratios}


def check_ingest(organ: str, image_size: int, max_bad_fraction: float, split_ratios: Mapping[str, float] | str,
                 spell: Spelling = plain_name) -> None:
    """IrcadExampleGen's knobs."""
    check_organ(organ, spell("organ"))
    check_image_size(image_size, spell("image_size"))
    check_fraction(max_bad_fraction, spell("max_bad_fraction"))
    parse_split_ratios(split_ratios, spell("split_ratios"))


def check_steps(value: int | None, name: str) -> None:
    if value is not None and int(value) < 1:
        raise CtsegError(f"{name} must be at least 1 when given, got {value}")
