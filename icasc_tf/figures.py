"""Attention figures: heat-map overlays, one-row panels and the papers' top-5 figure.

The papers judge attention by eye (ICCV Figs. 2 and 10): an image, its top-5 predicted
classes with their attention maps and probabilities, the ground truth marked. The same
one-row panel feeds the TensorBoard attention-image callback, so ``render_panel`` builds
the pixels with NumPy and uses matplotlib (Agg, no pyplot) only for the captions: it is
fast, thread-safe, and its size depends only on the number of tiles.
"""

import os
import textwrap

import matplotlib
import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from icasc_tf.explain import LAYER_ROLES, Explainer, role_layers

TILE_KINDS = ("overlay", "mask")
FRAME_COLOR = (0.0, 0.8, 0.0)  # ground-truth tiles: green, absent from the jet colour map
BOX_COLOR = (1.0, 0.0, 1.0)  # boxes: magenta, absent from the jet colour map
_DPI = 100
_FONT_SIZE = 8  # points
_CAPTION_LINES = 3
_LINE_HEIGHT = 12  # pixels per caption line at _FONT_SIZE and _DPI
_CHAR_WIDTH = 6.0  # average pixels per character of DejaVu Sans at _FONT_SIZE and _DPI
_CAPTION_TOP = 4  # white pixels above the first caption line
_MARGIN = 5  # pixels around every tile; the ground-truth frame is drawn in it
_FRAME_WIDTH = 4
_GROUP_GAP = 10  # pixels between the rows of different images in top5_figure
_LEGEND_HEIGHT = 36  # pixels of the colour legend under an attention panel
PANEL_TILE = 100  # tile side of a TensorBoard panel: 3 cells of 110 px, about the width of its image cards


def displayable_image(image):
    """An image as float RGB in [0, 1] for display.

    uint8 is divided by 255; grey ``[H, W]`` or ``[H, W, 1]`` becomes RGB; values outside
    [0, 1] (e.g. CIFAR-100's mean-subtracted pixels) are min-max rescaled.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise ValueError(
            f"image must be [height, width, 3] (or grey [height, width] / [height, width, 1]); "
            f"got shape {image.shape}."
        )
    if image.dtype == np.uint8:
        image = image / 255.0
    image = image.astype(np.float32)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:
        image = (image - low) / max(high - low, 1e-12)
    return image


def _resize(array, size):
    """Bilinear resize of ``[h, w]`` or ``[h, w, c]`` to ``size`` (as the losses resize masks)."""
    array = np.asarray(array, np.float32)
    if array.shape[:2] == tuple(size):
        return array
    if array.ndim == 2:
        return tf.image.resize(array[..., None], size, method="bilinear").numpy()[..., 0]
    return tf.image.resize(array, size, method="bilinear").numpy()


def _check_map(attention):
    attention = np.asarray(attention, np.float32)
    if attention.ndim != 2:
        raise ValueError(
            f"An attention map must be 2-D [height, width]; got shape {attention.shape}. "
            "Pass one sample's map, e.g. maps['last'][i, j]."
        )
    if not np.all(np.isfinite(attention)):
        raise ValueError("The attention map holds NaN or infinite values; check the model.")
    return attention


def _colormap(cmap):
    try:
        return matplotlib.colormaps[cmap]
    except KeyError:
        raise ValueError(
            f"Unknown colour map {cmap!r}: use a name from matplotlib.colormaps, e.g. "
            "'jet', 'viridis', 'inferno', 'magma', 'turbo'."
        ) from None


def normalize_map(attention):
    """Min-max rescale of one map to [0, 1]; a constant map becomes all zeros."""
    attention = _check_map(attention)
    low, high = float(attention.min()), float(attention.max())
    if high - low <= 0.0:
        return np.zeros_like(attention)
    return (attention - low) / (high - low)


def overlay(image, attention, alpha=0.5, cmap="jet"):
    """Blend a colour-mapped attention map onto an image.

    The map is upsampled (bilinear) to the image size, normalised to [0, 1] (min-max) and
    colour-mapped; the result is ``(1 - alpha) * image + alpha * colours``, float
    ``[H, W, 3]`` in [0, 1].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (the weight of the heat map); got {alpha}.")
    colormap = _colormap(cmap)
    image = displayable_image(image)
    heat = normalize_map(_resize(_check_map(attention), image.shape[:2]))
    colours = colormap(heat)[..., :3].astype(np.float32)
    return (1.0 - alpha) * image + alpha * colours


