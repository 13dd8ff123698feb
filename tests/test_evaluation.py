"""Evaluation: each metric against a hand computation, evaluate_model and scripts/evaluate.py end to end."""

import json
import os
import subprocess
import sys
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import stats

from icasc_tf import ICASC
from icasc_tf.evaluation import (
    box_masks,
    confidence_change,
    energy_in_box,
    evaluate_model,
    explanation_masked_images,
    ks_chart,
    ks_statistic,
    multilabel_scores,
    pointing_game,
    upsample_maps,
)
from icasc_tf.evaluation.statistics import difference_to_baseline
from tests.nets import tiny_convnet
from tests.script_output import our_lines

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- KS
def _ks_by_hand(a, b):
    """Largest |F_a - F_b| over the pooled points, evaluated by counting."""
    best, where = -1.0, None
    for x in sorted(set(a) | set(b)):
        gap = abs(sum(v <= x for v in a) / len(a) - sum(v <= x for v in b) / len(b))
        if gap > best + 1e-12:
            best, where = gap, x
    return best, where


def test_ks_statistic_of_disjoint_samples_is_one_at_the_lower_sample_maximum():
    statistic, location = ks_statistic([0.6, 0.7, 0.8], [0.1, 0.2, 0.3])
    assert statistic == pytest.approx(1.0)
    assert location == pytest.approx(0.3)


def test_ks_statistic_matches_counting():
    target = [0.2, 0.55, 0.6, 0.9, 0.95]
    confusing = [0.05, 0.1, 0.3, 0.58, 0.7, 0.72]
    statistic, location = ks_statistic(target, confusing)
    expected, where = _ks_by_hand(target, confusing)
    assert (expected, where) == pytest.approx((3 / 5 - 1 / 5, 0.72))  # F_c(0.72) = 1, F_t(0.72) = 3/5
    assert statistic == pytest.approx(expected)
    assert location == pytest.approx(where)


def test_difference_to_baseline_is_welchs_interval_by_hand():
    arm, baseline = [0.80, 0.82, 0.84], [0.70, 0.71, 0.75]
    va, vb = np.var(arm, ddof=1) / 3, np.var(baseline, ddof=1) / 3  # squared standard errors
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite
    half = stats.t.ppf(0.975, dof) * np.sqrt(va + vb)
    got = difference_to_baseline(arm, baseline)
    np.testing.assert_allclose(got["mean"], 0.10, rtol=1e-12)
    np.testing.assert_allclose(got["ci"], [0.10 - half, 0.10 + half], rtol=1e-9)
    assert got["verdict"] == "gain" and got["ci"][0] > 0
    assert difference_to_baseline([0.7, 0.9], [0.8, 0.81])["verdict"] == "no difference"
    assert difference_to_baseline(baseline, arm)["verdict"] == "loss"
    assert difference_to_baseline([0.8], baseline) is None  # one run has no spread


def test_ks_statistic_rejects_an_empty_side():
    with pytest.raises(ValueError, match="confusing_probs is empty"):
        ks_statistic([0.5], [])


def test_ks_chart_writes_a_png_and_returns_the_statistic(tmp_path):
    path = tmp_path / "charts" / "ks.png"
    result = ks_chart([0.6, 0.7, 0.9], [0.1, 0.5, 0.65], str(path))
    assert result == pytest.approx(ks_statistic([0.6, 0.7, 0.9], [0.1, 0.5, 0.65]))
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


# ----------------------------------------------------------------------------- localization
def test_box_masks_use_pixel_centres():
    mask = box_masks([[0.0, 0.0, 0.5, 0.25]], (4, 4))[0]
    expected = np.zeros((4, 4), bool)
    expected[:2, :1] = True  # rows with centres 0.125, 0.375; the column with centre 0.125
    np.testing.assert_array_equal(mask, expected)


def test_upsample_is_bilinear_with_half_pixel_centres():
    up = upsample_maps(np.array([[[1.0, 0.0], [0.0, 0.0]]]), (4, 4))[0]
    line = np.array([1.0, 0.75, 0.25, 0.0])
    np.testing.assert_allclose(up, np.outer(line, line), atol=1e-6)


def test_pointing_game_hits_inside_misses_outside_and_on_empty_maps():
    maps = np.zeros((3, 4, 4), np.float32)
    maps[0, 0, 0] = 1.0  # top-left peak, box top-left: hit
    maps[1, 0, 0] = 1.0  # top-left peak, box bottom-right: miss
    boxes = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]]  # map 2 all zero
    hits, rate = pointing_game(maps, boxes, image_size=(16, 16))
    np.testing.assert_array_equal(hits, [True, False, False])
    assert rate == pytest.approx(1 / 3)


