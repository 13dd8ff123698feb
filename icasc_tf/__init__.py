"""icasc_tf: attention separability and consistency (ICASC) and painless attention for Keras 3."""

import os
import sys

# Our commands (icasc-train, ...) silence TensorFlow's C++ runtime warnings, as scripts/*.py do
# before importing us; TensorFlow reads the variable when it loads, so it must be set here, first.
# A library import leaves the user's environment alone.
if os.path.basename(sys.argv[0] if sys.argv else "").startswith("icasc-"):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
