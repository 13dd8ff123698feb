"""The ICASC model: per-sample correctness, second-order gradients, fit, distribution, saving."""

import functools
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from icasc_tf import ICASC, attention, losses, method
from icasc_tf.selection import confusing_class, confusing_one_hot, target_one_hot
from tests import reference as ref
from tests.nets import tiny_convnet

RNG = np.random.default_rng(1)


def _data(n=8, size=16, classes=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, size, size, 3)).astype("float32"), rng.integers(0, classes, n)


@functools.cache
def _tap(model):
    """The test's own tap: images -> (inner map, last map, logits), independent of ICASC's."""
    backbone = model.backbone
    return keras.Model(
        backbone.input,
        [backbone.get_layer(model.inner_layer).output, backbone.get_layer(model.last_layer).output,
         backbone.output],
    )


def _head(model):
    """The layers after the inner map: inner map -> (last map, logits)."""
    backbone = model.backbone
    inner, last = backbone.get_layer(model.inner_layer), backbone.get_layer(model.last_layer)
    return keras.Model(inner.output, [last.output, backbone.output])


# ----------------------------------------------------------------------- per-sample correctness
def _terms(model, x, y, training):
    terms = model.per_sample_terms(tf.constant(x), tf.constant(y, tf.int32), training=training)
    return {k: v.numpy() for k, v in terms.items()}


