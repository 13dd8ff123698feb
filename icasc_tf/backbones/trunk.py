"""What every backbone family builds: a feature trunk plus the names of its key layers."""

import typing

import keras


class Trunk(typing.NamedTuple):
    """A family builder's result; ``build_backbone`` adds pooling and the ``logits`` head."""

    features: keras.KerasTensor  # last feature map, post-activation, before pooling
    inner_layer: str
    last_layer: str
    stage_layers: tuple  # shallow -> deep; the last two are inner_layer and last_layer


def check_input_size(inputs, min_size, name):
    """A net with total stride ``min_size`` needs at least that many pixels per side."""
    height, width = inputs.shape[1:3]
    for side, size in (("height", height), ("width", width)):
        if size is not None and size < min_size:
            raise ValueError(
                f"input_shape {tuple(inputs.shape[1:])} is too small for {name}: its {side} "
                f"must be at least {min_size} pixels (the network downsamples by {min_size}). "
                "Use larger images or a shallower/CIFAR-style backbone."
            )


def is_small_input(inputs, threshold=64):
    """Inputs below ``threshold`` pixels get CIFAR-style stems (no early downsampling)."""
    sides = [s for s in inputs.shape[1:3] if s is not None]
    return bool(sides) and min(sides) < threshold
