"""icasc_tf: attention separability and consistency (ICASC) and painless attention for Keras 3."""

import sys

# Our commands (icasc-train, ..., scripts/*.py) load TensorFlow without its start-up notes; it must
# happen here, before anything loads it (icasc_tf/cli/command.py says why and how). A library
# import leaves the user's process alone.
if "tensorflow" not in sys.modules:
    from icasc_tf.cli.command import quiet_tensorflow_start_up

    quiet_tensorflow_start_up()

# Registers the custom layers of backbones and painless attention, so that
# keras.models.load_model works after `import icasc_tf`.
from icasc_tf import backbones as _backbones  # noqa: F401
from icasc_tf import painless as _painless  # noqa: F401
from icasc_tf.attention import (
    channel_weighted_attention,
    grad_cam,
    grad_cam_plus_plus,
    pixel_wise_attention,
)
from icasc_tf.explain import explain
from icasc_tf.fit_callbacks import AttentionImages, AttentionWarmup
from icasc_tf.model import ICASC

__all__ = [
    "ICASC",
    "AttentionImages",
    "AttentionWarmup",
    "explain",
    "channel_weighted_attention",
    "grad_cam",
    "grad_cam_plus_plus",
    "pixel_wise_attention",
]
__version__ = "0.1.0"
