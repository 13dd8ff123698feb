"""The augmentations: how one image (and its box) becomes a model input, in training and in evaluation.

`AUGMENTATION_SPECS` maps each name to one function and what the pipeline checks against it; a
`DatasetSpec` names its dataset's own augmentation (the papers', docs/method.md section 1.7) and
`load_dataset(augmentation=...)` picks another. A function is called on one float32 [H, W, 3]
image (already minus the train pixel mean where the dataset has one) and its normalised box or
None, as `apply(image, box, seed, size=(height, width), resize=side or None, training=bool,
crops="single" or "ten")`; it returns (image, box), the box moved with every crop, flip and resize.
`seed` is a stateless seed (shape [2]) in training, None in evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import tensorflow as tf

from icasc_tf.data import transforms


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """One augmentation: its function and the facts `load_dataset` checks arguments against."""

    apply: Callable[..., tuple]
    # It resizes, then crops the input size: `resize` sets the side it resizes to, and evaluation
    # may take ten crops (crops="ten"); otherwise both are refused.
    crops_after_resize: bool = False
    # A dataset whose own augmentation this is gets its train split's per-pixel mean subtracted,
    # whichever augmentation a run picks (one normalisation per dataset).
    subtracts_train_mean: bool = False

    @property
    def summary(self) -> str:
        """The first line of the function's docstring: what it does, for help texts."""
        return (self.apply.__doc__ or "").strip().splitlines()[0]


def crop_and_flip_seeds(seed):
    """Two stateless seeds, one for the crop and one for the flip (None, None without a seed)."""
    if seed is None:
        return None, None
    return tf.unstack(tf.random.experimental.stateless_split(seed, 2))


def at_size(image, height: int, width: int):
    """The image resized to `height` x `width` (aspect not kept) when it is not that size already."""
    if tuple(image.shape[:2]) != (height, width):
        image = transforms.resize(image, height, width)
    return image


def resize_sides(size, resize) -> tuple[int, int]:
    """The sides photos are resized to before cropping `size`: 8/7 of it, or `resize` (at least `size`)."""
    height, width = size
    if resize is None:
        return transforms.resize_side(height), transforms.resize_side(width)
    return max(resize, height), max(resize, width)


def random_crop_and_flip(image, box, seed, size):
    crop_seed, flip_seed = crop_and_flip_seeds(seed)
    image, box = transforms.random_crop(image, box, size[0], size[1], crop_seed)
    return transforms.random_flip(image, box, flip_seed)


def evaluation_crops(image, box, size, crops):
    """The centre crop, or the ten crops [10, H, W, 3] (box unchanged: it has no meaning over ten)."""
    if crops == "ten":
        return transforms.ten_crop(image, size[0], size[1]), box
    return transforms.center_crop(image, box, size[0], size[1])


def resize_only(image, box, seed, *, size, resize, training, crops):
    """Resized to the input size if it differs, nothing random (cluttered composites are random already)."""
    del seed, resize, training, crops
    return at_size(image, *size), box


def cifar(image, box, seed, *, size, resize, training, crops):
    """Zero-pad 1/8 of the side (4 px at 32), random crop and flip for training; evaluation as is."""
    del resize, crops
    height, width = size
    image = at_size(image, height, width)
    if training:
        image, box = transforms.pad(image, box, max(1, height // 8))
        image, box = random_crop_and_flip(image, box, seed, size)
    return image, box


def squash(image, box, seed, *, size, resize, training, crops):
    """Resize the whole image (aspect not kept) to 8/7 of the input; random crop and flip, or centre/ten crops."""
    image = transforms.resize(image, *resize_sides(size, resize))
    if training:
        return random_crop_and_flip(image, box, seed, size)
    return evaluation_crops(image, box, size, crops)


def inception(image, box, seed, *, size, resize, training, crops):
    """Random-resized crop and flip; evaluation resizes the shorter side to 8/7, then centre or ten crops."""
    if training:
        crop_seed, flip_seed = crop_and_flip_seeds(seed)
        image, box = transforms.random_resized_crop(image, box, size[0], size[1], crop_seed)
        return transforms.random_flip(image, box, flip_seed)
    image = transforms.resize_shorter_side(image, max(resize_sides(size, resize)))
    return evaluation_crops(image, box, size, crops)


# The registry: add an augmentation here (BUILD_NOTES.md, "How to add… An augmentation").
AUGMENTATION_SPECS: dict[str, Augmentation] = {
    "none": Augmentation(resize_only),
    "cifar": Augmentation(cifar, subtracts_train_mean=True),
    "squash": Augmentation(squash, crops_after_resize=True),
    "inception": Augmentation(inception, crops_after_resize=True),
}
# The names as imported (choices of command-line flags); the pipeline checks the registry itself.
AUGMENTATIONS: tuple[str, ...] = tuple(AUGMENTATION_SPECS)


def get_augmentation(name: str) -> Augmentation:
    if name not in AUGMENTATION_SPECS:
        raise ValueError(f"Unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATION_SPECS)}.")
    return AUGMENTATION_SPECS[name]
