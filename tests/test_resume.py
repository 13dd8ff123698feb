"""Mid-epoch checkpoints (--checkpoint_every) and resuming: SIGKILL, exact replay of the data order."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from icasc_tf.train import TrainConfig, run_training
from icasc_tf.train.checkpoint import ResumableCheckpoint
from icasc_tf.train.stream import TrainingStream

pytestmark = pytest.mark.slow  # runs whole trainings or commands: `pytest -m 'not slow'` skips them

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sigkilled_run_resumes_mid_epoch_and_ends_with_an_uninterrupted_runs_step_count(tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--arch=resnet8",
        "--dataset_config=num_train=142,num_test=16", "--batch_size=8", "--epochs=2", "--eval_steps=1",
        "--attention_images=0", "--verbose=0", "--checkpoint_every=4", f"--model_dir={run}",
        f"--data_dir={tmp_path / 'tfds'}",
    ]  # 16 steps per epoch (142 minus the 14 held out for validation, in batches of 8)
    killed = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.time() + 120
    # A complete step checkpoint of the second epoch (temporary folders end in .tmp-PID).
    pattern = str(run / "checkpoints" / "epoch-0001-step-????????")
    while not glob.glob(pattern) and killed.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.communicate()
    assert glob.glob(pattern), "no step checkpoint before the run ended"
    assert not (run / "metrics.json").exists()
    position = ResumableCheckpoint(str(run / "checkpoints")).saved_position()
    assert position[0] == 1 and position[1] in (4, 8, 12)

    result = subprocess.run(args, capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    line = re.search(r"resuming (\S+) at epoch (\d+), step (\d+)", result.stdout)
    assert line and line.groups() == (str(run), "2", str(position[1])), result.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["optimizer_steps"] == 2 * 16  # what an uninterrupted run takes
    assert metrics["resumed_at"] == {"epoch": 1, "step": position[1]} and metrics["epochs_run"] == 1
    assert np.isfinite(metrics["validation"]["final"]["loss"]) and np.isfinite(metrics["test"]["final"]["loss"])


class KillAtStep(keras.callbacks.Callback):
    """Simulates a kill before train step ``step`` (counted from 1) runs."""

    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) + 1 == self.step:
            raise KeyboardInterrupt("killed")


def _config(tmp_path, name, **overrides):
    values = dict(
        dataset_config=["num_train=62", "num_test=16"], arch="resnet8", epochs=2, batch_size=8,
        eval_steps=1, attention_images=2, deterministic=True, checkpoint_every=3, verbose=0,
        model_dir=str(tmp_path / name), data_dir=str(tmp_path / "tfds"),
    )  # 7 steps per epoch (62 minus the 6 held out for validation, in batches of 8)
    values.update(overrides)
    return TrainConfig(**values)


def test_resumed_epoch_replays_its_batches_and_ends_with_the_same_weights(tmp_path, capsys):
    straight = _config(tmp_path, "straight")
    run_training(straight)
    interrupted = _config(tmp_path, "interrupted")
    with pytest.raises(KeyboardInterrupt):
        run_training(interrupted, callbacks=[KillAtStep(13)])  # step 6 of epoch 2: after its step-3 checkpoint
    checkpoints = ResumableCheckpoint(os.path.join(interrupted.model_dir, "checkpoints"))
    assert checkpoints.saved_position() == (1, 3)
    # checkpoint_every and attention_images_every are not part of the run: changing them resumes.
    resumed = _config(tmp_path, "interrupted", checkpoint_every=0, attention_images_every=2)
    summary = run_training(resumed)
    assert "resuming" in capsys.readouterr().out
    assert summary["resumed_at"] == {"epoch": 1, "step": 3} and summary["optimizer_steps"] == 14
    a = keras.models.load_model(os.path.join(straight.model_dir, "final.keras"))
    b = keras.models.load_model(os.path.join(resumed.model_dir, "final.keras"))
    for x, y in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_stream_batches_are_a_function_of_seed_and_position(tmp_path):
    config = _config(tmp_path, "unused", dataset_config=["num_train=36", "num_test=16"])
    stream = TrainingStream(config, replay=True)
    assert stream.batches_per_pass == 4

    def labels(dataset):
        return [b[1].numpy().tolist() for b in dataset]

    everything = labels(stream.batches(0, 11))  # passes 0, 1 and 2
    assert labels(stream.batches(5, 6)) == everything[5:]  # from the middle of pass 1, across passes
    assert everything[0:4] != everything[4:8]  # each pass its own order
    assert sorted(sum(everything[4:8], [])) == sorted(sum(everything[0:4], []))  # of the same examples
    with pytest.raises(ValueError, match="--batch_size=64 is larger than the 32 examples"):
        TrainingStream(_config(tmp_path, "unused", dataset_config=["num_train=36", "num_test=16"], batch_size=64))


def test_a_stream_range_gives_the_same_batches_each_time_it_is_iterated(tmp_path):
    """``fit`` iterates its dataset twice (Keras's ``_maybe_symbolic_build`` peeks a batch, then
    the epoch starts a new iterator), and a pass split across two epochs is iterated afresh in
    each: its order must not depend on how often its pipeline was iterated, or an epoch crossing
    a pass boundary would train that pass's head from one permutation and the next epoch its
    rest from another (examples repeated and missed). Pass pipelines are built with
    ``reshuffle_each_iteration=False``."""
    config = _config(tmp_path, "unused", dataset_config=["num_train=36", "num_test=16"])
    dataset = TrainingStream(config, replay=True).batches(2, 4)  # pass 0's last two, pass 1's first two

    def labels():
        return [b[1].numpy().tolist() for b in dataset]

    assert labels() == labels()
