"""icasc_tf: attention separability and consistency (ICASC) and painless attention for Keras 3."""

from icasc_tf.attention import (
    channel_weighted_attention,
    grad_cam,
    grad_cam_plus_plus,
    pixel_wise_attention,
)
from icasc_tf.model import ICASC

__all__ = [
    "ICASC",
    "channel_weighted_attention",
    "grad_cam",
    "grad_cam_plus_plus",
    "pixel_wise_attention",
]
__version__ = "0.1.0"
