"""The models Keras users build: a base nested in a functional or Sequential classifier (Keras's
transfer-learning guide). Maps, ICASC's terms and their gradients are compared with the same network
built flat by hand from the same layer objects (shared weights), not with stored numbers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from icasc_tf import ICASC, AttentionImages, explain
from icasc_tf.explain import Explainer
from icasc_tf.feature_maps import FeatureGraph
from tests import reference
from tests.nets import tiny_convnet

CLASSES = 5
SIZE = 16


def _base(dtype=None, activation="relu", batch_norm=True, seed=0, name="base"):
    """conv -> [BN] -> act ("inner") -> conv/2 -> [BN] -> act ("last"): tests/nets.py's net, headless."""
    net = tiny_convnet(CLASSES, size=SIZE, batch_norm=batch_norm, activation=activation, dtype=dtype, seed=seed)
    return keras.Model(net.input, net.get_layer("last").output, name=name)


def _guide(base, augment=False, dropout=0.0, dtype=None, seed=0):
    """The transfer-learning guide's classifier: inputs -> [augmentation] -> Rescaling -> base(x,
    training=False) -> GlobalAveragePooling2D -> Dropout -> Dense."""
    inputs = keras.Input((SIZE, SIZE, 3), dtype=dtype)
    x = inputs
    if augment:
        x = keras.layers.RandomFlip("horizontal", seed=1, dtype=dtype)(x)
    x = keras.layers.Rescaling(2.0, offset=-1.0, dtype=dtype)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(dtype=dtype, name="pool")(x)
    x = keras.layers.Dropout(dropout, dtype=dtype)(x)
    outputs = keras.layers.Dense(CLASSES, kernel_initializer=keras.initializers.GlorotUniform(seed), dtype=dtype,
                                 name="logits")(x)
    return keras.Model(inputs, outputs, name="guide")


def _flat(model, taps=()):
    """The same network written flat by hand: each layer of the chain called in turn (a nested
    model's layers in its place), the same objects, so the same weights. Outputs the logits,
    after the outputs of the layers named in ``taps``."""
    inputs = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
    tapped = {}

    def chain(layers, x):
        for layer in layers:
            if isinstance(layer, keras.Model):
                x = chain(layer.layers, x)
            elif not isinstance(layer, keras.layers.InputLayer):
                x = tapped[layer.name] = layer(x)
        return x

    logits = chain(model.layers, inputs)
    return keras.Model(inputs, [tapped[name] for name in taps] + [logits] if taps else logits, name="flat")


def _data(n=8, seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    return rng.random((n, SIZE, SIZE, 3)).astype(dtype), rng.integers(0, CLASSES, n)


def _loss_and_gradients(model, x, y, training):
    with tf.GradientTape() as tape:
        terms = model.per_sample_terms(tf.constant(x), tf.constant(y, tf.int32), training=training)
        loss = tf.reduce_mean(terms["classification_loss"] + terms["as_inner"] + terms["as_last"] + terms["ac"])
    variables = model.trainable_variables
    return terms, {v.path: g.numpy() for v, g in zip(variables, tape.gradient(loss, variables))}


# ----------------------------------------------------------------------- paths and defaults
def test_paths_bare_names_defaults_and_errors():
    guide = _guide(_base())
    graph = FeatureGraph(guide)
    assert graph.feature_maps == ["base/conv1", "base/bn1", "base/inner", "base/conv2", "base/bn2", "base/last"]
    assert graph.default_map() == "base/last" and graph.default_pair() == ("base/inner", "base/last")
    assert graph.resolve("last") == graph.resolve("base/last") == graph.resolve("base") == "base/last"
    with pytest.raises(ValueError, match="not a layer of 'guide'.*Layers with 4-D feature maps: base/conv1, "):
        graph.resolve("out_relu")
    with pytest.raises(ValueError, match="not a 4-D.*base/last"):
        graph.resolve("pool")
    twice = keras.Model(guide.input, keras.layers.Add()([_base(name="a")(guide.input), _base(name="b")(guide.input)]))
    with pytest.raises(ValueError, match="'inner' names 2 layers: give its path, one of a/inner, b/inner"):
        FeatureGraph(keras.Model(twice.input, keras.layers.Dense(3)(keras.layers.Flatten()(twice.output))))\
            .resolve("inner")


def test_the_default_layer_is_never_a_preprocessing_layer():
    """The bug this fixes: the guide's model used to get maps of its Rescaling layer (input-sized)."""
    guide = _guide(_base(), augment=True)
    x, _ = _data(4)
    out = explain(guide, x)
    assert out["layer"] == "base/last" and out["maps"].shape == (4, 1, SIZE // 2, SIZE // 2)
    no_features = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(0.5),
                                    keras.layers.Flatten(), keras.layers.Dense(CLASSES)])
    with pytest.raises(ValueError, match="no 4-D feature map that a convolution computed"):
        explain(no_features, x)