def _grey(mask, size):
    """A mask drawn as it is (clipped to [0, 1]) in grey, at ``size``."""
    mask = np.clip(_resize(_check_map(mask), size), 0.0, 1.0)
    return np.repeat(mask[..., None], 3, axis=-1)


def _boxes_array(box):
    if box is None:
        return np.zeros((0, 4), np.float32)
    boxes = np.asarray(box, np.float32).reshape(-1, 4)
    if boxes.size and (boxes.min() < 0.0 or boxes.max() > 1.0):
        raise ValueError(
            "Boxes must be normalised [ymin, xmin, ymax, xmax] in [0, 1]; got values in "
            f"[{boxes.min():.3g}, {boxes.max():.3g}]. Divide pixel boxes by the image size."
        )
    return boxes


def _draw_boxes(tile, boxes, width=2):
    """Outline normalised boxes on a ``[S, S, 3]`` tile in place (empty boxes skipped)."""
    height, width_px = tile.shape[:2]
    for ymin, xmin, ymax, xmax in boxes:
        if ymax <= ymin or xmax <= xmin:
            continue
        top, bottom = int(round(ymin * (height - 1))), int(round(ymax * (height - 1)))
        left, right = int(round(xmin * (width_px - 1))), int(round(xmax * (width_px - 1)))
        tile[top : top + width, left : right + 1] = BOX_COLOR
        tile[max(bottom - width + 1, 0) : bottom + 1, left : right + 1] = BOX_COLOR
        tile[top : bottom + 1, left : left + width] = BOX_COLOR
        tile[top : bottom + 1, max(right - width + 1, 0) : right + 1] = BOX_COLOR


def _caption_lines(caption, max_chars):
    """Wrap a caption to the tile's width in at most ``_CAPTION_LINES`` lines ("\u2026" if cut)."""
    lines = []
    for line in caption.split("\n"):
        lines.extend(textwrap.wrap(line, max_chars, break_on_hyphens=False) or [""])
    if len(lines) > _CAPTION_LINES:
        lines = lines[:_CAPTION_LINES]
        lines[-1] = lines[-1][: max_chars - 1] + "\u2026"
    return lines


def _check_tiles(tiles):
    checked = []
    for index, tile in enumerate(tiles):
        if len(tile) != 3:
            raise ValueError(
                f"tiles[{index}] must be (caption, map_or_None, kind); got {len(tile)} items."
            )
        caption, attention, kind = tile
        if kind not in TILE_KINDS:
            raise ValueError(
                f"tiles[{index}] has kind {kind!r}: choose one of {', '.join(TILE_KINDS)}."
            )
        checked.append((str(caption or ""), attention, kind))
    return checked


def _is_zero_map(attention):
    return attention is not None and float(np.max(attention)) <= 0.0


def _picture(base, attention, kind, alpha, cmap):
    """A tile's pixels: the image, the map overlaid, or the mask in grey. An all-zero map (ReLU
    removed everything) is drawn as the dimmed image, and its tile says so."""
    if attention is None:
        return base
    _check_map(attention)
    if _is_zero_map(attention):
        return 0.35 * base + 0.65
    if kind == "overlay":
        return overlay(base, attention, alpha=alpha, cmap=cmap)
    return _grey(attention, base.shape[:2])


