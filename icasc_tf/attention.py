"""Class-specific attention maps built from a feature map and the class-score gradient.

Every function takes ``features`` F and ``grads`` g = dY^c/dF, both ``[B, H, W, K]``
(channels last), and returns a non-negative map ``[B, H, W]``: no normalisation, no
resizing, so that the losses can decide both (docs/method.md §1.1). All of them are plain
differentiable tensor expressions, which is what lets the ICASC losses reach the
weights through g (second-order terms, docs/method.md §1.6).
"""

import dataclasses
from collections.abc import Callable

import tensorflow as tf


def grad_cam(features, grads):
    """Grad-CAM: alpha_k = mean_ij g_ijk; A = ReLU(sum_k alpha_k F_k)."""
    alpha = tf.reduce_mean(grads, axis=[1, 2], keepdims=True)
    return tf.nn.relu(tf.reduce_sum(alpha * features, axis=-1))


def channel_weighted_attention(features, grads):
    """A_ch, the paper's default: only positive gradients weigh a channel (ICCV Eq. 2)."""
    alpha = tf.reduce_mean(tf.nn.relu(grads), axis=[1, 2], keepdims=True)
    return tf.nn.relu(tf.reduce_sum(alpha * features, axis=-1))


def pixel_wise_attention(features, grads):
    """A_px (arXiv Eq. 5): the gradient weighs every position, A = ReLU(mean_k g * F)."""
    return tf.nn.relu(tf.reduce_mean(grads * features, axis=-1))


def grad_cam_plus_plus(features, grads):
    """Grad-CAM++ in its closed form under the exponential-score assumption.

    a_ijk = g^2 / (2 g^2 + sum_ab F_abk g^3); alpha_k = sum_ij a_ijk ReLU(g_ijk).
    Where the denominator is zero the numerator is too, and a_ijk is taken as 0.
    """
    g2 = tf.square(grads)
    g3 = g2 * grads
    feature_sum = tf.reduce_sum(features, axis=[1, 2], keepdims=True)
    denominator = 2.0 * g2 + feature_sum * g3
    a = tf.math.divide_no_nan(g2, denominator)
    alpha = tf.reduce_sum(a * tf.nn.relu(grads), axis=[1, 2], keepdims=True)
    return tf.nn.relu(tf.reduce_sum(alpha * features, axis=-1))


@dataclasses.dataclass(frozen=True)
class AttentionMap:
    """A registered map: its function and whether ICASC may train with it."""

    function: Callable
    trainable: bool = True


# The one registry of attention maps: a new map is a function above and one entry here.
ATTENTIONS = {
    "ach": AttentionMap(channel_weighted_attention),
    "gradcam": AttentionMap(grad_cam),
    "apx": AttentionMap(pixel_wise_attention),
    # Grad-CAM++ needs g^3 and is meant for evaluation only (docs/method.md §1.1).
    "gradcampp": AttentionMap(grad_cam_plus_plus, trainable=False),
}


def attention_names(trainable=False):
    """The registered names (with ``trainable``, those ICASC may train with), in registry order."""
    return tuple(name for name, entry in ATTENTIONS.items() if entry.trainable or not trainable)


TRAINABLE_ATTENTIONS = attention_names(trainable=True)  # the training command's choices


def get_attention(name, trainable=False):
    """Look an attention function up by name; ``trainable`` restricts to the training ones."""
    choices = attention_names(trainable)
    if name not in choices:
        raise ValueError(f"Unknown attention {name!r}: choose one of {', '.join(choices)}.")
    return ATTENTIONS[name].function
