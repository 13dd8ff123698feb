"""Backbone registry: classifiers with named feature layers for ICASC and painless attention.

``build_backbone(name, num_classes)`` returns a ``Backbone``: a flat functional Keras model
(image in [0, 1] -> logits from a Dense named ``logits``) and the names of the layers the
methods tap: ``inner_layer`` / ``last_layer`` for ICASC (METHOD.md §1.3) and
``stage_layers`` for painless attention. ``stage_layers[-2:]`` are always the inner and
last layers; the inner map has twice the last map's resolution (exactly so when the
input size is a multiple of the network's total stride).
"""

import dataclasses
import functools
import logging
import numbers

import keras

from icasc_tf.backbones import keras_apps, resnets
from icasc_tf.backbones.preprocessing import PREPROCESS_MODES, ImagePreprocess
from icasc_tf.backbones.weights import HEAD_LAYER, load_pretrained_weights

__all__ = [
    "BACKBONES",
    "PREPROCESS_MODES",
    "Backbone",
    "ImagePreprocess",
    "build_backbone",
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


# name -> (family builder with its fixed arguments, the options a user may pass)
_COMMON_OPTIONS = ("weight_decay",)
_REGISTRY = {
    "vgg19": (keras_apps.vgg19, ("preprocess",)),
    "resnet18": (functools.partial(resnets.resnet, depth=18), ("stem", "preprocess")),
    "resnet34": (functools.partial(resnets.resnet, depth=34), ("stem", "preprocess")),
    "resnet50": (keras_apps.keras_resnet, ("preprocess",)),
    "resnet101": (keras_apps.keras_resnet, ("preprocess",)),
    **{
        f"resnet{depth}": (functools.partial(resnets.cifar_resnet, depth=depth), ("preprocess",))
        for depth in (8, 14, 20, 32, 44, 56, 110)  # 8 and 14: CPU-sized tests and study
    },
    "wrn": (resnets.wide_resnet, ("depth", "width", "style", "dropout", "preprocess")),
}
BACKBONES = tuple(_REGISTRY)


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


def _apply_weight_decay(model, weight_decay):
    """L2 on every conv/dense kernel, scaled so that its gradient is ``weight_decay * w``.

    That is PyTorch's ``SGD(weight_decay=...)``, the papers' recipes, hence L2(wd / 2).
    Biases and BatchNormalization parameters are not decayed.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0; got {weight_decay}.")
    if not weight_decay:
        return
    for layer in model.layers:
        if hasattr(layer, "kernel_regularizer") and getattr(layer, "kernel", None) is not None:
            regularizer = keras.regularizers.L2(weight_decay / 2)
            layer.kernel_regularizer = regularizer  # kept in the layer's config
            layer.kernel.regularizer = regularizer  # what model.losses reads


def build_backbone(name, num_classes, input_shape=(32, 32, 3), weights=None, **options):
    """Build backbone ``name`` (one of ``BACKBONES``) with a ``num_classes``-way head.

    Inputs are float32 RGB in [0, 1] (CIFAR-style data: minus the per-pixel mean);
    pretrained-weight conventions live in a first layer named ``preprocess``.

    Options (each family accepts its own; others raise):
      weight_decay: PyTorch-style SGD weight decay as L2 on conv/dense kernels
        (default 0; the training script decides).
      preprocess: "caffe" (default for vgg19/resnet50/resnet101, keras.applications
        weights), "torch" (default for ImageNet-stem resnet18/34 and ImageNet-style wrn)
        or "none" (default for CIFAR-style nets).
      stem (resnet18/34): "cifar" | "imagenet"; default "cifar" below 64 pixels.
      depth, width, style, dropout (wrn): WRN-depth-width; style "cifar" (default below
        64 pixels; WRN-28-10) or "imagenet" (WRN-50-2); dropout for style "cifar".
    weights: path of a local ``.keras`` / ``.weights.h5`` / ``.h5`` file, loaded with
      ``load_pretrained_weights(..., skip_head=True)``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"Unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}.")
    family, allowed = _REGISTRY[name]
    unknown = sorted(set(options) - set(allowed) - set(_COMMON_OPTIONS))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {', '.join(unknown)} for backbone {name!r}: it accepts "
            f"{', '.join(allowed + _COMMON_OPTIONS)}."
        )
    if not _is_positive_int(num_classes):
        raise ValueError(f"num_classes must be a positive integer; got {num_classes!r}.")
    weight_decay = float(options.pop("weight_decay", 0.0))
    inputs = keras.Input(_check_input_shape(input_shape), name="image")
    trunk = family(inputs, name=name, **options)
    pooled = keras.layers.GlobalAveragePooling2D(name="avg_pool")(trunk.features)
    # float32 head: logits stay full precision under a mixed-precision policy.
    logits = keras.layers.Dense(int(num_classes), name=HEAD_LAYER, dtype="float32")(pooled)
    model = keras.Model(inputs, logits, name=name)
    _apply_weight_decay(model, weight_decay)
    if weights is not None:
        report = load_pretrained_weights(model, weights, skip_head=True)
        _log.info(
            "%s: loaded %d layers from %s; skipped %s; missing %s",
            name, len(report["loaded"]), weights, report["skipped"], report["missing"],
        )
    return Backbone(model, trunk.inner_layer, trunk.last_layer, tuple(trunk.stage_layers))
