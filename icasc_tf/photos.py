"""Attention maps of an ImageNet-pretrained backbone on real photographs, no training needed.

The bundled photographs ship inside installed packages (scikit-learn's
``load_sample_images``, matplotlib's Grace Hopper, scikit-image's ``skimage.data`` when
scikit-image is installed), so the figure is made offline in seconds. For each image:
the model's top-5 classes with their A_ch and Grad-CAM maps at its inner and last layers,
one row per (map, layer). The model is an ImageNet backbone, or any saved Keras classifier.
"""

import os

import numpy as np
import tensorflow as tf
from matplotlib import cbook
from PIL import Image, ImageOps
from sklearn.datasets import load_sample_images

from icasc_tf.data.image_folder import to_rgb
from icasc_tf.explain import Explainer, role_layers
from icasc_tf.figures import render_panel

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# (attention, layer) per row; A_ch is ICASC's map, Grad-CAM the usual reference.
ROWS = (("ach", "last"), ("ach", "inner"), ("gradcam", "last"), ("gradcam", "inner"))
_MAP_NAMES = {"ach": "A_ch", "gradcam": "Grad-CAM"}
_GROUP_GAP = 12


def _skimage_photos():
    try:  # scikit-image is optional (the test and lite extras install it)
        import skimage.data
    except ImportError:
        return {}
    photos = {name: getattr(skimage.data, name)() for name in ("coffee", "chelsea", "rocket", "astronaut")}
    photos["motorcycle"] = skimage.data.stereo_motorcycle()[0]
    return photos


def bundled_photos():
    """``{name: uint8 [H, W, 3]}``: photographs that ship inside installed packages."""
    photos = dict(zip(("china", "flower"), load_sample_images().images))
    with cbook.get_sample_data("grace_hopper.jpg") as f:
        photos["grace_hopper"] = np.asarray(Image.open(f).convert("RGB"))
    photos.update(_skimage_photos())
    return photos


def image_files(paths):
    """The image files among ``paths`` (files, or folders searched one level deep), sorted."""
    found = []
    for path in paths:
        if os.path.isdir(path):
            found += sorted(
                os.path.join(path, n) for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"No image file or folder at {path!r}.")
    if not found:
        raise FileNotFoundError(f"No image files ({', '.join(IMAGE_EXTENSIONS)}) in {list(paths)}.")
    return found


def load_photos(paths):
    """``{name: uint8 [H, W, 3]}`` from image files or folders of them, as a viewer shows them: EXIF
    orientation applied, transparency over white (``image_folder``'s conversions). A name is the
    file name, with its folder when two files share one."""
    files = image_files(paths)
    names = [os.path.basename(f) for f in files]
    photos = {}
    for path, name in zip(files, names):
        if names.count(name) > 1:
            name = os.path.join(os.path.basename(os.path.dirname(path)), name)
        try:
            with Image.open(path) as image:
                photos[name] = np.asarray(to_rgb(ImageOps.exif_transpose(image)))
        except OSError as error:
            raise ValueError(f"Cannot read {path!r} as an image: {error}") from error
    return photos


def center_square(photo, size):
    """The central square of ``photo`` resized to ``size`` pixels, float32 RGB in [0, 1]."""
    photo = np.asarray(photo)
    if photo.ndim == 2:
        photo = np.repeat(photo[..., None], 3, axis=-1)
    photo = photo[..., :3]
    height, width = photo.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = photo[top:top + side, left:left + side].astype(np.float32)
    if photo.dtype == np.uint8:
        square /= 255.0
    resized = tf.image.resize(square[None], (size, size), method="bicubic", antialias=True)
    return np.clip(resized.numpy()[0], 0.0, 1.0)


def _maps_in_chunks(explainer, images, top_k, attention, chunk=16):
    """``explainer.maps`` a few images at a time (a folder of hundreds would not fit at once)."""
    parts = [explainer.maps(images[i : i + chunk], attention, top_k=top_k) for i in range(0, len(images), chunk)]
    return {
        "classes": np.concatenate([part["classes"] for part in parts]),
        "probabilities": np.concatenate([part["probabilities"] for part in parts]),
        "maps": {layer: np.concatenate([part["maps"][layer] for part in parts]) for layer in explainer.layers},
    }


def photo_attention_figure(model, photos, class_names, path=None, top_k=5, tile_size=112):
    """For each photo, rows of its top-k classes' maps (``ROWS``); returns ``uint8 [H, W, 3]``.

    ``model``: an ICASC model or any functional/Sequential Keras classifier (nested models
    included; its inner and last layers are ``role_layers``'s, and a network with no inner
    layer gets the last layer's rows alone); ``photos``: ``{name: image}`` with images already
    ``[size, size, 3]`` as the model takes them; ``class_names``: the head's names. ``path``:
    where to write the PNG, or None.
    """
    names = list(photos)
    images = np.stack([photos[n] for n in names]).astype(np.float32)
    roles, why = role_layers(model)
    if why:
        print(f"{model.name}: the last layer's maps only; {why}", flush=True)
    explainer = Explainer(model, [roles[role] for role in roles])
    top_k = min(int(top_k), explainer.num_classes)
    maps = {attention: _maps_in_chunks(explainer, images, top_k, attention) for attention in {a for a, _ in ROWS}}
    rows = []
    for i, name in enumerate(names):
        for attention, role in (row for row in ROWS if row[1] in roles):
            result = maps[attention]
            tiles = [
                (f"{_class_label(class_names, c)}\n{p:.2f}", result["maps"][roles[role]][i, j], "overlay")
                for j, (c, p) in enumerate(zip(result["classes"][i], result["probabilities"][i]))
            ]
            title = f"{name}\n{_MAP_NAMES[attention]} {role}\n{roles[role]}"
            rows.append(render_panel(images[i], tiles, title=title, tile_size=tile_size))
        if i + 1 < len(names):
            gap = np.full((_GROUP_GAP, rows[-1].shape[1], 3), 255, np.uint8)
            gap[_GROUP_GAP // 2] = 160
            rows.append(gap)
    figure = np.concatenate(rows)
    if path is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        Image.fromarray(figure).save(path, format="PNG")
    return figure


def _class_label(class_names, index):
    index = int(index)
    return str(class_names[index]) if class_names is not None and index < len(class_names) else str(index)
