"""A training run's folder (``--model_dir``): the one place that names what is in it.

    config.json, flags.txt   the resolved options (``--flagfile=flags.txt`` repeats the run)
    checkpoints/             weights + optimizer state + position (``icasc_tf.train.checkpoint``
                             names what is inside)
    best.keras, final.keras  the best model on the validation split, the last one
    best.keras.json          the epoch and validation value best.keras was saved at
    logs/                    TensorBoard: scalars (train/validation), attention images
    metrics.json             final evaluation and the history; its presence marks the run done
    eval_<split>.json        evaluate.py's (and the study's) results, the KS chart beside them
    .lock                    held by the process training in the folder; removed when it ends
    .workers/worker-N/       a non-chief worker's scratch run folder (multi-worker)

The training run, the evaluation and figure commands and the study all read a run through
``RunDir``.
"""

import dataclasses
import fcntl
import json
import os
import socket
import time

import keras

import icasc_tf  # noqa: F401  (registers ICASC, the backbones' and painless attention's layers)
from icasc_tf.data.registry import get_spec
from icasc_tf.train.config import NOT_PART_OF_RUN, TrainConfig
from icasc_tf.train.files import atomic_write_text

MODELS = ("best", "final")
# Options added since runs were first recorded, with the value those older runs ran with (when a
# run's config.json lacks one): the held-out validation share arrived after runs validated on test.
LEGACY_VALUES = {"validation_share": 0.0}


class RunExistsError(ValueError):
    """model_dir holds another run (or a finished one) that must not be overwritten."""


class RunLockedError(RunExistsError):
    """Another process is training into the same run folder."""


class RunDirError(ValueError):
    """A run folder, or a file in it, is missing or unreadable; the message names it."""


