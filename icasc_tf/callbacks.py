"""Callbacks of a training run: atomic checkpoints that resume, the best model, the
learning rate in the logs, and attention maps as TensorBoard images."""

import glob
import json
import os
import re
import shutil

import keras
import numpy as np
import tensorflow as tf

from icasc_tf import painless
from icasc_tf.files import atomic_save_model, atomic_write_json
from icasc_tf.losses import target_mask
from icasc_tf.selection import confusing_class, probabilities


class RunPosition(keras.callbacks.Callback):
    """Where the run is: the epoch (from 0) and the steps done in it, across ``fit`` calls.

    Keras numbers the batches of each ``fit`` call from 0, and a run resumed in the middle
    of epoch E starts that epoch at step S: ``start(E, S)`` says so before training. The
    callbacks that need the run's own step count (step checkpoints, TensorBoard, warm-up)
    read ``epoch``, ``step`` and ``global_step`` here. It must come first in the callback
    list, so that the others see the step that has just been trained.

    ``global_step`` counts train steps taken, epochs x steps_per_epoch + step; it equals
    ``optimizer.iterations`` except under a loss-scale optimizer, which skips the steps
    whose gradients overflow.
    """

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = int(steps_per_epoch)
        self.epoch = 0
        self.step = 0
        self._start = (0, 0)
        self._offset = 0

    def start(self, epoch, step=0):
        self._start = (int(epoch), int(step))
        self.epoch, self.step = self._start

    @property
    def global_step(self):
        return self.epoch * self.steps_per_epoch + self.step

    @property
    def epoch_complete(self):
        return self.step >= self.steps_per_epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._offset = self._start[1] if epoch == self._start[0] else 0
        self.step = self._offset

    def on_train_batch_end(self, batch, logs=None):
        self.step = self._offset + batch + 1


_CHECKPOINT = re.compile(r"^epoch-(\d{4,})(?:-step-(\d+))?$")


class ResumableCheckpoint(keras.callbacks.Callback):
    """Weights + optimizer state + position, saved at each epoch end (and every N steps), atomically.

    A checkpoint is a folder, ``epoch-NNNN`` after NNNN complete epochs or
    ``epoch-NNNN-step-SSSSSSSS`` after NNNN epochs and SSSSSSSS steps of the next one, written
    under a temporary name and renamed when complete, so a run killed at any instant finds
    the last complete one. Once a new one is in place, all but the newest ``keep`` are
    deleted. ``every`` > 0 adds the step checkpoints (it needs ``position``, the run's
    ``RunPosition``). An epoch cut short (a NaN loss, a callback that stops training) and a
    non-finite loss are not checkpointed: resuming would start from them.
    """

    def __init__(self, directory, keep=2, write=True, every=0, position=None):
        super().__init__()
        if every and position is None:
            raise ValueError("ResumableCheckpoint(every=N) needs the run's RunPosition.")
        self.directory = directory
        self.keep = keep
        self.write = write  # False on non-chief workers: they take part but do not write
        self.every = int(every)
        self.position = position

    def checkpoints(self):
        """Complete checkpoints, oldest first, as ((epochs_done, step), path)."""
        found = []
        for path in glob.glob(os.path.join(self.directory, "epoch-*")):
            match = _CHECKPOINT.match(os.path.basename(path))
            if match and os.path.isdir(path):
                found.append(((int(match.group(1)), int(match.group(2) or 0)), path))
        return sorted(found)

    def latest(self):
        done = self.checkpoints()
        return done[-1][1] if done else None

    def _saved(self):
        latest = self.latest()
        if latest is None:
            return None, {}
        with open(os.path.join(latest, "epoch.json"), encoding="utf-8") as f:
            return latest, json.load(f)

    def saved_position(self):
        """(epochs done, steps done in the next epoch) of the latest checkpoint; (0, 0) if none."""
        _, saved = self._saved()
        return int(saved.get("epochs_done", 0)), int(saved.get("step", 0))

    def restore(self, model, steps_per_epoch=None):
        """Load the latest checkpoint into ``model`` (``saved_position()`` says where it stood).

        A step checkpoint's position means something only with the steps per epoch it was
        written with: another ``steps_per_epoch`` is an error.
        """
        latest, saved = self._saved()
        if latest is None:
            return
        if saved.get("step") and saved.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise ValueError(
                f"{latest} was written mid-epoch with {saved['steps_per_epoch']} steps per epoch; this run has "
                f"{steps_per_epoch} (the training split changed?). Use another --model_dir, or --overwrite."
            )
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

    def on_train_batch_end(self, batch, logs=None):
        position = self.position
        if not (self.write and self.every) or position.epoch_complete or position.step % self.every:
            return  # the epoch checkpoint follows the epoch's last step
        if _finite_loss(logs):
            self._save(position.epoch, position.step, logs)

    def on_epoch_end(self, epoch, logs=None):
        complete = self.position is None or self.position.epoch_complete
        if self.write and complete and _finite_loss(logs):
            self._save(epoch + 1, 0, logs)

    def _save(self, epochs_done, step, logs):
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epochs_done:04d}" + (f"-step-{step:08d}" if step else "")
        final = os.path.join(self.directory, name)
        tmp = f"{final}.tmp-{os.getpid()}"
        for stale in glob.glob(os.path.join(self.directory, "*.tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run (one chief writes)
        os.makedirs(tmp)
        self.model.save_weights(os.path.join(tmp, "state.weights.h5"))
        store = {}
        self.model.optimizer.save_own_variables(store)
        np.savez(os.path.join(tmp, "optimizer.npz"), **store)
        position = {"epochs_done": epochs_done, "step": step}
        if self.position is not None:
            position["steps_per_epoch"] = self.position.steps_per_epoch
        with open(os.path.join(tmp, "epoch.json"), "w", encoding="utf-8") as f:
            json.dump({**position, "logs": _floats(logs)}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for _, old in self.checkpoints()[: -self.keep]:
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


def _finite_loss(logs):
    loss = (logs or {}).get("loss")
    return loss is None or bool(np.all(np.isfinite(loss)))


def _floats(logs):
    return {k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0}
