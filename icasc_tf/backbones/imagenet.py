"""``weights="imagenet"``: keras.applications' ImageNet files, through Keras's own cache.

The backbones built from keras.applications' networks (``keras_apps.py``) register one
``WeightsFile`` each: the ``*_weights_tf_dim_ordering_tf_kernels_notop.h5`` file (no
classifier, any input size, 3 channels, 'caffe' preprocessing), which loads by layer name.
The file is looked up in the Keras cache first (``$KERAS_HOME/models``, else
``~/.keras/models``, where ``keras.applications`` itself keeps it); only when it is absent is
it downloaded, with ``keras.utils.get_file`` and the same name, address and hash as
keras.applications. A failed download raises ``MissingWeightsError`` naming the file, its
address and the folder to put it in; nothing retries.
"""

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import tempfile

import keras

IMAGENET = "imagenet"
CACHE_SUBDIR = "models"  # keras.applications' cache_subdir
# Seconds a blocked connection may stall a socket operation of the download (each one,
# not the whole transfer), so that a machine without network fails in seconds.
DOWNLOAD_TIMEOUT = 30.0
CONVERSION_DOC = (
    'README.md, section "Pretrained weights" (how: docs/weights.md): convert a '
    "torchvision or keras-hub checkpoint once, save it with model.save('x.h5') and pass "
    "weights='x.h5'"
)

_log = logging.getLogger(__name__)


class MissingWeightsError(ValueError):
    """Pretrained weights are neither in the Keras cache nor downloadable (no network).

    Its message names the file to get, where it comes from and the folder to put it in.
    """


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One of keras.applications' weight files: its cache name, address and md5.

    A registry entry's ``imagenet`` (``icasc_tf.backbones.REGISTRY``): ``local_path`` gets the
    file, ``preprocess`` is the input convention its weights expect, ``source`` says where
    they come from (for help texts).
    """

    file_name: str
    origin: str
    file_hash: str
    preprocess: str = "caffe"
    source: str = "keras.applications' files, through the Keras cache"

    def local_path(self, arch):
        """The cached file, downloaded first if absent (``MissingWeightsError`` if that fails)."""
        return _cached_or_downloaded(arch, self)


_APPLICATIONS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def keras_applications_file(folder, arch, file_hash):
    """keras.applications' ``include_top=False`` file of ``arch`` (keras/src/applications/*.py)."""
    file_name = f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return WeightsFile(file_name, f"{_APPLICATIONS}{folder}/{file_name}", file_hash)


def unavailable_message(arch, available):
    """Why ``weights='imagenet'`` cannot apply to ``arch``, and what to do instead."""
    return (
        f"weights='imagenet' is not available for backbone {arch!r}: ImageNet weights exist for "
        f"{', '.join(available)} only. For {arch!r}, see {CONVERSION_DOC}."
    )


def check_channels(arch, input_shape):
    """ImageNet weights take RGB images: 3 input channels."""
    channels = tuple(input_shape)[-1]
    if channels != 3:
        raise ValueError(
            f"weights='imagenet' for {arch!r} needs 3-channel (RGB) inputs; got input_shape "
            f"{tuple(input_shape)}. Convert grayscale images to RGB, or train without "
            "ImageNet weights."
        )


def keras_cache_dir():
    """The folder keras.applications caches weight files in: ``$KERAS_HOME/models``, else
    ``~/.keras/models`` (``/tmp/.keras/models`` when that is not writable), as documented for
    ``keras.utils.get_file``. ``KERAS_HOME`` is read now, so setting it later (a test) counts.
    """
    base = os.path.expanduser(os.environ.get("KERAS_HOME") or os.path.join("~", ".keras"))
    with contextlib.suppress(OSError):
        os.makedirs(base, exist_ok=True)
    if not os.access(base, os.W_OK):  # as keras.utils.get_file falls back
        base = os.path.join("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir(), ".keras")
    return os.path.join(base, CACHE_SUBDIR)


def _md5(path, chunk_size=1 << 20):
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _socket_timeout(seconds):
    """Bound each socket operation of a download (urllib's default is to wait forever)."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _cached_or_downloaded(arch, spec):
    """Local path of ``arch``'s keras.applications file ``spec``, downloaded if not cached."""
    cache_dir = keras_cache_dir()
    cached = os.path.join(cache_dir, spec.file_name)
    if os.path.isfile(cached):
        # A file of the right name in the cache is used as it is, without a download: it
        # may have been copied there by hand for an offline machine.
        if _md5(cached) != spec.file_hash:
            _log.warning(
                "%s: md5 differs from keras.applications' %s; loading it anyway (layers are "
                "matched by name and shape).", cached, spec.file_hash,
            )
        return cached
    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT):
            return keras.utils.get_file(
                spec.file_name,
                spec.origin,
                cache_subdir=CACHE_SUBDIR,
                file_hash=spec.file_hash,
                cache_dir=os.path.dirname(cache_dir),
            )
    except Exception as error:  # get_file raises a bare Exception for URL errors
        raise MissingWeightsError(
            f"ImageNet weights for {arch} are not in the Keras cache and could not be "
            f"downloaded. Get {spec.file_name} from {spec.origin} (keras.applications' "
            f"ImageNet weights, md5 {spec.file_hash}) on a machine with network access and "
            f"put it in {cache_dir}/ (the Keras cache: $KERAS_HOME/models, else "
            "~/.keras/models), or pass its path as the weights file.\n"
            f"The download failed with: {error}"
        ) from error
