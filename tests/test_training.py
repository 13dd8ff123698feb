"""scripts/train.py and icasc_tf.train: a finished tool, tested on tiny bundled data."""

import collections
import glob
import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags
from tensorboard.backend.event_processing import event_accumulator

from icasc_tf.train import TrainConfig, run_training
from icasc_tf.train import config as run_config
from icasc_tf.train.run_dir import RunExistsError

pytestmark = pytest.mark.slow  # runs whole trainings or commands: `pytest -m 'not slow'` skips them

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_DATA = ["num_train=96", "num_test=32"]


def tiny_config(tmp_path, **overrides):
    values = dict(
        dataset="cluttered_digits",
        dataset_config=TINY_DATA,
        arch="resnet8",
        epochs=2,
        batch_size=16,
        steps_per_epoch=2,
        eval_steps=1,
        attention_images=2,
        model_dir=str(tmp_path / "run"),
        data_dir=str(tmp_path / "tfds"),
        verbose=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


class StopAfterEpoch(keras.callbacks.Callback):
    """Simulates a run killed after ``epoch`` epochs (its checkpoint is written first)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            self.weights = [w.copy() for w in self.model.get_weights()]
            raise KeyboardInterrupt("killed")


class Counter(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = collections.Counter()

    def on_train_begin(self, logs=None):
        self.calls["train_begin"] += 1

    def on_epoch_end(self, epoch, logs=None):
        self.calls["epoch_end"] += 1

    def on_train_end(self, logs=None):
        self.calls["train_end"] += 1


def test_callers_callbacks_see_one_fit_per_run(tmp_path):
    """One fit per epoch inside; a caller's callbacks still see one run: EarlyStopping works."""
    counter = Counter()
    # min_delta so large that epoch 2 cannot improve on epoch 1: patience 0 stops the run there,
    # unless on_train_begin (which resets EarlyStopping) were called again before epoch 2.
    stopper = keras.callbacks.EarlyStopping(monitor="loss", min_delta=100.0, patience=0)
    summary = run_training(tiny_config(tmp_path, epochs=4), callbacks=[counter, stopper])
    assert dict(counter.calls) == {"train_begin": 1, "epoch_end": 2, "train_end": 1}
    assert stopper.stopped_epoch == 1 and len(summary["history"]["loss"]) == 2


def test_run_writes_everything_and_resumes(tmp_path):
    config = tiny_config(tmp_path, epochs=3)
    killer = StopAfterEpoch(2)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, callbacks=[killer])
    run = tmp_path / "run"
    assert (run / "checkpoints" / "epoch-0002").is_dir() and not (run / "metrics.json").exists()
    # The checkpoint holds the weights the run had when it was killed (and the optimizer state).
    from icasc_tf.data import load_dataset
    from icasc_tf.train.checkpoint import ResumableCheckpoint
    from icasc_tf.train.run import build_model, learning_rate

    _, info = load_dataset("cluttered_digits", "train", 16, data_dir=config.data_dir, num_train=96, num_test=32)
    fresh = build_model(config, info)
    fresh.compile(keras.optimizers.SGD(learning_rate(config, 2), momentum=0.9))
    checkpoints = ResumableCheckpoint(str(run / "checkpoints"))
    checkpoints.restore(fresh, steps_per_epoch=2)
    assert checkpoints.saved_position() == (2, 0)
    for restored, saved in zip(fresh.get_weights(), killer.weights):
        np.testing.assert_array_equal(restored, saved)
    assert int(fresh.optimizer.iterations.numpy()) == 4  # 2 epochs x 2 steps
    summary = run_training(config)
    assert summary["epochs_run"] == 1  # resumed at epoch 2 of 3, lost nothing
    for name in ("config.json", "flags.txt", "best.keras", "final.keras", "metrics.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "loss", "as_inner", "as_last", "ac", "classification_loss"):
        assert np.isfinite(metrics["validation"]["final"][key]), key
    assert 0.0 <= metrics["validation"]["final"]["accuracy"] <= 1.0 and "accuracy" in metrics["test"]["best"]
    assert not (run / ".lock").exists()  # the finished run took its lock file with it
    # The saved flags repeat the run.
    assert f"--model_dir={run}" in (run / "flags.txt").read_text()
    # TensorBoard: scalars and the attention images, per epoch.
    images = _event_tags(run / "logs" / "attention")
    assert sorted(images["attention/00"]) == [1, 2, 3] and sorted(images["attention/01"]) == [1, 2, 3]
    train_scalars = _event_tags(run / "logs" / "train")
    for tag in ("epoch_loss", "epoch_as_inner", "epoch_ac", "epoch_learning_rate", "epoch_accuracy"):
        assert tag in train_scalars, (tag, sorted(train_scalars))
    # A finished run is never overwritten silently...
    with pytest.raises(RunExistsError, match="finished run"):
        run_training(config)
    # ...and --overwrite moves it aside instead of deleting it.
    run_training(tiny_config(tmp_path, epochs=1, overwrite=True))
    assert glob.glob(str(tmp_path / "run.old-*" / "metrics.json"))


def test_other_flags_do_not_resume_a_run(tmp_path):
    config = tiny_config(tmp_path, epochs=2)
    with pytest.raises(KeyboardInterrupt):
        run_training(config, callbacks=[StopAfterEpoch(1)])
    with pytest.raises(RunExistsError, match="attention"):
        run_training(tiny_config(tmp_path, attention="gradcam"))
    assert (tmp_path / "run" / "checkpoints" / "epoch-0001").is_dir()
    # A bad option fails before anything is written into a new model_dir.
    with pytest.raises(ValueError, match="Unknown option"):
        run_training(tiny_config(tmp_path, arch_options=["widht=2"], model_dir=str(tmp_path / "new")))
    assert not (tmp_path / "new").exists()


def test_mirrored_strategy_and_batch_divisibility(tmp_path):
    summary = run_training(tiny_config(tmp_path, strategy="mirrored", epochs=1, attention_images=0))
    assert summary["num_replicas"] == 2 and np.isfinite(summary["validation"]["final"]["loss"])
    with pytest.raises(ValueError, match="not divisible by the 2 replicas"):
        run_training(tiny_config(tmp_path, strategy="mirrored", batch_size=15, model_dir=str(tmp_path / "b")))


def _event_tags(folder):
    """{tag: [steps]} of every scalar/image summary in an event folder."""
    found = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0})
        acc.Reload()
        for tag in acc.Tags()["tensors"]:
            found.setdefault(tag, []).extend(e.step for e in acc.Tensors(tag))
    return found


