"""The study is a benchmark, not a test: CI only checks that its smoke version produces its table."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from icasc_tf.data import fashion_mnist

pytestmark = pytest.mark.slow  # runs whole trainings or commands: `pytest -m 'not slow'` skips them

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_study_smoke_writes_table_json_and_chart(tmp_path):
    out = tmp_path / "study"
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "study.py"), "--smoke",
         f"--output_dir={out}", f"--data_dir={tmp_path / 'tfds'}", "--verbose=0"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    table = (out / "study.md").read_text()
    assert table.startswith("Background: empty") and "| arm | test top-1 | Δ top-1" in table
    assert "| ach |" in table and "zero map (last)" in table
    row = json.loads((out / "study.json").read_text())["table"]["ach"]
    assert 0.0 <= row["top1"]["mean"] <= 1.0 and 0.0 <= row["as_inner"]["mean"] <= 1.0
    assert (out / "study.png").stat().st_size > 1000
    # Resumable: a second run finds the arm finished and trains nothing.
    again = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "study.py"), "--smoke",
         f"--output_dir={out}", f"--data_dir={tmp_path / 'tfds'}", "--verbose=0"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert again.returncode == 0 and "Epoch" not in again.stdout
    assert json.loads((out / "study.json").read_text())["table"]["ach"]["top1"] == row["top1"]


# Part three's two regimes, each from its flagfile with its own dataset, backbone and weights;
# only the data is shrunk (the splits and the image size), as the smoke version asks, and
# Fashion-MNIST's files are small ones written here (the real files are read by
# tests/test_data_fashion_mnist.py; preparing all 70,000 images costs 27 s per regime).
REGIMES = {
    "scratch": ("study_scratch_fashion.flags", ["--train_split=train[:64]", "--validation_split=train[64:]"]),
    "finetune": (
        "study_finetune_cluttered_fashion.flags",
        ["--train_split=train[:48]", "--validation_split=train[48:]", "--image_size=64"],
    ),
}


def _small_fashion_files(folder, train=96, test=32):
    """Fashion-MNIST's four IDX files with ``train``/``test`` random items, labels 0-9 in turn."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for split, (images_name, labels_name) in fashion_mnist.FILES.items():
        count = train if split == "train" else test
        fashion_mnist.write_idx(str(folder / images_name), rng.integers(0, 256, (count, 28, 28), dtype=np.uint8))
        fashion_mnist.write_idx(str(folder / labels_name), np.arange(count, dtype=np.uint8) % 10)
    return folder


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_study_smoke_runs_each_regime_of_part_three_from_its_flagfile(tmp_path, regime):
    flagfile, shrink = REGIMES[regime]
    out = tmp_path / regime
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "study.py"), "--smoke",
         f"--flagfile={os.path.join(ROOT, 'flags', flagfile)}", *shrink,
         f"--manual_dir={_small_fashion_files(tmp_path / 'fashion')}",
         f"--output_dir={out}", f"--data_dir={tmp_path / 'tfds'}", "--verbose=0"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((out / "empty" / "ach" / "seed-0" / "config.json").read_text())
    want = {
        "scratch": {"dataset": "fashion_mnist", "arch": "resnet20", "weights": ""},
        "finetune": {"dataset": "cluttered_fashion", "arch": "efficientnet_lite0", "weights": "imagenet"},
    }[regime]
    assert {key: config.get(key) for key in want} == want
    row = json.loads((out / "study.json").read_text())["table"]["ach"]
    assert 0.0 <= row["top1"]["mean"] <= 1.0 and 0.0 <= row["zero_target_last"]["mean"] <= 1.0
    # Boxes (pointing game) exist on the cluttered composites only.
    assert ("pointing_game_last" in row) == (regime == "finetune"), sorted(row)


def test_study_rejects_unknown_arms_naming_the_choices(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "study.py"), "--arms=ach+x5@grass",
         f"--output_dir={tmp_path / 'study'}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "unknown modifier +x5" in result.stderr and "unknown background @grass" in result.stderr
    assert "@textured" in result.stderr and not (tmp_path / "study").exists()
