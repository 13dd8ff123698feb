"""What a command prints: no TensorFlow start-up notes, one plain line per epoch when redirected,
every partial number labelled with what it was computed on."""

import json
import os
import re
import subprocess
import sys

import pytest

from icasc_tf.cli import command

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow 2.21's start-up notes as absl prints them (a command's stderr must have none).
START_UP = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796444602.500939   21477 port.cc:153] oneDNN custom operations are on. You may see ...\n"
    "I0000 00:00:1796444602.533356   21477 cpu_feature_guard.cc:227] This TensorFlow binary is optimized ...\n"
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild TensorFlow ...\n"
)


def test_filtered_stderr_drops_tensorflows_start_up_notes_and_replays_every_other_line(capfd):
    drop = command.tensorflow_start_up_filter(2)
    with command.filtered_stderr(drop):
        os.write(2, b"a line of our own\n" + START_UP.encode() + b"W0000 00:00:1.5   7 port.cc:9] a warning\n")
        os.write(2, b"E0000 00:00:1.5   7 port.cc:9] an error\nlast line without newline")
    out, err = capfd.readouterr()
    assert out == ""
    assert err == (
        "a line of our own\nE0000 00:00:1.5   7 port.cc:9] an error\n"
        "last line without newline"
    )
    os.write(2, b"after\n")  # stderr is the process's own again
    assert capfd.readouterr().err == "after\n"


def test_the_filter_follows_tf_cpp_min_log_level():
    lines = START_UP.splitlines(keepends=True)
    assert [command.tensorflow_start_up_filter(0)(line) for line in lines] == [False] * 4  # the user asked for all
    assert [command.tensorflow_start_up_filter(1)(line) for line in lines] == [True] * 4
    warning = "W0000 00:00:1.5   7 port.cc:9] a warning\n"
    assert not command.tensorflow_start_up_filter(1)(warning) and command.tensorflow_start_up_filter(2)(warning)
    assert not command.tensorflow_start_up_filter(3)("Iterations: 3 of 4\n")  # not a log line


def test_only_our_commands_are_commands():
    assert command.is_command(["/usr/local/bin/icasc-train", "--help"])
    assert command.is_command([os.path.join(ROOT, "scripts", "train.py")])
    assert command.is_command(["scripts/evaluate.py"]) == (os.getcwd() == ROOT)  # relative to where it runs
    assert not command.is_command(["/usr/bin/pytest"])
    assert not command.is_command(["-c"]) and not command.is_command([])
    assert not command.is_command([os.path.join(ROOT, "my_experiment.py")])


@pytest.mark.slow
def test_a_library_import_leaves_the_process_alone(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    probe = "import os, icasc_tf; print(os.environ.get('TF_CPP_MIN_LOG_LEVEL'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path,
                            env={**env, "PYTHONPATH": ROOT}, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "None"  # the user's environment as it was


@pytest.mark.slow
def test_a_redirected_run_prints_one_plain_line_per_epoch_and_labels_a_partial_test(tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # the command's own default
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "train.py"), "--arch=resnet8", "--epochs=2",
         "--steps_per_epoch=1", "--batch_size=16", "--eval_steps=2", "--attention_images=0",
         "--dataset_config=num_train=96,num_test=40", f"--model_dir={run}", f"--data_dir={tmp_path / 'tfds'}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=env,
    )  # stdout is a pipe, not a terminal; --verbose is its default
    assert result.returncode == 0, result.stderr[-3000:]
    for output in (result.stdout, result.stderr):  # TFDS's bars of the first preparation included
        assert "\x1b" not in output and "\r" not in output and "\b" not in output
    epochs = [line for line in result.stdout.splitlines() if re.match(r"Epoch \d+/2 ", line)]
    assert len(epochs) == 2 and epochs[0].startswith("Epoch 1/2 - 1/1 steps - ") and " - val_loss: " in epochs[0]
    assert "absl::InitializeLog" not in result.stderr and "oneDNN" not in result.stderr, result.stderr[-2000:]
    assert f"run:    {run}: 2 epochs x 1 step of 16 images;" in result.stdout  # not "1 steps"
    # 40 test images in batches of 16: two batches are 32 of them; validation (10 images, one
    # batch) is whole, so unlabelled.
    assert "eval:   --eval_steps=2: each evaluation on 10 of 10 validation images, 32 of 40 test images" in (
        result.stdout)
    done = next(line for line in result.stdout.splitlines() if line.startswith("done: "))
    assert done.startswith(f"done: {run}: test split 'test', on 32 of 40 test images (--eval_steps): final.keras ")
    assert re.search(r"best\.keras \(epoch \d, validation accuracy [\d.]+%\) top-1", done), done
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["test"]["examples"], metrics["test"]["split_examples"]) == (32, 40)
    assert (metrics["validation"]["examples"], metrics["validation"]["split_examples"]) == (10, 10)
    assert metrics["dataset"]["test_examples"] == 40
    assert not (run / ".lock").exists()  # a finished run leaves no lock file
