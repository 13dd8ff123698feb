"""Callbacks for any ``model.fit``: attention maps as TensorBoard panels (``AttentionImages``), and a
warm-up of ICASC's attention losses. (A training run's own callbacks: ``icasc_tf.train.run_callbacks``.)

A panel is built from rows: a row builder is one function ``builder(panels, i) -> rows`` (each
row a list of ``(caption, map, kind)`` tiles, see ``icasc_tf.figures.attention_panel``) that
reads what it needs from ``Panels``; ``PANEL_ROWS`` are the default ones, and
``AttentionImages(rows=...)`` takes any list.
"""

import functools
import os

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import figures, painless
from icasc_tf.explain import Explainer
from icasc_tf.losses import target_mask
from icasc_tf.model import ICASC
from icasc_tf.selection import confusing_class


class AttentionWarmup(keras.callbacks.Callback):
    """Ramp the attention terms' weight linearly from 0 to 1 over the first ``epochs`` epochs.

    The attention maps of an untrained network point anywhere; weighting their losses
    fully from step 1 lets them lock in arbitrary regions before the classifier has
    learnt anything (see BUILD_NOTES.md, the study). With the run's ``RunPosition`` the
    ramp follows the run's own step count, so a run resumed mid-epoch keeps its place.
    """

    def __init__(self, epochs, steps_per_epoch, position=None):
        super().__init__()
        self.total = max(float(epochs) * steps_per_epoch, 1.0)
        self.steps_per_epoch = steps_per_epoch
        self.position = position
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if self.position is not None:
            step = self.position.global_step + 1
        else:
            step = self._epoch * self.steps_per_epoch + batch + 1
        self.model.attention_scale.assign(min(1.0, step / self.total))

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["attention_scale"] = float(self.model.attention_scale.numpy())

    on_epoch_end = on_train_batch_end


class Panels:
    """What one write's panels are drawn from; a row builder's argument. Shared values are
    computed once per write, on first use (``once``)."""

    def __init__(self, model, explainer, images, labels, class_names, method, multi_label):
        self.model, self.explainer, self.images, self.labels = model, explainer, images, labels
        self.class_names, self.method, self.multi_label = class_names, method, multi_label
        self._cache = {}

    def once(self, key, compute):
        """``compute()``, computed at the first call with ``key`` in this write."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @functools.cached_property
    def probabilities(self):
        return self.explainer.probabilities(self.images)

    @functools.cached_property
    def truth(self):
        """The true class of each image (with several: the best-scored positive)."""
        if self.multi_label:
            return np.argmax(np.where(self.labels > 0, self.probabilities, -1.0), axis=-1)
        return self.labels.astype(int).reshape(-1)

    @functools.cached_property
    def confusing(self):
        return confusing_class(self.labels, self.probabilities, self.multi_label).numpy()

    @functools.cached_property
    def maps(self):
        """``{label: [B, 2, h, w]}``: the (true, most confusing) classes' maps at each layer."""
        classes = np.stack([self.truth, self.confusing], axis=1)
        maps = self.explainer.maps(self.images, self.method, classes=classes)["maps"]
        labels = _layer_labels(self.model, self.explainer.layers)
        return {labels[path]: maps[path] for path in self.explainer.layers}

    def name(self, index):
        if self.class_names is None or index >= len(self.class_names):
            return str(index)
        return str(self.class_names[index])


def _layer_labels(model, paths):
    if isinstance(model, ICASC) and paths == [model.inner_layer, model.last_layer]:
        return {model.inner_layer: "inner layer", model.last_layer: "last layer"}
    return {path: path for path in paths}


def class_map_rows(panels, i):
    """The true and the most confusing class's maps at each layer, with their probabilities; for
    ICASC the target mask under the image. One row when there is one layer."""
    t, c = panels.truth[i], panels.confusing[i]
    p = panels.probabilities[i]
    true = [(f"true: {panels.name(t)}\np={p[t]:.2f}, {layer}", m[i, 0], "overlay") for layer, m in panels.maps.items()]
    confusing = [(f"most confusing: {panels.name(c)}\np={p[c]:.2f}, {layer}", m[i, 1], "overlay")
                 for layer, m in panels.maps.items()]
    if len(panels.maps) == 1:
        return [true + confusing]
    mask = _target_mask(panels)
    return [true, ([("target mask", mask[i], "mask")] if mask is not None else []) + confusing]


def _target_mask(panels):
    """ICASC's target mask (docs/method.md §1.4) from the last layer's true-class map, at image size."""
    model = panels.model
    if not isinstance(model, ICASC) or "last layer" not in panels.maps:
        return None
    return panels.once("target_mask", lambda: target_mask(
        tf.constant(panels.maps["last layer"][:, 0]), size=panels.images.shape[1:3], sigma=model.sigma,
        omega=model.omega).numpy())


