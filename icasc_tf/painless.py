"""Painless attention (WRNA): gated attention modules added to any functional classifier.

Rodriguez et al., "A Painless Attention Mechanism for CNNs" (ICLR 2018 submission);
docs/method.md §2. Each attention module looks at one feature map Z [B, h, w, n]:

- attention heads (Eqs. 1-2): M = spatial_softmax(1x1 conv of Z to AW masks),
  H_k = M_k * Z;
- output heads (Eqs. 5-6): o_k = F(H_k) W_O,k, with F a spatial reduction;
- confidence gates (Eq. 7): c_k = tanh(F(H_k) w_G,k); the network's own output gets
  c_net = tanh(dense(features that feed its ``logits`` layer));
- output (Eqs. 8-9): g = softmax(c_net, c_1, ..., c_N); g_net * out_net + sum_k g_k o_k;
- mask regulariser (Eqs. 3-4): gamma * L_R, L_R = sum_{i != j} (m_i . m_j)^2, added with
  ``add_loss`` so that it reaches the training loss through ``model.losses``.

Every new layer's name starts with ``painless_`` so that training code can give the
attention weights their own learning rate by that prefix.
"""

import dataclasses

import keras
from keras import ops

from icasc_tf.backbones import Backbone
from icasc_tf.feature_maps import HEAD_LAYER, FeatureGraph

REDUCTIONS = ("avg", "projection")
GATE_MODES = ("learned", "uniform", "network")
PREFIX = "painless_"
MODULE_PREFIX = f"{PREFIX}attention_"
OUTPUT_NAME = f"{PREFIX}output"
NET_GATE_NAME = f"{PREFIX}net_gate"


def spatial_softmax(scores):
    """Softmax over the h*w positions, per channel: ``[B,h,w,K]`` -> K masks that each sum to 1."""
    shape = ops.shape(scores)
    flat = ops.reshape(scores, (shape[0], -1, shape[3]))
    return ops.reshape(ops.softmax(flat, axis=1), shape)


def mask_overlap(masks):
    """Per-sample L_R = sum_{i != j} (m_i . m_j)^2 of one module's masks ``[B,h,w,K]`` -> ``[B]``.

    The paper's Eq. 3 with no normalisation: the squared off-diagonal entries of the
    masks' Gram matrix, zero exactly when the K masks are mutually orthogonal.
    """
    shape = ops.shape(masks)
    flat = ops.reshape(masks, (shape[0], -1, shape[3]))
    gram = ops.einsum("bpi,bpj->bij", flat, flat)
    heads = masks.shape[-1]
    off_diagonal = ops.cast(1.0 - ops.eye(heads), gram.dtype)
    return ops.sum(ops.square(gram * off_diagonal), axis=(1, 2))


@keras.saving.register_keras_serializable(package="icasc_tf")
class PainlessAttention(keras.layers.Layer):
    """One attention module: AW masks over a feature map, a hypothesis and a score per mask.

    Args:
      heads: attention width AW, the number of masks.
      classes: number of classes of each head's hypothesis.
      reduction: how F reduces H_k = M_k * Z over space.
        ``"avg"``: sum_ij H_k,ij, i.e. Z averaged under the mask (M_k sums to 1), which
        keeps the features at Z's scale whatever the map size.
        ``"projection"``: a learned inner product over the h*w positions, one per
        channel (a weight ``[h*w, n]`` shared by the module's heads); it starts at ones,
        i.e. equal to ``"avg"``, and needs a fixed map size.
      gamma: weight of the mask regulariser L_R added with ``add_loss``.
      gated: compute the confidence scores c_k (Eq. 7); off when the gates are fixed.

    Returns ``(head_logits [B,AW,C], masks [B,h,w,AW])``, plus ``scores [B,AW]`` when
    gated. After a call, ``layer.losses`` holds this module's gamma * mean_batch L_R.
    """

    def __init__(self, heads, classes, reduction="avg", gamma=0.1, gated=True, **kwargs):
        super().__init__(**kwargs)
        if int(heads) < 1:
            raise ValueError(f"heads (attention width) must be >= 1; got {heads}.")
        if int(classes) < 1:
            raise ValueError(f"classes must be >= 1; got {classes}.")
        if reduction not in REDUCTIONS:
            raise ValueError(
                f"Unknown reduction {reduction!r}: choose one of {', '.join(REDUCTIONS)}."
            )
        if float(gamma) < 0:
            raise ValueError(f"gamma (the L_R weight) must be >= 0; got {gamma}.")
        self.heads = int(heads)
        self.classes = int(classes)
        self.reduction = reduction
        self.gamma = float(gamma)
        self.gated = bool(gated)

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.name} needs a 4-D feature map [batch, height, width, channels]; "
                f"got shape {tuple(input_shape)}."
            )
        _, height, width, channels = input_shape
        self.mask_conv = keras.layers.Conv2D(
            self.heads, 1, use_bias=False, name=f"{self.name}_masks"
        )
        self.mask_conv.build(input_shape)
        if self.reduction == "projection":
            if height is None or width is None:
                raise ValueError(
                    f"reduction='projection' learns one weight per position, so {self.name} "
                    f"needs a fixed map size; got shape {tuple(input_shape)}. Give the "
                    "backbone a fixed input size, or use reduction='avg'."
                )
            self.projection = self.add_weight(
                shape=(height * width, channels), initializer="ones", name="projection"
            )
        reduced_shape = (None, self.heads, channels)
        self.head_logits = keras.layers.EinsumDense(
            "bkn,knc->bkc",
            output_shape=(self.heads, self.classes),
            bias_axes="kc",
            name=f"{self.name}_logits",
        )
        self.head_logits.build(reduced_shape)
        if self.gated:
            self.head_scores = keras.layers.EinsumDense(
                "bkn,kn->bk",
                output_shape=(self.heads,),
                bias_axes="k",
                activation="tanh",
                name=f"{self.name}_scores",
            )
            self.head_scores.build(reduced_shape)

    def call(self, features):
        masks = spatial_softmax(self.mask_conv(features))
        self.add_loss(self.gamma * ops.mean(mask_overlap(masks)))
        shape = ops.shape(features)
        flat_features = ops.reshape(features, (shape[0], -1, shape[3]))
        flat_masks = ops.reshape(masks, (shape[0], -1, self.heads))
        if self.reduction == "projection":
            flat_features = flat_features * ops.cast(self.projection, flat_features.dtype)
        # F(H_k) without materialising the AW copies of Z: sum_p M_pk Z_pn.
        reduced = ops.einsum("bpk,bpn->bkn", flat_masks, flat_features)
        outputs = (self.head_logits(reduced), masks)
        if self.gated:
            outputs += (self.head_scores(reduced),)
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "heads": self.heads,
            "classes": self.classes,
            "reduction": self.reduction,
            "gamma": self.gamma,
            "gated": self.gated,
        }


