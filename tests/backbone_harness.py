"""What every registered backbone must satisfy, checked by one function, ``check_backbone``
(as keras-hub's ``run_vision_backbone_test`` does for its backbones).

It builds the backbone by name through ``build_backbone`` at a small size, then checks its
named layers, its logits, a ``.keras`` round trip and one ICASC train step. The toy backbone
of BUILD_NOTES.md's "How to add… a backbone" recipe runs through it too.
"""

import dataclasses

import keras
import numpy as np

from icasc_tf import ICASC
from icasc_tf.backbones import Backbone, build_backbone
from icasc_tf.feature_maps import HEAD_LAYER

ICASC_TERMS = ("loss", "classification_loss", "as_inner", "as_last", "ac")


def images(batch=4, size=32, seed=0):
    """Uniform RGB in [0, 1], as every backbone takes it."""
    return np.random.default_rng(seed).uniform(0, 1, (batch, size, size, 3)).astype("float32")


def assert_close(actual, desired, rtol=1e-4, scale=None):
    """assert_allclose whose absolute tolerance is relative to the magnitudes compared.

    ``scale``: the size of the terms that produced the values (float32 rounding grows with
    them, not with the result, which may cancel to near 0); by default the largest value.
    """
    actual = np.asarray(actual, np.float64)
    desired = np.asarray(desired, np.float64)
    if scale is None:
        scale = max(np.max(np.abs(actual), initial=0.0), np.max(np.abs(desired), initial=0.0))
    np.testing.assert_allclose(actual, desired, rtol=rtol, atol=rtol * float(scale) + 1e-30)


def feature_maps(backbone, x, names=None):
    """The outputs of layers ``names`` (default: the stage layers) and the logits, inference mode."""
    model = backbone.model
    names = list(backbone.stage_layers if names is None else names)
    tap = keras.Model(model.input, [model.get_layer(n).output for n in names] + [model.output])
    *maps, logits = tap(x, training=False)
    return [np.asarray(m) for m in maps], np.asarray(logits)


def assert_logits_pool_the_last_map(backbone, last_map, logits):
    """Global average pooling of the last map, then the head, gives the logits.

    Untrained deep nets in inference mode reach logits of 1e8 (ResNet-110): the tolerance
    scales with the sum of the magnitudes of the products, which bounds float32 rounding.
    """
    pooled = np.mean(np.asarray(last_map, np.float64), axis=(1, 2))
    kernel, bias = (w.astype(np.float64) for w in backbone.model.get_layer(HEAD_LAYER).get_weights())
    magnitude = np.max(np.abs(pooled) @ np.abs(kernel) + np.abs(bias))
    assert_close(pooled @ kernel + bias, logits, rtol=1e-4, scale=magnitude)


@dataclasses.dataclass
class Checked:
    """What ``check_backbone`` built and saw before training, for further checks of a test."""

    backbone: Backbone
    images: np.ndarray
    stage_maps: list  # each stage layer's output on ``images``, inference mode
    logits: np.ndarray


def check_structure(backbone, x, num_classes, halves=True):
    """The named layers and the logits on images ``x``; returns the stage maps and the logits.

    Stage layers are 4-D maps ending with inner and last, each at half the previous one's
    side where ``halves``; the head is a linear float32 Dense whose logits pool the last map.
    """
    assert backbone.icasc_layers() == {"inner_layer": backbone.inner_layer, "last_layer": backbone.last_layer}
    assert backbone.stage_layers[-2:] == (backbone.inner_layer, backbone.last_layer)
    maps, logits = feature_maps(backbone, x)
    assert all(m.ndim == 4 and m.shape[0] == len(x) for m in maps), [m.shape for m in maps]
    sides = [m.shape[1:3] for m in maps]
    if halves:
        assert all(a[0] == 2 * b[0] and a[1] == 2 * b[1] for a, b in zip(sides, sides[1:])), sides
    head = backbone.model.get_layer(HEAD_LAYER)
    assert isinstance(head, keras.layers.Dense) and head.activation is keras.activations.linear
    assert backbone.model.outputs[0].dtype == "float32" and logits.dtype == np.float32
    assert logits.shape == (len(x), num_classes) and np.isfinite(logits).all()
    assert_logits_pool_the_last_map(backbone, maps[-1], logits)
    return maps, logits


def _check_keras_round_trip(backbone, x, logits, folder):
    """``model.save`` as .keras and ``keras.saving.load_model`` give the same network and logits."""
    path = folder / f"{backbone.model.name}.keras"
    backbone.model.save(path)
    loaded = keras.saving.load_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in backbone.model.layers]
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), logits)


def _check_icasc_step(backbone, x, num_classes, run_eagerly):
    """One ICASC step (weight decay on) gives finite losses and moves every trainable weight."""
    ICASC(backbone.model, **backbone.icasc_layers(), bn_mode="exact")  # inner is a clean cut point
    model = ICASC(backbone.model, **backbone.icasc_layers())
    model.compile(optimizer=keras.optimizers.SGD(0.01), run_eagerly=run_eagerly)
    before = [w.numpy() for w in backbone.model.trainable_weights]
    labels = np.arange(len(x)) % num_classes
    history = model.fit(x, labels, batch_size=len(x), epochs=1, verbose=0).history
    for term in ICASC_TERMS:
        assert np.isfinite(history[term][0]), term
    assert 0.0 <= history["as_inner"][0] <= 1.0
    # Every trainable weight moved (any change: a tolerance would depend on its scale).
    after = backbone.model.trainable_weights
    unchanged = [w.path for a, w in zip(before, after) if np.array_equal(a, w.numpy())]
    assert not unchanged, unchanged


def check_backbone(
    name, folder, *, options=None, num_classes=4, size=32, batch=4, halves=True, run_eagerly=False
):
    """Build backbone ``name`` through ``build_backbone`` and check what every backbone promises.

    At ``size`` x ``size`` pixels with ``num_classes`` classes: the named inner/last (and stage)
    layers are 4-D feature maps, each at half the previous one's resolution where ``halves``
    (the promise of every registered backbone at input sizes that are multiples of its total
    stride); the output is float32 logits of a linear Dense head over the pooled last map; a
    ``.keras`` file written to ``folder`` loads back with the same logits; one ICASC train step
    gives finite losses and changes every trainable weight: traced as ``fit`` runs it, or, with
    ``run_eagerly``, the same ``train_step`` without the trace (which takes 10-20 s for the deepest
    backbones on a CPU). Returns what it saw before training.
    """
    backbone = build_backbone(name, num_classes, (size, size, 3), weight_decay=1e-4, **(options or {}))
    x = images(batch, size)
    maps, logits = check_structure(backbone, x, num_classes, halves)
    _check_keras_round_trip(backbone, x, logits, folder)
    _check_icasc_step(backbone, x, num_classes, run_eagerly)
    return Checked(backbone, x, maps, logits)
