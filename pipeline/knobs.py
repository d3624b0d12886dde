"""The check of all of `create_pipeline`'s knobs before anything is built: the functions each component
and the Trainer apply, called by `create_pipeline` and by the command line (with its option names),
before TensorFlow or TFX is imported."""
from __future__ import annotations

from typing import Any, Mapping

from ctseg.components.evaluation import check_blessing
from ctseg.errors import CtsegError
from ctseg.features import check_image_size
from ctseg.knobs import DEFAULT_SPLIT_RATIOS, Spelling, check_ingest, check_steps, plain_name


def trainer_config(custom_config: Mapping[str, Any] | None, image_size: int | None, spell: Spelling = plain_name):
    """The Trainer's `UnetConfig` (what run_fn will build) for ingest's `image_size` (None: the preset's)."""
    from ctseg.models.unet.config import UnetConfig

    config = dict(custom_config or {})
    if image_size is not None:
        config.setdefault("image_size", image_size)
    try:
        unet = UnetConfig.from_custom_config(config)
    except CtsegError as e:
        raise CtsegError(f"the Trainer's settings ({spell('image_size')}, {spell('custom_config')}): {e}") from None
    if image_size is not None and unet.image_size != image_size:
        raise CtsegError(f"{spell('image_size')} {image_size} and the Trainer's image_size {unet.image_size} "
                         "differ: the model must be trained at the size ingest writes")
    return unet


def check_pipeline_knobs(*, organ: str, image_size: int | None, custom_config: Mapping[str, Any] | None,
                         split_ratios: Mapping[str, float] | None, max_bad_fraction: float, dice_threshold: float,
                         dice_tolerance: float, cleanup: str, train_steps: int | None, eval_steps: int | None,
                         spell: Spelling = plain_name) -> int:
    """Every knob of `create_pipeline` that a component or the Trainer checks; returns ingest's image
    size (the Trainer's preset's when `image_size` is None)."""
    if image_size is not None:
        check_image_size(image_size, spell("image_size"))
    size = trainer_config(custom_config, image_size, spell).image_size
    check_ingest(organ, size, max_bad_fraction, split_ratios or DEFAULT_SPLIT_RATIOS, spell)
    check_blessing(dice_threshold, dice_tolerance, cleanup, spell)
    check_steps(train_steps, spell("train_steps"))
    check_steps(eval_steps, spell("eval_steps"))
    return size