def test_defaults_with_shared_layers_split_maps_list_outputs_and_several_pools():
    x_, _ = _data(2)
    inputs = keras.Input((SIZE, SIZE, 3))
    conv = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    shared = conv(conv(inputs))  # called twice: no single output
    head = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(shared))
    with pytest.raises(ValueError, match="the default layer='shared': layer 'shared' is called 2 times"):
        FeatureGraph(keras.Model(inputs, head)).default_map()
    c1 = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    first, _ = keras.ops.split(c1, 2, axis=-1)  # one output of several: it has no path
    split = keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(first)))
    with pytest.raises(ValueError, match="pools a map that is one output of a layer with several: name the layer"):
        FeatureGraph(split).default_map()
    listed = keras.Model(inputs, [keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(c1))])
    assert explain(listed, x_)["layer"] == "c1"  # keras.Model(inputs, [outputs]): one output
    s3 = keras.layers.Conv2D(4, 3, padding="same", name="stage3")(inputs)
    s4 = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="stage4")(s3)
    pools = [keras.layers.GlobalAveragePooling2D()(s) for s in (s4, s3)]  # the deeper map pooled first
    both = keras.Model(inputs, keras.layers.Dense(CLASSES)(keras.layers.Concatenate()(pools)))
    assert FeatureGraph(both).default_map() == "stage4"


def test_keras_ops_in_the_graph_are_followed_and_named():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.ops.relu(keras.layers.Conv2D(4, 3, name="conv")(inputs))  # an operation, not a layer
    outputs = keras.layers.Dense(CLASSES)(keras.layers.GlobalAveragePooling2D()(x))
    graph = FeatureGraph(keras.Model(inputs, outputs))
    relu = graph.default_map()
    assert graph.feature_maps == ["conv", relu] and relu.startswith("relu")
    x_, _ = _data(2)
    maps = Explainer(graph.model).maps(x_)["maps"][relu]
    assert maps.shape == (2, 1, SIZE - 2, SIZE - 2)


def test_a_subclassed_model_gets_one_clear_error():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv, self.pool, self.dense = keras.layers.Conv2D(4, 3), keras.layers.GlobalAveragePooling2D(), \
                keras.layers.Dense(CLASSES)

        def call(self, x):
            return self.dense(self.pool(self.conv(x)))

    net = Net()
    x, y = _data(2)
    net(x)
    for attempt in (lambda: explain(net, x), lambda: ICASC(net, "conv", "conv")):
        with pytest.raises(ValueError, match="subclassed model's graph cannot be read: build it with the functional "
                                             "API .* or keras.Sequential"):
            attempt()