def _legend(width, cmap, marks=None):
    """A strip under a panel saying what the colours mean: ``(pixels, [(x, y, text)])``.

    ``marks``: None (the colour scale alone), ``"mask"`` (and the grey scale of a mask tile), or the
    top-5 figure's key, ``"frame"`` or ``"frame and box"``.
    """
    canvas = np.ones((_LEGEND_HEIGHT, width, 3), np.float32)
    left, bar = _MARGIN, max(width // 3, 40)
    canvas[_MARGIN : _MARGIN + 10, left : left + bar] = _colormap(cmap)(np.linspace(0.0, 1.0, bar))[:, :3][None]
    texts = [(left + bar + 6, _MARGIN + 5, "map: low \u2192 high, own scale")]
    if marks == "mask":
        canvas[_MARGIN + 14 : _MARGIN + 24, left : left + bar] = np.linspace(0.0, 1.0, bar)[None, :, None]
        texts.append((left + bar + 6, _MARGIN + 19, "mask: 0 \u2192 1"))
        return canvas, texts
    if marks is None:
        return canvas, texts
    keys = [(FRAME_COLOR, "frame: a true class")]
    if "box" in marks:
        keys.append((BOX_COLOR, "box: the object's box"))
    key_left, top = left, _MARGIN + 15  # a line of their own under the colour scale, side by side
    for colour, text in keys:
        canvas[top : top + 9, key_left : key_left + 14] = colour
        texts.append((key_left + 20, top + 4, text))
        key_left += 20 + int(len(text) * _CHAR_WIDTH) + 16
    return canvas, texts


def render_grid(rows, tile_size=112, legend=None, cmap="jet"):
    """Tiles in rows, each with a caption above it; returns ``np.uint8 [height, width, 3]``.

    ``rows``: lists of cells ``(caption, pixels [S, S, 3] in [0, 1], note, framed)``; ``note``
    (or None) is written on the tile (e.g. "all zero"), ``framed`` draws the green frame.
    Captions are wrapped to the tile's width in at most 3 lines; ``legend`` adds a strip
    saying what the colours mean (``legend``: False/None none, True the colour scale, ``"mask"`` also
    the mask's grey scale). Every row is ``40 + tile_size + 10`` pixels high and
    ``tile_size + 10`` per cell wide.
    """
    cell = tile_size + 2 * _MARGIN
    caption_height = _CAPTION_TOP + _CAPTION_LINES * _LINE_HEIGHT
    row_height = caption_height + cell
    columns = max(len(row) for row in rows)
    width = cell * columns
    height = row_height * len(rows) + (_LEGEND_HEIGHT if legend else 0)
    canvas = np.ones((height, width, 3), np.float32)
    texts = []  # (x, y from the top, text, size, bold, horizontal alignment, vertical alignment)
    max_chars = max(int(cell / _CHAR_WIDTH), 2)
    for r, row in enumerate(rows):
        top = r * row_height
        for column, (caption, picture, note, framed) in enumerate(row):
            left = column * cell
            tile_top = top + caption_height + _MARGIN
            if framed:
                canvas[tile_top - _FRAME_WIDTH : tile_top + tile_size + _FRAME_WIDTH,
                       left + _MARGIN - _FRAME_WIDTH : left + _MARGIN + tile_size + _FRAME_WIDTH] = FRAME_COLOR
            canvas[tile_top : tile_top + tile_size, left + _MARGIN : left + _MARGIN + tile_size] = picture
            lines = _caption_lines(str(caption or ""), max_chars)
            for k, line in enumerate(lines):
                # Bottom-aligned: the last line sits just above the tile.
                y = top + caption_height - 2 - (len(lines) - 1 - k) * _LINE_HEIGHT
                texts.append((left + cell / 2, y, line, _FONT_SIZE, column == 0 and r == 0, "center", "bottom"))
            if note:
                y = tile_top + tile_size / 2
                texts.append((left + cell / 2, y, note, _FONT_SIZE + 1, True, "center", "center"))
    if legend:
        strip, legend_texts = _legend(width, cmap, "mask" if legend == "mask" else None)
        canvas[height - _LEGEND_HEIGHT :] = strip
        top = height - _LEGEND_HEIGHT
        texts += [(x, top + y, t, _FONT_SIZE, False, "left", "center") for x, y, t in legend_texts]

    figure = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI)
    figure.figimage(canvas, xo=0, yo=0, origin="upper")
    for x, y, text, size, bold, ha, va in texts:
        figure.text(
            x / width, 1.0 - y / height, text, ha=ha, va=va, fontsize=size, fontweight="bold" if bold else "normal"
        )
    agg = FigureCanvasAgg(figure)
    agg.draw()
    pixels = np.asarray(agg.buffer_rgba())[..., :3]
    return _exact_size(pixels, height, width)


