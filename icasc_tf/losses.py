"""The ICASC loss terms (ICCV Eqs. 3-6), each per sample (``[B]``).

Per-sample values let the model average over the *global* batch under a
distribution strategy (docs/method.md §1.5). Every denominator carries ``EPSILON`` so
that an all-zero attention map (ReLU killed everything) gives a finite loss and
finite gradients.
"""

import tensorflow as tf

EPSILON = 1e-8


def _spatial_sum(x):
    return tf.reduce_sum(x, axis=[1, 2])


def normalize_by_max(attention):
    """Divide each sample's map by its maximum, so thresholds mean the same at any scale."""
    peak = tf.reduce_max(attention, axis=[1, 2], keepdims=True)
    return attention / (peak + EPSILON)


def target_mask(attention_last, size=None, sigma=0.55, omega=100.0):
    """Soft mask of the target region (ICCV Eq. 4): sigmoid(omega * (A / max A - sigma)).

    The threshold acts on the max-normalised map (docs/method.md §1.4, a decision), so
    ``sigma=0.55`` is 0.55 * max(A). ``size=(h, w)`` resizes it bilinearly, e.g. to the
    inner layer's resolution. Returns ``[B, h, w]``.
    """
    mask = tf.sigmoid(omega * (normalize_by_max(attention_last) - sigma))
    return mask if size is None else resize_map(mask, size)


def resize_map(attention, size):
    """Bilinear resize of ``[B, h, w]`` maps to ``size``, keeping their dtype."""
    resized = tf.image.resize(attention[..., None], size, method="bilinear")[..., 0]
    return tf.cast(resized, attention.dtype)  # resize always returns float32


def attention_separation_loss(a_target, a_confusing, mask):
    """L_AS (ICCV Eq. 3, the arXiv soft IoU): overlap of the two maps inside the mask, in [0, 1]."""
    overlap = _spatial_sum(tf.minimum(a_target, a_confusing) * mask)
    return 2.0 * overlap / (_spatial_sum(a_target + a_confusing) + EPSILON)


def attention_consistency_loss(a_inner, mask, theta=0.8):
    """L_AC (ICCV Eq. 5): theta minus the share of the inner target map inside the mask."""
    inside = _spatial_sum(a_inner * mask) / (_spatial_sum(a_inner) + EPSILON)
    return theta - inside


def multilabel_soft_margin_loss(labels, logits):
    """Mean over classes of sigmoid binary cross-entropy (PyTorch's MultiLabelSoftMarginLoss), ``[B]``."""
    labels = tf.cast(labels, logits.dtype)
    per_class = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits)
    return tf.reduce_mean(per_class, axis=-1)


def softmax_cross_entropy_loss(labels, logits):
    """Softmax cross-entropy from logits and integer labels, ``[B]``."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(labels, tf.int32), logits=logits
    )
