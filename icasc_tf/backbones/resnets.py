"""Residual networks written here: ImageNet-style ResNet-18/34 (and wide variants),
CIFAR ResNets of He et al. (2016) and Wide ResNets of Zagoruyko & Komodakis (2016).

Layer names follow keras.applications (``conv1_*`` is the stem, ``conv{s}_block{b}_*``
the blocks of stage s, ``conv{s}_block{b}_out`` a post-activation block output; the
pre-activation WRN uses ResNetV2's ``*_preact_relu`` and ``post_relu``), so that every
backbone of the package reads alike and weight files map by name.

Conventions of the PyTorch reference implementations the papers trained with:
convolutions without bias and He-normal (fan-out) initialised, BatchNormalization with
momentum 0.9 / epsilon 1e-5 (PyTorch's 0.1 / 1e-5), stride-2 convolutions padded
symmetrically, strides on the 3x3 convolutions of bottleneck blocks (torchvision's v1.5).
"""

import keras
from keras import layers

from icasc_tf.backbones.preprocessing import preprocess as apply_preprocess
from icasc_tf.backbones.trunk import Trunk, check_input_size, is_small_input

STEMS = ("cifar", "imagenet")
WRN_STYLES = ("cifar", "imagenet")
_IMAGENET_BLOCKS = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}
_BOTTLENECK_FROM_DEPTH = 50
_WRN_DEFAULTS = {"cifar": (28, 10), "imagenet": (50, 2)}  # WRN-28-10; WRN-50-2 (bottleneck)


def _conv_init():
    return keras.initializers.VarianceScaling(
        2.0, mode="fan_out", distribution="untruncated_normal"
    )


def _conv(x, filters, kernel, stride, prefix):
    """``prefix``_conv; stride-2 k x k convolutions get a symmetric ``prefix``_pad first."""
    padding = "same"
    if stride > 1 and kernel > 1:
        x = layers.ZeroPadding2D(kernel // 2, name=f"{prefix}_pad")(x)
        padding = "valid"
    return layers.Conv2D(
        filters, kernel, strides=stride, padding=padding, use_bias=False,
        kernel_initializer=_conv_init(), name=f"{prefix}_conv",
    )(x)


def _bn(x, name):
    return layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=name)(x)


def _relu(x, name):
    return layers.Activation("relu", name=name)(x)


def _conv_bn_relu(x, filters, kernel, stride, prefix):
    return _relu(_bn(_conv(x, filters, kernel, stride, prefix), f"{prefix}_bn"), f"{prefix}_relu")


def _projection(x, filters, stride, prefix):
    """Identity, or a 1x1 convolution + BN where the block changes shape (option B)."""
    if stride == 1 and x.shape[-1] == filters:
        return x
    return _bn(_conv(x, filters, 1, stride, f"{prefix}_0"), f"{prefix}_0_bn")


def _basic_block(x, filters, stride, prefix):
    y = _conv_bn_relu(x, filters, 3, stride, f"{prefix}_1")
    y = _bn(_conv(y, filters, 3, 1, f"{prefix}_2"), f"{prefix}_2_bn")
    y = layers.Add(name=f"{prefix}_add")([_projection(x, filters, stride, prefix), y])
    return _relu(y, f"{prefix}_out")


def _bottleneck_block(x, filters, stride, prefix, inner_filters):
    y = _conv_bn_relu(x, inner_filters, 1, 1, f"{prefix}_1")
    y = _conv_bn_relu(y, inner_filters, 3, stride, f"{prefix}_2")
    y = _bn(_conv(y, filters, 1, 1, f"{prefix}_3"), f"{prefix}_3_bn")
    y = layers.Add(name=f"{prefix}_add")([_projection(x, filters, stride, prefix), y])
    return _relu(y, f"{prefix}_out")


def _post_activation_stages(x, blocks_per_stage, make_block):
    """Stages conv2, conv3, ...; each halves the resolution except the first."""
    stage_layers = []
    for stage, blocks in enumerate(blocks_per_stage, start=2):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 2 else 1
            x = make_block(x, stage - 2, stride, f"conv{stage}_block{block}")
        stage_layers.append(f"conv{stage}_block{blocks}_out")
    return x, tuple(stage_layers)


def _trunk(features, stage_layers):
    return Trunk(features, stage_layers[-2], stage_layers[-1], stage_layers)


def _check_choice(value, choices, option):
    if value not in choices:
        raise ValueError(
            f"Unknown {option}={value!r}: choose one of {', '.join(map(str, choices))}."
        )


