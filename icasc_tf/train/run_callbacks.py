"""The callbacks of a training run (``icasc_tf.train.run``): where the run is, a clean stop on
a signal, its best model, the learning rate in the logs, its TensorBoard scalars, one plain
line per epoch, and the two wrappers that let a run call ``fit`` once per epoch. The checkpoints
are ``icasc_tf.train.checkpoint``'s.

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

import os
import signal
import threading
import time

import keras
import numpy as np
import tensorflow as tf

from icasc_tf.train.files import atomic_save_model, atomic_write_json

# Keras's prefix of the validation logs (``val_loss``): ``fit`` names them so.
VALIDATION_PREFIX = "val_"


def validation_log(name):
    """The log of metric ``name`` on the validation data (``accuracy`` -> ``val_accuracy``)."""
    return VALIDATION_PREFIX + name


def metric_of(log):
    """The metric a log is of, without the validation prefix (``val_accuracy`` -> ``accuracy``)."""
    return log[len(VALIDATION_PREFIX):] if log.startswith(VALIDATION_PREFIX) else log


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
        if self.checkpoint.write and finite_loss(logs):
            saved = self.checkpoint.save(position.epoch, position.step, logs)
        raise RunInterrupted(self.received, position.epoch, position.step, saved)

    def on_epoch_end(self, epoch, logs=None):
        if self.received is not None:
            raise RunInterrupted(self.received, epoch + 1, 0, self.checkpoint.latest())


class BestModel(keras.callbacks.Callback):
    """Save the whole model (``.keras``) at ``path`` whenever ``monitor`` improves, atomically, and
    ``{"epoch", <monitor>: value}`` at ``record_path``; never from an epoch whose loss or monitored
    value is not finite (a diverged epoch)."""

    def __init__(self, path, record_path, monitor, mode="max", write=True, best=None):
        super().__init__()
        self.path, self.record_path, self.monitor, self.mode, self.write = path, record_path, monitor, mode, write
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        if value is None or not self.write:
            return
        if not all(np.all(np.isfinite(logs[k])) for k in (self.monitor, "loss", validation_log("loss")) if k in logs):
            return
        value = float(value)
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
            atomic_save_model(self.model, self.path)
            atomic_write_json(self.record_path, {"epoch": epoch + 1, self.monitor: value})


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
        train = {k: v for k, v in values.items() if not k.startswith(VALIDATION_PREFIX)}
        validation = {metric_of(k): v for k, v in values.items() if k.startswith(VALIDATION_PREFIX)}
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


class EpochLine(keras.callbacks.Callback):
    """One plain line per epoch on stdout, for output that is not a terminal (a file, a pipe):
    Keras's progress bar there is a stream of redraws and ANSI codes, and its ``verbose=2`` takes
    two lines. ``Epoch 3/6 - 156/156 steps - 31s - loss: 0.8123 - ... - val_accuracy: 0.7120``."""

    def __init__(self, epochs, position):
        super().__init__()
        self.epochs, self.position = epochs, position
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.time()

    def on_epoch_end(self, epoch, logs=None):
        steps = f"{self.position.step}/{self.position.steps_per_epoch} steps"
        values = " - ".join(f"{name}: {value:.4f}" for name, value in scalar_logs(logs).items())
        seconds = time.time() - self._started
        print(f"Epoch {epoch + 1}/{self.epochs} - {steps} - {seconds:.0f}s - {values}", flush=True)


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


def finite_loss(logs):
    loss = (logs or {}).get("loss")
    return loss is None or bool(np.all(np.isfinite(loss)))
