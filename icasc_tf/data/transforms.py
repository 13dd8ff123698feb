"""Per-example image transforms that carry a bounding box along, built on `tf.image`.

Every random transform takes an explicit stateless seed (shape [2]) so that a pipeline
with a fixed seed is reproducible. Boxes are normalised `[ymin, xmin, ymax, xmax]`
(TFDS's convention) or None; images are float32 [H, W, 3].
"""

from __future__ import annotations

import tensorflow as tf

# Photo augmentations resize to 8/7 of the crop first: 256 for a 224 crop (ImageNet), 342 for 299.
RESIZE_RATIO = 8.0 / 7.0


def resize_side(crop_size: int) -> int:
    """The side to resize to before cropping `crop_size` (256 for 224)."""
    return int(round(crop_size * RESIZE_RATIO))


def resize(image: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Bilinear resize to an exact size (aspect not kept); normalised boxes are unchanged by it."""
    return tf.image.resize(image, (height, width), antialias=True)


def resize_shorter_side(image: tf.Tensor, side: int) -> tf.Tensor:
    """Resize keeping the aspect ratio so that the shorter side is `side` (boxes unchanged)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = tf.cast(side, tf.float32) / tf.reduce_min(shape)
    new_shape = tf.cast(tf.round(shape * scale), tf.int32)
    return tf.image.resize(image, tf.maximum(new_shape, side), antialias=True)


def crop(image, box, top, left, height: int, width: int):
    """Crops the window at (top, left) and maps the box into the window's coordinates, clipped."""
    cropped = tf.image.crop_to_bounding_box(image, top, left, height, width)
    if box is None:
        return cropped, None
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    pixels = box * tf.concat([shape, shape], axis=0)
    origin = tf.cast(tf.stack([top, left, top, left]), tf.float32)
    size = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    return cropped, tf.clip_by_value((pixels - origin) / size, 0.0, 1.0)


def random_crop(image, box, height: int, width: int, seed):
    """A uniformly placed `height` x `width` window."""
    shape = tf.shape(image)
    top = tf.random.stateless_uniform([], seed, 0, shape[0] - height + 1, dtype=tf.int32)
    left_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    left = tf.random.stateless_uniform([], left_seed, 0, shape[1] - width + 1, dtype=tf.int32)
    return crop(image, box, top, left, height, width)


def center_crop(image, box, height: int, width: int):
    shape = tf.shape(image)
    return crop(image, box, (shape[0] - height) // 2, (shape[1] - width) // 2, height, width)


def flip(image, box):
    """Mirror left-right; the box's x-coordinates mirror with it."""
    flipped = tf.image.flip_left_right(image)
    if box is None:
        return flipped, None
    ymin, xmin, ymax, xmax = tf.unstack(box)
    return flipped, tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin])


def random_flip(image, box, seed):
    """Mirror with probability 1/2."""
    do_flip = tf.random.stateless_uniform([], seed) < 0.5
    if box is None:
        return tf.cond(do_flip, lambda: flip(image, None)[0], lambda: image), None
    return tf.cond(do_flip, lambda: flip(image, box), lambda: (image, box))


def pad(image, box, padding: int):
    """Zero padding on every side (the CIFAR augmentation pads 4 pixels)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    if box is None:
        return padded, None
    scale = tf.concat([shape, shape], axis=0)
    return padded, (box * scale + padding) / (scale + 2.0 * padding)


def random_resized_crop(image, box, height: int, width: int, seed):
    """Inception-style crop: 8%-100% of the area, aspect 3/4-4/3, resized to `height` x `width`."""
    top_left, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    cropped, box = crop(image, box, top_left[0], top_left[1], crop_size[0], crop_size[1])
    return resize(cropped, height, width), box


def ten_crop(image, height: int, width: int) -> tf.Tensor:
    """The four corner crops and the centre crop, and their mirrors: [10, height, width, 3]."""
    shape = tf.shape(image)
    bottom, right = shape[0] - height, shape[1] - width
    corners = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = [tf.image.crop_to_bounding_box(image, y, x, height, width) for y, x in corners]
    crops += [tf.image.flip_left_right(c) for c in crops]
    return tf.stack(crops)
