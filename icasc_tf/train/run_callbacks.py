"""The callbacks of a training run (``icasc_tf.train.run``): where the run is, its
checkpoints, its best model, the learning rate in the logs, its TensorBoard scalars, and the
two wrappers that let a run call ``fit`` once per epoch.

Callbacks for your own ``model.fit`` (attention images, warm-up) are in ``icasc_tf.fit_callbacks``.

Why ``TrainingSummaries`` and not ``keras.callbacks.TensorBoard(update_freq=N)``: in Keras 3.15 it enters
``tf.summary.record_if(step % N == 0)`` at ``on_train_begin`` and keeps a condition of that
kind for the whole of ``fit`` (``_push_writer``/``_pop_writer`` in
keras/src/callbacks/tensorboard.py). Its epoch scalars, its validation scalars and every
other callback's ``tf.summary`` writes made during ``fit`` are then recorded only when the
batch counter happens to be a multiple of N at that moment: with 156 steps per epoch and
N = 50, no epoch scalar, validation curve or attention image was ever written. Its batch
counter also restarts at 0 with every ``fit`` call, and a run here calls ``fit`` once per
epoch (see ``icasc_tf.train.run``) and resumes mid-epoch.

``TrainingSummaries`` writes the same tags (``batch_<name>`` in ``logs/train`` every
``summary_every`` train steps; ``epoch_<name>`` in ``logs/train`` and, for the ``val_``
logs, in ``logs/validation`` at every epoch end) with its own writers, each write inside
``tf.summary.record_if(True)`` so that no recording condition set elsewhere can drop it.
Steps: a batch scalar's step is the run's train step (``RunPosition.global_step``, the same
across resumes); an epoch scalar's step is the number of epochs done (1 after the first
epoch), as for the attention images. Not written (Keras's callback did): the model graph
and ``evaluation_*_vs_iterations``.
"""

import glob
import json
import logging
import os
import re
import shutil
import signal
import threading
import time

import h5py
import keras
import numpy as np
import tensorflow as tf

from icasc_tf.train.files import atomic_save_model, atomic_write_json, fsync_tree

_log = logging.getLogger(__name__)


def scalar_logs(logs):
    """The logs that are one finite-or-not number, as floats (Keras gives [1]-shaped ones on some
    strategies); anything else (arrays, strings) is left out."""
    values = {}
    for name, value in (logs or {}).items():
        array = np.asarray(value)
        if array.size == 1 and np.issubdtype(array.dtype, np.number):
            values[name] = float(array.reshape(()))
    return values


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


class CheckpointError(RuntimeError):
    """No checkpoint could be read, or one could not be written; the message says what to do."""


class _Mismatch(ValueError):
    """A readable checkpoint written with other settings: not damage, so never set aside."""


def _read_checkpoint(path):
    """A checkpoint's files read in full: ``(epoch.json, weights file, optimizer arrays)``; any
    exception means the checkpoint is damaged. The weights file is read dataset by dataset."""
    with open(os.path.join(path, "epoch.json"), encoding="utf-8") as f:
        saved = json.load(f)
    int(saved["epochs_done"])
    weights = os.path.join(path, "state.weights.h5")
    with h5py.File(weights, "r") as h5:
        h5.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    with np.load(os.path.join(path, "optimizer.npz")) as store:
        optimizer = {key: np.asarray(store[key]) for key in store.files}
    return saved, weights, optimizer


