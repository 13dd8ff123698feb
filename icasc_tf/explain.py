"""Class activation maps of any Keras 3 classifier: ``explain(model, images)``.

The maps are those of ``icasc_tf.attention`` (Grad-CAM, A_ch, Grad-CAM++, A_px) at one
feature layer, for given classes or the top-k predicted ones, computed from the gradient of
the class's pre-softmax score (docs/method.md §1.1). ``ICASC.attention_maps`` (both of ICASC's
layers) and the ``AttentionImages`` callback are built on ``class_maps`` below, so the
gradient-to-map code has one home (with ``icasc_tf.method``). Upsampling and overlays are
``icasc_tf.figures``'s.
"""

import keras
import tensorflow as tf

from icasc_tf import method
from icasc_tf.attention import ATTENTION_FUNCTIONS, get_attention
from icasc_tf.feature_maps import feature_layer, feature_map_names
from icasc_tf.selection import probabilities as class_probabilities

OUTPUTS = ("auto", "logits", "probabilities")
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


def _is_icasc(model):
    return all(hasattr(model, name) for name in ("backbone", "inner_layer", "last_layer"))


def _classifier(model):
    """The Keras classifier inside ``model`` (an ICASC model's backbone, else the model)."""
    model = model.backbone if _is_icasc(model) else model
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


def _squashing(layer):
    """``"softmax"``/``"sigmoid"`` when ``layer`` turns scores into probabilities, else None."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    name = getattr(getattr(layer, "activation", None), "__name__", "")
    return name if name in _SQUASHING else None


def _scores(model, output):
    """The pre-activation class scores of ``model`` (a symbolic tensor) and whether they are
    sigmoid (multi-label) scores.

    ``"auto"``: when the last layer applies softmax or sigmoid, the scores before it (a
    ``Softmax``/``Activation`` layer's input, or a copy of a Dense layer without activation,
    sharing its weights); otherwise the output itself. ``"probabilities"`` insists on such a
    last layer; ``"logits"`` takes the output as it is.
    """
    last = model.layers[-1]
    squash = _squashing(last)
    if output == "logits" or (output == "auto" and squash is None):
        return model.outputs[0], False
    if squash is None:
        raise ValueError(
            f"output='probabilities' needs a last layer that applies softmax or sigmoid; {last.name!r} is a "
            f"{type(last).__name__}. Pass output='logits' (or 'auto') if it outputs scores."
        )
    if isinstance(last, (keras.layers.Softmax, keras.layers.Activation)):
        return last.input, _SQUASHING[squash]
    if not hasattr(last, "kernel"):
        raise ValueError(f"Cannot take the scores before {last.name!r}'s {squash}: end the model with a Dense layer "
                         "and a separate Softmax/Activation layer, or pass output='logits'.")
    config = {**last.get_config(), "activation": "linear", "name": f"{last.name}_scores"}
    linear = last.__class__.from_config(config)
    scores = linear(last.input)
    linear.set_weights(last.get_weights())
    return scores, _SQUASHING[squash]


def _feature_layer(classifier, layer):
    """The named 4-D layer of the model's own graph (default: the last one that is not a nested
    model, whose layers this graph cannot reach)."""
    nested = {sub.name for sub in classifier.layers if isinstance(sub, keras.Model)}
    if layer is None:
        candidates = [name for name in feature_map_names(classifier) if name not in nested]
        if not candidates:
            raise ValueError(
                f"{classifier.name!r} has no 4-D feature layer of its own"
                + (f" (its feature maps are inside the nested model(s) {', '.join(sorted(nested))})" if nested else "")
                + ": build it functionally, e.g. keras.Model(base.input, head(base.output)), so that explain can "
                "tap a layer by name."
            )
        layer = candidates[-1]
    if layer in nested:
        raise ValueError(
            f"layer={layer!r} is a nested model: explain taps layers of {classifier.name!r}'s own graph. Build the "
            f"classifier functionally from it (keras.Model({layer}.input, head({layer}.output))) and name one of "
            "its layers."
        )
    return feature_layer(classifier, layer, "layer")


def explain(model, images, layer=None, method="gradcam", classes=None, top_k=1, output="auto"):
    """Class activation maps of a Keras classifier's images, at one of its feature layers.

    Args:
      model: a functional or Sequential Keras 3 classifier (or an ``ICASC`` model).
      images: ``[B, H, W, C]`` as the model takes them (inference mode is used).
      layer: name of a layer with a 4-D ``[batch, h, w, channels]`` output; default the last one.
      method: ``"gradcam"``, ``"ach"``, ``"gradcampp"`` or ``"apx"``.
      classes: ``[B]`` or ``[B, k]`` class ids; default the ``top_k`` predicted classes.
      output: ``"auto"`` (a last layer applying softmax or sigmoid is recognised), ``"logits"``
        (the model outputs scores) or ``"probabilities"`` (insist on softmax/sigmoid). The maps
        always come from the pre-activation scores; probabilities are softmax (sigmoid) of them.
    Returns a dict of NumPy arrays: ``"maps"`` ``[B, k, h, w]`` (unnormalised, at the layer's
    resolution), ``"classes"`` and ``"probabilities"`` ``[B, k]``, and ``"layer"``, its name.
    """
    if output not in OUTPUTS:
        raise ValueError(f"Unknown output {output!r}: choose one of {', '.join(OUTPUTS)}.")
    if method not in ATTENTION_FUNCTIONS:
        raise ValueError(f"Unknown method {method!r}: choose one of {', '.join(ATTENTION_FUNCTIONS)}.")
    classifier = _classifier(model)
    feature = _feature_layer(classifier, layer)
    scores, multi_label = _scores(classifier, output)
    inputs = classifier.inputs[0] if len(classifier.inputs) == 1 else classifier.inputs  # as the model is called
    tap = keras.Model(inputs, [feature.output, feature.output, scores])
    maps = class_maps(tap, images, method, classes=classes, top_k=top_k, multi_label=multi_label)
    return {
        "maps": maps["b"],
        "classes": maps["classes"],
        "probabilities": maps["probabilities"],
        "layer": feature.name,
    }


def predicted_probabilities(model, images, output="auto", multi_label=False):
    """The model's class probabilities of ``images`` (inference mode): its own output when its last
    layer applies softmax or sigmoid (``output`` as in ``explain``), else softmax (sigmoid with
    ``multi_label``) of its scores. A direct call, not ``predict`` (which gathers across workers)."""
    outputs = keras.ops.convert_to_numpy(model(images, training=False))
    if output == "probabilities" or (output == "auto" and _squashing(_classifier(model).layers[-1])):
        return outputs
    return class_probabilities(outputs, multi_label).numpy()


def default_layers(model):
    """The layers whose maps to show for ``model``: ICASC's inner and last, else its last 4-D one."""
    if _is_icasc(model):
        return [model.inner_layer, model.last_layer]
    return [_feature_layer(_classifier(model), None).name]


__all__ = ["OUTPUTS", "class_maps", "default_layers", "explain", "predicted_probabilities"]
