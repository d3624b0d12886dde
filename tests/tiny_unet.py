"""The smallest real model for tests that need one but not its quality: the Trainer's UNET
(`build_unet`) at one level and 8 filters, untrained, exported by `ctseg.serving.export_model` with both
serving signatures exactly as the Trainer exports it."""
from pathlib import Path

SIZE = 32


def export_tiny_unet(export_dir: Path, seed: int = 0, context_slices: int = 0) -> Path:
    """2D by default (slices alone); `context_slices` k > 0: 2.5D, each slice stacked with its k neighbours
    on either side, as `models/unet`'s `serving_model` serves it."""
    import tensorflow as tf

    from ctseg.models.unet.config import UnetConfig
    from ctseg.models.unet.model import build_unet, serving_model
    from ctseg.serving import export_model

    tf.keras.utils.set_random_seed(seed)
    config = UnetConfig(image_size=SIZE, depth=1, base_filters=8, dropout=0.0, context_slices=context_slices)
    export_model(serving_model(build_unet(config), config), SIZE, str(export_dir), context_slices=context_slices)
    return Path(export_dir)
