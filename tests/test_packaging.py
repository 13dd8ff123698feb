"""Installed like a library: a non-editable install carries the recipes and the console commands,
and works from any folder (the wheel built from this checkout, installed into a fresh folder)."""

import os
import pathlib
import runpy
import subprocess
import sys

import pytest

from icasc_tf.tested_versions import TESTED_KERAS, keras_minor_versions, keras_requirement

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_setup_takes_the_tested_keras_versions_without_importing_keras(monkeypatch):
    """setup.py runs before the dependencies are installed: it reads the one list of tested Keras
    versions without importing Keras, TensorFlow or icasc_tf."""
    import setuptools

    arguments = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: arguments.update(kwargs))
    for module in ("keras", "tensorflow", "icasc_tf"):
        monkeypatch.setitem(sys.modules, module, None)  # importing it now fails, as on a clean machine
    monkeypatch.chdir(ROOT)
    runpy.run_path(str(ROOT / "setup.py"))
    assert [r for r in arguments["install_requires"] if r.startswith("keras")] == [keras_requirement()]
    assert keras_requirement() == "keras>=3.12,<3.16"
    assert keras_minor_versions() == ("3.12", "3.13", "3.14", "3.15") and len(TESTED_KERAS) == 4


@pytest.mark.slow  # builds and installs the wheel: `pytest -m 'not slow'` skips it
def test_the_wheel_ships_the_recipes_and_the_commands(tmp_path):
    wheels = tmp_path / "wheels"
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(wheels), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    (wheel,) = wheels.glob("icasc_tf-*.whl")
    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(site), str(wheel)],
        capture_output=True, text=True, timeout=600,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}  # ahead of the editable checkout on sys.path
    probe = (
        "import icasc_tf, icasc_tf.train.recipes as r;"
        "print(icasc_tf.__file__); print(r.flags_dir());"
        "print(r.config_from_argv(['train.py', '--dataset=caltech256']).recipe_line)"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=elsewhere, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    package_file, flags_dir, recipe = result.stdout.strip().splitlines()[-3:]
    assert package_file.startswith(str(site)) and flags_dir == str(site / "icasc_tf" / "flags")
    assert recipe.startswith("recipe: ") and "caltech256_resnet18_n30.flags" in recipe
    command = site / "bin" / "icasc-train"
    helped = subprocess.run([str(command), "--help"], capture_output=True, text=True, cwd=elsewhere, env=env,
                            timeout=300)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: "), helped.stderr[-2000:]
    for name in ("icasc-evaluate", "icasc-visualize"):
        assert (site / "bin" / name).is_file()
