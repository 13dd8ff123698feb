"""Faults a long run survives, each produced for real: two processes on one run folder, SIGTERM to a
training process, a truncated checkpoint file, a diverged epoch, a write that fails for lack of
room (a file-size limit set on the process, which the kernel enforces like a full disk)."""

import glob
import json
import os
import pathlib
import re
import resource
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from icasc_tf.train import RunDir, TrainConfig, run_training
from icasc_tf.train.checkpoint import CheckpointError, ResumableCheckpoint
from icasc_tf.train.run_callbacks import StopOnSignal
from tests.script_output import our_lines

pytestmark = pytest.mark.slow  # runs whole trainings or commands: `pytest -m 'not slow'` skips them

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(tmp_path, **overrides):
    values = dict(
        dataset_config=["num_train=178", "num_test=16"], arch="resnet8", epochs=3, batch_size=16,
        eval_steps=1, attention_images=0, verbose=0, model_dir=str(tmp_path / "run"),
        data_dir=str(tmp_path / "tfds"),
    )  # 10 steps per epoch (178 minus the 18 held out for validation, in batches of 16)
    values.update(overrides)
    return TrainConfig(**values)


def _command(config):
    """scripts/train.py with ``config``'s options."""
    path = os.path.join(config.model_dir + ".flags")
    with open(path, "w", encoding="utf-8") as f:
        f.write(config.to_flagfile())
    return [sys.executable, os.path.join(ROOT, "scripts", "train.py"), f"--flagfile={path}"]


class StopAtEpoch(keras.callbacks.Callback):
    """A run killed as epoch ``epoch`` (from 0) begins, after the previous epoch's checkpoint."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise KeyboardInterrupt("killed")


def _wait_for(predicate, process, seconds=120):
    deadline = time.time() + seconds
    while not predicate() and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    return predicate()


def test_a_second_run_is_refused_and_sigterm_saves_the_step_the_next_run_resumes_at(tmp_path):
    config = _config(tmp_path, epochs=2, dataset_config=["num_train=3556", "num_test=16"], batch_size=8)
    run, command = RunDir(config.model_dir), _command(config)  # 400 steps per epoch
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    assert _wait_for(lambda: os.path.exists(os.path.join(run.logs, "train")), first), "the run never started"
    holder = pathlib.Path(run.lock_path).read_text()
    options = os.stat(run.config_path).st_mtime_ns

    second = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert second.returncode == 2
    error = our_lines(second.stderr)[-1]
    assert error.startswith(f"train.py: error: {run.path} is in use by another run (host ")
    assert f"pid {first.pid}," in error and holder in error
    # The first run untouched: still training, its lock and options as it wrote them.
    assert first.poll() is None and pathlib.Path(run.lock_path).read_text() == holder
    assert os.stat(run.config_path).st_mtime_ns == options

    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM
    stopped = re.search(r"train.py: stopped by SIGTERM at epoch (\d), step (\d+) \(checkpoint (\S+) written\); "
                        r"run the same command again to resume there.", stderr)
    assert stopped, stderr[-2000:]
    epoch, step = int(stopped.group(1)), int(stopped.group(2))
    expected = f"epoch-{epoch - 1:04d}-step-{step:08d}" if step else f"epoch-{epoch - 1:04d}"
    assert stopped.group(3) == expected and (epoch, step) != (1, 0)
    assert ResumableCheckpoint(run.checkpoints).saved_position() == (epoch - 1, step)
    assert glob.glob(os.path.join(run.logs, "train", "events.*"))  # TensorBoard flushed, kept

    resumed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {run.path} at epoch {epoch}, step {step} " in resumed.stdout
    metrics = run.metrics()
    assert metrics["optimizer_steps"] == 2 * 400 and metrics["resumed_at"] == {"epoch": epoch - 1, "step": step}


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


def test_a_truncated_newest_checkpoint_is_set_aside_and_the_one_before_used(tmp_path, caplog):
    config = _config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, callbacks=[StopAtEpoch(2)])
    run = RunDir(config.model_dir)
    _truncate(os.path.join(run.checkpoints, "epoch-0002", "state.weights.h5"))  # a copy cut short
    summary = run_training(config)
    assert summary["resumed_at"] == {"epoch": 1, "step": 0} and summary["optimizer_steps"] == 30
    assert "epoch-0002 cannot be read" in caplog.text and "set aside as" in caplog.text
    aside = glob.glob(os.path.join(run.checkpoints, "epoch-0002.unreadable-*"))
    assert len(aside) == 1 and os.path.getsize(os.path.join(aside[0], "state.weights.h5")) > 0  # kept, not deleted


def test_when_no_checkpoint_reads_one_error_says_so_and_nothing_is_removed(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, callbacks=[StopAtEpoch(2)])
    run = RunDir(config.model_dir)
    for name in ("epoch-0001", "epoch-0002"):
        _truncate(os.path.join(run.checkpoints, name, "optimizer.npz"), keep=0.3)
    with pytest.raises(CheckpointError, match="No checkpoint in .* can be read: epoch-0002 .*; epoch-0001 "):
        run_training(config)
    kept = sorted(os.path.basename(p).split(".")[0] for p in glob.glob(os.path.join(run.checkpoints, "*")))
    assert kept == ["epoch-0001", "epoch-0002"]  # both set aside under new names, none deleted


class PoisonAtEpoch(keras.callbacks.Callback):
    """Divergence, for real: from epoch ``epoch`` on, one kernel holds NaN, so the loss does too."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            kernel = self.model.backbone.get_layer("logits").kernel
            kernel.assign(np.full(kernel.shape, np.nan, np.float32))