def test_energy_in_box_against_hand_computed_bilinear_mass():
    corner = np.array([[[1.0, 0.0], [0.0, 0.0]]])
    shares, mean = energy_in_box(corner, [[0.0, 0.0, 0.5, 0.5]], image_size=(4, 4))
    # Upsampled map = outer([1, .75, .25, 0]); the box holds its top-left 2x2 block.
    assert shares[0] == pytest.approx((1 + 0.75) ** 2 / 2.0**2)
    uniform = np.ones((2, 8, 8))
    shares, mean = energy_in_box(uniform, [[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 0.25]])
    np.testing.assert_allclose(shares, [0.25, 0.25])
    zero, _ = energy_in_box(np.zeros((1, 2, 2)), [[0.0, 0.0, 1.0, 1.0]])
    assert zero[0] == 0.0


def test_localization_rejects_mismatched_boxes():
    with pytest.raises(ValueError, match="one box per map"):
        pointing_game(np.ones((2, 2, 2)), [[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        energy_in_box(np.ones((1, 2, 2)), [[0.0, 1.0]])


# ----------------------------------------------------------------------------- faithfulness
def test_confidence_change_follows_grad_cam_plus_plus():
    drop, increase = confidence_change([0.8, 0.5, 0.2], [0.4, 0.6, 0.2])
    assert drop == pytest.approx((0.4 / 0.8 + 0 + 0) / 3)
    assert increase == pytest.approx(1 / 3)


def test_average_drop_on_a_toy_model():
    """A model whose class-0 probability is sigmoid(4 * mean brightness): drop by hand."""
    inputs = keras.Input((4, 4, 3))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(2, kernel_initializer=keras.initializers.Constant([[4 / 3, 0.0]] * 3),
                                bias_initializer="zeros")(mean)
    model = keras.Model(inputs, logits)
    images = np.ones((2, 4, 4, 3), np.float32)
    maps = np.stack([np.full((2, 2), 3.0), [[2.0, 2.0], [0.0, 0.0]]]).astype(np.float32)
    masked = explanation_masked_images(images, maps)
    # Map 0 is uniform: the image is unchanged. Map 1 becomes rows (1, .75, .25, 0): mean 0.5.
    np.testing.assert_allclose(masked[0], images[0])
    np.testing.assert_allclose(masked[1, :, 0, 0], [1.0, 0.75, 0.25, 0.0], atol=1e-6)
    original = keras.ops.softmax(model(images)).numpy()[:, 0]
    after = keras.ops.softmax(model(masked)).numpy()[:, 0]
    drop, increase = confidence_change(original, after)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    assert drop == pytest.approx((sigmoid(4.0) - sigmoid(2.0)) / sigmoid(4.0) / 2, rel=1e-5)
    assert increase == 0.0


# ----------------------------------------------------------------------------- multi-label scores
def test_multilabel_ap_and_auc_against_hand_ranking():
    labels = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    probs = np.array([[0.9, 0.2, 0.5], [0.8, 0.6, 0.1], [0.7, 0.4, 0.3], [0.1, 0.3, 0.2]])
    scores = multilabel_scores(labels, probs, ["cat", "dog", "cow"])
    # cat ranks pos, neg, pos, neg: AP = (1/1 + 2/3) / 2, AUC = 3/4. dog: both positives first.
    assert scores["per_class_ap"] == pytest.approx({"cat": 5 / 6, "dog": 1.0, "cow": None})
    assert scores["mAP"] == pytest.approx((5 / 6 + 1.0) / 2)
    assert scores["roc_auc"] == pytest.approx((0.75 + 1.0) / 2)


# ----------------------------------------------------------------------------- evaluate_model
SIZE, CLASSES = 16, 6


def _info(multi_label=False, classes=CLASSES):
    return types.SimpleNamespace(
        name="toy", num_classes=classes, multi_label=multi_label,
        class_names=[f"c{i}" for i in range(classes)],
    )


def _images(n=12, seed=0):
    return np.random.default_rng(seed).random((n, SIZE, SIZE, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def single_label_model():
    model = ICASC(tiny_convnet(num_classes=CLASSES, size=SIZE), "inner", "last")
    model.compile(optimizer="sgd", metrics=["accuracy"])
    return model


def test_evaluate_model_single_label_with_boxes(single_label_model, tmp_path):
    images, labels = _images(), np.arange(12) % CLASSES
    boxes = np.tile([[0.25, 0.25, 0.75, 0.75]], (12, 1)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels, boxes)).batch(5)
    chart = tmp_path / "ks.png"
    results = evaluate_model(single_label_model, dataset, _info(), ks_chart_path=str(chart))
    assert results["examples"] == 12 and results["crops"] == "single" and chart.exists()
    for key in ("top1", "top5", "ks_statistic", "ks_location", "average_drop", "increase_in_confidence",
                "pointing_game_last", "pointing_game_inner", "energy_in_box_last", "energy_in_box_inner"):
        assert 0.0 <= results[key] <= 1.0, key
    for key in ("as_inner", "as_last"):
        assert 0.0 <= results[key] <= 1.0, key
    assert -0.2 <= results["ac"] <= 0.8
    # The separation terms and top-1 are what Keras's own evaluation reports.
    keras_results = single_label_model.evaluate(dataset.map(lambda x, y, b: (x, y)), verbose=0, return_dict=True)
    for key in ("as_inner", "as_last", "ac", "classification_loss", "zero_target_inner", "zero_target_last"):
        assert results[key] == pytest.approx(keras_results[key], rel=1e-4, abs=1e-6), key
    assert results["top1"] == pytest.approx(keras_results["accuracy"])
    predicted = np.argmax(single_label_model.predict(images, verbose=0), axis=1)
    expected = np.zeros((CLASSES, CLASSES), int)
    np.add.at(expected, (labels, predicted), 1)
    np.testing.assert_array_equal(results["confusion_matrix"], expected)
    assert results["confusion_matrix_classes"] == [f"c{i}" for i in range(CLASSES)]  # its rows' and columns' order
    assert np.trace(expected) / 12 == pytest.approx(results["top1"])
    assert json.loads(json.dumps(results)) == results


def test_evaluate_model_ten_crop_of_identical_crops_equals_single_crop(single_label_model):
    images, labels = _images(8, seed=1), np.arange(8) % CLASSES
    single = evaluate_model(single_label_model, tf.data.Dataset.from_tensor_slices((images, labels)).batch(4), _info())
    ten = tf.data.Dataset.from_tensor_slices((np.repeat(images[:, None], 10, axis=1), labels)).batch(4)
    info = types.SimpleNamespace(**vars(_info()), num_examples=8)
    results = evaluate_model(single_label_model, ten, info, max_batches=1)
    assert results["crops"] == "ten" and results["examples"] == 4 and "as_inner" not in results
    assert results["split_examples"] == 8  # max_batches: 4 of the split's 8 images
    four = tf.data.Dataset.from_tensor_slices((images[:4], labels[:4])).batch(4)
    first = evaluate_model(single_label_model, four, _info())
    assert results["top1"] == pytest.approx(first["top1"])
    assert results["ks_statistic"] == pytest.approx(first["ks_statistic"])
    assert "pointing_game_last" not in single  # no boxes, no localization


def test_evaluate_model_multi_label_reports_named_ap():
    model = ICASC(tiny_convnet(num_classes=3, size=SIZE), "inner", "last", multi_label=True)
    labels = np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]] * 2, np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((_images(8), labels)).batch(4)
    results = evaluate_model(model, dataset, _info(True, 3), attention="gradcampp")
    assert set(results["per_class_ap"]) == {"c0", "c1", "c2"}
    assert 0.0 <= results["mAP"] <= 1.0 and 0.0 <= results["roc_auc"] <= 1.0
    assert results["attention"] == "gradcampp" and "top1" not in results


def test_evaluate_model_rejects_a_mismatched_dataset(single_label_model):
    dataset = tf.data.Dataset.from_tensor_slices((_images(2), [0, 1])).batch(2)
    with pytest.raises(ValueError, match="has 4 classes but the model predicts 6"):
        evaluate_model(single_label_model, dataset, _info(classes=4))
    with pytest.raises(ValueError, match="multi_label=False"):
        evaluate_model(single_label_model, dataset, _info(multi_label=True))
    with pytest.raises(ValueError, match="Unknown attention"):
        evaluate_model(single_label_model, dataset, _info(), attention="cam")


# ----------------------------------------------------------------------------- scripts/evaluate.py
SCRIPT = os.path.join(REPO, "scripts", "evaluate.py")


def test_the_printed_confusion_matrix_names_its_classes_and_axes():
    from icasc_tf.cli.evaluate import confusion_table, format_table

    results = {"examples": 7, "split_examples": 9, "top1": 0.5, "confusion_matrix": [[3, 1, 0], [0, 2, 0], [1, 0, 0]],
               "confusion_matrix_classes": ["t-shirt/top", "trouser", "pullover"]}
    assert format_table(results).splitlines() == [
        "examples  7 of 9",
        "top1      50.00 %",
        "",
        "confusion_matrix (rows: true class, columns: predicted class, by index)",
        "true \\ predicted  0 1 2",
        "0 t-shirt/top     3 1 0",
        "1 trouser         0 2 0",
        "2 pullover        1 0 0",
    ]
    wide = confusion_table([[0] * 21] * 21)
    assert wide == ["confusion_matrix: 21 classes, in the results file (rows true, columns predicted)"]


def _run_script(*args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)


def _tiny_run(tmp_path):
    """A model_dir like a training run's: best.keras and config.json for a tiny cluttered-digits split."""
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    ICASC(tiny_convnet(num_classes=10, size=32), "inner", "last").save(model_dir / "best.keras")
    config = {
        "dataset": "cluttered_digits", "dataset_config": ["num_train=4", "num_test=12"],
        "test_split": "test", "data_dir": str(tmp_path / "tfds"), "manual_dir": "", "image_size": 0,
        "batch_size": 5, "arch": "tiny", "attention": "ach", "multi_label": False, "seed": 0,
    }
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir


@pytest.mark.slow
def test_script_evaluates_a_run_folder(tmp_path):
    model_dir = _tiny_run(tmp_path)
    done = _run_script(f"--model_dir={model_dir}")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((model_dir / "eval_test.json").read_text())
    assert results["examples"] == 12 and results["dataset"] == "cluttered_digits"
    assert 0.0 <= results["pointing_game_last"] <= 1.0 and 0.0 <= results["top1"] <= 1.0
    assert (model_dir / "eval_test_ks.png").exists()
    assert "pointing_game_last" in done.stdout and "%" in done.stdout
    lines = done.stdout.splitlines()
    assert "best.keras on split 'test': 12 of 12 images" in lines and "examples                12 of 12" in lines
    table = lines.index("confusion_matrix (rows: true class, columns: predicted class, by index)")
    assert lines[table + 1].split() == ["true", "\\", "predicted", *map(str, range(10))]
    assert [line.split()[0] for line in lines[table + 2:table + 12]] == [str(i) for i in range(10)]
    assert sum(int(n) for line in lines[table + 2:table + 12] for n in line.split()[1:]) == 12
    partial = _run_script(f"--model_dir={model_dir}", "--max_batches=2", f"--output={tmp_path / 'part.json'}")
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert "best.keras on split 'test': 10 of 12 images (--max_batches=2: part of the split)" in (
        partial.stdout.splitlines())
    assert json.loads((tmp_path / "part.json").read_text())["examples"] == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model_dir=/nonexistent/run"],
         "--model_dir=/nonexistent/run does not exist: pass the folder of a training run."),
        ([], "Pass --model_dir (a training run folder) or --model (a .keras file)."),
        (["--model=/nonexistent/model.keras"], "Model file /nonexistent/model.keras does not exist."),
    ],
)
@pytest.mark.slow
def test_script_exits_non_zero_with_one_clear_line(args, message):
    done = _run_script(*args)
    assert done.returncode == 2
    assert our_lines(done.stderr) == [f"evaluate.py: error: {message}"]


