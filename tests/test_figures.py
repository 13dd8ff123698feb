"""Attention figures: overlay colours, panel layout, the top-5 figure and its script."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from icasc_tf import ICASC
from icasc_tf.figures import FRAME_COLOR, overlay, render_panel, top5_figure
from tests.nets import tiny_convnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TILE = 112
CELL = TILE + 10  # tile plus its margins
CAPTION = 40  # caption band above the tiles
KEY = 36  # the key under a top-5 figure (colour scale, frame, box)
GREEN = tuple(round(255 * c) for c in FRAME_COLOR)


def _peaked_map():
    attention = np.zeros((4, 4), np.float32)
    attention[1, 2] = 3.0
    return attention


def test_overlay_shape_range_and_hottest_position_most_coloured():
    image = np.full((32, 32, 3), 0.5, np.float32)
    out = overlay(image, _peaked_map(), alpha=0.5, cmap="jet")
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # jet runs from blue (cold) to red (hot): the reddest pixel is where the map peaks,
    # i.e. inside the 8x8 cell that the map's (1, 2) entry covers after upsampling.
    redness = out[..., 0] - out[..., 2]
    row, col = np.unravel_index(np.argmax(redness), redness.shape)
    assert 8 <= row < 16 and 16 <= col < 24
    assert redness[row, col] > 0.2 and redness[31, 0] < -0.2  # far corner: cold, blue
    np.testing.assert_allclose(overlay(image, _peaked_map(), alpha=0.0), image)


def test_overlay_rescales_mean_subtracted_images_and_rejects_bad_input():
    image = np.random.default_rng(0).normal(0.0, 0.3, (16, 16, 3)).astype(np.float32)  # like CIFAR-100
    out = overlay(image, np.ones((2, 2)), alpha=0.3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    with pytest.raises(ValueError, match="alpha must be in"):
        overlay(image, _peaked_map(), alpha=1.5)
    with pytest.raises(ValueError, match="Unknown colour map 'nope'.*viridis"):
        overlay(image, _peaked_map(), cmap="nope")
    with pytest.raises(ValueError, match="must be 2-D"):
        overlay(image, np.ones((1, 4, 4)))


def test_render_panel_size_deterministic_and_framed():
    rng = np.random.default_rng(1)
    tiles = [(f"class {i}\n0.{i}", rng.random((4, 4)), "overlay") for i in range(5)]
    panel = render_panel(rng.random((32, 32, 3)), tiles, title="model\ntrue: 3", framed=[1])
    assert panel.dtype == np.uint8 and panel.shape == (CAPTION + CELL, 6 * CELL, 3)
    assert panel.std() > 10
    # The same size whatever the image size, the maps and the captions' lengths.
    long_tiles = [("a caption far too long to fit on a tile " * 3, None, "overlay")] * 5
    other = render_panel(rng.random((64, 48, 3)), long_tiles, title=None)
    assert other.shape == panel.shape
    assert render_panel(rng.random((32, 32, 3)), tiles[:1]).shape == (CAPTION + CELL, 2 * CELL, 3)
    # The framed tile (tiles[1] = column 2) has a green border; column 1 has none.
    frame_row = CAPTION + 2  # inside the margin above the tile
    assert tuple(panel[frame_row, 2 * CELL + CELL // 2]) == GREEN
    assert tuple(panel[frame_row, 1 * CELL + CELL // 2]) == (255, 255, 255)
    # Captions are drawn: the caption band is not blank above each tile.
    for column in range(6):
        assert panel[:CAPTION, column * CELL : (column + 1) * CELL].min() < 128


def test_render_panel_mask_is_grey_and_box_is_outlined():
    image = np.zeros((32, 32, 3), np.float32)
    mask = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
    panel = render_panel(image, [("mask", mask, "mask")], box=[0.25, 0.25, 0.75, 0.75])
    inside_box = slice(5 + 32, 5 + 80)  # the box's interior, within the tile
    tile = panel[CAPTION:][inside_box, CELL:][:, inside_box]
    assert np.all(tile[..., 0] == tile[..., 1]) and np.all(tile[..., 1] == tile[..., 2])
    assert tile.std() > 10
    # Magenta outline on the (black) image tile at the box's top edge.
    top = CAPTION + 5 + round(0.25 * (TILE - 1))
    assert tuple(panel[top, 5 + TILE // 2]) == (255, 0, 255)
    with pytest.raises(ValueError, match="choose one of overlay, mask"):
        render_panel(image, [("x", mask, "heat")])
    with pytest.raises(ValueError, match="normalised"):
        render_panel(image, [("x", mask, "mask")], box=[0, 0, 20, 20])


def _tiny_icasc(seed, weights=(1.0, 1.0, 1.0)):
    return ICASC(tiny_convnet(num_classes=10, size=32, seed=seed), "inner", "last", loss_weights=weights)


def test_top5_figure_rows_per_model_and_image_with_ground_truth_framed(tmp_path):
    images = np.random.default_rng(2).random((2, 32, 32, 3)).astype(np.float32)
    icasc, baseline = _tiny_icasc(0), _tiny_icasc(1, weights=(0.0, 0.0, 0.0))
    top1 = np.argmax(icasc.predict(images, verbose=0), axis=-1)
    path = tmp_path / "figs" / "top5.png"
    figure = top5_figure(
        {"baseline": baseline, "ICASC": icasc}, images, top1, [f"digit {i}" for i in range(10)],
        path=str(path), boxes=np.array([[0.1, 0.1, 0.6, 0.6]] * 2, np.float32),
    )
    panel_height = CAPTION + CELL
    assert figure.shape == (4 * panel_height + 10 + KEY, 6 * CELL, 3)
    written = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(written, figure)
    assert written.std() > 10
    key = figure[-KEY:]
    assert (np.all(key == GREEN, axis=-1).sum() > 50) and (np.all(key == (255, 0, 255), axis=-1).sum() > 50)
    # ICASC's row of image 0 (the second row) frames its top-1 class, the first map tile.
    frame_row = panel_height + CAPTION + 2
    assert tuple(figure[frame_row, CELL + CELL // 2]) == GREEN
    inner = top5_figure(icasc, images[:1], [top1[0]], None, attention="gradcampp", layer="inner", top_k=3)
    assert inner.shape == (panel_height + KEY, 4 * CELL, 3)
    with pytest.raises(ValueError, match="layer='middle' is not a layer of"):
        top5_figure(icasc, images, top1, layer="middle")
    with pytest.raises(ValueError, match="labels has 1 entries for 2 images"):
        top5_figure(icasc, images, top1[:1])


def _run_script(*flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "visualize.py"), *flags],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )


def _error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("visualize.py: error:")]


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    """Two saved tiny runs (ICASC and baseline) on a 12-image cluttered-digits test split."""
    root = tmp_path_factory.mktemp("runs")
    config = {
        "dataset": "cluttered_digits", "dataset_config": ["num_train=20", "num_test=12"],
        "data_dir": str(root / "tfds"), "manual_dir": "", "test_split": "test", "image_size": 0, "seed": 0,
    }
    for name, seed, weights in (("icasc", 0, (1.0, 1.0, 1.0)), ("baseline", 1, (0.0, 0.0, 0.0))):
        os.makedirs(root / name)
        model = _tiny_icasc(seed, weights)
        model.compile("sgd")
        model.save(root / name / "best.keras")
        (root / name / "config.json").write_text(json.dumps(config))
    return root


@pytest.mark.slow
def test_script_draws_baseline_over_icasc_from_the_runs_dataset(run_dirs):
    result = _run_script(
        f"--model_dir={run_dirs / 'icasc'}", f"--compare_model_dir={run_dirs / 'baseline'}", "--images=0,3",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    path = run_dirs / "icasc" / "top5_test_ach_last.png"
    assert f"wrote {path}" in result.stdout
    figure = np.asarray(Image.open(path).convert("RGB"))
    assert figure.shape == (4 * (CAPTION + CELL) + 10 + KEY, 6 * CELL, 3)  # 2 images x 2 models
    assert figure.std() > 10


@pytest.mark.slow
def test_script_bad_input_exits_with_one_clear_line(run_dirs, tmp_path):
    result = _run_script(f"--model_dir={tmp_path / 'missing'}")
    assert result.returncode == 2
    assert _error_lines(result) == [f"visualize.py: error: --model_dir={tmp_path / 'missing'}: no such folder."]
    result = _run_script(f"--model_dir={run_dirs / 'icasc'}", "--images=12", f"--output={tmp_path / 'x.png'}")
    assert result.returncode == 2
    assert _error_lines(result) == [
        "visualize.py: error: --images index 12 is out of range: split 'test' of cluttered_digits "
        "has 12 examples (indices 0 to 11)."
    ]
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("script", ["evaluate.py", "visualize.py"])
def test_help_lists_the_commands_own_flags(script):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", script), "--help"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and result.stdout.startswith(f"usage: python scripts/{script} ")
    assert "--model_dir:" in result.stdout and "--logtostderr" not in result.stdout


@pytest.mark.slow
def test_script_draws_a_saved_keras_classifier_on_photographs(tmp_path):
    """Your own model, no ICASC, no training: the guide's model with a nested base, saved as .keras."""
    base = tiny_convnet(10, size=32)
    base = keras.Model(base.input, base.get_layer("last").output, name="base")
    inputs = keras.Input((32, 32, 3))
    x = base(keras.layers.Rescaling(1 / 255.0)(inputs), training=False)
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs, name="guide").save(tmp_path / "guide.keras")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(photos / name)
    output = tmp_path / "figure.png"
    result = _run_script(f"--model={tmp_path / 'guide.keras'}", f"--photos={photos}", "--class_names=cat,dog,fox",
                         f"--output={output}", "--top_k=2", "--pixel_scale=255")
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"wrote {output}" in result.stdout
    refused = _run_script(f"--model={tmp_path / 'guide.keras'}", f"--photos={photos}", f"--output={output}.2")
    assert refused.returncode == 2 and _error_lines(refused)[0].startswith(
        "visualize.py: error: Say which pixels guide.keras takes, --pixel_scale: the pixel range")
    figure = np.asarray(Image.open(output).convert("RGB"))
    # Per photo: A_ch and Grad-CAM at the base's inner and last layers (4 rows), a rule between photos.
    assert figure.shape == (2 * 4 * (CAPTION + CELL) + 12, 3 * CELL, 3)


@pytest.mark.slow
def test_script_draws_a_plain_classifier_on_the_dataset_in_the_pixels_it_takes(run_dirs, tmp_path):
    tiny_convnet(num_classes=10, size=32).save(run_dirs / "plain.keras")
    data = [f"--data_dir={run_dirs / 'tfds'}", "--dataset_config=num_train=20,num_test=12", "--images=0"]
    refused = _run_script(f"--model={run_dirs / 'plain.keras'}", *data, f"--output={tmp_path / 'a.png'}")
    assert refused.returncode == 2 and _error_lines(refused)[0].startswith(
        "visualize.py: error: Say which pixels plain takes, --pixel_scale")
    drawn = _run_script(f"--model={run_dirs / 'plain.keras'}", *data, "--pixel_scale=1",
                        f"--output={tmp_path / 'b.png'}")
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert np.asarray(Image.open(tmp_path / "b.png")).std() > 10 and not (tmp_path / "a.png").exists()