def render_panel(image, tiles, title=None, framed=(), box=None, tile_size=112, alpha=0.5, cmap="jet"):
    """One row for one image: the image, then one tile per ``(caption, map_or_None, kind)``.

    Args:
      image: ``[H, W, 3]`` (any range; see ``displayable_image``).
      tiles: ``(caption, map_or_None, kind)`` entries; ``kind`` ``"overlay"`` blends the
        map onto the image, ``"mask"`` draws a [0, 1] map in grey; a ``None`` map shows
        the image alone. Captions go above the tiles, wrapped to at most 3 lines
        (``\\n`` starts a new line). An all-zero map shows the dimmed image, marked "all zero".
      title: caption of the image tile (e.g. the model's name and the true class).
      framed: indices into ``tiles`` to frame in green (the ground-truth classes).
      box: optional normalised ``[ymin, xmin, ymax, xmax]`` box(es), outlined on every tile.
      tile_size: pixels per tile side; the panel is
        ``(40 + tile_size + 10, (len(tiles) + 1) * (tile_size + 10))`` pixels.
      alpha, cmap: as in ``overlay``.
    Returns ``np.uint8 [height, width, 3]``.
    """
    tiles = _check_tiles(tiles)
    framed = set(int(i) for i in framed)
    if any(not 0 <= i < len(tiles) for i in framed):
        raise ValueError(f"framed holds {sorted(framed)}, but there are only {len(tiles)} tiles.")
    return render_grid([_row(image, title, tiles, framed, box, tile_size, alpha, cmap)], tile_size=tile_size)


def _row(image, title, tiles, framed, box, tile_size, alpha, cmap):
    """The cells of one image's row: the image first (``title`` None: no image cell)."""
    base = _resize(displayable_image(image), (int(tile_size), int(tile_size)))
    boxes = _boxes_array(box)
    cells = []
    if title is not False:
        picture = np.array(base, np.float32)
        _draw_boxes(picture, boxes)
        cells.append((str(title or ""), picture, None, False))
    for index, (caption, attention, kind) in enumerate(tiles):
        picture = np.array(_picture(base, attention, kind, alpha, cmap), np.float32)
        _draw_boxes(picture, boxes)
        note = "all zero" if _is_zero_map(attention) else None
        cells.append((caption, picture, note, index in framed))
    return cells


def attention_panel(image, caption, rows, box=None, tile_size=PANEL_TILE, alpha=0.5, cmap="jet"):
    """The TensorBoard panel of one image: the image captioned, then rows of map tiles.

    ``rows``: lists of ``(caption, map_or_None, kind)`` tiles; the image is the first cell of
    the first row, and each further row starts under it. Three cells a row at the default
    tile size make a panel 330 pixels wide: TensorBoard scales every image to the width of its
    card (about 350 pixels, seen in a screenshot), so the tiles are drawn near that size and
    their captions stay readable. A legend says what the colours mean (the mask's grey scale
    when there is a mask tile); all-zero maps are marked on their tiles.
    """
    grid = []
    for r, tiles in enumerate(rows):
        cells = _row(image, caption if r == 0 else False, _check_tiles(tiles), set(), box, tile_size, alpha, cmap)
        grid.append(cells)
    has_mask = any(kind == "mask" for tiles in rows for _, _, kind in tiles)
    return render_grid(grid, tile_size=tile_size, legend="mask" if has_mask else True, cmap=cmap)


def _exact_size(pixels, height, width):
    """Agg rounds the figure size; pad/crop with white so the size is exactly as promised."""
    out = np.full((height, width, 3), 255, np.uint8)
    h, w = min(height, pixels.shape[0]), min(width, pixels.shape[1])
    out[:h, :w] = pixels[:h, :w]
    return out


def _legend_strip(width, with_boxes):
    """The top-5 figure's key: the colour scale, the green frame and (with boxes) the magenta box."""
    canvas, texts = _legend(width, "jet", marks="frame and box" if with_boxes else "frame")
    figure = Figure(figsize=(width / _DPI, _LEGEND_HEIGHT / _DPI), dpi=_DPI)
    figure.figimage(canvas, xo=0, yo=0, origin="upper")
    for x, y, text in texts:
        figure.text(x / width, 1.0 - y / _LEGEND_HEIGHT, text, ha="left", va="center", fontsize=_FONT_SIZE)
    agg = FigureCanvasAgg(figure)
    agg.draw()
    return _exact_size(np.asarray(agg.buffer_rgba())[..., :3], _LEGEND_HEIGHT, width)


def _named_models(models):
    named = dict(models) if isinstance(models, dict) else {getattr(models, "name", "model"): models}
    if not named:
        raise ValueError("models is empty: pass at least one classifier.")
    return named


