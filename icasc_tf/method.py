"""ICASC in one screen (docs/method.md §1), as plain functions; ``ICASC`` wires them into Keras.

One tapped forward pass gives the inner and last feature maps F and the logits (``class_maps``:
the same for any layers and classes, in inference mode); the
gradients dY/dF of the target's and the most confusing class's scores give their
attention maps at both layers; the last-layer target map gives a mask; three per-sample
losses compare the maps inside it. Called under an outer ``tf.GradientTape``, the
gradients dY/dF are themselves differentiated (second-order terms, §1.6), unless
``second_order=False`` detaches them (first order: what the public PyTorch port computes).
"""

import math

import tensorflow as tf

from icasc_tf import losses as L
from icasc_tf.selection import confusing_one_hot, probabilities, target_one_hot

ATTENTION_TERMS = ("as_inner", "as_last", "ac")
# Diagnostics, not losses: 1 where the target's map is all zero at that layer. Such a sample
# leaves all three terms at once (zero mask: both L_AS are 0, L_AC sits at theta, no gradient).
ZERO_MAP_TERMS = ("zero_target_inner", "zero_target_last")


def check_hyperparameters(loss_weights, sigma, omega, theta, prefix=""):
    """The ICASC hyperparameters as floats, refused outside their meaningful range.

    The one home of these ranges (``ICASC(...)`` and the training command both call it; ``prefix``
    is ``"--"`` for flags). Out of range, the attention losses go silently dead: with
    ``sigma >= 1`` the mask is zero everywhere, so both separation terms are 0 and the
    consistency term a constant (what the public PyTorch port does by accident).
    """
    try:
        weights = tuple(float(w) for w in loss_weights)
    except (TypeError, ValueError):
        weights = ()
    if len(weights) != 3 or not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(
            f"{prefix}loss_weights must be three finite non-negative numbers, the weights of (L_AS^in, L_AS^la, "
            f"L_AC); got {loss_weights}."
        )
    checks = (
        ("sigma", sigma, lambda v: 0 < v < 1, "in (0, 1): the mask threshold as a fraction of the map's maximum "
         "(at 1 or above the mask is zero everywhere and the attention losses are dead)"),
        ("omega", omega, lambda v: v > 0, "> 0: the mask's sharpness"),
        ("theta", theta, lambda v: 0 <= v <= 1, "in [0, 1]: the share of the inner map the consistency term asks "
         "to lie inside the mask"),
    )
    values = []
    for name, value, ok, meaning in checks:
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and ok(number)):
            raise ValueError(f"{prefix}{name} must be {meaning}; got {value}.")
        values.append(number)
    return (weights, *values)


def class_gradients(tap, images, choose, *, training, head=None, dtype=tf.float32):
    """Feature maps, logits and, per class selection, dY/dF at every tapped layer, from one forward pass.

    ``tap(images)`` returns ``[F_1, ..., F_n, logits]``. ``choose(logits)`` returns selectors
    ``[B, C]`` (one-hot or multi-hot; Y is the sum of the selected scores), one list of n
    gradients each. With ``head`` (``bn_mode="exact"``), ``head(F_1)`` recomputes
    ``[F_2, ..., F_n, logits]`` in inference mode, so each sample's gradient is its own despite
    BatchNormalization (§1.1).
    """
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(images)
        *features, logits = tap(images, training=training)
        scores = logits
        if head is not None:
            tape.watch(features[0])
            *rest, scores = head(features[0], training=False)
            features = [features[0], *rest]
        scores = tf.cast(scores, dtype)
        totals = [tf.reduce_sum(scores * tf.cast(s, dtype), axis=-1) for s in choose(logits)]
    gradients = [tape.gradient(total, features) for total in totals]
    del tape
    return features, logits, gradients


def maps_from_gradients(attention, features, gradients, dtype=tf.float32):
    """Per class selection, one map ``[B, h, w]`` per layer, from that layer's F and dY/dF."""
    features = [tf.cast(f, dtype) for f in features]
    return [[attention(f, tf.cast(g, dtype)) for f, g in zip(features, selected)] for selected in gradients]


