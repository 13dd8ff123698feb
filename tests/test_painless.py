"""Painless attention (WRNA): shapes, normalisations, the identity, L_R, training, saving."""


import keras
import numpy as np
import pytest

from icasc_tf.backbones import Backbone
from icasc_tf.painless import (
    PainlessOutput,
    add_painless_attention,
    mask_overlap,
    painless_probe,
)

CLASSES = 5
STAGES = ("stage1", "stage2", "stage3")  # 16x16x4, 8x8x6, 4x4x8 for a 32x32 input


def three_stage_net(size=32, seed=0):
    """conv/pool x3 (named stage outputs) -> GAP -> Dense 'logits'."""
    init = keras.initializers.GlorotUniform(seed=seed)
    inputs = keras.Input((size, size, 3))
    x = inputs
    for index, channels in enumerate((4, 6, 8), start=1):
        x = keras.layers.Conv2D(
            channels,
            3,
            padding="same",
            activation="relu",
            kernel_initializer=init,
            name=f"conv{index}",
        )(x)
        x = keras.layers.MaxPooling2D(name=f"stage{index}")(x)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(CLASSES, kernel_initializer=init, name="logits")(features)
    return keras.Model(inputs, logits, name="three_stage")


def images(batch=4, size=32, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


def numpy_overlap(masks):
    flat = masks.reshape(masks.shape[0], -1, masks.shape[-1]).astype(np.float64)
    gram = np.einsum("bpi,bpj->bij", flat, flat)
    gram *= 1.0 - np.eye(masks.shape[-1])
    return (gram**2).sum(axis=(1, 2))


# ------------------------------------------------------------------ shapes and normalisation
@pytest.mark.parametrize(
    "depth, width, reduction", [(1, 1, "avg"), (2, 2, "projection"), (3, 4, "avg")]
)
def test_shapes_masks_and_gates(depth, width, reduction):
    names = list(STAGES[::-1][:depth])
    model = add_painless_attention(
        three_stage_net(), layer_names=names, width=width, reduction=reduction
    )
    x = images()
    assert model(x).shape == (4, CLASSES)
    probe = painless_probe(model)(x)
    sizes = {"stage3": 4, "stage2": 8, "stage1": 16}
    assert [tuple(m.shape) for m in probe["masks"]] == [
        (4, sizes[n], sizes[n], width) for n in names
    ]
    for masks in probe["masks"]:
        np.testing.assert_allclose(np.sum(masks, axis=(1, 2)), 1.0, atol=1e-5)
        assert np.all(np.asarray(masks) > 0)
    gates = np.asarray(probe["gates"])
    assert gates.shape == (4, 1 + depth * width)
    np.testing.assert_allclose(gates.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(gates > 0)
    assert len(model.losses) == depth


def test_every_new_layer_is_prefixed_and_the_output_is_the_combination():
    backbone = three_stage_net()
    old = {layer.name for layer in backbone.layers}
    model = add_painless_attention(backbone, layer_names=["stage3", "stage2"], width=2)
    new = [layer.name for layer in model.layers if layer.name not in old]
    assert sorted(new) == [
        "painless_attention_1",
        "painless_attention_2",
        "painless_net_gate",
        "painless_output",
    ]
    new_weights = {id(w) for w in model.weights} - {id(w) for w in backbone.weights}
    paths = [w.path for w in model.weights if id(w) in new_weights]
    assert paths and all(p.startswith("painless_") for p in paths)
    assert model.outputs[0] is model.get_layer("painless_output").output[0]


# ---------------------------------------------------------------------------------- gates
def test_network_gate_alone_reproduces_the_backbone():
    """The paper's identity (Sec. 3.4): attention gates 0, network gate 1 -> original model."""
    backbone = three_stage_net()
    model = add_painless_attention(
        backbone, layer_names=["stage3", "stage2"], width=3, gates="network"
    )
    x = images()
    want = np.asarray(backbone(x))
    np.testing.assert_allclose(model(x), want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    gates = np.asarray(painless_probe(model)(x)["gates"])
    np.testing.assert_array_equal(gates, np.tile([1.0] + [0.0] * 6, (4, 1)))


def test_uniform_gates_average_all_hypotheses():
    model = add_painless_attention(
        three_stage_net(), layer_names=["stage3"], width=3, gates="uniform"
    )
    gates = np.asarray(painless_probe(model)(images())["gates"])
    np.testing.assert_allclose(gates, 0.25)
    assert "painless_net_gate" not in [layer.name for layer in model.layers]


def test_learned_combination_matches_numpy():
    rng = np.random.default_rng(1)
    net = rng.normal(size=(3, CLASSES)).astype(np.float32)
    heads = [
        rng.normal(size=(3, 2, CLASSES)).astype(np.float32),
        rng.normal(size=(3, 1, CLASSES)).astype(np.float32),
    ]
    scores = [np.tanh(rng.normal(size=(3, k))).astype(np.float32) for k in (1, 2, 1)]
    logits, gates = PainlessOutput(gates="learned")(net, heads, scores)
    c = np.concatenate(scores, axis=1)
    expected_gates = np.exp(c) / np.exp(c).sum(axis=1, keepdims=True)
    hypotheses = np.concatenate([net[:, None], *heads], axis=1)
    np.testing.assert_allclose(gates, expected_gates, rtol=1e-5)
    np.testing.assert_allclose(
        logits, np.einsum("bk,bkc->bc", expected_gates, hypotheses), rtol=1e-5, atol=1e-6
    )


# ------------------------------------------------------------------------- regulariser
def test_mask_overlap_is_zero_for_orthogonal_masks_and_matches_numpy():
    orthogonal = np.zeros((2, 4, 4, 3), np.float32)
    orthogonal[:, :2, :, 0] = 1 / 8  # three disjoint regions, each summing to 1
    orthogonal[:, 2:, :2, 1] = 1 / 4
    orthogonal[:, 2:, 2:, 2] = 1 / 4
    np.testing.assert_array_equal(mask_overlap(orthogonal), [0.0, 0.0])
    rng = np.random.default_rng(2)
    masks = rng.random((2, 4, 4, 3)).astype(np.float32)
    masks /= masks.sum(axis=(1, 2), keepdims=True)
    value = np.asarray(mask_overlap(masks))
    assert np.all(value > 0)
    np.testing.assert_allclose(value, numpy_overlap(masks), rtol=1e-5)
    assert np.asarray(mask_overlap(masks[..., :1])).tolist() == [0.0, 0.0]


def test_module_adds_gamma_times_batch_mean_overlap_to_model_losses():
    model = add_painless_attention(
        three_stage_net(), layer_names=["stage3", "stage2"], width=3, gamma=0.1
    )
    x = images()
    model(x)
    masks = painless_probe(model)(x)["masks"]
    expected = [0.1 * numpy_overlap(np.asarray(m)).mean() for m in masks]
    assert all(e > 0 for e in expected)
    np.testing.assert_allclose([float(v) for v in model.losses], expected, rtol=1e-4)
    # Reachable by name, for a metric or a log line.
    np.testing.assert_allclose(
        float(model.get_layer("painless_attention_2").losses[0]), expected[1], rtol=1e-4
    )


def test_compiled_loss_includes_the_regulariser():
    model = add_painless_attention(three_stage_net(), layer_names=["stage3"], width=2, gamma=50.0)
    model.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = images(), np.array([0, 1, 2, 3])
    cross_entropy = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x)))
    regulariser = 50.0 * numpy_overlap(np.asarray(painless_probe(model)(x)["masks"][0])).mean()
    loss = model.evaluate(x, y, batch_size=4, verbose=0)
    np.testing.assert_allclose(loss, cross_entropy + regulariser, rtol=1e-4)


