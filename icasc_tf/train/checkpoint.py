"""A run's checkpoints (``RunDir.checkpoints``): their layout on disk, in this one place, and
``ResumableCheckpoint``, the callback that writes and restores them.

    epoch-NNNN/                    after NNNN complete epochs
    epoch-NNNN-step-SSSSSSSS/      after NNNN epochs and SSSSSSSS steps of the next one
        state.weights.h5           the model's weights (``model.save_weights``)
        optimizer.npz              the optimizer's variables (momentum, iterations)
        epoch.json                 the position (epochs_done, step, steps_per_epoch), the training
                                   data's identity and the logs of the step it follows
    <name>.tmp-<pid>/              being written; renamed to <name> when complete
    <name>.unreadable-<time>/      could not be read: set aside, never deleted
"""

import glob
import json
import logging
import os
import re
import shutil
import time

import h5py
import keras
import numpy as np

from icasc_tf.train.files import fsync_tree
from icasc_tf.train.run_callbacks import finite_loss, scalar_logs

_log = logging.getLogger(__name__)

WEIGHTS_FILE = "state.weights.h5"
OPTIMIZER_FILE = "optimizer.npz"
POSITION_FILE = "epoch.json"
_NAME = re.compile(r"^epoch-(\d{4,})(?:-step-(\d+))?$")
_TEMPORARY = ".tmp-"
_UNREADABLE = ".unreadable-"


def checkpoint_name(epochs_done, step=0):
    """``epoch-NNNN`` after NNNN epochs, ``epoch-NNNN-step-SSSSSSSS`` after SSSSSSSS more steps."""
    return f"epoch-{epochs_done:04d}" + (f"-step-{step:08d}" if step else "")


def list_checkpoints(directory):
    """Complete checkpoints in ``directory``, oldest first, as ((epochs_done, step), path)."""
    found = []
    for path in glob.glob(os.path.join(directory, "epoch-*")):
        match = _NAME.match(os.path.basename(path))
        if match and os.path.isdir(path):
            found.append(((int(match.group(1)), int(match.group(2) or 0)), path))
    return sorted(found)


def read_position(path):
    """The position a checkpoint folder records: ``(epochs_done, step)``."""
    with open(os.path.join(path, POSITION_FILE), encoding="utf-8") as f:
        saved = json.load(f)
    return int(saved.get("epochs_done", 0)), int(saved.get("step", 0))


def read_checkpoint(path):
    """A checkpoint's files read in full: ``(position record, weights file, optimizer arrays)``;
    any exception means the checkpoint is damaged. The weights file is read dataset by dataset."""
    with open(os.path.join(path, POSITION_FILE), encoding="utf-8") as f:
        saved = json.load(f)
    int(saved["epochs_done"])
    weights = os.path.join(path, WEIGHTS_FILE)
    with h5py.File(weights, "r") as h5:
        h5.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    with np.load(os.path.join(path, OPTIMIZER_FILE)) as store:
        optimizer = {key: np.asarray(store[key]) for key in store.files}
    return saved, weights, optimizer


def write_checkpoint(folder, model, record):
    """The model's weights, its optimizer's variables and ``record`` (the position) into a new
    ``folder``, flushed to disk (the caller renames it into place)."""
    os.makedirs(folder)
    model.save_weights(os.path.join(folder, WEIGHTS_FILE))
    store = {}
    model.optimizer.save_own_variables(store)
    np.savez(os.path.join(folder, OPTIMIZER_FILE), **store)
    with open(os.path.join(folder, POSITION_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f)
    fsync_tree(folder)


def set_aside(path):
    """Rename an unreadable checkpoint out of the way (``<name>.unreadable-<time>``); returns the new path."""
    aside = f"{path}{_UNREADABLE}{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(path, aside)
    return aside


class CheckpointError(RuntimeError):
    """No checkpoint could be read, or one could not be written; the message says what to do."""


class _Mismatch(ValueError):
    """A readable checkpoint written with other settings: not damage, so never set aside."""


class ResumableCheckpoint(keras.callbacks.Callback):
    """Weights + optimizer state + position, saved at each epoch end (and every N steps), atomically.

    A checkpoint is a folder (the layout above) written under a temporary name, flushed to disk
    and renamed when complete, so a run killed at any instant finds the last complete one. Once
    a new one is in place, all but the newest ``keep`` are deleted. ``every`` > 0 adds the step
    checkpoints (it needs ``position``, the run's ``RunPosition``). An epoch cut short (a NaN
    loss, a callback that stops training) and a non-finite loss are not checkpointed: resuming
    would start from them.

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
        return list_checkpoints(self.directory)

    def latest(self):
        done = self.checkpoints()
        return done[-1][1] if done else None

    def saved_position(self):
        """The newest checkpoint's position as written, ``(0, 0)`` if none (``restore`` falls
        back to an older one when it cannot be read)."""
        latest = self.latest()
        return (0, 0) if latest is None else read_position(latest)

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
                saved, weights, optimizer = read_checkpoint(path)
            except Exception as error:  # h5py, NumPy, zipfile and json each raise their own
                reason = f"{type(error).__name__}: {' '.join(str(error).split())}"
                aside = set_aside(path) if self.write else None
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

    def on_train_batch_end(self, batch, logs=None):
        position = self.position
        if not (self.write and self.every) or position.epoch_complete or position.step % self.every:
            return  # the epoch checkpoint follows the epoch's last step
        if finite_loss(logs):
            self.save(position.epoch, position.step, logs)

    def on_epoch_end(self, epoch, logs=None):
        complete = self.position is None or self.position.epoch_complete
        if self.write and complete and finite_loss(logs):
            self.save(epoch + 1, 0, logs)

    def _record(self, epochs_done, step, logs):
        record = {"epochs_done": epochs_done, "step": step}
        if self.position is not None:
            record["steps_per_epoch"] = self.position.steps_per_epoch
        if self.data is not None:
            record["data"] = self.data
        return {**record, "logs": scalar_logs(logs)}

    def save(self, epochs_done, step, logs=None):
        """Write the checkpoint of this position; returns its path."""
        os.makedirs(self.directory, exist_ok=True)
        name = checkpoint_name(epochs_done, step)
        final = os.path.join(self.directory, name)
        tmp = f"{final}{_TEMPORARY}{os.getpid()}"
        for stale in glob.glob(os.path.join(self.directory, f"*{_TEMPORARY}*")):
            shutil.rmtree(stale, ignore_errors=True)  # left by a killed run (the run folder is locked)
        try:
            write_checkpoint(tmp, self.model, self._record(epochs_done, step, logs))
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