def test_terms_match_numpy_reference_on_bn_free_net():
    """The whole pipeline (classes, gradients, maps, mask, losses) against NumPy."""
    model = ICASC(tiny_convnet(batch_norm=False), "inner", "last")
    x, y = _data()
    got = _terms(model, x, y, training=False)
    tap = _tap(model)
    with tf.GradientTape(persistent=True) as tape:
        f_in, f_la, logits = tap(tf.constant(x))
        scores_t = tf.gather(logits, y, batch_dims=1)
        conf = []
        for b in range(len(y)):
            z = logits.numpy()[b].copy()
            z[y[b]] = -np.inf
            conf.append(int(np.argmax(z)))
        scores_c = tf.gather(logits, conf, batch_dims=1)
    g_in_t, g_la_t = tape.gradient(scores_t, [f_in, f_la])
    g_in_c, g_la_c = tape.gradient(scores_c, [f_in, f_la])
    F_in, F_la = f_in.numpy().astype("float64"), f_la.numpy().astype("float64")
    a_in_t, a_la_t = ref.a_ch(F_in, g_in_t.numpy()), ref.a_ch(F_la, g_la_t.numpy())
    a_in_c, a_la_c = ref.a_ch(F_in, g_in_c.numpy()), ref.a_ch(F_la, g_la_c.numpy())
    m_la = ref.mask(a_la_t)
    m_in = tf.image.resize(m_la[..., None], a_in_t.shape[1:], method="bilinear")[..., 0].numpy()
    np.testing.assert_allclose(got["as_last"], ref.separation(a_la_t, a_la_c, m_la), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["as_inner"], ref.separation(a_in_t, a_in_c, m_in), rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(got["ac"], ref.consistency(a_in_t, m_in), rtol=2e-4, atol=1e-6)
    assert got["as_inner"].max() > 0.01
    np.testing.assert_array_equal(got["zero_target_last"], (a_la_t.max(axis=(1, 2)) <= 0).astype("float32"))
    np.testing.assert_array_equal(got["zero_target_inner"], (a_in_t.max(axis=(1, 2)) <= 0).astype("float32"))


def test_an_all_zero_target_map_leaves_every_attention_term_and_is_counted():
    """The second exit of the method: a zero last-layer target map gives a zero mask, so
    L_AS^in = L_AS^la = 0 (to e^-55) and L_AC = theta for that sample, and the diagnostic counts it."""
    rng = np.random.default_rng(3)
    inner_t, inner_c = rng.random((2, 2, 8, 8)).astype("float32")
    last_t, last_c = rng.random((2, 2, 4, 4)).astype("float32")
    last_t[1] = 0.0  # sample 1: the target's last-layer map is all zero
    terms = method.separation_and_consistency(
        (tf.constant(inner_t), tf.constant(last_t)), (tf.constant(inner_c), tf.constant(last_c)), theta=0.8
    )
    got = {k: v.numpy() for k, v in terms.items()}
    np.testing.assert_array_equal(got["zero_target_last"], [0.0, 1.0])
    np.testing.assert_array_equal(got["zero_target_inner"], [0.0, 0.0])
    # The mask is sigmoid(omega * (0 - sigma)) = e^-55 everywhere: zero to float32 precision.
    assert got["as_last"][1] < 1e-20 and got["as_inner"][1] < 1e-20
    np.testing.assert_allclose(got["ac"][1], 0.8, rtol=1e-6)
    assert got["as_last"][0] > 0.05 and got["ac"][0] < 0.8


def test_batched_terms_equal_one_sample_at_a_time_in_inference_mode():
    model = ICASC(tiny_convnet(batch_norm=True), "inner", "last")
    x, y = _data()
    model.compile(keras.optimizers.SGD(0.1))
    model.fit(x, y, batch_size=4, epochs=2, verbose=0)  # moving statistics away from (0, 1)
    assert np.abs(model.backbone.get_layer("bn1").moving_mean.numpy()).max() > 1e-3
    batched = _terms(model, x, y, training=False)
    for b in range(len(y)):
        single = _terms(model, x[b : b + 1], y[b : b + 1], training=False)
        for name in ("as_inner", "as_last", "ac", "classification_loss"):
            np.testing.assert_allclose(batched[name][b], single[name][0], rtol=1e-4, atol=1e-6)


def test_exact_mode_uses_per_sample_gradients_in_training_mode():
    """'exact' equals gradients of each sample's own score alone; 'batch' does not (BN mixes)."""
    backbone = tiny_convnet(batch_norm=True)
    for layer in backbone.layers:  # keep the moving statistics fixed across the calls below
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 1.0
    exact = ICASC(backbone, "inner", "last", bn_mode="exact")
    batch = ICASC(backbone, "inner", "last", bn_mode="batch")
    x, y = _data()
    x = tf.constant(x)
    # Reference: one sample's score at a time, through the inference-mode head.
    head = _head(exact)
    f_in, _, logits = _tap(exact)(x, training=True)
    per_sample = []
    for b in range(len(y)):
        with tf.GradientTape() as tape:
            tape.watch(f_in)
            _, scores = head(f_in, training=False)
            score = scores[b, y[b]]
        per_sample.append(tape.gradient(score, f_in)[b])
    want = attention.channel_weighted_attention(f_in, tf.stack(per_sample)).numpy()
    # The same maps as the model builds them, read through its attention-map path.
    with tf.GradientTape() as tape:
        tape.watch(f_in)
        _, scores = head(f_in, training=False)
        total = tf.reduce_sum(tf.gather(scores, y, batch_dims=1))
    got = attention.channel_weighted_attention(f_in, tape.gradient(total, f_in)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    # Training-mode BN: the summed gradient is not each sample's own gradient.
    with tf.GradientTape() as tape:
        f_in2, _, logits2 = _tap(batch)(x, training=True)
        total = tf.reduce_sum(tf.gather(logits2, y, batch_dims=1))
    summed = attention.channel_weighted_attention(f_in2, tape.gradient(total, f_in2)).numpy()
    rel = np.linalg.norm(summed - want) / np.linalg.norm(want)
    assert rel > 0.05
    # And the model's exact-mode terms are built from `want`: L_AC from the per-sample inner
    # target map and the mask of the (inference-mode) last-layer target map.
    with tf.GradientTape() as tape:
        f_la, scores = head(f_in, training=False)
        total = tf.reduce_sum(tf.gather(scores, y, batch_dims=1))
    a_la = attention.channel_weighted_attention(f_la, tape.gradient(total, f_la)).numpy()
    m_la = ref.mask(a_la.astype("float64"))
    m_in = tf.image.resize(m_la[..., None], want.shape[1:], method="bilinear")[..., 0].numpy()
    terms = exact.per_sample_terms(x, tf.constant(y, tf.int32), training=True)
    np.testing.assert_allclose(terms["ac"].numpy(), ref.consistency(want.astype("float64"), m_in), rtol=1e-4, atol=1e-6)
    batch_terms = batch.per_sample_terms(x, tf.constant(y, tf.int32), training=True)
    assert np.abs(batch_terms["ac"].numpy() - terms["ac"].numpy()).max() > 1e-4


# ----------------------------------------------------------------------- second order
def _attention_loss(model, x, y, detach_gradients=False):
    """Sum of the three attention terms, optionally with dY/dF detached (the known port's bug)."""
    with tf.GradientTape(persistent=True) as tape:
        f_in, f_la, logits = _tap(model)(x, training=True)
        target = tf.cast(target_one_hot(y, model.num_classes, False), logits.dtype)
        conf = tf.cast(confusing_one_hot(target, logits), logits.dtype)
        st, sc = tf.reduce_sum(logits * target, -1), tf.reduce_sum(logits * conf, -1)
    g = tape.gradient(st, [f_in, f_la]) + tape.gradient(sc, [f_in, f_la])
    if detach_gradients:
        g = [tf.stop_gradient(t) for t in g]
    a = attention.channel_weighted_attention
    a_in_t, a_la_t, a_in_c, a_la_c = a(f_in, g[0]), a(f_la, g[1]), a(f_in, g[2]), a(f_la, g[3])
    m_la = losses.target_mask(a_la_t)
    m_in = losses.target_mask(a_la_t, size=a_in_t.shape[1:3])
    total = (
        losses.attention_separation_loss(a_in_t, a_in_c, m_in)
        + losses.attention_separation_loss(a_la_t, a_la_c, m_la)
        + losses.attention_consistency_loss(a_in_t, m_in)
    )
    return tf.reduce_mean(total)


def test_second_order_gradient_matches_finite_differences():
    backbone = tiny_convnet(batch_norm=False, activation="softplus", dtype="float64", size=8, seed=3)
    model = ICASC(backbone, "inner", "last", mask_gradient=True)
    x, y = _data(n=4, size=8, seed=3)
    x, y = tf.constant(x, tf.float64), tf.constant(y, tf.int32)
    kernel = backbone.get_layer("conv2").kernel

    def model_loss():
        terms = model.per_sample_terms(x, y, training=True)
        return tf.reduce_mean(terms["as_inner"] + terms["as_last"] + terms["ac"])

    with tf.GradientTape() as tape:
        loss = model_loss()
    analytic = tape.gradient(loss, kernel).numpy()
    with tf.GradientTape() as tape:
        detached = _attention_loss(model, x, y, detach_gradients=True)
    first_order = tape.gradient(detached, kernel).numpy()
    np.testing.assert_allclose(detached.numpy(), loss.numpy(), rtol=1e-10)

    # The six most sensitive weights; h = 1e-5: tf.image.resize (the inner mask) computes in float32
    # even for float64 maps.
    ref.check_finite_differences(model_loss, kernel, analytic, count=6)
    # The second-order path matters: detaching dY/dF changes the gradient.
    rel = np.linalg.norm(analytic - first_order) / np.linalg.norm(analytic)
    assert rel > 0.05
    # second_order=False is exactly that detached (first-order) gradient.
    detached_model = ICASC(backbone, "inner", "last", mask_gradient=True, second_order=False)
    with tf.GradientTape() as tape:
        t = detached_model.per_sample_terms(x, y, training=True)
        loss_first = tf.reduce_mean(t["as_inner"] + t["as_last"] + t["ac"])
    np.testing.assert_allclose(loss_first.numpy(), loss.numpy(), rtol=1e-12)
    np.testing.assert_allclose(
        tape.gradient(loss_first, kernel).numpy(), first_order, rtol=1e-9,
        atol=1e-9 * np.abs(first_order).max(),
    )
    assert ICASC.from_config(detached_model.get_config()).second_order is False


def test_attention_losses_change_weight_gradients():
    backbone = tiny_convnet(batch_norm=False)
    model = ICASC(backbone, "inner", "last")
    x, y = _data()
    x, y = tf.constant(x), tf.constant(y, tf.int32)
    with tf.GradientTape() as tape:
        t = model.per_sample_terms(x, y, training=True)
        att = tf.reduce_mean(t["as_inner"] + t["as_last"] + t["ac"])
    grads = tape.gradient(att, backbone.trainable_variables)
    # dY/dF depends on conv2 and the logits layer: the attention terms reach them too.
    by_name = {v.path: g for v, g in zip(backbone.trainable_variables, grads)}
    assert np.abs(by_name["logits/kernel"].numpy()).max() > 0
    assert np.abs(by_name["conv1/kernel"].numpy()).max() > 0


# ----------------------------------------------------------------------- classes
def test_multilabel_targets_and_confusing_class_never_positive():
    labels = tf.constant([[1, 0, 1, 0], [0, 0, 0, 1], [1, 1, 1, 1]], tf.float32)
    logits = tf.constant([[9.0, 1.0, 8.0, 2.0], [5.0, 3.0, 0.0, 7.0], [1.0, 2.0, 3.0, 4.0]])
    target = target_one_hot(labels, 4, multi_label=True)
    conf = confusing_one_hot(target, logits).numpy()
    np.testing.assert_array_equal(conf, [[0, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    assert not (conf * labels.numpy()).any()
    single = confusing_class(tf.constant([0, 3]), tf.constant([[9.0, 1.0, 8.0, 2.0], [5.0, 3.0, 0.0, 7.0]]))
    np.testing.assert_array_equal(single.numpy(), [2, 0])


def test_multilabel_model_trains_and_target_map_uses_all_positives():
    backbone = tiny_convnet(batch_norm=False, num_classes=4)
    model = ICASC(backbone, "inner", "last", multi_label=True)
    x = RNG.random((8, 16, 16, 3)).astype("float32")
    y = (RNG.random((8, 4)) > 0.5).astype("float32")
    y[0] = 1.0  # a sample whose every class is positive has no confusing class
    terms = model.per_sample_terms(tf.constant(x), tf.constant(y), training=False)
    np.testing.assert_allclose(terms["as_inner"][0].numpy(), 0.0)
    want_ce = ref.multilabel_soft_margin(y, model(x).numpy().astype("float64"))
    np.testing.assert_allclose(terms["classification_loss"].numpy(), want_ce, rtol=1e-5)
    # The target map is the map of the summed positive scores: rebuild L_AC from it.
    with tf.GradientTape(persistent=True) as tape:
        f_in, f_la, logits = _tap(model)(tf.constant(x))
        target_score = tf.reduce_sum(logits * y, axis=-1)
    a_in = ref.a_ch(f_in.numpy().astype("float64"), tape.gradient(target_score, f_in).numpy())
    a_la = ref.a_ch(f_la.numpy().astype("float64"), tape.gradient(target_score, f_la).numpy())
    m_in = tf.image.resize(ref.mask(a_la)[..., None], a_in.shape[1:], method="bilinear")[..., 0].numpy()
    np.testing.assert_allclose(terms["ac"].numpy(), ref.consistency(a_in, m_in), rtol=2e-4, atol=1e-6)
    model.compile(keras.optimizers.SGD(0.05))
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


# ----------------------------------------------------------------------- fit and API
@pytest.mark.parametrize("bn_mode", ["batch", pytest.param("exact", marks=pytest.mark.slow)])
def test_fit_reports_terms_and_learns(bn_mode):
    model = ICASC(tiny_convnet(), "inner", "last", bn_mode=bn_mode)
    model.compile(keras.optimizers.SGD(0.1), metrics=["accuracy"])
    x, y = _data(n=32)
    history = model.fit(x, y, batch_size=8, epochs=4, verbose=0, validation_data=(x, y))
    for name in ("loss", "classification_loss", "as_inner", "as_last", "ac", "accuracy", "val_as_inner", "val_loss",
                 "zero_target_last", "val_zero_target_inner"):
        assert name in history.history and np.isfinite(history.history[name]).all(), name
    h = history.history
    total = h["classification_loss"][0] + h["as_inner"][0] + h["as_last"][0] + h["ac"][0]
    np.testing.assert_allclose(h["loss"][0], total, rtol=1e-4)
    assert h["loss"][-1] < h["loss"][0]  # it learns (the training data are fixed)


def test_zero_weights_is_the_plain_baseline_step():
    backbone = tiny_convnet(batch_norm=False)
    plain = keras.models.clone_model(backbone)
    plain.set_weights(backbone.get_weights())
    model = ICASC(backbone, "inner", "last", loss_weights=(0, 0, 0))
    model.compile(keras.optimizers.SGD(0.1))
    plain.compile(keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data(n=16)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    plain.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
    assert "as_inner" not in history.history
    for a, b in zip(backbone.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_lr_multipliers_scale_gradients():
    def run(multipliers):
        backbone = tiny_convnet(batch_norm=False, seed=7)
        before = backbone.get_layer("logits").kernel.numpy()
        model = ICASC(backbone, "inner", "last", lr_multipliers=multipliers)
        model.compile(keras.optimizers.SGD(0.1))
        x, y = _data(n=8)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        return backbone.get_layer("logits").kernel.numpy() - before, backbone.get_layer("conv1").kernel.numpy()

    step1, conv1_a = run(None)
    step10, conv1_b = run({"logits": 10.0})
    assert np.abs(step1).max() > 1e-3
    np.testing.assert_allclose(step10, 10 * step1, rtol=1e-3, atol=1e-4 * np.abs(step10).max())
    np.testing.assert_allclose(conv1_a, conv1_b, rtol=1e-5, atol=1e-5 * np.abs(conv1_a).max())


@pytest.mark.slow  # the GPU paths (several replicas), in the full suite
def test_two_replicas_update_equals_one_device_update():
    x, y = _data(n=8)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    weights = tiny_convnet(batch_norm=False, seed=5).get_weights()

    def step(strategy):
        with strategy.scope():
            backbone = tiny_convnet(batch_norm=False, seed=5)
            backbone.set_weights(weights)
            model = ICASC(backbone, "inner", "last")
            model.compile(keras.optimizers.SGD(0.5), metrics=["accuracy"])
        history = model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        return [w.copy() for w in backbone.get_weights()], history.history

    one, h1 = step(tf.distribute.OneDeviceStrategy("/cpu:0"))
    two, h2 = step(
        tf.distribute.MirroredStrategy(
            ["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    )
    assert np.abs(one[0] - weights[0]).max() > 1e-3 * np.abs(weights[0]).max()  # a real update
    for a, b in zip(one, two):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(a).max())
    for name in ("loss", "as_inner", "accuracy"):
        np.testing.assert_allclose(h1[name], h2[name], rtol=1e-5)


@pytest.mark.slow  # the GPU paths (XLA, mixed precision), in the full suite
def test_jit_compiled_step_equals_the_plain_step():
    """XLA compiles the same second-order step: same losses, same updated weights."""
    x, y = _data(n=16)
    results = []
    for jit in (False, True):
        keras.utils.set_random_seed(3)
        model = ICASC(tiny_convnet(), "inner", "last")
        model.compile(keras.optimizers.SGD(0.1), jit_compile=jit)
        before = [w.numpy() for w in model.trainable_weights]
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)
        updates = [w.numpy() - b for w, b in zip(model.trainable_weights, before)]
        results.append((history.history, updates))
    (plain, plain_updates), (xla, xla_updates) = results
    for name in ("loss", "classification_loss", "as_inner", "as_last", "ac"):
        assert np.isfinite(xla[name][0])
        np.testing.assert_allclose(xla[name], plain[name], rtol=1e-4)
    # The two steps' updates agree to float32 reordering, relative to the largest update.
    scale = max(np.abs(u).max() for u in plain_updates)
    for a, b in zip(plain_updates, xla_updates):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-4 * scale)


def test_save_load_round_trip(tmp_path):
    model = ICASC(tiny_convnet(), "inner", "last", attention="apx", bn_mode="exact", loss_weights=(1, 0.5, 1))
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), metrics=["accuracy"])
    x, y = _data(n=16)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, ICASC)
    assert (loaded.attention, loaded.bn_mode, loaded.loss_weights) == ("apx", "exact", (1.0, 0.5, 1.0))
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    a, b = model.attention_maps(x[:2], top_k=2), loaded.attention_maps(x[:2], top_k=2)
    np.testing.assert_allclose(a["inner"], b["inner"], rtol=1e-6)
    loaded.fit(x, y, batch_size=8, epochs=1, verbose=0)  # compiled state came back


def test_attention_maps_top_k_and_given_classes():
    model = ICASC(tiny_convnet(), "inner", "last")
    x, _ = _data(n=3)
    out = model.attention_maps(x, top_k=3)
    assert out["inner"].shape == (3, 3, 16, 16) and out["last"].shape == (3, 3, 8, 8)
    assert (np.diff(out["probabilities"], axis=1) <= 0).all()
    given = model.attention_maps(x, classes=out["classes"][:, 1])
    np.testing.assert_allclose(given["last"][:, 0], out["last"][:, 1], rtol=1e-5)
    pp = model.attention_maps(x, top_k=1, attention="gradcampp")
    assert np.abs(pp["last"] - out["last"][:, :1]).max() > 1e-6  # the option changes the map


# ----------------------------------------------------------------------- bad input
def test_bad_input_errors_name_the_problem_and_fix():
    backbone = tiny_convnet()
    with pytest.raises(ValueError, match="not a layer.*Layers with 4-D feature maps:.*inner"):
        ICASC(backbone, "conv9", "last")
    with pytest.raises(ValueError, match="not a 4-D"):
        ICASC(backbone, "inner", "pool")
    with pytest.raises(ValueError, match="ach, gradcam, apx"):
        ICASC(backbone, "inner", "last", attention="cam")
    with pytest.raises(ValueError, match="batch, exact"):
        ICASC(backbone, "inner", "last", bn_mode="fast")
    with pytest.raises(ValueError, match="one output of class scores"):
        ICASC(keras.Model(backbone.input, backbone.get_layer("last").output), "inner", "last")
    model = ICASC(backbone, "inner", "last")
    with pytest.raises(ValueError, match="without loss="):
        model.compile("sgd", loss="mse")
    model.compile("sgd")
    x, y = _data(n=8)
    with pytest.raises(ValueError, match="class ids must be < 5"):
        model.fit(x, np.full(8, 7), verbose=0)
    with pytest.raises(ValueError, match="not one-hot"):
        model.fit(x, keras.utils.to_categorical(y, 5), verbose=0)


def test_attention_warmup_ramps_the_attention_terms():
    from icasc_tf.fit_callbacks import AttentionWarmup

    backbone = tiny_convnet(batch_norm=False)
    model = ICASC(backbone, "inner", "last")
    model.compile(keras.optimizers.SGD(0.0))  # no update: the logged terms stay comparable
    x, y = _data(n=4)
    x, y = np.tile(x, (4, 1, 1, 1)), np.tile(y, 4)  # four identical batches
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0, shuffle=False,
                        callbacks=[AttentionWarmup(epochs=2, steps_per_epoch=4)])
    np.testing.assert_allclose(history.history["attention_scale"], [0.5, 1.0])
    h = history.history
    attention = h["as_inner"][0] + h["as_last"][0] + h["ac"][0]
    # Epoch 1 averages the scales 1/8..4/8 (mean 5/16) over its steps; terms are unchanged (lr 0).
    np.testing.assert_allclose(h["loss"][0], h["classification_loss"][0] + 5 / 16 * attention, rtol=1e-4)


@pytest.mark.slow  # the GPU paths (XLA, mixed precision), in the full suite
def test_mixed_precision_step_is_finite_and_keeps_float32_logits():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        from icasc_tf.backbones import build_backbone

        spec = build_backbone("resnet8", 5, (16, 16, 3))
        model = ICASC(spec.model, **spec.icasc_layers())
        model.compile(keras.optimizers.SGD(0.05))
        x, y = _data(n=16)
        history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert spec.model.get_layer(spec.last_layer).compute_dtype == "float16"
    assert spec.model.output.dtype == "float32"
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for name in ("loss", "as_inner", "as_last", "ac"):
        assert np.isfinite(history.history[name][0]), name
    assert history.history["as_inner"][0] > 0


def test_keras_compat_warns_on_an_untested_keras(monkeypatch):
    from icasc_tf import keras_compat

    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with pytest.warns(UserWarning, match=r"tested with Keras 3\.12, 3\.13, 3\.14, 3\.15; this is Keras 3\.99\.0"):
        keras_compat._check_keras_version()
    monkeypatch.setattr(keras, "__version__", "3.15.1")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keras_compat._check_keras_version()  # the tested version: silent