def _assert_epochs(tags, names, epochs, where):
    for name in names:
        assert sorted(tags.get(name, [])) == epochs, (where, name, sorted(tags))


def test_tensorboard_with_default_summary_every_has_every_epoch(tmp_path):
    """The default --summary_every (50) and 7 steps per epoch: epochs never end on a multiple of it."""
    run = tmp_path / "run"
    result = _train_script(
        "--arch=resnet8", "--dataset_config=num_train=56,num_test=32", "--batch_size=8", "--epochs=2",
        "--eval_steps=1", "--attention_images=2", "--verbose=0", f"--model_dir={run}", f"--data_dir={tmp_path}/tfds",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "config.json").read_text())["summary_every"] == 50
    terms = ["epoch_loss", "epoch_as_inner", "epoch_as_last", "epoch_ac"]
    train = _event_tags(run / "logs" / "train")
    _assert_epochs(train, terms + ["epoch_learning_rate", "epoch_accuracy"], [1, 2], "train")
    _assert_epochs(_event_tags(run / "logs" / "validation"), terms + ["epoch_accuracy"], [1, 2], "validation")
    _assert_epochs(_event_tags(run / "logs" / "attention"), ["attention/00", "attention/01"], [1, 2], "attention")
    assert not [t for t in train if t.startswith("batch_")]  # 14 steps < 50