@keras.saving.register_keras_serializable(package="icasc_tf")
class PainlessOutput(keras.layers.Layer):
    """Gated combination of the network's logits with every head's (Eqs. 8-9).

    Args:
      gates: ``"learned"``: g = softmax of the confidence scores (the paper);
        ``"uniform"``: g = 1/|G|, the plain average (the paper's model without gates);
        ``"network"``: g_net = 1 and every attention gate 0, which reproduces the
        original network exactly (the paper's identity, Sec. 3.4).

    Call with ``net_logits [B,C]``, ``head_logits`` (list of ``[B,AW,C]``) and, for learned
    gates, ``scores`` (list: ``[B,1]`` for the network, then each module's ``[B,AW]``).
    Returns ``(logits [B,C], gates [B,1+N])``, gates in the order network, heads.
    """

    def __init__(self, gates="learned", **kwargs):
        super().__init__(**kwargs)
        if gates not in GATE_MODES:
            raise ValueError(f"Unknown gates {gates!r}: choose one of {', '.join(GATE_MODES)}.")
        self.gates = gates

    def call(self, net_logits, head_logits, scores=None):
        hypotheses = ops.concatenate([ops.expand_dims(net_logits, 1), *head_logits], axis=1)
        count = hypotheses.shape[1]
        if self.gates == "learned":
            if scores is None:
                raise ValueError("gates='learned' needs the confidence scores; pass scores=[...].")
            gate_values = ops.softmax(ops.concatenate(scores, axis=1), axis=-1)
        else:
            fixed = (
                [1.0 / count] * count if self.gates == "uniform" else [1.0] + [0.0] * (count - 1)
            )
            batch_ones = ops.ones_like(hypotheses[:, :, 0])
            gate_values = batch_ones * ops.convert_to_tensor(fixed, dtype=hypotheses.dtype)
        logits = ops.einsum("bk,bkc->bc", gate_values, hypotheses)
        return logits, gate_values

    def get_config(self):
        return {**super().get_config(), "gates": self.gates}


def _module_name(index):
    return f"{MODULE_PREFIX}{index}"


def _network_output(graph):
    """The ``logits`` Dense layer's input (it feeds the network gate) and output (out_net)."""
    layer, features = graph.final_layer()
    if getattr(layer, "name", None) != HEAD_LAYER:
        raise ValueError(
            f"Model {graph.model.name!r} must end with its {HEAD_LAYER!r} layer, whose output painless attention "
            f"combines with its heads' hypotheses: end the classifier with keras.layers.Dense(classes, "
            f"name={HEAD_LAYER!r}) (no activation)."
        )
    if not isinstance(layer, keras.layers.Dense) or layer.activation is not keras.activations.linear:
        raise ValueError(
            f"Layer {HEAD_LAYER!r} must be a Dense layer without activation (class logits); "
            f"got {type(layer).__name__} with activation {getattr(layer, 'activation', None)}."
        )
    if len(features.shape) != 2:
        raise ValueError(
            f"Layer {HEAD_LAYER!r} must take pooled features [batch, features]; its input "
            f"has shape {tuple(features.shape)}. Pool the feature map before it."
        )
    return features, graph.output


