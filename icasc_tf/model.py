"""ICASC: a Keras model whose training step adds attention separation and consistency.

``ICASC`` wraps any functional Keras classifier (logits out). Its ``train_step`` takes
the class-score gradients dY/dF with an inner ``tf.GradientTape`` *inside* the outer
one, so the attention losses reach the weights through dY/dF as well as through F
(METHOD.md §1.6). With every attention weight at 0 it is the plain baseline step.
"""

import contextlib

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import losses as L
from icasc_tf.attention import get_attention
from icasc_tf.selection import confusing_one_hot, target_one_hot

BN_MODES = ("batch", "exact")
ATTENTION_TERMS = ("as_inner", "as_last", "ac")
_LABEL_ERROR = "icasc_tf labels:"


def _rank(output):
    return len(output.shape) if hasattr(output, "shape") else -1  # several outputs: no map


def feature_layer(backbone, name, role):
    """The layer called ``name``, checked to output one 4-D feature map; errors list the choices."""
    maps = [
        layer.name
        for layer in backbone.layers
        if not isinstance(layer, keras.layers.InputLayer) and _rank(layer.output) == 4
    ]
    try:
        layer = backbone.get_layer(name)
    except ValueError:
        raise ValueError(
            f"{role}={name!r} is not a layer of backbone {backbone.name!r}. "
            f"Layers with 4-D feature maps: {', '.join(maps)}."
        ) from None
    if _rank(layer.output) != 4:
        raise ValueError(
            f"{role}={name!r} outputs {getattr(layer.output, 'shape', 'several tensors')}, not a 4-D "
            f"[batch, height, width, channels] feature map. Pick one of: {', '.join(maps)}."
        )
    return layer


def _check_backbone(backbone):
    if not isinstance(backbone, keras.Model) or not hasattr(backbone, "inputs"):
        raise ValueError(
            "backbone must be a functional keras.Model (built with keras.Input), so "
            f"that its feature maps can be tapped by layer name; got {type(backbone).__name__}."
        )
    if len(backbone.outputs) != 1 or len(backbone.outputs[0].shape) != 2:
        shapes = [tuple(o.shape) for o in backbone.outputs]
        raise ValueError(
            f"backbone must have one output of class logits [batch, classes]; it has {shapes}. "
            "End it with a Dense layer without activation."
        )


def _multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.cluster_resolver is not None and bool(strategy.cluster_resolver.task_type)
    )


