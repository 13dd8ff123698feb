"""The study is a benchmark, not a test: CI only checks that its smoke version produces its table."""

import json
import os
import subprocess
import sys

import pytest

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


def test_study_rejects_unknown_arms_naming_the_choices(tmp_path):
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "study.py"), "--arms=ach+x5@grass",
         f"--output_dir={tmp_path / 'study'}"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 2
    assert "unknown modifier +x5" in result.stderr and "unknown background @grass" in result.stderr
    assert "@textured" in result.stderr and not (tmp_path / "study").exists()