# ---------------------------------------------------------------------------- training
def test_fit_with_plain_keras_trains_the_attention():
    model = add_painless_attention(
        three_stage_net(), layer_names=["stage3", "stage2"], width=2, reduction="projection"
    )
    model.compile(
        keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = {w.path: w.numpy() for w in model.trainable_weights if w.path.startswith("painless_")}
    x, y = images(8), np.arange(8) % CLASSES
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    after = {w.path: w.numpy() for w in model.trainable_weights if w.path in before}
    unchanged = [path for path, value in before.items() if np.array_equal(value, after[path])]
    # per module: mask conv, projection, head logits (2), head scores (2); net gate (2)
    assert len(before) == 14 and unchanged == []


@pytest.mark.parametrize("bn_mode", ["batch", pytest.param("exact", marks=pytest.mark.slow)])
def test_backbone_in_backbone_out_and_icasc_trains_it(bn_mode):
    from icasc_tf import ICASC

    backbone = Backbone(three_stage_net(), "stage2", "stage3", STAGES)
    wrna = add_painless_attention(backbone, depth=2, width=2, gamma=50.0)
    assert isinstance(wrna, Backbone)
    assert (wrna.inner_layer, wrna.last_layer, wrna.stage_layers) == ("stage2", "stage3", STAGES)
    x, y = images(8), np.arange(8) % CLASSES
    masks = painless_probe(wrna)(x)["masks"]
    assert [m.shape[1] for m in masks] == [4, 8]  # deepest first
    model = ICASC(wrna.model, **wrna.icasc_layers(), bn_mode=bn_mode)
    model.compile(keras.optimizers.SGD(0.05))
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    # L_R reaches ICASC's total through model.losses: with the attention terms off,
    # loss = classification loss + gamma * L_R of both modules.
    plain = ICASC(wrna.model, **wrna.icasc_layers(), loss_weights=(0.0, 0.0, 0.0))
    plain.compile(keras.optimizers.SGD(0.05))
    result = plain.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    regulariser = sum(
        50.0 * numpy_overlap(np.asarray(m)).mean() for m in painless_probe(wrna)(x)["masks"]
    )
    assert regulariser > 0.01
    np.testing.assert_allclose(
        result["loss"], result["classification_loss"] + regulariser, rtol=1e-4
    )


# ------------------------------------------------------------------------------ saving
def test_keras_save_and_load_round_trip(tmp_path):
    model = add_painless_attention(
        three_stage_net(), layer_names=["stage3", "stage2"], width=2, reduction="projection"
    )
    model.compile("sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(images(4), np.arange(4), epochs=1, verbose=0)
    path = tmp_path / "wrna.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    x = images(seed=3)
    np.testing.assert_array_equal(loaded(x), model(x))
    original, restored = painless_probe(model)(x), painless_probe(loaded)(x)
    np.testing.assert_array_equal(restored["gates"], original["gates"])
    for a, b in zip(restored["masks"], original["masks"]):
        np.testing.assert_array_equal(a, b)
    assert loaded.get_layer("painless_attention_2").get_config()["reduction"] == "projection"


# ------------------------------------------------------------------------------ errors
def test_errors_name_the_problem_and_the_choices():
    with pytest.raises(ValueError, match="maps: conv1, stage1, conv2, stage2, conv3, stage3.$"):
        add_painless_attention(three_stage_net(), layer_names=["nope"])
    with pytest.raises(ValueError, match="not a 4-D"):
        add_painless_attention(three_stage_net(), layer_names=["pool"])
    with pytest.raises(ValueError, match="needs explicit layer_names"):
        add_painless_attention(three_stage_net())
    with pytest.raises(ValueError, match="avg, projection"):
        add_painless_attention(three_stage_net(), layer_names=["stage3"], reduction="max")
    with pytest.raises(ValueError, match="learned, uniform, network"):
        add_painless_attention(three_stage_net(), layer_names=["stage3"], gates="off")
    with pytest.raises(ValueError, match="depth must be between 1 and"):
        add_painless_attention(
            Backbone(three_stage_net(), "stage2", "stage3", STAGES), depth=4
        )
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    flexible = keras.Model(
        inputs, keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(x))
    )
    with pytest.raises(ValueError, match="fixed map size"):
        add_painless_attention(flexible, layer_names=["conv"], reduction="projection")
    softmax_head = keras.Model(
        inputs,
        keras.layers.Dense(3, activation="softmax", name="logits")(
            keras.layers.GlobalAveragePooling2D()(x)
        ),
    )
    with pytest.raises(ValueError, match="without activation"):
        add_painless_attention(softmax_head, layer_names=["conv"])