@contextlib.contextmanager
def _label_errors_as_value_errors():
    """Label range checks run in the graph; surface them as the ValueError users expect."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if _LABEL_ERROR not in error.message:
            raise
        detail = error.message.split(_LABEL_ERROR, 1)[1].split("]", 1)[0].replace("\\'", "'")
        raise ValueError(f"Bad labels:{detail} Fix the dataset's labels.") from None


@keras.saving.register_keras_serializable(package="icasc_tf")
class ICASC(keras.Model):
    """Classifier trained with attention separation (L_AS) and consistency (L_AC).

    Args:
      backbone: functional Keras classifier whose single output is logits ``[B, C]``.
      inner_layer, last_layer: names of the backbone's layers whose 4-D outputs are
        the inner and last feature maps (METHOD.md §1.3).
      attention: ``"ach"`` (default), ``"gradcam"`` or ``"apx"``.
      multi_label: labels are multi-hot ``[B, C]``; classification loss is the
        multilabel soft margin and the target map uses all positive classes.
      loss_weights: weights of (L_AS^in, L_AS^la, L_AC); all 0 trains the plain baseline.
      bn_mode: ``"batch"`` takes one summed gradient through the training-mode pass;
        ``"exact"`` re-runs the layers after the inner map with BatchNormalization in
        inference mode, so each sample's gradient is its own (METHOD.md §1.1).
      sigma, omega, theta: mask threshold, mask sharpness, consistency target.
      mask_gradient: let gradients flow through the mask (default: it is a target).
      lr_multipliers: ``{layer-name prefix: factor}``; the gradients of matching layers
        are scaled, i.e. their SGD learning rate is multiplied (fine-tuning recipes).
    """

    def __init__(
        self,
        backbone,
        inner_layer,
        last_layer,
        attention="ach",
        multi_label=False,
        loss_weights=(1.0, 1.0, 1.0),
        bn_mode="batch",
        sigma=0.55,
        omega=100.0,
        theta=0.8,
        mask_gradient=False,
        lr_multipliers=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_backbone(backbone)
        inner = feature_layer(backbone, inner_layer, "inner_layer")
        last = feature_layer(backbone, last_layer, "last_layer")
        self._attention = get_attention(attention, trainable=True)
        if bn_mode not in BN_MODES:
            raise ValueError(f"Unknown bn_mode {bn_mode!r}: choose one of {', '.join(BN_MODES)}.")
        loss_weights = tuple(float(w) for w in loss_weights)
        if len(loss_weights) != 3 or min(loss_weights) < 0:
            raise ValueError(
                "loss_weights must be three non-negative numbers, the weights of "
                f"(L_AS^in, L_AS^la, L_AC); got {loss_weights}."
            )
        self.backbone = backbone
        self.inner_layer = inner_layer
        self.last_layer = last_layer
        self.attention = attention
        self.multi_label = bool(multi_label)
        self.loss_weights = loss_weights
        self.bn_mode = bn_mode
        self.sigma, self.omega, self.theta = float(sigma), float(omega), float(theta)
        self.mask_gradient = bool(mask_gradient)
        self.lr_multipliers = dict(lr_multipliers or {})
        self.num_classes = int(backbone.outputs[0].shape[-1])
        # Attention and losses run in float32 (also under mixed precision), float64 if asked.
        self._loss_dtype = tf.float64 if backbone.outputs[0].dtype == "float64" else tf.float32
        # One forward pass yields both feature maps and the logits.
        self._tap = keras.Model(
            backbone.input, [inner.output, last.output, backbone.output], name="feature_tap"
        )
        self._head = self._build_head(backbone, inner, last) if bn_mode == "exact" else None
        self._trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "classification_loss") + ATTENTION_TERMS
        }
        self._gradient_scales = None
        # Multiplies all attention terms; a warm-up callback ramps it from 0 to 1.
        self.attention_scale = keras.Variable(1.0, trainable=False, name="attention_scale")
        self.built = True  # the backbone is built, so is this wrapper

    @staticmethod
    def _build_head(backbone, inner, last):
        try:
            return keras.Model(inner.output, [last.output, backbone.output], name="attention_head")
        except ValueError as error:
            raise ValueError(
                f"bn_mode='exact' re-runs the layers after inner_layer={inner.name!r}, but the "
                f"logits also depend on earlier layers that bypass it ({error}). Choose a "
                "stage output as inner_layer, or use bn_mode='batch'."
            ) from None

    # ------------------------------------------------------------------ Keras API
    def call(self, inputs, training=None):
        return self.backbone(inputs, training=training)

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

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build metrics/optimizer from one replica's batch.

        Keras (3.15) averages a distributed batch over replicas with ``strategy.reduce`` to
        build symbolically, which fails under MultiWorkerMirroredStrategy (it cannot convert
        the PerReplica batch); one replica's local batch has the same shapes.
        """
        strategy = self._distribute_strategy
        if iterator is not None and strategy is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(it)
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def fit(self, *args, **kwargs):
        with _label_errors_as_value_errors():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with _label_errors_as_value_errors():
            return super().evaluate(*args, **kwargs)

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._check_labels(y)
        with tf.GradientTape() as tape:
            terms = self._loss_terms(x, labels, training=True, with_attention=self.attention_enabled)
            per_sample = self._weighted_total(terms)
            regularization = self._regularization_loss()
            loss = self._global_mean(per_sample, sample_weight) + regularization / float(
                tf.distribute.get_strategy().num_replicas_in_sync
            )
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled_loss, variables)
        gradients = [
            g if g is None or s == 1.0 else g * s
            for g, s in zip(gradients, self._scales(variables))
        ]
        self.optimizer.apply_gradients(zip(gradients, variables))
        return self._update_metrics(x, y, terms, per_sample + regularization, sample_weight)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._check_labels(y)
        terms = self._loss_terms(x, labels, training=False, with_attention=True)
        per_sample = self._weighted_total(terms) + self._regularization_loss()
        return self._update_metrics(x, y, terms, per_sample, sample_weight)

    # ------------------------------------------------------------------ the method
    def _loss_terms(self, x, labels, training, with_attention):
        """Per-sample classification and attention terms ``{name: [B]}``, plus ``logits``."""
        if not with_attention:
            logits = self.backbone(x, training=training)
            return {"logits": logits, "classification_loss": self._classification_loss(labels, logits)}
        with tf.GradientTape(persistent=True) as inner_tape:
            inner_tape.watch(x)
            f_inner, f_last, logits = self._tap(x, training=training)
            if self._head is not None and training:
                # "exact": per-sample gradients, from BatchNormalization in inference mode.
                inner_tape.watch(f_inner)
                f_last, scores = self._head(f_inner, training=False)
            else:
                scores = logits
            target = tf.cast(target_one_hot(labels, self.num_classes, self.multi_label), self._loss_dtype)
            confusing = tf.cast(confusing_one_hot(target, logits), self._loss_dtype)
            scores = tf.cast(scores, self._loss_dtype)
            target_score = tf.reduce_sum(scores * target, axis=-1)
            confusing_score = tf.reduce_sum(scores * confusing, axis=-1)
        # Inside the outer tape: these gradients are themselves differentiated.
        g_inner_t, g_last_t = inner_tape.gradient(target_score, [f_inner, f_last])
        g_inner_c, g_last_c = inner_tape.gradient(confusing_score, [f_inner, f_last])
        del inner_tape
        maps = self._attention_maps_from(f_inner, f_last, g_inner_t, g_last_t, g_inner_c, g_last_c)
        terms = self._attention_terms(*maps)
        terms["logits"] = logits
        terms["classification_loss"] = self._classification_loss(labels, logits)
        return terms

    def _attention_maps_from(self, f_inner, f_last, *grads):
        f_inner = tf.cast(f_inner, self._loss_dtype)
        f_last = tf.cast(f_last, self._loss_dtype)
        g_inner_t, g_last_t, g_inner_c, g_last_c = (tf.cast(g, self._loss_dtype) for g in grads)
        return (
            self._attention(f_inner, g_inner_t),
            self._attention(f_last, g_last_t),
            self._attention(f_inner, g_inner_c),
            self._attention(f_last, g_last_c),
        )

    def _attention_terms(self, a_inner_t, a_last_t, a_inner_c, a_last_c):
        mask_last = L.target_mask(a_last_t, sigma=self.sigma, omega=self.omega)
        mask_inner = L.resize_map(mask_last, tf.shape(a_inner_t)[1:3])
        if not self.mask_gradient:
            mask_last, mask_inner = tf.stop_gradient(mask_last), tf.stop_gradient(mask_inner)
        return {
            "as_inner": L.attention_separation_loss(a_inner_t, a_inner_c, mask_inner),
            "as_last": L.attention_separation_loss(a_last_t, a_last_c, mask_last),
            "ac": L.attention_consistency_loss(a_inner_t, mask_inner, theta=self.theta),
        }

    def _classification_loss(self, labels, logits):
        logits = tf.cast(logits, self._loss_dtype)
        if self.multi_label:
            return L.multilabel_soft_margin_loss(labels, logits)
        return L.softmax_cross_entropy_loss(labels, logits)

    def _weighted_total(self, terms):
        """Per-sample total (ICCV Eq. 6); zero-weight terms stay out of the gradient graph."""
        attention = [w * terms[n] for n, w in zip(ATTENTION_TERMS, self.loss_weights) if w > 0 and n in terms]
        if not attention:
            return terms["classification_loss"]
        scale = tf.cast(self.attention_scale, terms["classification_loss"].dtype)
        return terms["classification_loss"] + scale * tf.add_n(attention)

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

    def _scales(self, variables):
        """Per-variable gradient factors from ``lr_multipliers`` (recomputed if the variables change)."""
        key = tuple(id(v) for v in variables)
        if self._gradient_scales is None or self._gradient_scales[0] != key:
            factor_of = {}
            for layer in self.backbone.layers:
                factor = next(
                    (f for p, f in self.lr_multipliers.items() if layer.name.startswith(p)), 1.0
                )
                for variable in layer.trainable_variables:
                    factor_of[id(variable)] = float(factor)
            self._gradient_scales = (key, [factor_of.get(id(v), 1.0) for v in variables])
        return self._gradient_scales[1]

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
                    message=f"{_LABEL_ERROR} multi-hot labels must be 0 or 1.",
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
                    y, message=f"{_LABEL_ERROR} class ids must be >= 0."
                ),
                tf.debugging.assert_less(
                    y, c, message=f"{_LABEL_ERROR} class ids must be < {c} (the backbone's classes)."
                ),
            ]
        with tf.control_dependencies(checks):
            return tf.identity(y)

    def _update_metrics(self, x, y, terms, per_sample_total, sample_weight):
        self._trackers["loss"].update_state(per_sample_total, sample_weight=sample_weight)
        self._trackers["classification_loss"].update_state(
            terms["classification_loss"], sample_weight=sample_weight
        )
        for name in ATTENTION_TERMS:
            if name in terms:
                self._trackers[name].update_state(terms[name], sample_weight=sample_weight)
        results = self.compute_metrics(x, y, terms["logits"], sample_weight=sample_weight)
        if not any(name in terms for name in ATTENTION_TERMS):
            results = {k: v for k, v in results.items() if k not in ATTENTION_TERMS}
        if _multi_worker(tf.distribute.get_strategy()):
            # Keras (3.15) reduces logs across workers with reduce("MEAN", axis=0), which
            # needs a batch axis; the values are global already, so [1] loses nothing.
            results = {k: tf.reshape(v, [1]) for k, v in results.items()}
        return results

    # ------------------------------------------------------------------ inspection
    def attention_maps(self, images, classes=None, top_k=1, attention=None):
        """Attention maps at both layers for given classes, or the top-k predicted ones.

        Args:
          images: ``[B, H, W, 3]`` batch (inference mode is used).
          classes: optional ``[B]`` or ``[B, k]`` class ids; default: top-k predictions.
          attention: ``"ach"``, ``"gradcam"``, ``"apx"`` or ``"gradcampp"``; default the model's.
        Returns a dict of NumPy arrays: ``classes`` and ``probabilities`` ``[B, k]``,
        ``inner`` ``[B, k, h_in, w_in]`` and ``last`` ``[B, k, h_la, w_la]``.
        """
        function = get_attention(attention or self.attention)
        images = tf.convert_to_tensor(images, tf.float32)
        if images.shape.rank != 4:
            raise ValueError(f"images must be a [batch, height, width, channels] batch; got {tuple(images.shape)}.")
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(images)
            f_inner, f_last, logits = self._tap(images, training=False)
            logits = tf.cast(logits, tf.float32)
        probabilities = tf.sigmoid(logits) if self.multi_label else tf.nn.softmax(logits)
        if classes is None:
            classes = tf.math.top_k(probabilities, k=top_k).indices
        classes = tf.convert_to_tensor(classes, tf.int32)
        if classes.shape.rank == 1:
            classes = classes[:, None]
        inner, last = [], []
        for j in range(classes.shape[1]):
            selector = tf.one_hot(classes[:, j], self.num_classes)
            g_inner, g_last = tape.gradient(
                logits, [f_inner, f_last], output_gradients=selector
            )
            inner.append(function(tf.cast(f_inner, tf.float32), tf.cast(g_inner, tf.float32)))
            last.append(function(tf.cast(f_last, tf.float32), tf.cast(g_last, tf.float32)))
        del tape
        return {
            "classes": classes.numpy(),
            "probabilities": np.take_along_axis(probabilities.numpy(), classes.numpy(), axis=1),
            "inner": tf.stack(inner, axis=1).numpy(),
            "last": tf.stack(last, axis=1).numpy(),
        }

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
