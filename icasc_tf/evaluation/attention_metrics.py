"""Localization and faithfulness of attention maps (docs/method.md §4).

Maps are ``[B, h, w]`` at feature resolution; every metric first resizes them
bilinearly to the image size, the way the maps are shown on the image. Boxes are
normalised ``[ymin, xmin, ymax, xmax]``; a pixel belongs to a box when its centre
``((i + 0.5) / H, (j + 0.5) / W)`` lies inside it.
"""

import numpy as np
import tensorflow as tf

_EPSILON = 1e-12


def _maps(maps):
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must be [batch, height, width]; got shape {maps.shape}.")
    return maps


def upsample_maps(maps, image_size):
    """Bilinear resize of ``[B, h, w]`` maps to ``image_size = (H, W)``, clipped at 0."""
    maps = _maps(maps)
    resized = tf.image.resize(maps[..., None], tuple(int(s) for s in image_size), method="bilinear")
    return np.maximum(resized.numpy()[..., 0], 0.0)


def box_masks(boxes, image_size):
    """``[B, H, W]`` booleans: the pixels whose centres lie in each normalised box."""
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"boxes must be [batch, 4] normalised [ymin, xmin, ymax, xmax]; got shape {boxes.shape}."
        )
    height, width = (int(s) for s in image_size)
    rows = (np.arange(height) + 0.5) / height
    cols = (np.arange(width) + 0.5) / width
    in_rows = (rows[None, :] >= boxes[:, 0:1]) & (rows[None, :] <= boxes[:, 2:3])
    in_cols = (cols[None, :] >= boxes[:, 1:2]) & (cols[None, :] <= boxes[:, 3:4])
    return in_rows[:, :, None] & in_cols[:, None, :]


def _resolve(maps, boxes, image_size):
    maps = _maps(maps)
    if len(boxes) != len(maps):
        raise ValueError(f"{len(maps)} maps but {len(boxes)} boxes: give one box per map.")
    size = maps.shape[1:] if image_size is None else tuple(image_size)
    return upsample_maps(maps, size), box_masks(boxes, size)


def pointing_game(maps, boxes, image_size=None):
    """Whether each map's maximum, at image resolution, falls inside its box.

    ``image_size=None`` keeps the maps' own resolution. An all-zero map points nowhere
    and counts as a miss. Returns ``(hits [B] bool, hit rate)``.
    """
    upsampled, inside = _resolve(maps, boxes, image_size)
    flat = upsampled.reshape(len(upsampled), -1)
    peak = flat.argmax(axis=1)
    hits = inside.reshape(len(inside), -1)[np.arange(len(flat)), peak] & (flat.max(axis=1) > 0)
    return hits, float(hits.mean()) if len(hits) else float("nan")


def energy_in_box(maps, boxes, image_size=None):
    """Share of each (upsampled, non-negative) map's mass inside its box; 0 for an all-zero map.

    Returns ``(shares [B], mean share)``.
    """
    upsampled, inside = _resolve(maps, boxes, image_size)
    total = upsampled.sum(axis=(1, 2))
    shares = np.where(total > 0, (upsampled * inside).sum(axis=(1, 2)) / np.maximum(total, _EPSILON), 0.0)
    return shares, float(shares.mean()) if len(shares) else float("nan")


def explanation_masked_images(images, maps):
    """The Grad-CAM++ explanation image E * I: each image times its max-normalised upsampled map."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [batch, height, width, channels]; got shape {images.shape}.")
    upsampled = upsample_maps(maps, images.shape[1:3])
    peak = upsampled.max(axis=(1, 2), keepdims=True)
    return images * (upsampled / np.maximum(peak, _EPSILON))[..., None]


def confidence_change(original_probs, masked_probs):
    """Grad-CAM++'s average drop and increase in confidence, as fractions in [0, 1].

    average drop = mean(max(0, Y - O) / Y); increase in confidence = mean(Y < O), where
    Y is the class probability on the image and O on the explanation-masked image.
    Returns ``(average_drop, increase_in_confidence)``.
    """
    original = np.ravel(np.asarray(original_probs, dtype=np.float64))
    masked = np.ravel(np.asarray(masked_probs, dtype=np.float64))
    if original.shape != masked.shape or original.size == 0:
        raise ValueError(
            f"original_probs and masked_probs must be equally long and non-empty; got "
            f"{original.size} and {masked.size}."
        )
    drop = np.maximum(original - masked, 0.0) / np.maximum(original, _EPSILON)
    return float(drop.mean()), float((original < masked).mean())
