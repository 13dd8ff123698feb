"""README's two runnable examples, run as a user runs them (small data and few epochs)."""

import glob
import os
import subprocess
import sys

import keras
import pytest
import tensorflow as tf

import icasc_tf  # noqa: F401  (registers ICASC for load_model)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(script, *flags):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), *flags], capture_output=True,
                            text=True, cwd=ROOT, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def _image_tags(log_dir):
    tags = set()
    for path in glob.glob(os.path.join(log_dir, "**", "events.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(value.tag for value in event.summary.value if value.tag.startswith("attention/"))
    return tags


@pytest.mark.slow
def test_the_transfer_learning_example(tmp_path):
    out = tmp_path / "transfer"
    result = _run("example_transfer_learning.py", "--epochs=1", "--fine_tune_epochs=1", "--num_train=64",
                  "--num_test=32", f"--output_dir={out}")
    assert "at 'efficientnet_lite0_base/head_relu' (the base's last feature map)" in result.stdout
    assert "ICASC layers: inner 'efficientnet_lite0_base/block11_expand_relu'" in result.stdout
    for stage in ("head", "icasc"):
        assert _image_tags(out / stage) == {f"attention/{i:02d}" for i in range(6)}
    model = keras.models.load_model(out / "icasc.keras")
    assert (model.inner_layer, model.last_layer) == ("efficientnet_lite0_base/block11_expand_relu",
                                                     "efficientnet_lite0_base/head_relu")
    assert "oneDNN" not in result.stdout and "Creating a tf.data.Dataset" not in result.stderr


@pytest.mark.slow
def test_the_plain_keras_example(tmp_path):
    result = _run("example_plain_keras.py", "--epochs=1", f"--logs={tmp_path / 'plain'}")
    assert "at layer 'features'" in result.stdout
    assert _image_tags(tmp_path / "plain") == {f"attention/{i:02d}" for i in range(6)}