def test_batch_scalars_and_attention_images_every_n_steps(tmp_path):
    # A user's own Keras TensorBoard(update_freq=N) sets a record_if for all of fit: ours still write.
    keras_tb = keras.callbacks.TensorBoard(str(tmp_path / "keras_logs"), update_freq=50)
    config = tiny_config(
        tmp_path, dataset_config=["num_train=56", "num_test=32"], batch_size=8, steps_per_epoch=0,
        summary_every=4, attention_images_every=3,
    )
    run_training(config, callbacks=[keras_tb])
    run = tmp_path / "run"
    train = _event_tags(run / "logs" / "train")
    _assert_epochs(train, ["batch_loss", "batch_as_inner", "batch_learning_rate"], [4, 8, 12], "batch")
    _assert_epochs(train, ["epoch_loss", "epoch_ac"], [1, 2], "train")
    _assert_epochs(_event_tags(run / "logs" / "validation"), ["epoch_loss", "epoch_ac"], [1, 2], "validation")
    images = _event_tags(run / "logs" / "attention")
    _assert_epochs(images, ["attention_steps/00", "attention_steps/01"], [3, 6, 9, 12], "steps")
    _assert_epochs(images, ["attention/00", "attention/01"], [1, 2], "epochs")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "flags", "*.flags"))))
def test_flagfiles_parse_and_validate(path, tmp_path, monkeypatch):
    values = flags.FlagValues()
    run_config.define_flags(values)
    values(["train.py", f"--flagfile={path}"])
    config = run_config.from_flags(values)
    if config.weights and config.weights != "imagenet":  # a converted file the user brings
        monkeypatch.chdir(tmp_path)
        (tmp_path / config.weights).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / config.weights).write_bytes(b"")
    config.validate()
    assert config.epochs > 0 and config.model_dir.startswith("runs/")
    with open(path, encoding="utf-8") as f:
        header = f.readline()
    assert header.startswith("# ")


def _train_script(*args, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *args],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT,
    )


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset=mnist"], "--dataset=mnist: unknown; choose one of"),
        (["--batch_size=0"], "--batch_size must be positive"),
        (["--arch=resnet7"], "--arch=resnet7: unknown"),
        (["--dataset=caltech256", "--manual_dir=/nonexistent"], "256_ObjectCategories"),
        (["--checkpoint_every=-1"], "--checkpoint_every must be >= 0; got -1."),
        (["--attention_images_every=-3"], "--attention_images_every must be >= 0; got -3."),
        (["--arch=resnet18", "--weights=imagenet"],
         "--weights=imagenet: weights='imagenet' is not available for backbone 'resnet18'"),
        (["--weights=/nonexistent/x.h5"], "--weights=/nonexistent/x.h5: No weights file at"),
    ],
)
def test_bad_input_exits_with_one_clear_line(tmp_path, args, message):
    result = _train_script(
        *args, f"--model_dir={tmp_path}/run", f"--data_dir={tmp_path}/tfds",
        "--dataset_config=" if "caltech256" in " ".join(args) else "--dataset_config=num_train=32,num_test=16",
        "--verbose=0",
    )
    assert result.returncode != 0
    assert message in result.stderr, result.stderr[-2000:]
    if "caltech256" not in " ".join(args):  # the missing-data message has several lines
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("train.py: error: ") and message in last, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "flag,message",
    [
        ("--sigma=2", "--sigma must be in (0, 1): the mask threshold as a fraction of the map's maximum (at 1 or "
         "above the mask is zero everywhere and the attention losses are dead); got 2.0."),
        ("--omega=0", "--omega must be > 0: the mask's sharpness; got 0.0."),
        ("--theta=1.5", "--theta must be in [0, 1]: the share of the inner map the consistency term asks to lie "
         "inside the mask; got 1.5."),
        ("--loss_weights=1,nan,1", "--loss_weights must be three finite non-negative numbers, the weights of "
         "(L_AS^in, L_AS^la, L_AC); got ['1', 'nan', '1']."),
        ("--model_dir={tmp_path}/a_file", "--model_dir={tmp_path}/a_file is a file, not a folder: name a folder for "
         "the run (a new one is created)."),
    ],
)
def test_out_of_range_method_options_and_a_file_as_model_dir_are_one_line_exit_2(tmp_path, flag, message):
    (tmp_path / "a_file").write_text("not a run folder")
    model_dir = [] if flag.startswith("--model_dir") else [f"--model_dir={tmp_path}/run"]
    result = _train_script(*model_dir, flag.format(tmp_path=tmp_path), f"--data_dir={tmp_path}/tfds")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"train.py: error: {message.format(tmp_path=tmp_path)}"]
    assert result.stdout == "" and not (tmp_path / "run").exists() and not (tmp_path / "tfds").exists()