# ----------------------------------------------------------------------- equal to the flat network
@pytest.mark.parametrize("method", ["gradcam", "ach"])
def test_explain_through_nesting_equals_the_flat_network_and_the_reference(method):
    guide = _guide(_base())
    flat = _flat(guide)
    x, _ = _data(4)
    classes = np.array([0, 3, 1, 4])
    nested = explain(guide, x, layer="base/inner", method=method, classes=classes)
    flat_maps = explain(flat, x, layer="inner", method=method, classes=classes)
    np.testing.assert_allclose(nested["maps"], flat_maps["maps"], rtol=1e-5, atol=1e-6 * flat_maps["maps"].max())
    np.testing.assert_allclose(nested["probabilities"], flat_maps["probabilities"], rtol=1e-6)
    # ... and equal to NumPy's map of F and dY/dF, taken with a tape of our own on the flat network.
    inner = _flat(guide, taps=["inner"])
    with tf.GradientTape() as tape:
        features, logits = inner(x, training=False)
        score = tf.reduce_sum(logits * tf.one_hot(classes, CLASSES), axis=-1)
    expected = {"gradcam": reference.grad_cam, "ach": reference.a_ch}[method](
        features.numpy().astype(np.float64), tape.gradient(score, features).numpy().astype(np.float64))
    np.testing.assert_allclose(nested["maps"][:, 0], expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())
    np.testing.assert_allclose(guide(x), flat(x), rtol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_icasc_terms_and_gradients_through_nesting_equal_the_flat_network(training):
    guide = _guide(_base())
    nested = ICASC(guide, "base/inner", "base/last")
    flat = ICASC(_flat(guide), "inner", "last")
    x, y = _data(8)
    terms, gradients = _loss_and_gradients(nested, x, y, training)
    flat_terms, flat_gradients = _loss_and_gradients(flat, x, y, training)
    assert set(gradients) == set(flat_gradients) and len(gradients) == len(guide.trainable_variables)
    for name in ("classification_loss", "as_inner", "as_last", "ac", "logits"):
        np.testing.assert_allclose(terms[name], flat_terms[name], rtol=1e-5, atol=1e-6)
    for path, g in gradients.items():
        np.testing.assert_allclose(g, flat_gradients[path], rtol=1e-4, atol=1e-5 * np.abs(g).max(), err_msg=path)
    assert np.abs(gradients["conv1/kernel"]).max() > 0
    # The flat graph computes what Keras computes for the nested model, in both modes (Keras lets the
    # outer call's training replace the nested call's training=False, keras-team/keras#20285) and
    # with none given (the nested call's own training=False applies).
    np.testing.assert_allclose(terms["logits"], guide(x, training=training), rtol=1e-5, atol=1e-6)
    graph = nested.graph
    logits = keras.Model(graph.input, graph.output)
    np.testing.assert_allclose(logits(x), guide(x), rtol=1e-5, atol=1e-6)


def test_lr_multipliers_match_paths_through_nesting_the_most_specific_first():
    from icasc_tf.lr_multipliers import GradientScales

    guide = _guide(_base())
    graph = FeatureGraph(guide)
    variables = guide.trainable_variables
    scales = GradientScales({"base": 10.0, "base/conv2": 2.0, "logits": 3.0, "bas": 7.0})
    factor = dict(zip((v.path for v in variables), scales.factors(graph.layer_paths(), variables)))
    assert factor["conv1/kernel"] == factor["bn1/gamma"] == 10.0  # under base/
    assert factor["conv2/kernel"] == 2.0 and factor["logits/kernel"] == 3.0  # the longer prefix wins
    # "bas" is neither a path nor a path under it ("base/..." is not "bas/...") nor a layer-name prefix here.
    assert 7.0 not in factor.values()


def test_a_softmax_head_under_mixed_precision_gives_float32_scores_and_finite_maps():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        base = _base()
        twin = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(),
                                 keras.layers.Dense(CLASSES, activation="softmax", dtype="float32")])
        x, _ = _data(4)
        out = explain(twin, x, top_k=2)
        probabilities = twin(x).numpy()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert np.isfinite(out["maps"]).all() and out["maps"].max() > 0
    np.testing.assert_allclose(out["probabilities"], np.sort(probabilities, axis=1)[:, ::-1][:, :2], rtol=1e-3)


def test_second_order_gradient_through_a_nested_base_matches_finite_differences():
    base = _base(dtype="float64", activation="softplus", batch_norm=False, seed=3)
    model = ICASC(_guide(base, dtype="float64", seed=3), "base/inner", "base/last", mask_gradient=True)
    x, y = _data(4, seed=3, dtype="float64")
    x, y = tf.constant(x), tf.constant(y, tf.int32)
    kernel = base.get_layer("conv2").kernel

    def attention_loss():
        terms = model.per_sample_terms(x, y, training=True)
        return tf.reduce_mean(terms["as_inner"] + terms["as_last"] + terms["ac"])

    with tf.GradientTape() as tape:
        loss = attention_loss()
    analytic = tape.gradient(loss, kernel).numpy()
    reference.check_finite_differences(attention_loss, kernel, analytic, count=4)


