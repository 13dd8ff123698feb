"""The extension recipes of BUILD_NOTES.md ("How to add…") for maps and panels: a toy attention map
is one registry entry and flows through explain, ICASC and the panels; a toy panel row is one function."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

from icasc_tf import ICASC, AttentionImages, explain
from icasc_tf.attention import ATTENTIONS, AttentionMap, get_attention
from icasc_tf.figures import PANEL_TILE
from icasc_tf.fit_callbacks import PANEL_ROWS
from tests.nets import tiny_convnet

CLASSES = 5


def positive_gradient_energy(features, grads):
    """A toy map: ReLU(sum_k ReLU(g_k) F_k), per position (no spatial averaging of the weights)."""
    return tf.nn.relu(tf.reduce_sum(tf.nn.relu(grads) * features, axis=-1))


@pytest.fixture
def toy_map(monkeypatch):
    monkeypatch.setitem(ATTENTIONS, "toy", AttentionMap(positive_gradient_energy))
    return "toy"


def _data(n=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 16, 16, 3)).astype("float32"), rng.integers(0, CLASSES, n)


def test_a_registered_attention_map_flows_through_explain_icasc_and_the_panels(toy_map, tmp_path):
    model = tiny_convnet(CLASSES, batch_norm=False)
    x, y = _data()
    out = explain(model, x, layer="inner", method=toy_map, classes=y)
    tap = keras.Model(model.input, [model.get_layer("inner").output, model.output])
    with tf.GradientTape() as tape:
        features, logits = tap(x)
        score = tf.reduce_sum(logits * tf.one_hot(y, CLASSES), axis=-1)
    f, g = features.numpy(), tape.gradient(score, features).numpy()
    expected = np.maximum((np.maximum(g, 0) * f).sum(-1), 0)
    np.testing.assert_allclose(out["maps"][:, 0], expected, rtol=1e-4, atol=1e-6 * expected.max())
    icasc = ICASC(model, "inner", "last", attention=toy_map)
    icasc.compile(keras.optimizers.SGD(0.1))
    history = icasc.fit(x, y, batch_size=8, epochs=1, verbose=0,
                        callbacks=[AttentionImages(str(tmp_path), x[:2], y[:2])])
    assert np.isfinite(history.history["as_inner"][0]) and history.history["as_inner"][0] > 0
    events = glob.glob(str(tmp_path / "attention" / "events.*"))
    tags = {value.tag for path in events for event in tf.compat.v1.train.summary_iterator(path)
            for value in event.summary.value}
    assert {"attention/00", "attention/01"} <= tags
    get_attention(toy_map, trainable=True)  # trainable unless registered otherwise


def test_an_evaluation_only_map_is_refused_for_training(monkeypatch):
    monkeypatch.setitem(ATTENTIONS, "toy_eval", AttentionMap(positive_gradient_energy, trainable=False))
    with pytest.raises(ValueError, match="Unknown attention 'toy_eval': choose one of ach, gradcam, apx"):
        ICASC(tiny_convnet(CLASSES), "inner", "last", attention="toy_eval")


def test_a_panel_row_is_one_function(tmp_path):
    def saliency_row(panels, i):
        """A toy row: the input-gradient magnitude of the true class, one tile."""
        images = tf.constant(panels.images[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(images)
            score = panels.model(images)[0, panels.truth[i]]
        saliency = tf.reduce_max(tf.abs(tape.gradient(score, images)), axis=-1)[0].numpy()
        return [[("saliency", saliency, "overlay")]]

    model = tiny_convnet(CLASSES)
    x, y = _data(4)
    default = AttentionImages(str(tmp_path / "a"), x[:2], y[:2])
    extended = AttentionImages(str(tmp_path / "b"), x[:2], y[:2], rows=PANEL_ROWS + (saliency_row,))
    for callback in (default, extended):
        callback.set_model(model)
    before, after = default._panels(), extended._panels()
    row_height = 40 + PANEL_TILE + 10  # captions, the tile and its margins
    assert [p.shape[0] for p in after] == [p.shape[0] + row_height for p in before]
    np.testing.assert_array_equal(after[0][:row_height], before[0][:row_height])  # the default rows are unchanged
