"""Callbacks for any ``model.fit`` of an ICASC model: attention maps as TensorBoard images,
and a warm-up of the attention losses. (A training run's own callbacks: ``icasc_tf.train.callbacks``.)"""

import os

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import painless
from icasc_tf.losses import target_mask
from icasc_tf.selection import confusing_class, probabilities


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
    """At each epoch end, a panel per fixed validation image in TensorBoard (and every N steps).

    Tiles: the image; the ground-truth class's and the most confusing class's maps at
    the inner and last layers, overlaid; the target mask; with painless attention, each
    head's mask and the gate values. Tags ``attention/00``, ``attention/01``... sort in
    image order; their step is the number of epochs done (1 after the first). With
    ``every`` = N > 0 (and the run's ``RunPosition``), the panels are also written every N
    train steps under ``attention_steps/00``..., whose step is the run's train step.

    Writes are wrapped in ``tf.summary.record_if(True)``: a recording condition set by
    another callback (Keras's ``TensorBoard(update_freq=N)`` sets one for all of ``fit``)
    must not drop them. The writer stays open across ``fit`` calls; ``close()`` it.
    """

    def __init__(self, log_dir, images, labels, class_names, multi_label=False, display=None,
                 every=0, position=None):
        super().__init__()
        if every and position is None:
            raise ValueError("AttentionImages(every=N) needs the run's RunPosition.")
        self.every = int(every)
        self.position = position
        self.log_dir = log_dir
        self.images = np.asarray(images, np.float32)
        self.labels = np.asarray(labels)
        self.class_names = list(class_names)
        self.multi_label = multi_label
        self.display = self.images if display is None else display  # render_panel scales to [0, 1]
        self._writer = None
        self._probe = None

    def _panels(self):
        from icasc_tf import visualize

        model = self.model
        # A direct call, not predict(): under MultiWorkerMirroredStrategy predict() gathers across
        # workers, and only the chief draws the images.
        logits = keras.ops.convert_to_numpy(model(self.images, training=False))
        probs = probabilities(logits, self.multi_label).numpy()
        if self.multi_label:
            truth = np.argmax(np.where(self.labels > 0, probs, -1.0), axis=-1)  # best-scored positive
        else:
            truth = self.labels.astype(int).reshape(-1)
        confusing = confusing_class(self.labels, logits, self.multi_label).numpy()
        maps = model.attention_maps(self.images, classes=np.stack([truth, confusing], axis=1))
        mask = target_mask(
            tf.constant(maps["last"][:, 0]), size=self.images.shape[1:3], sigma=model.sigma, omega=model.omega
        ).numpy()
        painless_outputs = self._painless_outputs()
        panels = []
        for i in range(len(self.images)):
            t, c = truth[i], confusing[i]
            tiles = [
                (f"GT {self._name(t)} {probs[i, t]:.2f} inner", maps["inner"][i, 0], "overlay"),
                ("GT last", maps["last"][i, 0], "overlay"),
                (f"conf {self._name(c)} {probs[i, c]:.2f} inner", maps["inner"][i, 1], "overlay"),
                ("conf last", maps["last"][i, 1], "overlay"),
                ("mask", mask[i], "mask"),
            ]
            if painless_outputs is not None:
                gates = " ".join(f"{g:.2f}" for g in painless_outputs["gates"][i])
                for m, module_masks in enumerate(painless_outputs["masks"]):
                    for h in range(module_masks.shape[-1]):
                        tiles.append((f"pa m{m} h{h}", module_masks[i, ..., h], "overlay"))
                tiles[-1] = (tiles[-1][0] + f" gates {gates}", tiles[-1][1], tiles[-1][2])
            panels.append(visualize.render_panel(self.display[i], tiles))
        return panels

    def _painless_outputs(self):
        if not any(layer.name.startswith(painless.PREFIX) for layer in self.model.backbone.layers):
            return None
        if self._probe is None:
            self._probe = painless.painless_probe(self.model.backbone)
        out = self._probe(self.images, training=False)
        return {"masks": [np.asarray(m) for m in out["masks"]], "gates": np.asarray(out["gates"])}

    def _name(self, index):
        return self.class_names[index] if index < len(self.class_names) else str(index)

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