def _top_maps(model, images, attention, layer, top_k):
    """``(classes, probabilities [N, k], maps [N, k, h, w])`` of a model's top-k classes at ``layer``
    (a layer role of ``LAYER_ROLES`` or a layer's name or path)."""
    if layer in LAYER_ROLES:
        roles, why = role_layers(model)
        if layer not in roles:
            raise ValueError(f"No inner layer to draw: {why} Draw layer='last', or name a layer.")
        layer = roles[layer]
    explainer = Explainer(model, [layer])
    k = min(int(top_k), explainer.num_classes)
    if k < 1:
        raise ValueError(f"top_k must be at least 1; got {top_k}.")
    result = explainer.maps(images, attention, top_k=k)
    return result["classes"], result["probabilities"], result["maps"][explainer.layers[0]]


def _true_classes(labels, count):
    """Per image, the set of ground-truth class ids (int labels or multi-hot rows)."""
    labels = np.asarray(labels)
    if labels.shape[0] != count:
        raise ValueError(f"labels has {labels.shape[0]} entries for {count} images; pass one per image.")
    if labels.ndim == 1:
        return [{int(label)} for label in labels]
    if labels.ndim == 2:
        return [set(np.flatnonzero(row > 0.5).tolist()) for row in labels]
    raise ValueError(f"labels must be int class ids [N] or multi-hot [N, C]; got shape {labels.shape}.")


def _class_name(class_names, index):
    if class_names is None:
        return str(index)
    if not 0 <= index < len(class_names):
        raise ValueError(
            f"class id {index} has no name: class_names has {len(class_names)} entries. "
            "Pass the dataset's class_names (one per class of the model)."
        )
    return str(class_names[index])


def top5_figure(models, images, labels, class_names=None, attention="ach", path=None, boxes=None,
                layer="last", top_k=5, tile_size=112):
    """The papers' Figs. 2 and 10: each image's top-k classes with their attention maps.

    For every image and every model, one row: the image (captioned with the model's name
    and the true class), then the ``top_k`` predicted classes' maps at ``layer``
    (``"last"`` or ``"inner"``: ICASC's layers, or a plain classifier's default pair; or a
    layer's name or path) with class names and probabilities; ground-truth classes
    are framed in green. Rows of different models for one image are adjacent, so a
    baseline row sits right above the ICASC row.

    Args:
      models: a classifier (ICASC or any functional/Sequential Keras model), or a dict
        ``{row label: model}`` in row order.
      images: ``[N, H, W, 3]``; labels: int ``[N]`` or multi-hot ``[N, C]``.
      class_names: one name per class, or None for class ids.
      attention: a name of ``icasc_tf.attention.ATTENTIONS``.
      path: where to write the PNG (parent folders are created), or None.
      boxes: optional normalised ``[N, 4]`` boxes, outlined on every tile.
    Returns the figure as ``np.uint8 [height, width, 3]``.
    """
    named = _named_models(models)
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images must be a non-empty [N, height, width, 3] batch; got shape {images.shape}.")
    truths = _true_classes(labels, len(images))
    if boxes is not None:
        boxes = np.asarray(boxes, np.float32)
        if boxes.shape != (len(images), 4):
            raise ValueError(f"boxes must be [N, 4] for N={len(images)} images; got shape {boxes.shape}.")
    results = {name: _top_maps(model, images, attention, layer, top_k) for name, model in named.items()}

    rows = []
    for i, image in enumerate(images):
        truth = ", ".join(_class_name(class_names, c) for c in sorted(truths[i]))
        for name, (classes, probabilities, maps) in results.items():
            tiles, framed = [], []
            for j, (c, p) in enumerate(zip(classes[i], probabilities[i])):
                tiles.append((f"{_class_name(class_names, int(c))}\n{p:.2f}", maps[i, j], "overlay"))
                if int(c) in truths[i]:
                    framed.append(j)
            rows.append(render_panel(
                image, tiles, title=f"{name}\n{attention} {layer}\ntrue: {truth}", framed=framed,
                box=None if boxes is None else boxes[i], tile_size=tile_size,
            ))
        if i + 1 < len(images):
            gap = np.full((_GROUP_GAP, rows[-1].shape[1], 3), 255, np.uint8)
            gap[_GROUP_GAP // 2] = 160  # a grey rule between images
            rows.append(gap)
    width = max(row.shape[1] for row in rows)
    rows.append(_legend_strip(width, boxes is not None))
    figure = np.concatenate(
        [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
    )
    if path is not None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(figure).save(path, format="PNG")
    return figure
