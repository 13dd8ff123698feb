"""Callbacks of a training run: atomic checkpoints that resume, the best model, the
learning rate in the logs, and attention maps as TensorBoard images."""

import glob
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import painless
from icasc_tf.files import atomic_save_model, atomic_write_json
from icasc_tf.losses import target_mask
from icasc_tf.selection import confusing_class, probabilities


class ResumableCheckpoint(keras.callbacks.Callback):
    """Weights + optimizer state + epoch, saved at each epoch end, atomically.

    Each checkpoint is a folder ``epoch-NNNN`` written under a temporary name and renamed
    when complete, so a run killed at any instant finds the last complete one. Older
    checkpoints beyond ``keep`` are deleted after the new one is in place.
    """

    def __init__(self, directory, keep=2, write=True):
        super().__init__()
        self.directory = directory
        self.keep = keep
        self.write = write  # False on non-chief workers: they take part but do not write

    def epochs_done(self):
        """Epochs finished by the latest checkpoint (0 if none), read without a model."""
        latest = self.latest()
        if latest is None:
            return 0
        with open(os.path.join(latest, "epoch.json"), encoding="utf-8") as f:
            return int(json.load(f)["epochs_done"])

    def latest(self):
        done = sorted(glob.glob(os.path.join(self.directory, "epoch-[0-9][0-9][0-9][0-9]")))
        return done[-1] if done else None

    def restore(self, model):
        """Load the latest checkpoint into ``model``; return the epoch to resume from."""
        latest = self.latest()
        if latest is None:
            return 0
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(latest, "state.weights.h5"))
        if model.optimizer is not None:
            # Keras 3 weight files hold no optimizer state: momentum and the step (and so
            # the learning-rate schedule's position) come from here.
            with np.load(os.path.join(latest, "optimizer.npz")) as store:
                state = dict(store)
            if len(state) != len(model.optimizer.variables):
                raise ValueError(
                    f"{latest} holds {len(state)} optimizer variables, the optimizer has "
                    f"{len(model.optimizer.variables)}: it was written with other optimizer settings."
                )
            model.optimizer.load_own_variables(state)
        return self.epochs_done()

    def on_epoch_end(self, epoch, logs=None):
        if not self.write:
            return
        os.makedirs(self.directory, exist_ok=True)
        final = os.path.join(self.directory, f"epoch-{epoch + 1:04d}")
        tmp = f"{final}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        self.model.save_weights(os.path.join(tmp, "state.weights.h5"))
        store = {}
        self.model.optimizer.save_own_variables(store)
        np.savez(os.path.join(tmp, "optimizer.npz"), **store)
        with open(os.path.join(tmp, "epoch.json"), "w", encoding="utf-8") as f:
            json.dump({"epochs_done": epoch + 1, "logs": _floats(logs)}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted(glob.glob(os.path.join(self.directory, "epoch-[0-9][0-9][0-9][0-9]")))
        for old in done[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)


class BestModel(keras.callbacks.Callback):
    """Save the whole model (``.keras``) whenever ``monitor`` improves, atomically."""

    def __init__(self, path, monitor, mode="max", write=True, best=None):
        super().__init__()
        self.path, self.monitor, self.mode, self.write = path, monitor, mode, write
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not self.write:
            return
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
            atomic_save_model(self.model, self.path)
            atomic_write_json(self.path + ".json", {"epoch": epoch + 1, self.monitor: value})


class LearningRateLogger(keras.callbacks.Callback):
    """Put the optimizer's current learning rate into the logs (so TensorBoard plots it)."""

    def _add(self, logs):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch, logs=None):
        self._add(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._add(logs)


class AttentionWarmup(keras.callbacks.Callback):
    """Ramp the attention terms' weight linearly from 0 to 1 over the first ``epochs`` epochs.

    The attention maps of an untrained network point anywhere; weighting their losses
    fully from step 1 lets them lock in arbitrary regions before the classifier has
    learnt anything (see BUILD_NOTES.md, the study).
    """

    def __init__(self, epochs, steps_per_epoch):
        super().__init__()
        self.total = max(float(epochs) * steps_per_epoch, 1.0)
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        step = self._epoch * self.steps_per_epoch + batch + 1
        self.model.attention_scale.assign(min(1.0, step / self.total))

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["attention_scale"] = float(self.model.attention_scale.numpy())

    on_epoch_end = on_train_batch_end


class AttentionImages(keras.callbacks.Callback):
    """Each epoch, a panel per fixed validation image in TensorBoard.

    Tiles: the image; the ground-truth class's and the most confusing class's maps at
    the inner and last layers, overlaid; the target mask; with painless attention, each
    head's mask and the gate values. Tags ``attention/00``, ``attention/01``... sort in
    image order; the step is the epoch.
    """

    def __init__(self, log_dir, images, labels, class_names, multi_label=False, display=None):
        super().__init__()
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
        logits = model.predict(self.images, verbose=0)
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
        painless = self._painless_outputs()
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
            if painless is not None:
                gates = " ".join(f"{g:.2f}" for g in painless["gates"][i])
                for m, module_masks in enumerate(painless["masks"]):
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

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "attention"))
        panels = self._panels()
        with self._writer.as_default():
            for i, panel in enumerate(panels):
                tf.summary.image(f"attention/{i:02d}", panel[None], step=epoch + 1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


def _floats(logs):
    return {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