def resnet(inputs, *, name, depth, width=1, stem=None, preprocess=None):
    """ImageNet-style ResNet-``depth`` (basic blocks below 50 layers, bottlenecks from 50).

    ``width`` multiplies the channels of basic blocks and the inner (3x3) channels of
    bottlenecks, as in WRN-50-2. ``stem``: "imagenet" (7x7/2 convolution + 3x3/2 max-pool)
    or "cifar" (3x3/1 convolution, no pool, for 32x32 images); default "cifar" when the
    input is smaller than 64 pixels, else "imagenet". ``preprocess`` defaults to "torch"
    (the convention of torchvision / keras-hub ResNet weights) with the ImageNet stem and
    "none" with the CIFAR stem (CIFAR data arrive mean-subtracted).
    """
    _check_choice(depth, tuple(_IMAGENET_BLOCKS), "depth")
    if stem is None:
        stem = "cifar" if is_small_input(inputs) else "imagenet"
    _check_choice(stem, STEMS, "stem")
    if preprocess is None:
        preprocess = "torch" if stem == "imagenet" else "none"
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer channel multiplier; got {width!r}.")
    check_input_size(inputs, 32 if stem == "imagenet" else 8, name)
    x = apply_preprocess(inputs, preprocess)
    if stem == "imagenet":
        x = _conv_bn_relu(x, 64, 7, 2, "conv1")
        x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    else:
        x = _conv_bn_relu(x, 64, 3, 1, "conv1")

    if depth >= _BOTTLENECK_FROM_DEPTH:
        def make_block(x, stage, stride, prefix):
            return _bottleneck_block(x, 256 * 2**stage, stride, prefix, 64 * 2**stage * width)
    else:
        def make_block(x, stage, stride, prefix):
            return _basic_block(x, 64 * 2**stage * width, stride, prefix)

    return _trunk(*_post_activation_stages(x, _IMAGENET_BLOCKS[depth], make_block))


def cifar_resnet(inputs, *, name, depth, preprocess="none"):
    """He et al. (2016) CIFAR ResNet-``depth``: 6n+2 layers, basic blocks, 16/32/64 channels.

    Shape-changing shortcuts are 1x1 convolutions + BN (option B, as in the common
    PyTorch ports), not the zero-padded identity (option A) of the paper's CIFAR runs.
    """
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56, 110, ...); got {depth}."
        )
    check_input_size(inputs, 4, name)
    x = _conv_bn_relu(apply_preprocess(inputs, preprocess), 16, 3, 1, "conv1")
    blocks = (depth - 2) // 6

    def make_block(x, stage, stride, prefix):
        return _basic_block(x, 16 * 2**stage, stride, prefix)

    return _trunk(*_post_activation_stages(x, (blocks,) * 3, make_block))


def _preact_block(x, filters, stride, prefix, dropout):
    """WRN block: BN-ReLU-conv3x3-BN-ReLU-(dropout)-conv3x3, shortcut from the pre-activation."""
    activated = _relu(_bn(x, f"{prefix}_preact_bn"), f"{prefix}_preact_relu")
    y = _conv_bn_relu(activated, filters, 3, stride, f"{prefix}_1")
    if dropout:
        y = layers.Dropout(dropout, name=f"{prefix}_dropout")(y)
    y = _conv(y, filters, 3, 1, f"{prefix}_2")
    if stride == 1 and x.shape[-1] == filters:
        shortcut = x
    else:
        shortcut = _conv(activated, filters, 1, stride, f"{prefix}_0")
    return layers.Add(name=f"{prefix}_out")([shortcut, y])


def _cifar_wrn(inputs, *, name, depth, width, dropout, preprocess):
    """WRN-depth-width for 32x32 images: groups of 16k/32k/64k channels, pre-activation.

    Group outputs are pre-activation sums; each is named by the BN-ReLU that consumes it
    (the next group's ``conv{s}_block1_preact_relu``, or the final ``post_relu``), so every
    stage layer, like the ResNets', is a non-negative post-activation map.
    """
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(
            f"CIFAR-style WRN depth must be 6n+4 (10, 16, 22, 28, 40, ...); got {depth}."
        )
    check_input_size(inputs, 4, name)
    x = _conv(apply_preprocess(inputs, preprocess), 16, 3, 1, "conv1")
    blocks = (depth - 4) // 6
    for stage in range(3):
        for block in range(1, blocks + 1):
            stride = 2 if block == 1 and stage > 0 else 1
            prefix = f"conv{stage + 2}_block{block}"
            x = _preact_block(x, 16 * 2**stage * width, stride, prefix, dropout)
    x = _relu(_bn(x, "post_bn"), "post_relu")
    return _trunk(x, ("conv3_block1_preact_relu", "conv4_block1_preact_relu", "post_relu"))


def wide_resnet(
    inputs, *, name="wrn", depth=None, width=None, style=None, dropout=0.0, preprocess=None
):
    """Wide ResNet WRN-``depth``-``width`` (Zagoruyko & Komodakis, 2016).

    ``style="cifar"``: the paper's CIFAR design (depth 6n+4, default WRN-28-10; optional
    ``dropout`` between the block's convolutions). ``style="imagenet"``: a widened
    ImageNet ResNet (depth 18/34/50/101/152, default WRN-50-2 as torchvision's
    wide_resnet50_2, the likely ImageNet-pretrained WRN of the painless-attention paper).
    Default style: "cifar" for inputs below 64 pixels, else "imagenet".
    """
    if style is None:
        style = "cifar" if is_small_input(inputs) else "imagenet"
    _check_choice(style, WRN_STYLES, "style")
    default_depth, default_width = _WRN_DEFAULTS[style]
    depth = default_depth if depth is None else depth
    width = default_width if width is None else width
    if int(width) != width or width < 1:
        raise ValueError(f"width must be a positive integer widening factor; got {width!r}.")
    if style == "imagenet":
        if dropout:
            raise ValueError("dropout applies to style='cifar' WRNs only; leave it at 0.")
        return resnet(
            inputs, name=name, depth=depth, width=int(width), stem="imagenet", preprocess=preprocess
        )
    preprocess = "none" if preprocess is None else preprocess
    return _cifar_wrn(
        inputs, name=name, depth=depth, width=int(width), dropout=dropout, preprocess=preprocess
    )
