"""TensorBoard scalars of a training run: per epoch always, per batch every N steps.

Why not ``keras.callbacks.TensorBoard(update_freq=N)``: in Keras 3.15 it enters
``tf.summary.record_if(step % N == 0)`` at ``on_train_begin`` and keeps a condition of that
kind for the whole of ``fit`` (``_push_writer``/``_pop_writer`` in
keras/src/callbacks/tensorboard.py). Its epoch scalars, its validation scalars and every
other callback's ``tf.summary`` writes made during ``fit`` are then recorded only when the
batch counter happens to be a multiple of N at that moment: with 156 steps per epoch and
N = 50, no epoch scalar, validation curve or attention image was ever written. Its batch
counter also restarts at 0 with every ``fit`` call, and a run here calls ``fit`` once per
epoch (see ``icasc_tf.training``) and resumes mid-epoch.

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

import numpy as np
import tensorflow as tf
from keras import callbacks


class TrainingSummaries(callbacks.Callback):
    """``logs/train`` and ``logs/validation`` scalars; ``close()`` at the end of the run.

    ``position`` is the run's ``icasc_tf.callbacks.RunPosition`` (first in the callback
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
            self._scalars("train", "batch_", _scalars(logs), step)

    def on_epoch_end(self, epoch, logs=None):
        values = _scalars(logs)
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


def _scalars(logs):
    """The logs that are one number (Keras gives [1]-shaped ones on some strategies)."""
    values = {}
    for name, value in (logs or {}).items():
        array = np.asarray(value)
        if array.size == 1 and np.issubdtype(array.dtype, np.number):
            values[name] = float(array.reshape(()))
    return values
