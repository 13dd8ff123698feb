"""A run folder is written only by the run that trains in it: a refused or failed run leaves
another run's folder byte for byte as it was, the lock file goes with the run that held it, and
the inputs (options, data, folders) are checked before the run folder."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from icasc_tf.train import RunDir, TrainConfig, run_training
from icasc_tf.train.run_dir import RunExistsError, RunLock, RunLockedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OLD_LOCK = "host old-machine, pid 4242, since 2025-01-01 10:00:00"  # what runs before the change left behind


def _config(tmp_path, **overrides):
    values = dict(
        dataset_config=["num_train=48", "num_test=16"], arch="resnet8", epochs=1, batch_size=8,
        steps_per_epoch=1, eval_steps=1, attention_images=0, verbose=0, model_dir=str(tmp_path / "run"),
        data_dir=str(tmp_path / "tfds"),
    )
    values.update(overrides)
    return TrainConfig(**values)


def _snapshot(folder):
    """Every entry under ``folder`` (the folder itself included): its mtime, and each file's digest."""
    entries = {".": os.stat(folder).st_mtime_ns}
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(parent, name)
            key = os.path.relpath(path, folder)
            digest = None
            if name in files:
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            entries[key] = (os.stat(path).st_mtime_ns, digest)
    return entries


def _recorded_run(config, finished):
    """A run folder as an earlier run left it: its options, checkpoints, models, a stale lock file."""
    run = RunDir(config.model_dir)
    run.write_options(config)
    os.makedirs(os.path.join(run.checkpoints, "epoch-0001"))
    with open(os.path.join(run.checkpoints, "epoch-0001", "epoch.json"), "w") as f:
        json.dump({"epochs_done": 1, "step": 0}, f)
    with open(run.model_path("best"), "wb") as f:
        f.write(b"a model")
    with open(run.lock_path, "w") as f:
        f.write(OLD_LOCK)
    if finished:
        with open(run.metrics_path, "w") as f:
            json.dump({"test": {}}, f)
    return run


def test_the_lock_names_its_holder_and_goes_with_it(tmp_path):
    run = RunDir(str(tmp_path / "run"))
    first, second = RunLock(run), RunLock(run)
    first.acquire()
    assert first.created and os.path.isfile(run.lock_path)
    with pytest.raises(RunLockedError, match=f"in use by another run \\(host .*, pid {os.getpid()}, since "):
        second.acquire()
    first.release()
    assert not os.path.exists(run.lock_path)  # the holder removes its lock file
    with open(run.lock_path, "w") as f:
        f.write(OLD_LOCK)  # a file a killed run left: not locked by anyone
    second.acquire()
    assert f"pid {os.getpid()}," in open(run.lock_path).read()
    second.release()
    assert os.listdir(run.path) == []


@pytest.mark.slow
@pytest.mark.parametrize("finished", [True, False], ids=["finished", "other_options"])
def test_a_refused_run_leaves_the_other_runs_folder_byte_identical(tmp_path, finished):
    run = _recorded_run(_config(tmp_path, attention="gradcam"), finished)
    before = _snapshot(run.path)
    expected = "holds a finished run" if finished else "holds a run with other options \\(attention\\)"
    with pytest.raises(RunExistsError, match=expected):
        run_training(_config(tmp_path))
    assert _snapshot(run.path) == before


@pytest.mark.slow
def test_a_run_refused_by_the_lock_touches_nothing(tmp_path):
    config = _config(tmp_path)
    run = _recorded_run(config, finished=False)
    holder = RunLock(run)
    holder.acquire()  # a run in progress, here in this process
    before = _snapshot(run.path)
    with pytest.raises(RunLockedError, match="is in use by another run"):
        run_training(config)
    assert _snapshot(run.path) == before
    holder.release()


@pytest.mark.slow
def test_a_wrong_manual_dir_is_reported_before_a_finished_run_in_the_default_model_dir(tmp_path):
    """The README's own-images command with a mistyped folder, in a checkout that already holds the
    default run: the folder is named, not the run, and the run is untouched."""
    default = RunDir(str(tmp_path / "runs" / "default"))
    _recorded_run(_config(tmp_path, model_dir=default.path), finished=True)
    before = _snapshot(default.path)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--dataset=image_folder",
         f"--manual_dir={tmp_path / 'my_photoz'}", f"--data_dir={tmp_path / 'tfds'}"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"train.py: error: image_folder: {tmp_path / 'my_photoz'} does not exist."), (
        result.stderr[-2000:])
    assert "finished run" not in result.stderr
    assert _snapshot(default.path) == before


@pytest.mark.slow
def test_overwrite_moves_a_finished_run_aside_without_a_lock_file_of_ours(tmp_path):
    config = _config(tmp_path)
    run = _recorded_run(config, finished=True)
    os.remove(run.lock_path)  # a run finished after the change leaves none
    run_training(_config(tmp_path, overwrite=True))
    (aside,) = [p for p in os.listdir(tmp_path) if p.startswith("run.old-")]
    assert sorted(os.listdir(tmp_path / aside)) == ["best.keras", "checkpoints", "config.json", "flags.txt",
                                                   "metrics.json"]
    assert run.finished and not os.path.exists(run.lock_path)