class RunDir:
    """Paths, options and models of the run in ``path``."""

    def __init__(self, path):
        self.path = os.fspath(path)

    # ------------------------------------------------------------------ paths
    def file(self, name):
        return os.path.join(self.path, name)

    @property
    def config_path(self):
        return self.file("config.json")

    @property
    def flags_path(self):
        return self.file("flags.txt")

    @property
    def metrics_path(self):
        return self.file("metrics.json")

    @property
    def checkpoints(self):
        return self.file("checkpoints")

    @property
    def logs(self):
        return self.file("logs")

    @property
    def network_path(self):
        """The copy of an ``--arch=FILE.keras`` network as it was when the run started (resumes from it
        when the file has gone)."""
        return self.file("network.keras")

    @property
    def lock_path(self):
        return self.file(".lock")

    def model_path(self, which="best"):
        if which not in MODELS:
            raise ValueError(f"Unknown model {which!r}: choose one of {', '.join(MODELS)}.")
        return self.file(f"{which}.keras")

    @property
    def best_record_path(self):
        """Where ``BestModel`` records the epoch and value best.keras was saved at."""
        return self.model_path("best") + ".json"

    def evaluation_path(self, split):
        """The results of an evaluation of the run on ``split`` (evaluate.py's default output)."""
        return self.file(f"eval_{split}.json")

    @staticmethod
    def chart_beside(results_path):
        """The KS chart written beside an evaluation's results file (``<stem>_ks.png``)."""
        return os.path.splitext(results_path)[0] + "_ks.png"

    def worker(self, task):
        """The scratch run folder a non-chief worker writes its (unused) files into, as TensorFlow
        advises."""
        return RunDir(os.path.join(self.path, ".workers", f"worker-{task}"))

    # ------------------------------------------------------------------ state
    @property
    def finished(self):
        return os.path.exists(self.metrics_path)

    def saved_options(self):
        """config.json as a dict, or None when the folder holds no run."""
        if not os.path.exists(self.config_path):
            return None
        try:
            with open(self.config_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as error:
            raise RunDirError(f"{self.config_path} is not readable JSON ({error}).") from None

    def config(self):
        """The run's ``TrainConfig`` (options added since it ran take their defaults), or the
        defaults when the folder has no config.json."""
        saved = self.saved_options() or {}
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in saved.items() if k in names})

    def changed_options(self, config):
        """Options of ``config`` that differ from the recorded run's (None if there is none)."""
        previous = self.saved_options()
        if previous is None:
            return None
        current = dataclasses.asdict(config)
        # Options added since the run: what it ran with (LEGACY_VALUES), else their defaults.
        defaults = {**dataclasses.asdict(TrainConfig()), **LEGACY_VALUES}
        recorded = {k: previous.get(k, defaults[k]) for k in current}
        for options in (recorded, current):  # '' and the dataset's own augmentation are the same run
            options["augmentation"] = _augmentation(options)
        return sorted(k for k in current if k not in NOT_PART_OF_RUN and recorded[k] != current[k])

    def metrics(self):
        with open(self.metrics_path, encoding="utf-8") as f:
            return json.load(f)

    def best_record(self):
        """``{"epoch", <monitor>: value}`` of best.keras, or ``{}`` before one is saved."""
        try:
            with open(self.best_record_path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    # ------------------------------------------------------------------ starting a run
    def check(self, config):
        """Read-only: ``"new"``, ``"resume"`` or ``"move_aside"`` (with --overwrite); refuse otherwise.

        A finished run (metrics.json) or a run with other options is never overwritten. Every
        worker calls this before anything is written, so all of them reach the same answer.
        """
        changed = self.changed_options(config)
        if changed is None:
            return "new"
        if not (self.finished or changed):
            return "resume"
        if config.overwrite:
            return "move_aside"
        if self.finished:
            raise RunExistsError(
                f"{self.path} holds a finished run (metrics.json). Choose another --model_dir, or "
                "pass --overwrite to move it aside and train again."
            )
        raise RunExistsError(
            f"{self.path} holds a run with other options ({', '.join(changed)}). Use another "
            "--model_dir, the same flags to resume it, or --overwrite to move it aside."
        )

    def move_aside(self):
        """Rename the folder to ``<path>.old-<time>`` (nothing is deleted); returns the new path."""
        aside = f"{self.path.rstrip('/')}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        os.replace(self.path, aside)
        return aside

    def write_options(self, config, header=()):
        """config.json and flags.txt (``header``: comment lines at the top of flags.txt)."""
        os.makedirs(self.path, exist_ok=True)
        atomic_write_text(self.config_path, config.to_json())
        lines = ["The resolved options of this run: --flagfile=flags.txt repeats it.", *header]
        atomic_write_text(self.flags_path, config.to_flagfile(lines))

    # ------------------------------------------------------------------ models
    def load_model(self, which="best"):
        """The run's ``best`` or ``final`` model; ``RunDirError`` naming the file if it is missing
        or unreadable."""
        return load_model_file(self.model_path(which), finished=self.finished)


class RunLock:
    """One run per folder: an OS lock (``flock``) on ``<model_dir>/.lock``, taken before anything
    else is written, released by the OS when the process ends however it ends (so a SIGKILLed
    run leaves no stale lock, only a file naming a process that is gone). The file names the
    holder (host, pid, start time) for the error a second run gets; the holder removes it when it
    releases the lock, so a finished run leaves none. A process that finds the file gone or
    replaced after it locked it (the holder removed it meanwhile) locks the new one."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.created = False  # the folder did not exist before the lock made it
        self._descriptor = None

    def acquire(self):
        """Lock the folder (creating it), or raise ``RunLockedError`` naming the holder."""
        self.release()
        path = self.run_dir.path
        if not os.path.isdir(path):
            os.makedirs(path, exist_ok=True)  # another start may make it first: the lock decides
            self.created = True
        while True:
            descriptor = os.open(self.run_dir.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(descriptor, 512).decode("utf-8", "replace").strip() or "another process"
                os.close(descriptor)
                raise RunLockedError(
                    f"{path} is in use by another run ({holder}); nothing in it was touched. Wait for that run "
                    "to end (or stop it), or use another --model_dir."
                ) from None
            if self._is_lock_file(descriptor):
                break
            os.close(descriptor)  # its holder removed it as it ended: lock the one there now
        os.ftruncate(descriptor, 0)
        holder = f"host {socket.gethostname()}, pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.write(descriptor, holder.encode("utf-8"))
        os.fsync(descriptor)
        self._descriptor = descriptor

    def _is_lock_file(self, descriptor):
        """Whether ``descriptor`` is the file at the lock's path (not one removed from it)."""
        try:
            there = os.stat(self.run_dir.lock_path)
        except FileNotFoundError:
            return False
        mine = os.fstat(descriptor)
        return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)

    def release(self):
        """Remove the lock file (still holding the lock, so no other run locked it meanwhile), then
        unlock it. A no-op when not held."""
        if self._descriptor is None:
            return
        if self._is_lock_file(self._descriptor):
            os.remove(self.run_dir.lock_path)
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
        self._descriptor = None

    def discard_if_unused(self):
        """After a run that failed before writing anything: remove the folder the lock made (while
        still holding the lock, so that no other run is locking it meanwhile)."""
        path = self.run_dir.path
        if not (self.created and self._descriptor is not None):
            return
        try:
            if os.listdir(path) == [os.path.basename(self.run_dir.lock_path)]:
                os.remove(self.run_dir.lock_path)
                os.rmdir(path)
        except OSError:
            pass  # something else appeared in it: leave it as it is


def load_model_file(path, finished=True):
    """A saved ``.keras`` model (icasc_tf's layers registered), or ``RunDirError`` naming the file."""
    if not os.path.isfile(path):
        hint = "" if finished else " The run has not finished: train it to the end first."
        raise RunDirError(f"{path} does not exist.{hint}")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # h5py, zipfile and Keras each raise their own
        raise RunDirError(
            f"Cannot load {path}: {type(error).__name__}: {error}. The file is damaged or was not "
            "written by icasc_tf; retrain, or use the run's other model (best/final)."
        ) from None


def _augmentation(options):
    """The augmentation a run's options mean ('' is the dataset's own)."""
    if options.get("augmentation"):
        return options["augmentation"]
    try:
        return get_spec(options["dataset"]).augmentation
    except ValueError:
        return ""
