"""Class activation maps of any Keras 3 classifier: ``explain(model, images)``.

The maps are those of ``icasc_tf.attention.ATTENTIONS`` (Grad-CAM, A_ch...) at feature
layers named by path through nested models (``icasc_tf.feature_maps``), for given classes or
the top-k predicted ones, from the gradient of the class's pre-softmax score (docs/method.md
§1.1; the gradient-to-map code is ``icasc_tf.method.class_maps``). ``Explainer`` builds a
model's tap once for repeated calls (the ``AttentionImages`` panels, the figures). Upsampling
and overlays are ``icasc_tf.figures``'s.
"""

import keras
import numpy as np

from icasc_tf.attention import ATTENTIONS, get_attention
from icasc_tf.feature_maps import FeatureGraph
from icasc_tf.method import class_maps as method_maps
from icasc_tf.model import ICASC
from icasc_tf.selection import probabilities as class_probabilities

OUTPUTS = ("auto", "logits", "probabilities")
LAYER_ROLES = ("last", "inner")  # the figures' and commands' names for ICASC's two layers


def role_layers(model):
    """``({"inner": path, "last": path}, None)``: an ICASC model's own layers, else the network's
    default pair (``FeatureGraph.default_pair``); ``({"last": path}, why)`` when it has no inner layer,
    ``why`` saying so."""
    if isinstance(model, ICASC):
        return {"inner": model.inner_layer, "last": model.last_layer}, None
    graph = FeatureGraph.of(model)
    try:
        inner, last = graph.default_pair(roles=("inner layer", "last layer"))
    except ValueError as error:
        return {"last": graph.default_map()}, str(error)
    return {"inner": inner, "last": last}, None


class Explainer:
    """Maps of one classifier at fixed layers, its tap built once.

    Args:
      model: a functional or Sequential Keras 3 classifier (nested models included), or an
        ``ICASC`` model.
      layers: layer names or paths (``"base/out_relu"``) with 4-D outputs; default ICASC's inner
        and last layers, else the network's last feature map before its spatial pooling.
      output: ``"auto"`` (a final softmax or sigmoid is recognised and the maps come from the
        scores before it), ``"logits"`` (the output is the scores) or ``"probabilities"``
        (insist on a final softmax/sigmoid).
      multi_label: the scores are per-class sigmoid scores (recognised by itself after a sigmoid).
    An ICASC model brings its own: its logits and its ``multi_label``.
    ``layers`` holds the resolved paths; ``multi_label`` whether the scores are sigmoid scores.
    """

    def __init__(self, model, layers=None, output="auto", multi_label=False):
        if output not in OUTPUTS:
            raise ValueError(f"Unknown output {output!r}: choose one of {', '.join(OUTPUTS)}.")
        if isinstance(model, ICASC):
            graph, scores, self.multi_label = model.graph, model.scores, model.multi_label
            layers = [model.inner_layer, model.last_layer] if layers is None else layers
        else:
            graph = FeatureGraph.of(model)
            scores, sigmoid = graph.scores(output)
            self.multi_label = sigmoid or bool(multi_label)
            layers = [graph.default_map()] if layers is None else layers
        if isinstance(layers, str) or not list(layers):
            raise ValueError(f"layers must be a list of layer names or paths; got {layers!r}.")
        self.model = model
        self.layers = [graph.resolve(name, "layer") for name in layers]
        self.graph = graph
        self._tap = graph.tap(self.layers, scores, name="explain_tap")
        self._scores = keras.Model(graph.input, scores, name="explain_scores")
        self.num_classes = int(scores.shape[-1])

    def maps(self, images, method="gradcam", classes=None, top_k=1):
        """``{"classes", "probabilities": [B, k], "maps": {layer path: [B, k, h, w]}}`` (NumPy), the
        maps unnormalised at each layer's own resolution."""
        return method_maps(self._tap, self.layers, images, _check_method(method), classes=classes, top_k=top_k,
                           multi_label=self.multi_label)

    def probabilities(self, images):
        """Class probabilities (inference mode): softmax, or sigmoid for sigmoid scores, of the scores.
        A direct call, not ``predict`` (which gathers across workers)."""
        scores = self._scores(np.asarray(images, np.float32), training=False)
        return class_probabilities(scores, self.multi_label).numpy()


def _check_method(name):
    if name not in ATTENTIONS:
        raise ValueError(f"Unknown method {name!r}: choose one of {', '.join(ATTENTIONS)}.")
    return get_attention(name)


def explain(model, images, layer=None, method="gradcam", classes=None, top_k=1, output="auto"):
    """Class activation maps of a Keras classifier's images, at one of its feature layers.

    Args:
      model: a functional or Sequential Keras 3 classifier, nested models included (a pretrained
        base called as one layer, as in Keras's transfer-learning guide), or an ``ICASC`` model.
      images: ``[B, H, W, C]`` as the model takes them (inference mode is used).
      layer: name or path (``"mobilenetv2_1.00_96/out_relu"``) of a layer with a 4-D
        ``[batch, h, w, channels]`` output; default the last feature map before the network's
        spatial pooling (an ICASC model's last layer).
      method: a name of ``icasc_tf.attention.ATTENTIONS`` (``"gradcam"``, ``"ach"``...).
      classes: ``[B]`` or ``[B, k]`` class ids; default the ``top_k`` predicted classes.
      output: ``"auto"``, ``"logits"`` or ``"probabilities"``, as in ``Explainer``. The maps
        always come from the pre-activation scores; probabilities are softmax (sigmoid) of them.
    Returns a dict of NumPy arrays: ``"maps"`` ``[B, k, h, w]`` (unnormalised, at the layer's
    resolution), ``"classes"`` and ``"probabilities"`` ``[B, k]``, and ``"layer"``, its path.
    """
    _check_method(method)
    if layer is None and isinstance(model, ICASC):
        layer = model.last_layer
    explainer = Explainer(model, None if layer is None else [layer], output)
    out = explainer.maps(images, method, classes=classes, top_k=top_k)
    path = explainer.layers[0]
    return {"maps": out["maps"][path], "classes": out["classes"], "probabilities": out["probabilities"],
            "layer": path}


__all__ = ["LAYER_ROLES", "OUTPUTS", "Explainer", "explain", "role_layers"]
