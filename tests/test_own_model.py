"""scripts/train.py on the user's own saved Keras model: ``--arch=model.keras`` (the transfer-learning
guide's classifier with a nested base), its layers by path or by default, its pixel range, resuming
from the run folder's copy, and evaluating the run like any other."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from icasc_tf import ICASC
from icasc_tf.train import TrainConfig, run_training
from icasc_tf.train.own_model import load_own_model
from tests.test_resume import KillAtStep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _guide_file(folder, classes=10, size=32, scale=255.0):
    """The guide's model around a small functional base, taking pixels in [0, ``scale``], saved."""
    init = keras.initializers.GlorotUniform(seed=0)
    base_in = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init, name="conv1")(base_in)
    x = keras.layers.Conv2D(12, 3, strides=2, padding="same", kernel_initializer=init, name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    base = keras.Model(base_in, keras.layers.ReLU(name="out")(x), name="base")
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1.0 / scale)(inputs)
    x = base(x, training=False)
    x = keras.layers.Dropout(0.1)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", name="head")(x), name="guide")
    path = os.path.join(folder, "guide.keras")
    model.save(path)
    return path, model


def test_the_pixel_range_is_a_rescaling_in_front_and_the_paths_follow(tmp_path):
    path, model = _guide_file(str(tmp_path))
    own = load_own_model(path, 255)
    assert (own.inner_layer, own.last_layer, own.head) == ("guide/base/conv1", "guide/base/out", "guide/head")
    assert (own.image_size, own.num_classes) == (32, 10)
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(own.model(x), model(x * 255.0), rtol=1e-5, atol=1e-6)  # the run's [0, 1] images
    same = load_own_model(path, 1, inner_layer="conv1", last_layer="base/out")
    assert (same.inner_layer, same.last_layer) == ("base/conv1", "base/out")
    with pytest.raises(ValueError, match="--inner_layer='nope' is not a layer of 'guide'"):
        load_own_model(path, 1, inner_layer="nope", last_layer="out")


def test_the_head_is_the_dense_before_a_separate_softmax(tmp_path):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
    x = keras.layers.Activation("softmax", name="probabilities")(keras.layers.Dense(10, name="scores")(x))
    keras.Model(inputs, x).save(tmp_path / "m.keras")
    own = load_own_model(str(tmp_path / "m.keras"), 1, inner_layer="conv", last_layer="conv")
    assert own.head == "scores"  # what --head_lr_multiplier speeds up: the layer with the weights


def test_bad_combinations_are_refused_before_anything_runs(tmp_path):
    path, _ = _guide_file(str(tmp_path))
    with pytest.raises(ValueError, match="say which pixels it takes, --pixel_scale: the pixel range the model"):
        TrainConfig(arch=path).validate()
    with pytest.raises(ValueError, match="--weights applies to the registered backbones"):
        TrainConfig(arch=path, pixel_scale=255, weights="imagenet").validate()
    with pytest.raises(ValueError, match="--mixed_precision cannot change --arch=.*train it without"):
        TrainConfig(arch=path, pixel_scale=255, mixed_precision=True).validate()
    with pytest.raises(ValueError, match="--pixel_scale applies to --arch=FILE.keras only"):
        TrainConfig(pixel_scale=255).validate()
    with pytest.raises(ValueError, match="--arch=x: unknown; choose one of .*or give a saved Keras classifier"):
        TrainConfig(arch="x").validate()


def test_a_papers_recipe_keeps_your_models_size_and_names_its_folder_after_it(tmp_path):
    from icasc_tf.train.recipes import config_from_argv

    path, _ = _guide_file(str(tmp_path))
    config = config_from_argv(["train", "--dataset=caltech256", f"--arch={path}", "--pixel_scale=255"]).config
    assert (config.model_dir, config.image_size, config.arch_options) == ("runs/caltech256_guide", 0, [])


@pytest.mark.slow
def test_train_resume_from_the_copy_and_evaluate_a_run_of_your_own_model(tmp_path, capsys):
    path, _ = _guide_file(str(tmp_path))
    config = dict(arch=path, pixel_scale=255, dataset_config=["num_train=62", "num_test=16"], epochs=2,
                  batch_size=8, eval_steps=1, attention_images=2, checkpoint_every=3, verbose=0,
                  model_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(KeyboardInterrupt):
        run_training(TrainConfig(**config), callbacks=[KillAtStep(10)])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["image_size"] == 32  # the model's own
    assert (tmp_path / "run" / "network.keras").is_file()
    _guide_file(str(tmp_path), classes=3)  # the user's file changes: the run resumes the network it started with
    summary = run_training(TrainConfig(**config))
    out = capsys.readouterr().out
    assert "network: the run folder's copy of" in out and "resuming" in out
    assert summary["optimizer_steps"] == 14 and np.isfinite(summary["test"]["final"]["loss"])
    final = keras.models.load_model(tmp_path / "run" / "final.keras")
    assert isinstance(final, ICASC)
    assert (final.inner_layer, final.last_layer) == ("guide/base/conv1", "guide/base/out")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "evaluate.py"),
                             f"--model_dir={tmp_path / 'run'}", "--which_model=final"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "final.keras on split 'test': 16 of 16 images" in result.stdout and "top1 " in result.stdout, result.stdout


@pytest.mark.slow
def test_a_head_of_another_class_count_is_refused_naming_the_fix(tmp_path):
    path, _ = _guide_file(str(tmp_path), classes=3)
    config = TrainConfig(arch=path, pixel_scale=255, dataset_config=["num_train=62", "num_test=16"], epochs=1,
                         batch_size=8, verbose=0, model_dir=str(tmp_path / "run"), data_dir=str(tmp_path / "tfds"))
    with pytest.raises(ValueError, match="outputs 3 class scores, but cluttered_digits has 10 classes: give the "
                                         "model a head of 10"):
        run_training(config)
    assert not (tmp_path / "run").exists()
    with pytest.raises(FileNotFoundError, match="no_such.keras: no such file"):
        run_training(TrainConfig(arch=str(tmp_path / "no_such.keras"), pixel_scale=1,
                                 model_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
