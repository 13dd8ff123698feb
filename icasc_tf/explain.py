"""Class activation maps of any Keras 3 classifier: ``explain(model, images)``.

The maps are those of ``icasc_tf.attention`` (Grad-CAM, A_ch, Grad-CAM++, A_px) at one
feature layer, for given classes or the top-k predicted ones, computed from the gradient of
the class's pre-softmax score (docs/method.md §1.1). ``ICASC.attention_maps`` (both of ICASC's
layers) and the ``AttentionImages`` callback are built on ``class_maps`` below, so the
gradient-to-map code has one home (with ``icasc_tf.method``). Upsampling and overlays are
``icasc_tf.visualize``'s.
"""

import keras
import tensorflow as tf

from icasc_tf import method
from icasc_tf.attention import ATTENTION_FUNCTIONS, get_attention
from icasc_tf.feature_maps import feature_layer, feature_map_names
from icasc_tf.selection import probabilities as class_probabilities

OUTPUTS = ("logits", "probabilities")
_SQUASHING = {"softmax": False, "sigmoid": True}  # activation name -> multi-label probabilities


def _check_images(images):
    images = tf.convert_to_tensor(images, tf.float32)
    if images.shape.rank != 4:
        raise ValueError(f"images must be a [batch, height, width, channels] batch; got {tuple(images.shape)}.")
    return images


def class_maps(tap, images, attention, classes=None, top_k=1, multi_label=False):
    """Maps at the tap's two feature layers for given classes, or the top-k predicted ones.

    ``tap(images)`` returns ``(f_a, f_b, logits)``; ``attention`` is a name of
    ``ATTENTION_FUNCTIONS``. Returns NumPy ``classes`` and ``probabilities`` ``[B, k]`` and
    the maps ``[B, k, h, w]`` of each layer as ``"a"`` and ``"b"``.
    """
    function = get_attention(attention)
    images = _check_images(images)
    chosen = {}

    def choose(logits):
        probs = class_probabilities(logits, multi_label)
        if classes is None:
            ids = tf.math.top_k(probs, k=top_k).indices
        else:
            ids = tf.convert_to_tensor(classes, tf.int32)
            ids = ids[:, None] if ids.shape.rank == 1 else ids
        chosen.update(classes=ids, probabilities=tf.gather(probs, ids, batch_dims=1))
        return [tf.one_hot(ids[:, j], probs.shape[-1]) for j in range(ids.shape[1])]

    f_a, f_b, _, gradients = method.class_gradients(tap, images, choose, training=False)
    maps = method.maps_from_gradients(function, f_a, f_b, gradients)
    return {
        "classes": chosen["classes"].numpy(),
        "probabilities": chosen["probabilities"].numpy(),
        "a": tf.stack([a for a, _ in maps], axis=1).numpy(),
        "b": tf.stack([b for _, b in maps], axis=1).numpy(),
    }


def _classifier(model):
    """The Keras classifier inside ``model`` (an ICASC model's backbone, else the model)."""
    inner = getattr(model, "backbone", None)
    model = inner if isinstance(inner, keras.Model) else model
    if not isinstance(model, keras.Model) or not getattr(model, "inputs", None):
        raise ValueError(
            "explain needs a functional or Sequential Keras model built on a keras.Input (so its layers "
            f"can be tapped by name); got {type(model).__name__}."
        )
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(
            f"explain needs one output of class scores [batch, classes]; {model.name!r} has "
            f"{[tuple(o.shape) for o in model.outputs]}."
        )
    return model


def _logits(model, output):
    """The pre-softmax scores of ``model`` as a symbolic tensor, and whether they are multi-label.

    With ``output="probabilities"`` the last layer must squash with softmax or sigmoid: a
    ``Softmax``/``Activation`` layer (its input is taken) or a layer with that activation (a
    copy of it without activation, sharing its weights, gives the scores).
    """
    last = model.layers[-1]
    if output == "logits":
        return model.outputs[0], False
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", "")
    if isinstance(last, keras.layers.Softmax):
        return last.input, False
    if isinstance(last, keras.layers.Activation) and name in _SQUASHING:
        return last.input, _SQUASHING[name]
    if name in _SQUASHING and hasattr(last, "kernel"):
        config = {**last.get_config(), "activation": "linear", "name": f"{last.name}_scores"}
        linear = last.__class__.from_config(config)
        scores = linear(last.input)
        linear.set_weights(last.get_weights())
        return scores, _SQUASHING[name]
    raise ValueError(
        f"output='probabilities' needs a last layer that applies softmax or sigmoid; {last.name!r} is a "
        f"{type(last).__name__} with activation {name or None}. Pass output='logits' if it outputs scores."
    )


def explain(model, images, layer=None, method="gradcam", classes=None, top_k=1, output="logits"):
    """Class activation maps of a Keras classifier's images, at one of its feature layers.

    Args:
      model: a functional or Sequential Keras 3 classifier (or an ``ICASC`` model).
      images: ``[B, H, W, C]`` as the model takes them (inference mode is used).
      layer: name of a layer with a 4-D ``[batch, h, w, channels]`` output; default the last one.
      method: ``"gradcam"``, ``"ach"``, ``"gradcampp"`` or ``"apx"``.
      classes: ``[B]`` or ``[B, k]`` class ids; default the ``top_k`` predicted classes.
      output: ``"logits"`` (the model outputs scores) or ``"probabilities"`` (its last layer
        applies softmax or sigmoid; the maps still come from the pre-activation scores).
    Returns a dict of NumPy arrays: ``"maps"`` ``[B, k, h, w]`` (unnormalised, at the layer's
    resolution), ``"classes"`` and ``"probabilities"`` ``[B, k]``, and ``"layer"``, its name.
    """
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}: choose one of {', '.join(OUTPUTS)}.")
    if method not in ATTENTION_FUNCTIONS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(ATTENTION_FUNCTIONS)}.")
    classifier = _classifier(model)
    if layer is None:
        candidates = feature_map_names(classifier)
        if not candidates:
            raise ValueError(f"{classifier.name!r} has no layer with a 4-D feature map: nothing to explain.")
        layer = candidates[-1]
    features = feature_layer(classifier, layer, "layer").output
    scores, multi_label = _logits(classifier, output)
    inputs = classifier.inputs[0] if len(classifier.inputs) == 1 else classifier.inputs  # as the model is called
    tap = keras.Model(inputs, [features, features, scores])
    maps = class_maps(tap, images, method, classes=classes, top_k=top_k, multi_label=multi_label)
    return {
        "maps": maps["b"],
        "classes": maps["classes"],
        "probabilities": maps["probabilities"],
        "layer": layer,
    }


def default_layers(model):
    """The layers whose maps to show for ``model``: ICASC's inner and last, else the last 4-D one."""
    if hasattr(model, "inner_layer") and hasattr(model, "last_layer"):
        return [model.inner_layer, model.last_layer]
    return feature_map_names(_classifier(model))[-1:]


__all__ = ["OUTPUTS", "class_maps", "default_layers", "explain"]
