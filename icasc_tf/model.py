"""ICASC: a Keras model whose training step adds attention separation and consistency.

The method itself lives in ``icasc_tf.method`` as plain functions; this class wires it
into Keras: ``train_step`` calls it under the outer ``tf.GradientTape`` so the attention
losses reach the weights through dY/dF as well as through F (docs/method.md §1.6), averages
per-sample losses over the global batch, and reports them as metrics. With every
attention weight at 0 it is the plain baseline step.
"""

import keras
import tensorflow as tf

from icasc_tf import method
from icasc_tf.attention import get_attention
from icasc_tf.feature_maps import FeatureGraph
from icasc_tf.keras_compat import LABEL_ERROR, KerasCompat
from icasc_tf.lr_multipliers import GradientScales
from icasc_tf.method import ATTENTION_TERMS, ZERO_MAP_TERMS

BN_MODES = ("batch", "exact")


@keras.saving.register_keras_serializable(package="icasc_tf")
class ICASC(KerasCompat, keras.Model):
    """Classifier trained with attention separation (L_AS) and consistency (L_AC).

    Args:
      backbone: a functional or Sequential Keras classifier (a pretrained base nested in it
        included) with one output of class scores ``[B, C]``: logits, or probabilities from a
        final softmax (sigmoid with ``multi_label``), whose pre-activation scores are then used.
        ICASC itself outputs the logits.
      inner_layer, last_layer: names or paths (``"base/out_relu"``) of the layers whose 4-D
        outputs are the inner and last feature maps (docs/method.md §1.3); default (both
        None) the last map before the spatial pooling and the last map at twice its resolution.
      attention: a trainable map of ``icasc_tf.attention.ATTENTIONS`` (default ``"ach"``).
      multi_label: labels are multi-hot ``[B, C]``; classification loss is the
        multilabel soft margin and the target map uses all positive classes.
      loss_weights: weights of (L_AS^in, L_AS^la, L_AC); all 0 trains the plain baseline.
      bn_mode: ``"batch"`` takes one summed gradient through the training-mode pass;
        ``"exact"`` re-runs the layers after the inner map with BatchNormalization in
        inference mode, so each sample's gradient is its own (docs/method.md §1.1).
      sigma, omega, theta: mask threshold, mask sharpness, consistency target.
      mask_gradient: let gradients flow through the mask (default: it is a target).
      second_order: differentiate through dY/dF (the paper); ``False`` detaches the
        class-score gradients (first order, as the public PyTorch port).
      lr_multipliers: ``{layer path or name prefix: factor}`` (paths through nested models);
        the gradients of matching layers are scaled, i.e. their SGD learning rate is
        multiplied (fine-tuning recipes).
    """

    def __init__(
        self,
        backbone,
        inner_layer=None,
        last_layer=None,
        attention="ach",
        multi_label=False,
        loss_weights=(1.0, 1.0, 1.0),
        bn_mode="batch",
        sigma=0.55,
        omega=100.0,
        theta=0.8,
        mask_gradient=False,
        lr_multipliers=None,
        second_order=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        graph = FeatureGraph.of(backbone)
        inner_layer, last_layer = graph.layer_pair(inner_layer, last_layer)
        scores, sigmoid = graph.scores("auto")
        if sigmoid and not multi_label:
            raise ValueError(f"{backbone.name!r} ends in a sigmoid (one probability per class): pass multi_label=True "
                             "with multi-hot labels, or end it with softmax or logits for one class per image.")
        if scores.shape[-1] is None or scores.shape[-1] < 2:
            raise ValueError(f"ICASC needs two or more class scores (a target and a most confusing class); "
                             f"{backbone.name!r} has {scores.shape[-1]}. Give a binary classifier two logits.")
        self._map_function = get_attention(attention, trainable=True)  # ``self.attention`` is its name
        if bn_mode not in BN_MODES:
            raise ValueError(f"Unknown bn_mode {bn_mode!r}: choose one of {', '.join(BN_MODES)}.")
        loss_weights, sigma, omega, theta = method.check_hyperparameters(loss_weights, sigma, omega, theta)
        self.backbone = backbone
        self.inner_layer = inner_layer
        self.last_layer = last_layer
        self._graph, self._scores = graph, scores
        self.attention = attention
        self.multi_label = bool(multi_label)
        self.loss_weights = loss_weights
        self.bn_mode = bn_mode
        self.sigma, self.omega, self.theta = sigma, omega, theta
        self.mask_gradient = bool(mask_gradient)
        self.second_order = bool(second_order)
        self.lr_multipliers = dict(lr_multipliers or {})
        self.num_classes = int(scores.shape[-1])
        # Attention and losses run in float32 (also under mixed precision), float64 if asked.
        self._loss_dtype = tf.float64 if scores.dtype == "float64" else tf.float32
        # One forward pass yields both feature maps and the logits; the plain step needs the logits alone.
        self._tap = graph.tap([inner_layer, last_layer], scores)
        self._logits = backbone if scores is graph.output else keras.Model(graph.input, scores, name="logits_of")
        self._head = self._build_head(graph, inner_layer, last_layer, scores) if bn_mode == "exact" else None
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "classification_loss") + ATTENTION_TERMS + ZERO_MAP_TERMS
        }
        self._gradient_scales = GradientScales(self.lr_multipliers)
        # Multiplies all attention terms; a warm-up callback ramps it from 0 to 1.
        self.attention_scale = keras.Variable(1.0, trainable=False, name="attention_scale")
        self.built = True  # the backbone is built, so is this wrapper

    @staticmethod
    def _build_head(graph, inner, last, scores):
        try:
            return keras.Model(graph.tensor(inner), [graph.tensor(last), scores], name="attention_head")
        except ValueError as error:
            raise ValueError(
                f"bn_mode='exact' re-runs the layers after inner_layer={inner!r}, but the "
                f"logits also depend on earlier layers that bypass it ({error}). Choose a "
                "stage output as inner_layer, or use bn_mode='batch'."
            ) from None

    @property
    def graph(self):
        """The backbone's ``FeatureGraph`` (its layers by path, nested models included)."""
        return self._graph

    @property
    def scores(self):
        """The symbolic class scores (logits) of ``graph`` the maps and losses are taken from."""
        return self._scores

    # ------------------------------------------------------------------ Keras API
    def call(self, inputs, training=None):
        return self._logits(inputs, training=training)

    def compile(self, optimizer="sgd", loss=None, **kwargs):
        """Keras's compile, without ``loss``: ICASC computes its classification loss itself."""
        if loss is not None or kwargs.get("loss_weights") is not None:
            raise ValueError(
                "ICASC builds its loss in (softmax cross-entropy, or multilabel soft margin "
                "with multi_label=True, plus the weighted attention terms): call compile() "
                "without loss=/loss_weights= and set ICASC(loss_weights=...) instead."
            )
        super().compile(optimizer=optimizer, **kwargs)

    def compile_from_config(self, config):
        """Restore ``compile()`` on ``load_model`` (Keras skips it for a custom compile)."""
        config = keras.saving.deserialize_keras_object(config)
        config.pop("loss", None)
        config.pop("loss_weights", None)
        self.compile(**config)
        if self.optimizer is not None:
            self.optimizer.build(self.trainable_variables)

    @property
    def attention_enabled(self):
        return any(w > 0 for w in self.loss_weights)

    @property
    def metrics(self):
        # Our trackers replace Keras's own "loss" tracker; compiled metrics follow.
        mine = list(self._trackers.values())
        return mine + [m for m in super().metrics if m.name != "loss" and m not in mine]

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._check_labels(y)
        with tf.GradientTape() as tape:
            terms = self.per_sample_terms(x, labels, training=True, with_attention=self.attention_enabled)
            per_sample = method.weighted_total(terms, self.loss_weights, self.attention_scale)
            regularization = self._regularization_loss()
            loss = self._global_mean(per_sample, sample_weight) + regularization / float(
                tf.distribute.get_strategy().num_replicas_in_sync
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        gradients = self._gradient_scales.apply(self._graph.layer_paths(), variables, gradients)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(x, y, terms, per_sample + regularization, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._check_labels(y)
        terms = self.per_sample_terms(x, labels)
        per_sample = method.weighted_total(terms, self.loss_weights, self.attention_scale)
        return self._update_metrics(x, y, terms, per_sample + self._regularization_loss(), sample_weight)

    # ------------------------------------------------------------------ the method's terms
    def per_sample_terms(self, images, labels, training=False, with_attention=True):
        """Per-sample ``classification_loss``, ``as_inner``, ``as_last``, ``ac`` (``[B]`` each)
        and ``logits`` ``[B, C]``: what training optimises, validation reports and evaluation
        measures. ``with_attention=False`` runs the classifier alone (the baseline step).
        """
        if with_attention:
            terms = method.attention_terms(
                self._tap, images, labels,
                attention=self._map_function, num_classes=self.num_classes,
                multi_label=self.multi_label, training=training,
                head=self._head if training else None, second_order=self.second_order,
                dtype=self._loss_dtype, sigma=self.sigma, omega=self.omega, theta=self.theta,
                mask_gradient=self.mask_gradient,
            )
        else:
            terms = {"logits": self._logits(images, training=training)}
        terms["classification_loss"] = method.classification_loss(
            labels, terms["logits"], self.multi_label, self._loss_dtype
        )
        return terms

    def _regularization_loss(self):
        """Weight decay and ``add_loss`` terms (e.g. painless attention's L_R), per replica."""
        extra = self.losses
        if not extra:
            return tf.constant(0.0, self._loss_dtype)
        return tf.add_n([tf.cast(v, self._loss_dtype) for v in extra])

    @staticmethod
    def _global_mean(per_sample, sample_weight):
        """Sum of per-sample losses over this replica, divided by the *global* batch size."""
        if sample_weight is not None:
            per_sample = per_sample * tf.cast(tf.reshape(sample_weight, [-1]), per_sample.dtype)
        local_size = tf.cast(tf.shape(per_sample)[0], per_sample.dtype)
        context = tf.distribute.get_replica_context()
        global_size = (
            context.all_reduce(tf.distribute.ReduceOp.SUM, local_size) if context else local_size
        )
        return tf.reduce_sum(per_sample) / global_size

    def _check_labels(self, y):
        """Shape checks at trace time, range checks in the graph (reported as ValueError)."""
        if y is None:
            raise ValueError("ICASC needs labels: fit/evaluate on (images, labels) pairs.")
        y = tf.convert_to_tensor(y)
        c = self.num_classes
        if self.multi_label:
            if y.shape.rank != 2 or (y.shape[-1] is not None and y.shape[-1] != c):
                raise ValueError(
                    f"multi_label=True expects multi-hot labels of shape [batch, {c}]; got "
                    f"{tuple(y.shape)}."
                )
            y = tf.cast(y, tf.float32)
            checks = [
                tf.debugging.assert_equal(
                    tf.reduce_all((y == 0.0) | (y == 1.0)), True,
                    message=f"{LABEL_ERROR} multi-hot labels must be 0 or 1.",
                )
            ]
        else:
            if y.shape.rank == 2 and y.shape[-1] == 1:
                y = tf.squeeze(y, -1)
            if y.shape.rank != 1:
                raise ValueError(
                    f"Single-label ICASC expects integer class ids of shape [batch]; got shape "
                    f"{tuple(y.shape)}. Pass class indices (not one-hot), or multi_label=True "
                    "for multi-hot targets."
                )
            y = tf.cast(y, tf.int32)
            checks = [
                tf.debugging.assert_non_negative(
                    y, message=f"{LABEL_ERROR} class ids must be >= 0."
                ),
                tf.debugging.assert_less(
                    y, c, message=f"{LABEL_ERROR} class ids must be < {c} (the backbone's classes)."
                ),
            ]
        with tf.control_dependencies(checks):
            return tf.identity(y)

    def _update_metrics(self, x, y, terms, per_sample_total, sample_weight):
        self._trackers["loss"].update_state(per_sample_total, sample_weight=sample_weight)
        self._trackers["classification_loss"].update_state(
            terms["classification_loss"], sample_weight=sample_weight
        )
        for name in ATTENTION_TERMS + ZERO_MAP_TERMS:
            if name in terms:
                self._trackers[name].update_state(terms[name], sample_weight=sample_weight)
        results = self.compute_metrics(x, y, terms["logits"], sample_weight=sample_weight)
        if not any(name in terms for name in ATTENTION_TERMS):
            results = {k: v for k, v in results.items() if k not in ATTENTION_TERMS + ZERO_MAP_TERMS}
        return self.distributable_logs(results)

    # ------------------------------------------------------------------ inspection
    def attention_maps(self, images, classes=None, top_k=1, attention=None):
        """Attention maps at both layers for given classes, or the top-k predicted ones.

        Args:
          images: ``[B, H, W, 3]`` batch (inference mode is used).
          classes: optional ``[B]`` or ``[B, k]`` class ids; default: top-k predictions.
          attention: a name of ``icasc_tf.attention.ATTENTIONS``; default the model's.
        Returns a dict of NumPy arrays: ``classes`` and ``probabilities`` ``[B, k]``,
        ``inner`` ``[B, k, h_in, w_in]`` and ``last`` ``[B, k, h_la, w_la]``. (One layer of any
        Keras classifier: ``icasc_tf.explain``.)
        """
        layers = [self.inner_layer, self.last_layer]
        maps = method.class_maps(
            self._tap, layers, images, get_attention(attention or self.attention), classes=classes, top_k=top_k,
            multi_label=self.multi_label,
        )
        return {"classes": maps["classes"], "probabilities": maps["probabilities"],
                "inner": maps["maps"][self.inner_layer], "last": maps["maps"][self.last_layer]}

    # ------------------------------------------------------------------ saving
    def get_config(self):
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "inner_layer": self.inner_layer,
            "last_layer": self.last_layer,
            "attention": self.attention,
            "multi_label": self.multi_label,
            "loss_weights": list(self.loss_weights),
            "bn_mode": self.bn_mode,
            "sigma": self.sigma,
            "omega": self.omega,
            "theta": self.theta,
            "mask_gradient": self.mask_gradient,
            "lr_multipliers": self.lr_multipliers,
            "second_order": self.second_order,
        }

    def load_own_variables(self, store):
        """Files from before ``attention_scale`` existed hold no variable of ICASC's own."""
        if len(store.keys()) == 0:
            self.attention_scale.assign(1.0)
            return
        super().load_own_variables(store)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(
            config.pop("backbone"), custom_objects=custom_objects
        )
        return cls(backbone=backbone, **config)
