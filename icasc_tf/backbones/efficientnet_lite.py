"""EfficientNet-Lite0/1/2 (tensorflow/tpu's ``efficientnet_lite_builder``) as a flat Keras model.

Lite is EfficientNet made friendly to integer accelerators: no squeeze-and-excitation,
ReLU6 instead of swish, and the stem (32 filters) and head (1280 filters) kept fixed
while width and depth scale (the first and last stages' repeats are not scaled either).
The variants differ only in width, depth and their native resolution:

  lite0: width 1.0, depth 1.0, 224 px;  lite1: 1.0, 1.1, 240 px;  lite2: 1.1, 1.2, 260 px.

Conventions of the ImageNet weights (see BUILD_NOTES "EfficientNet-Lite: conversion and
checks"): TensorFlow 'same' padding (a stride-2 convolution pads one pixel more at the
bottom/right), BatchNormalization epsilon 1e-3, RGB inputs scaled as (255 x - 127) / 128
(``preprocess="lite"``). Drop-connect and the dropout before the classifier (training-time
regularisers of the original) are left out.

Layer names: ``stem_{conv,bn,relu}``, ``block{i}_{expand_conv,expand_bn,expand_relu,dwconv,
bn,relu,project_conv,project_bn,add}`` (blocks numbered 0.. across stages; ``_add`` where
the block is residual), ``head_{conv,bn,relu}``.
"""

import dataclasses
import math

from keras import layers

from icasc_tf.backbones.preprocessing import preprocess as apply_preprocess
from icasc_tf.backbones.trunk import Trunk, check_input_size

PADDINGS = ("same", "symmetric")
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280
_MIN_SIZE = 32  # total stride


@dataclasses.dataclass(frozen=True)
class Stage:
    kernel: int
    stride: int
    expand: int
    filters: int
    repeats: int


# EfficientNet-B0's stages, which Lite0 keeps (tensorflow/tpu efficientnet_builder.py).
_BASE_STAGES = (
    Stage(3, 1, 1, 16, 1),
    Stage(3, 2, 6, 24, 2),
    Stage(5, 2, 6, 40, 2),
    Stage(3, 2, 6, 80, 3),
    Stage(5, 1, 6, 112, 3),
    Stage(5, 2, 6, 192, 4),
    Stage(3, 1, 6, 320, 1),
)
# name -> (width coefficient, depth coefficient, native resolution)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
# The side each variant was trained on with its ImageNet weights: the size to fine-tune at.
NATIVE_SIZES = {name: resolution for name, (_, _, resolution) in VARIANTS.items()}


def _round_filters(filters, width, divisor=8):
    """tensorflow/tpu's round_filters: scale, round to a multiple of 8, never below 90%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def stages(name):
    """The scaled stages of variant ``name`` (first and last stage repeats unscaled)."""
    width, depth, _ = VARIANTS[name]
    last = len(_BASE_STAGES) - 1
    return tuple(
        dataclasses.replace(
            stage,
            filters=_round_filters(stage.filters, width),
            repeats=stage.repeats if i in (0, last) else int(math.ceil(depth * stage.repeats)),
        )
        for i, stage in enumerate(_BASE_STAGES)
    )


def _pad(x, kernel, stride, padding, name):
    """'same' (TensorFlow's) or a symmetric k//2 zero pad before a 'valid' convolution."""
    if padding == "same" or stride == 1:
        return x, "same"
    return layers.ZeroPadding2D(kernel // 2, name=f"{name}_pad")(x), "valid"


def _bn(x, name):
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def _relu6(x, name):
    return layers.ReLU(max_value=6.0, name=name)(x)


def _conv(x, filters, kernel, stride, padding, name):
    x, mode = _pad(x, kernel, stride, padding, name)
    return layers.Conv2D(filters, kernel, strides=stride, padding=mode, use_bias=False, name=name)(x)


def _block(x, stage, stride, filters_in, prefix, padding):
    y = x
    if stage.expand != 1:
        y = _conv(y, filters_in * stage.expand, 1, 1, padding, f"{prefix}_expand_conv")
        y = _relu6(_bn(y, f"{prefix}_expand_bn"), f"{prefix}_expand_relu")
    y, mode = _pad(y, stage.kernel, stride, padding, f"{prefix}_dwconv")
    y = layers.DepthwiseConv2D(
        stage.kernel, strides=stride, padding=mode, use_bias=False, name=f"{prefix}_dwconv"
    )(y)
    y = _relu6(_bn(y, f"{prefix}_bn"), f"{prefix}_relu")
    y = _bn(_conv(y, stage.filters, 1, 1, padding, f"{prefix}_project_conv"), f"{prefix}_project_bn")
    if stride == 1 and filters_in == stage.filters:
        return layers.Add(name=f"{prefix}_add")([x, y]), f"{prefix}_add"
    return y, f"{prefix}_project_bn"


def feature_layers(name):
    """(stage_layers, inner_layer, last_layer) of variant ``name``, by layer name.

    Stage outputs at strides 4, 8 and 16 (the last block before each stride-2 stage),
    then ``head_relu`` at stride 32. Inner = the stride-16 one (EfficientNet's
    ``reduction_4`` endpoint: lite0 ``block10_add``, lite1/2 ``block14_add``).
    """
    ends, count = [], 0
    for stage in stages(name):
        count += stage.repeats
        ends.append(count - 1)
    # stages 1, 2 and 4 end just before a stride-2 stage; all of them are residual.
    stage_layers = tuple(f"block{ends[i]}_add" for i in (1, 2, 4)) + ("head_relu",)
    return stage_layers, stage_layers[-2], stage_layers[-1]


def efficientnet_lite(inputs, *, name, preprocess="lite", padding="same"):
    """The trunk of EfficientNet-Lite variant ``name`` up to ``head_relu`` (stride 32)."""
    if padding not in PADDINGS:
        raise ValueError(f"Unknown padding={padding!r}: choose one of {', '.join(PADDINGS)}.")
    check_input_size(inputs, _MIN_SIZE, name)
    x = apply_preprocess(inputs, preprocess)
    x = _relu6(_bn(_conv(x, STEM_FILTERS, 3, 2, padding, "stem_conv"), "stem_bn"), "stem_relu")
    filters_in, index = STEM_FILTERS, 0
    for stage in stages(name):
        for repeat in range(stage.repeats):
            stride = stage.stride if repeat == 0 else 1
            x, _ = _block(x, stage, stride, filters_in, f"block{index}", padding)
            filters_in, index = stage.filters, index + 1
    x = _relu6(_bn(_conv(x, HEAD_FILTERS, 1, 1, padding, "head_conv"), "head_bn"), "head_relu")
    stage_layers, inner, last = feature_layers(name)
    return Trunk(features=x, inner_layer=inner, last_layer=last, stage_layers=stage_layers)