def test_a_diverged_epoch_writes_no_best_model_and_keeps_the_last_good_checkpoint(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(ValueError, match="Training diverged \\(NaN loss\\) in epoch 2"):
        run_training(config, callbacks=[PoisonAtEpoch(1)])
    run = RunDir(config.model_dir)
    assert json.loads(pathlib.Path(run.model_path("best") + ".json").read_text())["epoch"] == 1
    assert np.all(np.isfinite(run.load_model("best").get_weights()[-2]))
    assert [os.path.basename(p) for _, p in ResumableCheckpoint(run.checkpoints).checkpoints()] == ["epoch-0001"]
    assert not run.finished


def _limit_file_size(limit):
    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # writes past it fail (EFBIG)

    return preexec


def test_a_write_that_fails_for_lack_of_room_keeps_the_previous_checkpoint(tmp_path):
    config = _config(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, callbacks=[StopAtEpoch(1)])
    run = RunDir(config.model_dir)
    weights = os.path.join(run.checkpoints, "epoch-0001", "state.weights.h5")
    limit = os.path.getsize(weights) // 2
    full = subprocess.run(
        _command(config), capture_output=True, text=True, cwd=ROOT, timeout=300, preexec_fn=_limit_file_size(limit)
    )
    assert full.returncode == 1, full.stderr[-3000:]
    error = our_lines(full.stderr)[-1]
    assert error.startswith(f"train.py: error: Could not write checkpoint epoch-0002 in {run.checkpoints} (")
    assert error.endswith(
        "the previous checkpoint epoch-0001 is intact. Free disk space, then start the same command again to resume."
    )
    assert sorted(os.listdir(run.checkpoints)) == ["epoch-0001"]  # no half-written folder left
    assert run_training(config)["resumed_at"] == {"epoch": 1, "step": 0}  # with room again, it resumes


def _damaged_run(tmp_path):
    config = _config(tmp_path, epochs=1)
    run_training(config)
    run = RunDir(config.model_dir)
    _truncate(run.model_path("best"))
    return run


@pytest.mark.parametrize("script", ["evaluate.py", "visualize.py"])
def test_scripts_name_a_damaged_model_file(tmp_path, script):
    run = _damaged_run(tmp_path)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", script), f"--model_dir={run.path}"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert result.returncode == 2
    error = our_lines(result.stderr)[-1]
    assert error.startswith(f"{script}: error: Cannot load {run.model_path('best')}: ")
    assert "The file is damaged or was not written by icasc_tf" in error


def test_ctrl_c_once_asks_for_a_clean_stop_and_twice_stops_at_once():
    previous = signal.getsignal(signal.SIGINT)
    with StopOnSignal(checkpoint=None, position=None) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes
        assert stop.received == signal.SIGINT  # training goes on to the end of the step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)
    assert signal.getsignal(signal.SIGINT) is previous  # the handlers are put back