def test_unknown_flag_in_flagfile_fails(tmp_path):
    flagfile = tmp_path / "bad.flags"
    flagfile.write_text("--epochs=1\n--no_such_flag=3\n")
    result = _train_script(f"--flagfile={flagfile}")
    assert result.returncode != 0 and "no_such_flag" in result.stderr


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_two_local_processes_end_with_identical_weights(tmp_path):
    ports = [_free_port(), _free_port()]
    workers = [f"127.0.0.1:{p}" for p in ports]
    args = [
        # Two epochs (one fit each), step checkpoints and the chief's attention images (which
        # must not call into the workers' collectives).
        "--strategy=multi_worker", "--epochs=2", "--steps_per_epoch=2", "--checkpoint_every=1", "--eval_steps=1",
        "--batch_size=8", "--attention_images=2", "--verbose=0", "--deterministic", "--arch=resnet8",
        f"--model_dir={tmp_path}/run", f"--data_dir={tmp_path}/tfds",
        "--dataset_config=num_train=64,num_test=16",
    ]
    # Generate the data once, so the two workers do not race to write it.
    from icasc_tf.data import load_dataset

    load_dataset("cluttered_digits", "train", 8, data_dir=str(tmp_path / "tfds"), num_train=64, num_test=16)
    procs = []
    for index in range(2):
        cluster = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(cluster))
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "scripts", "train.py"), *args],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ))
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    chief = keras.models.load_model(tmp_path / "run" / "final.keras")
    other = keras.models.load_model(tmp_path / "run" / ".workers" / "worker-1" / "final.keras")
    # Trainable weights are all-reduced; BatchNormalization's moving statistics are each
    # worker's own (no synchronised BN), as in tf.distribute.
    assert len(chief.trainable_weights) > 10
    for a, b in zip(chief.trainable_weights, other.trainable_weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert (tmp_path / "run" / "metrics.json").exists() and (tmp_path / "run" / "logs" / "attention").is_dir()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["optimizer_steps"] == 4


def test_logged_learning_rate_is_the_mean_rate_each_epoch_used(tmp_path):
    summary = run_training(tiny_config(tmp_path, epochs=2, steps_per_epoch=2, learning_rate=0.1))
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=4)  # the run's: 2 epochs x 2 steps
    used = [float(schedule(step)) for step in range(4)]
    np.testing.assert_allclose(summary["history"]["learning_rate"], [np.mean(used[:2]), np.mean(used[2:])], rtol=1e-6)
    assert summary["history"]["learning_rate"][-1] > 0.01  # not the 0 left after the last step


def test_help_lists_the_runs_own_flags_by_group_and_exits_0():
    result = _train_script("--help")
    assert result.returncode == 0, result.stderr[-2000:]
    text = result.stdout
    assert text.startswith("usage: python scripts/train.py [--flag=value ...]")
    groups = [text.index(f"\n{group}:\n") for group in ("data", "model", "ICASC", "training", "output")]
    assert groups == sorted(groups)  # in this order
    for line in ("  --dataset=cluttered_digits", "  --validation_share=0.1", "  --attention=ach  [ach|gradcam|apx]",
                 "  --second_order=true  (or --nosecond_order)", "  --model_dir=runs/default"):
        assert line in text, line
    assert "METHOD" not in text and "--logtostderr" not in text  # no document the user lacks, no absl flags


def test_a_run_raises_no_python_warning_but_kerass_known_one(tmp_path):
    """The only warning a run raises is Keras 3.15's NumPy ``copy=`` deprecation (filtered in
    pytest.ini, with the reason)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training(tiny_config(tmp_path))
    others = [f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})" for w in caught
              if "doesn't accept a copy keyword" not in str(w.message)]
    assert others == []