def _is_backbone(backbone):
    return isinstance(backbone, Backbone)


def _resolve_layer_names(backbone, graph, depth, layer_names):
    """Explicit names win; a Backbone defaults to its deepest ``depth`` stage outputs."""
    if layer_names is not None:
        layer_names = list(layer_names)
        if not layer_names:
            raise ValueError("layer_names is empty: give at least one feature-map layer name.")
        if depth is not None and depth != len(layer_names):
            raise ValueError(
                f"depth={depth} but {len(layer_names)} layer_names were given; "
                "leave depth=None or make them agree."
            )
        return layer_names
    if not _is_backbone(backbone):
        raise ValueError(f"A plain keras.Model needs explicit layer_names (deepest first). {graph.candidates()}")
    depth = 1 if depth is None else int(depth)
    stages = list(backbone.stage_layers)
    if not 1 <= depth <= len(stages):
        raise ValueError(
            f"depth must be between 1 and the backbone's {len(stages)} stages "
            f"({', '.join(stages)}); got {depth}."
        )
    return stages[::-1][:depth]


def add_painless_attention(
    backbone,
    *,
    depth=None,
    width=1,
    layer_names=None,
    reduction="avg",
    gamma=0.1,
    gates="learned",
    name=None,
):
    """Add ``depth`` attention modules of ``width`` heads to a classifier (WRN -> WRNA).

    Args:
      backbone: a functional or Sequential ``keras.Model`` (nested models included) whose single
        output is a linear Dense named ``logits`` (then ``layer_names`` is required), or an
        ``icasc_tf.backbones.Backbone``.
      depth: attention depth AD; default ``len(layer_names)``, or 1 for a Backbone, whose
        deepest ``depth`` stage outputs are used (deepest first, as in the paper).
      width: attention width AW, masks per module.
      layer_names: names or paths (``"base/out_relu"``) of the layers whose 4-D outputs get a
        module, deepest first.
      reduction: ``"avg"`` or ``"projection"`` (see ``PainlessAttention``).
      gamma: weight of each module's mask regulariser L_R.
      gates: ``"learned"`` (the paper), ``"uniform"`` or ``"network"`` (see ``PainlessOutput``).
      name: name of the new model; default ``<model name>_painless``.

    Returns the same kind it got: a new functional model whose output is the combined
    logits (a Backbone keeps its inner/last/stage layer names). The new model reuses the
    backbone's layers and weights, called in one flat graph (a nested model's layers become
    its own); build a fresh backbone to keep an independent copy.
    """
    combine = PainlessOutput(gates=gates, name=OUTPUT_NAME)  # checks ``gates`` before anything is built
    if int(width) < 1:
        raise ValueError(f"width (attention width AW) must be >= 1; got {width}.")
    model = backbone.model if _is_backbone(backbone) else backbone
    graph = FeatureGraph.of(model)
    names = _resolve_layer_names(backbone, graph, depth, layer_names)
    feature_maps = [graph.tensor(graph.resolve(layer_name, "layer_names")) for layer_name in names]
    net_features, net_logits = _network_output(graph)
    classes = int(net_logits.shape[-1])
    learned = gates == "learned"

    head_logits, scores = [], []
    if learned:
        scores.append(keras.layers.Dense(1, activation="tanh", name=NET_GATE_NAME)(net_features))
    for index, feature_map in enumerate(feature_maps, start=1):
        module = PainlessAttention(
            width,
            classes,
            reduction=reduction,
            gamma=gamma,
            gated=learned,
            name=_module_name(index),
        )
        outputs = module(feature_map)
        head_logits.append(outputs[0])
        if learned:
            scores.append(outputs[2])
    logits, _ = combine(net_logits, head_logits, scores if learned else None)
    wrapped = keras.Model(graph.input, logits, name=name or f"{model.name}_painless")
    if _is_backbone(backbone):
        return dataclasses.replace(backbone, model=wrapped)
    return wrapped


def has_painless_attention(model):
    """Whether ``model`` (or a Backbone holding it) has painless attention modules."""
    model = model.model if _is_backbone(model) else model
    return any(isinstance(layer, PainlessAttention) for layer in model.layers)


def painless_probe(model):
    """Image -> ``{"masks": [per module [B,h,w,AW]], "gates": [B, 1+heads]}`` of a WRNA model.

    Masks are listed deepest module first; gates in the order network, then the heads of
    each module in that order. Accepts the model or a Backbone holding it.
    """
    if _is_backbone(model):
        model = model.model
    masks = []
    while True:
        try:
            module = model.get_layer(_module_name(len(masks) + 1))
        except ValueError:
            break
        masks.append(module.output[1])
    if not masks:
        raise ValueError(
            f"Model {model.name!r} has no painless attention modules (layers named "
            f"{MODULE_PREFIX}1, ...); build it with add_painless_attention."
        )
    gates = model.get_layer(OUTPUT_NAME).output[1]
    return keras.Model(model.input, {"masks": masks, "gates": gates}, name=f"{model.name}_probe")
