"""Callbacks for any ``model.fit`` of an ICASC model: attention maps as TensorBoard images,
and a warm-up of the attention losses. (A training run's own callbacks: ``icasc_tf.train.run_callbacks``.)"""

import os

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import figures, painless
from icasc_tf.explain import default_layers, explain, predicted_probabilities
from icasc_tf.losses import target_mask
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


class AttentionImages(keras.callbacks.Callback):
    """Attention maps of fixed images as TensorBoard panels, at every epoch end (and every N steps).

    Works in any ``model.fit``: for an ``ICASC`` model the panels show its inner and last
    layers, its own map (A_ch by default) and its target mask; for any other Keras classifier,
    Grad-CAM (``method``) at ``layers`` (default: its last 4-D feature layer). Each panel: the
    image with its true class, then the true class's and the most confusing class's maps at
    each layer with their probabilities (ICASC: a row each, the target mask under the image),
    with painless attention each head's mask and the gates; a legend says what the colours
    mean, and an all-zero map says so on its tile. Tags ``attention/00``, ``attention/01``...
    sort in image order; their step is the number of epochs done (1 after the first). With
    ``every`` = N > 0 and ``position`` (an object whose ``global_step`` counts train steps,
    e.g. a training run's ``RunPosition``), the panels are also written every N steps under
    ``attention_steps/NN``.

    Writes are wrapped in ``tf.summary.record_if(True)``: a recording condition set by
    another callback (Keras's ``TensorBoard(update_freq=N)`` sets one for all of ``fit``)
    must not drop them. Each write is flushed; the writer stays open across ``fit`` calls
    until ``close()``.

    Args:
      log_dir: the TensorBoard folder (events go to ``log_dir/attention``).
      images, labels: the images as the model takes them, and their int labels (multi-hot
        with ``multi_label=True``).
      class_names: one name per class (default: class ids).
      layers: names of 4-D feature layers (default: ICASC's inner and last, else the last one).
      method: the map (``icasc_tf.explain``'s methods; default: ICASC's own, else ``"gradcam"``).
      output: as in ``explain``: ``"auto"`` recognises a last layer that applies softmax/sigmoid.
      display: the images as they should be shown (default ``images``, rescaled to [0, 1]).
    """

    def __init__(self, log_dir, images, labels, class_names=None, layers=None, method=None, output="auto",
                 multi_label=False, display=None, every=0, position=None):
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
        self._writer = None
        self._probe = None

    # ------------------------------------------------------------------ what is drawn
    def _maps(self, classes):
        """``{layer: [B, 2, h, w]}`` for the (true, most confusing) classes, and the layers' labels."""
        model = self.model
        icasc = self._is_icasc()
        layers = self.layers or default_layers(model)
        if icasc and layers == [model.inner_layer, model.last_layer]:
            maps = model.attention_maps(self.images, classes=classes, attention=self.method)
            return {"inner layer": maps["inner"], "last layer": maps["last"]}
        method = self.method or (model.attention if icasc else "gradcam")
        return {
            layer: explain(model, self.images, layer=layer, method=method, classes=classes, output=self.output)["maps"]
            for layer in layers
        }

    def on_train_begin(self, logs=None):
        """Fail before the first epoch, not at its end, on a model whose maps cannot be drawn."""
        for layer in self.layers or default_layers(self.model):
            explain(self.model, self.images[:1], layer=layer, method=self.method or "gradcam", output=self.output)

    def _probabilities(self):
        # Only the chief draws the images: a direct call (predict() gathers across workers).
        return predicted_probabilities(self.model, self.images, self.output, self.multi_label)

    def _panels(self):
        model = self.model
        probs = self._probabilities()
        if self.multi_label:
            truth = np.argmax(np.where(self.labels > 0, probs, -1.0), axis=-1)  # best-scored positive
        else:
            truth = self.labels.astype(int).reshape(-1)
        confusing = confusing_class(self.labels, probs, self.multi_label).numpy()
        maps = self._maps(np.stack([truth, confusing], axis=1))
        mask = None
        if hasattr(model, "sigma") and "last layer" in maps:
            mask = target_mask(
                tf.constant(maps["last layer"][:, 0]), size=self.images.shape[1:3], sigma=model.sigma,
                omega=model.omega,
            ).numpy()
        painless_outputs = self._painless_outputs()
        panels = []
        for i in range(len(self.images)):
            t, c = truth[i], confusing[i]
            true_rows = [
                (f"true: {self._name(t)}\np={probs[i, t]:.2f}, {layer}", m[i, 0], "overlay")
                for layer, m in maps.items()
            ]
            confusing_rows = [
                (f"most confusing: {self._name(c)}\np={probs[i, c]:.2f}, {layer}", m[i, 1], "overlay")
                for layer, m in maps.items()
            ]
            caption = f"image {i}\ntrue: {self._name(t)}"
            if len(maps) == 1:
                rows = [true_rows + confusing_rows]
            else:
                rows = [true_rows, ([("target mask", mask[i], "mask")] if mask is not None else []) + confusing_rows]
            if painless_outputs is not None:
                rows.append(self._painless_tiles(painless_outputs, i))
            panels.append(figures.attention_panel(self.display[i], caption, rows))
        return panels

    @staticmethod
    def _painless_tiles(outputs, i):
        tiles = []
        for m, module_masks in enumerate(outputs["masks"]):
            for h in range(module_masks.shape[-1]):
                tiles.append((f"painless module {m} head {h}", module_masks[i, ..., h], "overlay"))
        gates = " ".join(f"{g:.2f}" for g in outputs["gates"][i])
        caption, attention, kind = tiles[-1]
        tiles[-1] = (f"{caption}\ngates {gates}", attention, kind)
        return tiles

    def _painless_outputs(self):
        backbone = self.model.backbone if self._is_icasc() else self.model
        if not any(layer.name.startswith(painless.PREFIX) for layer in backbone.layers):
            return None
        if self._probe is None:
            self._probe = painless.painless_probe(backbone)
        out = self._probe(self.images, training=False)
        return {"masks": [np.asarray(m) for m in out["masks"]], "gates": np.asarray(out["gates"])}

    def _is_icasc(self):
        return all(hasattr(self.model, name) for name in ("backbone", "inner_layer", "last_layer"))

    def _name(self, index):
        if self.class_names is None or index >= len(self.class_names):
            return str(index)
        return str(self.class_names[index])

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