# ----------------------------------------------------------------------- training it
def test_a_frozen_base_keeps_its_batch_norm_in_inference_mode_and_a_trainable_base_trains():
    x, y = _data(16)
    for trainable in (False, True):
        base = _base()
        base.trainable = trainable
        model = ICASC(_guide(base, dropout=0.2), "base/inner", "base/last")
        model.compile(keras.optimizers.SGD(0.1))
        bn, conv, head = base.get_layer("bn1"), base.get_layer("conv1"), model.backbone.get_layer("logits")
        before = [v.numpy() for v in (bn.moving_mean, conv.kernel, head.kernel)]
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        after = [v.numpy() for v in (bn.moving_mean, conv.kernel, head.kernel)]
        moved = [not np.array_equal(a, b) for a, b in zip(before, after)]
        assert moved == [trainable, trainable, True], trainable
        assert np.isfinite(history.history["as_inner"][0]) and history.history["as_inner"][0] > 0


def test_the_sequential_twin_with_softmax_trains_on_its_scores_and_explains_like_logits():
    base = _base()
    twin = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(CLASSES, activation="softmax", name="probs")])
    linear = keras.layers.Dense(CLASSES)
    logits_twin = keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(), linear])
    linear.set_weights(twin.get_layer("probs").get_weights())
    x, y = _data(8)
    a, b = explain(twin, x, top_k=2), explain(logits_twin, x, top_k=2)
    assert a["layer"] == "base/last"
    np.testing.assert_allclose(a["maps"], b["maps"], rtol=1e-5, atol=1e-6 * b["maps"].max())
    np.testing.assert_allclose(a["probabilities"], b["probabilities"], rtol=1e-5)
    model = ICASC(twin)  # the default pair, and the scores before the softmax
    assert (model.inner_layer, model.last_layer) == ("base/inner", "base/last")
    np.testing.assert_allclose(model(x), logits_twin(x), rtol=1e-5, atol=1e-6)  # ICASC outputs the logits
    model.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"])
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    with pytest.raises(ValueError, match="ends in a sigmoid .* multi_label=True"):
        ICASC(keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(CLASSES, activation="sigmoid")]))
    with pytest.raises(ValueError, match="two or more class scores"):
        ICASC(keras.Sequential([keras.Input((SIZE, SIZE, 3)), base, keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(1)]))


def test_two_levels_of_nesting_and_a_model_loaded_from_a_keras_file(tmp_path):
    guide = _guide(_base())
    outer = keras.Sequential([keras.Input((SIZE, SIZE, 3)), guide], name="outer")
    x, _ = _data(4)
    expected = explain(guide, x, layer="base/inner", top_k=2)
    got = explain(outer, x, layer="guide/base/inner", top_k=2)
    assert explain(outer, x)["layer"] == "guide/base/last"
    np.testing.assert_allclose(got["maps"], expected["maps"], rtol=1e-5, atol=1e-6 * expected["maps"].max())
    guide.save(tmp_path / "guide.keras")
    loaded = keras.models.load_model(tmp_path / "guide.keras")
    again = explain(loaded, x, layer="inner", top_k=2)  # a bare name unique in the network
    np.testing.assert_allclose(again["maps"], expected["maps"], rtol=1e-5, atol=1e-6 * expected["maps"].max())
    model = ICASC(loaded)
    assert (model.inner_layer, model.last_layer) == ("base/inner", "base/last")


def test_augmentation_inside_the_model_is_active_only_in_training():
    guide = _guide(_base(), augment=True)
    plain = _guide(_base(), augment=False)
    plain.set_weights(guide.get_weights())
    x, y = _data(8)
    a, b = explain(guide, x, layer="base/last"), explain(plain, x, layer="base/last")
    np.testing.assert_allclose(a["maps"], b["maps"], rtol=1e-6)  # inference: no flip
    model = ICASC(guide)
    flipped = [model.per_sample_terms(tf.constant(x), tf.constant(y), training=True)["logits"].numpy()
               for _ in range(2)]
    assert not np.allclose(flipped[0], flipped[1])  # training: a random flip per call


