"""Test setup: quiet TensorFlow and two logical CPU devices for MirroredStrategy tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import socket
import urllib.error
import urllib.request

import keras
import pytest
import tensorflow as tf

_cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(
    _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Each of pytest-xdist's workers gets one core's worth of threads: with TensorFlow's default
    # (a pool as wide as the machine per process) the workers oversubscribe the cores.
    tf.config.threading.set_intra_op_parallelism_threads(1)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same Python, NumPy and TensorFlow seeds (Keras initialisers
    without a seed, ``fit``'s shuffling), whatever ran before it in the same worker."""
    keras.utils.set_random_seed(0)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras cache (KERAS_HOME) and a network that fails like an offline machine's.

    Returns (home, calls). Keras resolves KERAS_HOME when it is imported; icasc_tf reads the
    variable when it looks, so setting it here is enough. Every URL opened
    (``keras.utils.get_file`` downloads through ``urllib.request.urlopen``) fails as a failed
    DNS lookup does, and is appended to ``calls``.
    """
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    calls = []

    def offline(url, *args, **kwargs):
        calls.append(getattr(url, "full_url", url))
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    return home, calls