class ResumableCheckpoint(keras.callbacks.Callback):
    """Weights + optimizer state + position, saved at each epoch end (and every N steps), atomically.

    A checkpoint is a folder, ``epoch-NNNN`` after NNNN complete epochs or
    ``epoch-NNNN-step-SSSSSSSS`` after NNNN epochs and SSSSSSSS steps of the next one, written
    under a temporary name, flushed to disk and renamed when complete, so a run killed at any
    instant finds the last complete one. Once a new one is in place, all but the newest
    ``keep`` are deleted. ``every`` > 0 adds the step checkpoints (it needs ``position``, the
    run's ``RunPosition``). An epoch cut short (a NaN loss, a callback that stops training) and
    a non-finite loss are not checkpointed: resuming would start from them.

    ``restore`` loads the newest checkpoint that reads; a damaged one (a disk error, a copy cut
    short) is named in a warning and set aside as ``<name>.unreadable-<time>``, never deleted,
    and the next older one is used. A write that fails (a full disk) leaves the previous
    checkpoints as they were and raises ``CheckpointError`` saying so.
    """

    def __init__(self, directory, keep=2, write=True, every=0, position=None, data=None):
        super().__init__()
        if every and position is None:
            raise ValueError("ResumableCheckpoint(every=N) needs the run's RunPosition.")
        self.directory = directory
        self.data = data  # what identifies the training data (checked on restore), or None
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

    def saved_position(self):
        """The newest checkpoint's position as written, ``(0, 0)`` if none (``restore`` falls
        back to an older one when it cannot be read)."""
        latest = self.latest()
        if latest is None:
            return 0, 0
        with open(os.path.join(latest, "epoch.json"), encoding="utf-8") as f:
            saved = json.load(f)
        return int(saved.get("epochs_done", 0)), int(saved.get("step", 0))

    def restore(self, model, steps_per_epoch=None):
        """Load the newest readable checkpoint into ``model``; return its position
        ``(epochs done, steps done in the next epoch)``, ``(0, 0)`` when there is none.

        A checkpoint is damaged when its files cannot be read in full (they are read before
        anything is assigned); it is then set aside and the next older one tried. A readable
        checkpoint that does not fit this run (other steps per epoch, other training data,
        another optimizer or network) is an error, never set aside.
        """
        unreadable = []
        for _, path in reversed(self.checkpoints()):
            try:
                saved, weights, optimizer = _read_checkpoint(path)
            except Exception as error:  # h5py, NumPy, zipfile and json each raise their own
                reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
                aside = self._set_aside(path) if self.write else None
                _log.warning(
                    "Checkpoint %s cannot be read (%s)%s; trying the one before it.",
                    path, reason, f"; set aside as {aside}" if aside else "",
                )
                unreadable.append(f"{os.path.basename(path)} ({reason})")
                continue
            return self._apply(path, saved, weights, optimizer, model, steps_per_epoch)
        if unreadable:
            raise CheckpointError(
                f"No checkpoint in {self.directory} can be read: {'; '.join(unreadable)}. They were set aside "
                "(renamed *.unreadable-*), not deleted. Restore them from a copy, or start again with --overwrite."
            )
        return 0, 0

    def _apply(self, path, saved, weights, optimizer, model, steps_per_epoch):
        position = int(saved["epochs_done"]), int(saved.get("step", 0))
        if position[1] and saved.get("steps_per_epoch") not in (None, steps_per_epoch):
            raise _Mismatch(
                f"{path} was written mid-epoch with {saved['steps_per_epoch']} steps per epoch; this run has "
                f"{steps_per_epoch} (the training split changed?). Use another --model_dir, or --overwrite."
            )
        written_on = saved.get("data")
        if written_on is not None and self.data is not None and written_on != self.data:
            changed = sorted(k for k in self.data if written_on.get(k) != self.data[k])
            raise _Mismatch(
                f"{path} was written on other training data ({', '.join(changed)} changed: the folder or the "
                "dataset options are not the run's). Resume with the run's data, or use another --model_dir."
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        if model.optimizer is not None and len(optimizer) != len(model.optimizer.variables):
            raise _Mismatch(
                f"{path} holds {len(optimizer)} optimizer variables, the optimizer has "
                f"{len(model.optimizer.variables)}: it was written with other optimizer settings."
            )
        try:
            model.load_weights(weights)
        except ValueError as error:
            raise _Mismatch(f"{path} does not fit this run's network: {error}") from None
        if model.optimizer is not None:
            # Keras 3 weight files hold no optimizer state: momentum and the step (and so
            # the learning-rate schedule's position) come from here.
            model.optimizer.load_own_variables(optimizer)
        return position

    @staticmethod
    def _set_aside(path):
        aside = f"{path}.unreadable-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(path, aside)
        return aside

    def on_train_batch_end(self, batch, logs=None):
        position = self.position
        if not (self.write and self.every) or position.epoch_complete or position.step % self.every:
            return  # the epoch checkpoint follows the epoch's last step
        if _finite_loss(logs):
            self.save(position.epoch, position.step, logs)

    def on_epoch_end(self, epoch, logs=None):
        complete = self.position is None or self.position.epoch_complete
        if self.write and complete and _finite_loss(logs):
            self.save(epoch + 1, 0, logs)

    def save(self, epochs_done, step, logs=None):
        """Write the checkpoint of this position; returns its path."""
        os.makedirs(self.directory, exist_ok=True)
        name = f"epoch-{epochs_done:04d}" + (f"-step-{step:08d}" if step else "")
        final = os.path.join(self.directory, name)
        tmp = f"{final}.tmp-{os.getpid()}"
        for stale in glob.glob(os.path.join(self.directory, "*.tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run (the run folder is locked)
        try:
            os.makedirs(tmp)
            self.model.save_weights(os.path.join(tmp, "state.weights.h5"))
            store = {}
            self.model.optimizer.save_own_variables(store)
            np.savez(os.path.join(tmp, "optimizer.npz"), **store)
            position = {"epochs_done": epochs_done, "step": step}
            if self.position is not None:
                position["steps_per_epoch"] = self.position.steps_per_epoch
            if self.data is not None:
                position["data"] = self.data
            with open(os.path.join(tmp, "epoch.json"), "w", encoding="utf-8") as f:
                json.dump({**position, "logs": scalar_logs(logs)}, f)
            fsync_tree(tmp)
        except OSError as error:
            shutil.rmtree(tmp, ignore_errors=True)
            previous = self.latest()
            raise CheckpointError(
                f"Could not write checkpoint {name} in {self.directory} ({type(error).__name__}: "
                f"{' '.join(str(error).split())}); "
                + (f"the previous checkpoint {os.path.basename(previous)} is intact. " if previous else "")
                + "Free disk space, then start the same command again to resume."
            ) from error
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        fsync_tree(self.directory, files=False)
        for _, old in self.checkpoints()[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final


class RunInterrupted(Exception):
    """A signal stopped the run after a checkpoint; ``str()`` says where and how to resume."""

    def __init__(self, signum, epoch, step, checkpoint):
        self.signum = signum
        name = signal.Signals(signum).name
        saved = f"checkpoint {os.path.basename(checkpoint)} written" if checkpoint else "no new checkpoint"
        super().__init__(
            f"stopped by {name} at epoch {epoch + 1}, step {step} ({saved}); "
            "run the same command again to resume there."
        )


class StopOnSignal(keras.callbacks.Callback):
    """SIGTERM (schedulers, preemptible machines) and SIGINT (Ctrl-C) stop the run cleanly: the
    current step finishes, a step checkpoint is written (after the epoch's last step, the epoch
    checkpoint is), and ``RunInterrupted`` ends the run. A second Ctrl-C stops at once. Use as
    a context manager around training (it installs its handlers in the main thread only); put
    it after the checkpoint and TensorBoard callbacks."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, checkpoint, position):
        super().__init__()
        self.checkpoint = checkpoint
        self.position = position
        self.received = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = {signum: signal.signal(signum, self._handle) for signum in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: now
        self.received = signum

    def on_train_batch_end(self, batch, logs=None):
        position = self.position
        if self.received is None or position.epoch_complete:
            return  # at the epoch's end the epoch checkpoint comes first (on_epoch_end)
        saved = None
        if self.checkpoint.write and _finite_loss(logs):
            saved = self.checkpoint.save(position.epoch, position.step, logs)
        raise RunInterrupted(self.received, position.epoch, position.step, saved)

    def on_epoch_end(self, epoch, logs=None):
        if self.received is not None:
            raise RunInterrupted(self.received, epoch + 1, 0, self.checkpoint.latest())


class BestModel(keras.callbacks.Callback):
    """Save the whole model (``.keras``) whenever ``monitor`` improves, atomically; never from an
    epoch whose loss or monitored value is not finite (a diverged epoch)."""

    def __init__(self, path, monitor, mode="max", write=True, best=None):
        super().__init__()
        self.path, self.monitor, self.mode, self.write = path, monitor, mode, write
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not self.write:
            return
        if not all(np.all(np.isfinite(logs[k])) for k in (self.monitor, "loss", "val_loss") if k in logs):
            return
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
            atomic_save_model(self.model, self.path)
            atomic_write_json(self.path + ".json", {"epoch": epoch + 1, self.monitor: value})


class LearningRateLogger(keras.callbacks.Callback):
    """Put the learning rate into the logs (so TensorBoard plots it): per batch the rate that
    batch's step used, per epoch the mean of the rates its steps used (a schedule moves within
    an epoch; the rate after the last step, 0 at the end of a cosine cycle, was used by none)."""

    def _rate(self):
        return float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self._rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self._step_rate = self._rate()  # the rate the coming step applies

    def on_train_batch_end(self, batch, logs=None):
        self._rates.append(self._step_rate)
        if logs is not None:
            logs["learning_rate"] = self._step_rate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self._rates:
            logs["learning_rate"] = float(np.mean(self._rates))


class TrainingSummaries(keras.callbacks.Callback):
    """``logs/train`` and ``logs/validation`` scalars; ``close()`` at the end of the run.

    ``position`` is the run's ``RunPosition`` (first in the callback
    list). Put this callback after those that add to the logs (the learning rate).
    """

    def __init__(self, log_dir, summary_every, position):
        super().__init__()
        if summary_every < 1:
            raise ValueError(f"summary_every must be >= 1; got {summary_every}.")
        self.log_dir = log_dir
        self.summary_every = int(summary_every)
        self.position = position
        self._writers = {}

    def _writer(self, name):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def _scalars(self, writer_name, prefix, values, step):
        if not values:
            return
        writer = self._writer(writer_name)
        with writer.as_default(), tf.summary.record_if(True):
            for name, value in values.items():
                tf.summary.scalar(f"{prefix}{name}", value, step=step)

    def on_train_batch_end(self, batch, logs=None):
        step = self.position.global_step
        if step % self.summary_every == 0:
            self._scalars("train", "batch_", scalar_logs(logs), step)

    def on_epoch_end(self, epoch, logs=None):
        values = scalar_logs(logs)
        train = {k: v for k, v in values.items() if not k.startswith("val_")}
        validation = {k[len("val_"):]: v for k, v in values.items() if k.startswith("val_")}
        self._scalars("train", "epoch_", train, epoch + 1)
        self._scalars("validation", "epoch_", validation, epoch + 1)
        self.flush()

    def on_train_end(self, logs=None):
        self.flush()

    def flush(self):
        for writer in self._writers.values():
            writer.flush()

    def close(self):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class OncePerRun(keras.callbacks.Callback):
    """A caller's callback seen through one ``fit`` per epoch: ``on_train_begin`` once, at the
    run's first epoch, and ``on_train_end`` once, at its end (``finish``), as if one ``fit`` ran,
    so that e.g. EarlyStopping and ReduceLROnPlateau keep their state across epochs."""

    _FORWARDED = (
        "on_epoch_begin", "on_epoch_end", "on_train_batch_begin", "on_train_batch_end",
        "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
    )

    def __init__(self, callback):
        super().__init__()
        self.callback = callback
        self._begun = False
        for hook in self._FORWARDED:
            setattr(self, hook, getattr(callback, hook))

    def set_model(self, model):
        super().set_model(model)
        self.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        self.callback.set_params(params)

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            self.callback.on_train_begin(logs)

    def on_train_end(self, logs=None):
        pass

    def finish(self, logs=None):
        self.callback.on_train_end(logs)


class OneEpochPerFit(keras.callbacks.Callback):
    """Ends each ``fit`` call after one epoch; notes whether another callback asked to stop."""

    stopped_by_callback = False

    def on_epoch_end(self, epoch, logs=None):
        self.stopped_by_callback = bool(self.model.stop_training)
        self.model.stop_training = True


def previous_best_record(path):
    """What ``BestModel`` recorded beside ``path``: ``{"epoch", <monitor>: value}``, or ``{}``."""
    try:
        with open(path + ".json", encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def previous_best(path, monitor):
    try:
        return float(previous_best_record(path)[monitor])
    except (KeyError, TypeError, ValueError):
        return None


def _finite_loss(logs):
    loss = (logs or {}).get("loss")
    return loss is None or bool(np.all(np.isfinite(loss)))