@pytest.mark.slow  # save, load and fit again: the full suite
def test_icasc_with_a_nested_base_saves_and_loads_and_keeps_training(tmp_path):
    model = ICASC(_guide(_base(), dropout=0.2), "base/inner", "base/last", bn_mode="exact")
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
    x, y = _data(16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert (loaded.inner_layer, loaded.last_layer) == ("base/inner", "base/last")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    a, b = model.attention_maps(x[:2], top_k=2), loaded.attention_maps(x[:2], top_k=2)
    np.testing.assert_allclose(a["inner"], b["inner"], rtol=1e-6)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)


@pytest.mark.slow  # the GPU paths (XLA, mixed precision), in the full suite
def test_jit_compile_mixed_precision_and_two_replicas_through_nesting():
    x, y = _data(16)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    weights = _guide(_base(batch_norm=False)).get_weights()

    def fit(strategy=None, jit=False):
        with (strategy or tf.distribute.get_strategy()).scope():
            guide = _guide(_base(batch_norm=False))
            guide.set_weights(weights)
            model = ICASC(guide, "base/inner", "base/last")
            model.compile(keras.optimizers.SGD(0.5), jit_compile=jit)
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        return [w.copy() for w in guide.get_weights()], history.history

    one, h1 = fit()
    assert np.abs(one[0] - weights[0]).max() > 1e-3 * np.abs(weights[0]).max()
    for other, history in (fit(jit=True), fit(tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()))):
        for a, b in zip(one, other):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * np.abs(a).max())
        np.testing.assert_allclose(history["as_inner"], h1["as_inner"], rtol=1e-4)
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        guide = _guide(_base())
        model = ICASC(guide, "base/inner", "base/last")
        model.compile(keras.optimizers.SGD(0.05))
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert guide.get_layer("base").get_layer("last").compute_dtype == "float16"
    assert all(np.isfinite(history.history[name][0]) for name in ("loss", "as_inner", "as_last", "ac"))


# ----------------------------------------------------------------------- keras.applications bases
APPLICATIONS = {
    "MobileNetV2": (lambda: keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35, include_top=False,
                                                           weights=None), ("block_13_expand_relu", "out_relu")),
    "EfficientNetB0": (lambda: keras.applications.EfficientNetB0(input_shape=(64, 64, 3), include_top=False,
                                                                 weights=None),
                       ("block6a_expand_activation", "top_activation")),
    "ResNet50": (lambda: keras.applications.ResNet50(input_shape=(64, 64, 3), include_top=False, weights=None),
                 ("conv4_block6_out", "conv5_block3_out")),
}


@pytest.mark.slow  # three real networks: the full suite
@pytest.mark.parametrize("family", list(APPLICATIONS))
def test_keras_applications_bases_in_the_guides_model(family):
    build, (inner, last) = APPLICATIONS[family]
    base = build()
    base.trainable = False
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3)(keras.layers.Dropout(0.2)(x))
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32") * 255
    out = explain(model, images, method="gradcam")
    assert out["layer"] == f"{base.name}/{last}" and out["maps"].shape == (2, 1, 2, 2)
    icasc = ICASC(model)
    assert (icasc.inner_layer, icasc.last_layer) == (f"{base.name}/{inner}", f"{base.name}/{last}")
    terms = icasc.per_sample_terms(tf.constant(images), tf.constant([0, 2]), training=True)
    assert all(np.isfinite(terms[name].numpy()).all() for name in ("as_inner", "as_last", "ac"))


# ----------------------------------------------------------------------- panels
def test_attention_images_of_the_guides_model_draw_the_base_feature_map(tmp_path):
    guide = _guide(_base(), augment=True, dropout=0.2)
    guide.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(8)
    callback = AttentionImages(str(tmp_path), x[:2], y[:2])
    guide.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[callback])
    callback.close()
    explainer = Explainer(guide)
    assert explainer.layers == ["base/last"]
    maps = explainer.maps(x[:2], classes=y[:2])["maps"]["base/last"]
    assert maps.shape == (2, 1, SIZE // 2, SIZE // 2)