@pytest.mark.slow
def test_script_rejects_a_missing_final_model_and_an_unknown_dataset(tmp_path):
    model_dir = _tiny_run(tmp_path)
    done = _run_script(f"--model_dir={model_dir}", "--which_model=final")
    assert done.returncode == 2
    want = f"evaluate.py: error: Model file {model_dir / 'final.keras'} does not exist."
    assert done.stderr.strip().splitlines()[-1] == want
    done = _run_script(f"--model_dir={model_dir}", "--dataset=no_such_data")
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("evaluate.py: error:") and "no_such_data" in last


def test_evaluate_reads_the_runs_augmentation_and_data_options(tmp_path):
    """evaluate.py resizes the test images as the run's own evaluation did (its --augmentation)."""
    from icasc_tf.cli.evaluate import resolve_settings
    from icasc_tf.train import RunDir, TrainConfig

    run = RunDir(str(tmp_path / "run"))
    os.makedirs(run.path)
    run.write_options(TrainConfig(dataset="cifar100", augmentation="squash", image_size=28, batch_size=8))
    (tmp_path / "run" / "best.keras").write_bytes(b"")  # only its existence is checked here
    flag_values = types.SimpleNamespace(
        model_dir=run.path, model=None, which_model="best", dataset=None, split=None, batch_size=None,
        data_dir=None, manual_dir=None, image_size=None, dataset_config=None, output=None,
    )
    settings = resolve_settings(flag_values)
    assert (settings["augmentation"], settings["image_size"], settings["batch_size"]) == ("squash", 28, 8)
    assert (settings["dataset"], settings["split"]) == ("cifar100", "test")