def painless_rows(panels, i):
    """Painless attention's masks, one tile per head of each module, and the gates (WRNA)."""
    backbone = panels.model.backbone if isinstance(panels.model, ICASC) else panels.model
    if not painless.has_painless_attention(backbone):
        return []
    outputs = panels.once("painless", lambda: painless.painless_probe(backbone)(panels.images, training=False))
    tiles = []
    for m, module_masks in enumerate(outputs["masks"]):
        module_masks = np.asarray(module_masks)
        for h in range(module_masks.shape[-1]):
            tiles.append((f"painless module {m} head {h}", module_masks[i, ..., h], "overlay"))
    gates = " ".join(f"{g:.2f}" for g in np.asarray(outputs["gates"])[i])
    caption, attention, kind = tiles[-1]
    tiles[-1] = (f"{caption}\ngates {gates}", attention, kind)
    return [tiles]


PANEL_ROWS = (class_map_rows, painless_rows)


class AttentionImages(keras.callbacks.Callback):
    """Attention maps of fixed images as TensorBoard panels, at every epoch end (and every N steps).

    Works in any ``model.fit``: for an ``ICASC`` model the panels show its inner and last
    layers, its own map (A_ch by default) and its target mask; for any other Keras classifier
    (a pretrained base nested in it included), Grad-CAM (``method``) at ``layers`` (default: the
    last feature map before its spatial pooling, never a preprocessing layer's output). Each panel:
    the image with its true class, then the rows of ``rows`` (default ``PANEL_ROWS``: the true and
    the most confusing class's maps at each layer with their probabilities, the ICASC target mask,
    painless attention's masks and gates); a legend says what the colours mean, and an all-zero map
    says so on its tile. Tags ``attention/00``, ``attention/01``... sort in image order; their step
    is the number of epochs done (1 after the first). With ``every`` = N > 0 and ``position`` (an
    object whose ``global_step`` counts train steps, e.g. a training run's ``RunPosition``), the
    panels are also written every N steps under ``attention_steps/NN``.

    Writes are wrapped in ``tf.summary.record_if(True)``: a recording condition set by
    another callback (Keras's ``TensorBoard(update_freq=N)`` sets one for all of ``fit``)
    must not drop them. Each write is flushed; the writer stays open across ``fit`` calls
    until ``close()``.

    Args:
      log_dir: the TensorBoard folder (events go to ``log_dir/attention``).
      images, labels: the images as the model takes them, and their int labels (multi-hot
        with ``multi_label=True``).
      class_names: one name per class (default: class ids).
      layers: names or paths of 4-D feature layers (default: ICASC's inner and last, else the
        last feature map before pooling).
      method: the map (``icasc_tf.explain``'s methods; default: ICASC's own, else ``"gradcam"``).
      output: as in ``explain``: ``"auto"`` recognises a last layer that applies softmax/sigmoid.
      display: the images as they should be shown (default ``images``, rescaled to [0, 1]).
      rows: the row builders, ``builder(panels, i) -> list of rows`` (default ``PANEL_ROWS``).
    """

    def __init__(self, log_dir, images, labels, class_names=None, layers=None, method=None, output="auto",
                 multi_label=False, display=None, every=0, position=None, rows=PANEL_ROWS):
        super().__init__()
        if every and position is None:
            raise ValueError("AttentionImages(every=N) needs position=, an object with the run's global_step.")
        self.every = int(every)
        self.position = position
        self.log_dir = log_dir
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels)
        if len(self.labels) != len(self.images):
            raise ValueError(f"{len(self.labels)} labels for {len(self.images)} images: give one label per image.")
        self.class_names = None if class_names is None else list(class_names)
        self.layers = None if layers is None else list(layers)
        self.method = method
        self.output = output
        self.multi_label = multi_label
        self.display = self.images if display is None else display  # scaled to [0, 1] when drawn
        self.rows = tuple(rows)
        self._writer = None
        self._explainer = None

    def _explainer_of(self, model):
        """The model's ``Explainer``, built once (the tap shares the model's layers and weights)."""
        if self._explainer is None or self._explainer.model is not model:
            self._explainer = Explainer(model, self.layers, self.output, self.multi_label)
        return self._explainer

    def on_train_begin(self, logs=None):
        """Fail before the first epoch, not at its end, on a model whose maps cannot be drawn."""
        self._explainer_of(self.model).maps(self.images[:1], self._method())

    def _method(self):
        return self.method or (self.model.attention if isinstance(self.model, ICASC) else "gradcam")

    def _panels(self):
        model = self.model
        explainer = self._explainer_of(model)  # multi-label when asked or when the model ends in a sigmoid
        panels = Panels(model, explainer, self.images, self.labels, self.class_names, self._method(),
                        explainer.multi_label)
        drawn = []
        for i in range(len(self.images)):
            rows = [row for builder in self.rows for row in builder(panels, i) if row]
            drawn.append(figures.attention_panel(self.display[i], f"image {i}\ntrue: {panels.name(panels.truth[i])}",
                                                 rows))
        return drawn

    # ------------------------------------------------------------------ writing
    def _write(self, prefix, step):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "attention"))
        panels = self._panels()
        with self._writer.as_default(), tf.summary.record_if(True):
            for i, panel in enumerate(panels):
                tf.summary.image(f"{prefix}/{i:02d}", panel[None], step=step)
        self._writer.flush()

    def on_train_batch_end(self, batch, logs=None):
        if self.every and self.position.global_step % self.every == 0:
            self._write("attention_steps", self.position.global_step)

    def on_epoch_end(self, epoch, logs=None):
        self._write("attention", epoch + 1)

    def close(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