def class_maps(tap, layers, images, attention, classes=None, top_k=1, multi_label=False):
    """Maps at the tap's layers for given classes, or the top-k predicted ones (inference mode).

    ``tap(images)`` returns one feature map per name of ``layers``, then the class scores;
    ``attention`` is a map function of ``icasc_tf.attention``. Returns NumPy ``classes`` and
    ``probabilities`` ``[B, k]`` and ``maps``: ``{layer: [B, k, h, w]}``.
    """
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape.rank != 4:
        raise ValueError(f"images must be a [batch, height, width, channels] batch; got {tuple(images.shape)}.")
    chosen = {}

    def choose(logits):
        probs = probabilities(logits, multi_label)
        if classes is None:
            ids = tf.math.top_k(probs, k=top_k).indices
        else:
            ids = tf.convert_to_tensor(classes, tf.int32)
            ids = ids[:, None] if ids.shape.rank == 1 else ids
        chosen.update(classes=ids, probabilities=tf.gather(probs, ids, batch_dims=1))
        return [tf.one_hot(ids[:, j], probs.shape[-1]) for j in range(ids.shape[1])]

    features, _, gradients = class_gradients(tap, images, choose, training=False)
    maps = maps_from_gradients(attention, features, gradients)
    return {
        "classes": chosen["classes"].numpy(),
        "probabilities": chosen["probabilities"].numpy(),
        "maps": {layer: tf.stack([m[i] for m in maps], axis=1).numpy() for i, layer in enumerate(layers)},
    }


def separation_and_consistency(target, confusing, *, sigma=0.55, omega=100.0, theta=0.8, mask_gradient=False):
    """L_AS^in, L_AS^la and L_AC per sample (ICCV Eqs. 3-5) from (inner, last) map pairs,
    and the ``ZERO_MAP_TERMS`` diagnostics."""
    (a_inner_t, a_last_t), (a_inner_c, a_last_c) = target, confusing
    mask_last = L.target_mask(a_last_t, sigma=sigma, omega=omega)
    mask_inner = L.resize_map(mask_last, tf.shape(a_inner_t)[1:3])
    if not mask_gradient:  # the mask is a target (docs/method.md §1.4 decision)
        mask_last, mask_inner = tf.stop_gradient(mask_last), tf.stop_gradient(mask_inner)
    return {
        "as_inner": L.attention_separation_loss(a_inner_t, a_inner_c, mask_inner),
        "as_last": L.attention_separation_loss(a_last_t, a_last_c, mask_last),
        "ac": L.attention_consistency_loss(a_inner_t, mask_inner, theta=theta),
        "zero_target_inner": _all_zero(a_inner_t),
        "zero_target_last": _all_zero(a_last_t),
    }


def _all_zero(maps):
    """1.0 per sample whose map ``[B, h, w]`` has no positive value (ReLU killed it), else 0.0."""
    return tf.stop_gradient(tf.cast(tf.reduce_max(maps, axis=[1, 2]) <= 0, maps.dtype))


def attention_terms(tap, images, labels, *, attention, num_classes, multi_label, training,
                    head=None, second_order=True, dtype=tf.float32, **mask_options):
    """The per-sample attention terms ``{as_inner, as_last, ac}`` and the ``logits``.

    ``mask_options``: ``sigma``, ``omega``, ``theta``, ``mask_gradient`` of
    ``separation_and_consistency``.
    """

    def target_and_confusing(logits):
        target = target_one_hot(labels, num_classes, multi_label)
        return [target, confusing_one_hot(target, logits)]

    features, logits, gradients = class_gradients(
        tap, images, target_and_confusing, training=training, head=head, dtype=dtype
    )
    if not second_order:
        gradients = tf.nest.map_structure(tf.stop_gradient, gradients)
    target, confusing = maps_from_gradients(attention, features, gradients, dtype)
    terms = separation_and_consistency(target, confusing, **mask_options)
    terms["logits"] = logits
    return terms


def classification_loss(labels, logits, multi_label, dtype=tf.float32):
    """L_C per sample: softmax cross-entropy, or the multilabel soft margin."""
    logits = tf.cast(logits, dtype)
    if multi_label:
        return L.multilabel_soft_margin_loss(labels, logits)
    return L.softmax_cross_entropy_loss(labels, logits)


def weighted_total(terms, weights, scale=1.0):
    """Per-sample total (ICCV Eq. 6): L_C + scale * sum of the weighted attention terms.

    Zero-weight terms stay out of the sum, and so out of the gradient graph.
    """
    attention = [w * terms[n] for n, w in zip(ATTENTION_TERMS, weights) if w > 0 and n in terms]
    if not attention:
        return terms["classification_loss"]
    return terms["classification_loss"] + tf.cast(scale, terms["classification_loss"].dtype) * tf.add_n(attention)
