"""Maps and TensorBoard panels for any Keras classifier: ``icasc_tf.explain`` against tf-keras-vis
and the NumPy references, and ``AttentionImages`` in a plain ``model.fit``."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from icasc_tf import ICASC, AttentionImages, explain
from icasc_tf.figures import PANEL_TILE, attention_panel
from tests import reference
from tests.nets import tiny_convnet

CLASSES = 5


def _images(n=4, seed=0):
    return np.random.default_rng(seed).random((n, 16, 16, 3)).astype(np.float32)


def _features_and_gradients(model, layer, images, classes):
    """F at ``layer`` and dY_c/dF of the logits, with a tape of our own."""
    tap = keras.Model(model.input, [model.get_layer(layer).output, model.outputs[0]])
    with tf.GradientTape() as tape:
        features, logits = tap(images, training=False)
        score = tf.reduce_sum(logits * tf.one_hot(classes, logits.shape[-1]), axis=-1)
    return features.numpy().astype(np.float64), tape.gradient(score, features).numpy().astype(np.float64)


@pytest.mark.parametrize(
    "method,reference_map",
    [("gradcam", reference.grad_cam), ("ach", reference.a_ch), ("apx", reference.a_px),
     ("gradcampp", reference.grad_cam_pp)],
)
def test_every_method_equals_its_numpy_reference(method, reference_map):
    model, images = tiny_convnet(CLASSES), _images()
    classes = np.array([0, 3, 1, 4])
    out = explain(model, images, layer="inner", method=method, classes=classes)
    features, gradients = _features_and_gradients(model, "inner", images, classes)
    expected = reference_map(features, gradients)
    assert out["maps"].shape == (4, 1, 16, 16) and out["layer"] == "inner"
    np.testing.assert_allclose(out["maps"][:, 0], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    logits = model(images, training=False).numpy()
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(out["probabilities"][:, 0], probs[np.arange(4), classes], rtol=1e-5)


def test_grad_cam_equals_tf_keras_vis():
    gradcam = pytest.importorskip("tf_keras_vis.gradcam")
    scores = pytest.importorskip("tf_keras_vis.utils.scores")
    model, images = tiny_convnet(CLASSES, batch_norm=False), _images()
    classes = [2, 0, 4, 1]
    # At a convolution, the layer Grad-CAM is usually taken at (tf-keras-vis 0.8.7 answers something
    # else for an Activation layer's name).
    ours = explain(model, images, layer="conv2", method="gradcam", classes=classes)["maps"][:, 0]
    theirs = gradcam.Gradcam(model, clone=True)(
        scores.CategoricalScore(classes), images, penultimate_layer="conv2", expand_cam=False, normalize_cam=False,
        training=False,
    )
    theirs = np.asarray(theirs)
    assert theirs.shape == ours.shape == (4, 8, 8) and theirs.max() > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-5 * theirs.max())


def test_default_layer_top_k_and_errors():
    model, images = tiny_convnet(CLASSES), _images()
    out = explain(model, images, top_k=3)
    assert out["layer"] == "last" and out["maps"].shape == (4, 3, 8, 8)
    probs = out["probabilities"]
    assert np.all(np.diff(probs, axis=1) <= 0)  # the top classes, most probable first
    with pytest.raises(ValueError, match="'nope' is not a layer.*inner.*last"):
        explain(model, images, layer="nope")
    with pytest.raises(ValueError, match="Unknown method 'cam'"):
        explain(model, images, method="cam")
    with pytest.raises(ValueError, match="not a 4-D"):
        explain(model, images, layer="pool")


def test_logits_asked_of_a_softmax_model_are_refused():
    functional = tiny_convnet(CLASSES, batch_norm=False)
    softmax = keras.Model(functional.input, keras.layers.Softmax(name="probs")(functional.output))
    with pytest.raises(ValueError, match="output='logits', but .* ends in a softmax \\('probs'\\): its output is "
                                         "probabilities"):
        explain(softmax, _images(), output="logits")


def test_sequential_and_softmax_models_give_the_logit_maps():
    functional = tiny_convnet(CLASSES, batch_norm=False)
    sequential = keras.Sequential([keras.Input((16, 16, 3))] + [
        layer.__class__.from_config(layer.get_config()) for layer in functional.layers[1:]
    ])
    sequential.set_weights(functional.get_weights())
    body = [layer.__class__.from_config(layer.get_config()) for layer in functional.layers[1:-1]]
    softmax = keras.Sequential(
        [keras.Input((16, 16, 3)), *body, keras.layers.Dense(CLASSES, activation="softmax", name="probs")]
    )
    softmax.set_weights(functional.get_weights())
    images, classes = _images(), np.array([1, 1, 0, 2])
    expected = explain(functional, images, classes=classes)
    for model, output in ((sequential, "logits"), (softmax, "probabilities")):
        got = explain(model, images, classes=classes, output=output)
        np.testing.assert_allclose(got["maps"], expected["maps"], rtol=1e-4, atol=1e-6 * expected["maps"].max())
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-5)
    with pytest.raises(ValueError, match="needs a model ending in softmax or sigmoid; 'tiny' ends in 'logits'"):
        explain(functional, images, output="probabilities")


def test_icasc_attention_maps_are_explain_at_each_layer():
    model, images = ICASC(tiny_convnet(CLASSES), "inner", "last"), _images()
    maps = model.attention_maps(images, top_k=2)
    for layer in ("inner", "last"):
        np.testing.assert_array_equal(explain(model, images, layer=layer, method="ach", top_k=2)["maps"], maps[layer])


def _image_events(log_dir):
    tags = {}
    for path in glob.glob(os.path.join(log_dir, "attention", "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


def test_attention_images_in_a_plain_keras_fit_with_default_settings(tmp_path):
    model = tiny_convnet(CLASSES)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _images(16), np.arange(16) % CLASSES
    callback = AttentionImages(str(tmp_path), x[:3], y[:3], class_names=[f"class {c}" for c in range(CLASSES)])
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[callback])
    callback.close()
    tags = _image_events(str(tmp_path))
    assert {tag: sorted(steps) for tag, steps in tags.items()} == {f"attention/{i:02d}": [1, 2] for i in range(3)}


def test_an_all_zero_map_says_so_on_its_tile():
    image = np.full((32, 32, 3), 0.5, np.float32)
    live, zero = np.random.default_rng(0).random((4, 4)).astype(np.float32), np.zeros((4, 4), np.float32)
    panel = attention_panel(image, "image", [[("live", live, "overlay"), ("dead", zero, "overlay")]])
    row_top, tile = 40, PANEL_TILE
    cell = tile + 10  # the tile and its margins
    centre = lambda column: panel[row_top + 5 + tile // 2 - 6: row_top + 5 + tile // 2 + 6,  # noqa: E731
                                  column * cell + 5 + 20: column * cell + 5 + tile - 20]
    # The dimmed image of a dead map is light grey except for the dark "all zero" letters.
    assert centre(2).min() < 60 and np.median(centre(2)) > 180
    assert not (centre(1).min() < 60 and np.median(centre(1)) > 180)


def test_softmax_outputs_are_recognised():
    functional = tiny_convnet(CLASSES, batch_norm=False)
    softmax = keras.Model(functional.input, keras.layers.Softmax()(functional.output))
    images = _images()
    expected = explain(functional, images, top_k=2)
    got = explain(softmax, images, top_k=2)  # output="auto": the scores before the softmax
    np.testing.assert_allclose(got["maps"], expected["maps"], rtol=1e-5, atol=1e-7 * expected["maps"].max())
    np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-5)


def test_attention_images_of_a_model_ending_in_sigmoid_are_multi_label_by_themselves(tmp_path):
    functional = tiny_convnet(CLASSES, batch_norm=False)
    sigmoid = keras.Model(functional.input, keras.layers.Activation("sigmoid")(functional.output))
    sigmoid.compile("sgd", "binary_crossentropy")
    x, y = _images(8), (np.random.default_rng(0).random((8, CLASSES)) > 0.5).astype("float32")
    callback = AttentionImages(str(tmp_path), x[:2], y[:2])  # multi_label not given: the sigmoid says it
    sigmoid.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    callback.close()
    assert _image_events(str(tmp_path)) == {"attention/00": [1], "attention/01": [1]}


def test_attention_images_fail_before_the_first_epoch_on_a_model_without_feature_maps():
    images = _images(1)
    dense = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Flatten(), keras.layers.Dense(CLASSES)])
    callback = AttentionImages("unused", images, [0])
    dense.compile("sgd", "mse")
    callback.set_model(dense)
    with pytest.raises(ValueError, match="no 4-D feature map"):  # before the first epoch, not at its end
        callback.on_train_begin()
