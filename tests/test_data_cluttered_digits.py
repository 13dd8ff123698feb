"""The bundled cluttered-digits builder: determinism, boxes, disjoint source pools, pipeline.

The textured config gets the same checks as the default one, plus what makes it textured: no
empty region, a dim background under unchanged digits, and a one-line note on first build.
"""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from icasc_tf.data import load_dataset
from icasc_tf.data.cluttered_digits import (
    DEFAULT_CONFIG,
    SOURCE_SIZE,
    TEXTURED_CONFIG,
    make_config,
    render_example,
    source_digits,
    source_pools,
)
from tests.dataset_harness import check_dataset

OPTIONS = dict(num_train=60, num_test=30)


def _build(data_dir, **options):
    builder = tfds.builder(
        "cluttered_digits", config=make_config(**options), data_dir=str(data_dir)
    )
    builder.download_and_prepare()
    return {
        split: list(builder.as_dataset(split=split).as_numpy_iterator())
        for split in ("train", "test")
    }


def _signature(examples):
    return sorted(
        (ex["source_indices"].tobytes(), ex["image"].tobytes(), ex["bbox"].tobytes())
        for ex in examples
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    tfds.disable_progress_bar()
    return tmp_path_factory.mktemp("digits")


@pytest.fixture(scope="module")
def built(data_dir):
    return _build(data_dir, **OPTIONS)


def test_same_seed_builds_the_same_data_and_another_seed_does_not(built, tmp_path):
    again = _build(tmp_path / "again", **OPTIONS)
    other = _build(tmp_path / "other", data_seed=1, **OPTIONS)
    for split in ("train", "test"):
        assert _signature(again[split]) == _signature(built[split])
        assert _signature(other[split]) != _signature(built[split])


def test_split_sizes_labels_and_distractor_classes(built):
    _, source_labels = source_digits()
    assert (len(built["train"]), len(built["test"])) == (60, 30)
    for examples in built.values():
        labels = np.array([ex["label"] for ex in examples])
        assert labels.min() >= 0 and labels.max() <= 9
        assert np.bincount(labels, minlength=10).tolist() == [len(examples) // 10] * 10
        for ex in examples:
            target, distractors = ex["source_indices"][0], ex["source_indices"][1:]
            assert source_labels[target] == ex["label"]
            assert len(distractors) == DEFAULT_CONFIG.num_distractors
            assert np.all(source_labels[distractors] != ex["label"])


def test_no_test_composite_uses_a_training_source_digit(built):
    pools = source_pools(make_config(**OPTIONS))
    assert not set(pools["train"]) & set(pools["test"])
    assert len(pools["train"]) + len(pools["test"]) == len(source_digits()[1])
    used = {
        split: np.concatenate([ex["source_indices"] for ex in exs]) for split, exs in built.items()
    }
    assert set(used["train"]) <= set(pools["train"])
    assert set(used["test"]) <= set(pools["test"])
    assert not set(used["train"]) & set(used["test"])


def test_the_target_digit_lies_inside_its_tight_box(built):
    images, _ = source_digits()
    scale, canvas = DEFAULT_CONFIG.scale, DEFAULT_CONFIG.canvas_size
    for ex in built["test"]:
        ymin, xmin, ymax, xmax = np.round(ex["bbox"] * canvas).astype(int)
        target = np.kron(images[ex["source_indices"][0]], np.ones((scale, scale)))
        rows, cols = np.flatnonzero(target.any(1)), np.flatnonzero(target.any(0))
        ink = target[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert ink.shape == (ymax - ymin, xmax - xmin)
        # Max-compositing keeps every target stroke: the canvas is at least the target there.
        window = ex["image"][ymin:ymax, xmin:xmax, 0].astype(np.float64)
        assert np.all(window >= np.round(ink * 255) - 1)
        assert np.array_equal(ex["image"][..., 0], ex["image"][..., 2])


def test_render_example_keeps_the_target_layer_inside_the_box():
    config = make_config(**OPTIONS)
    for index in range(20):
        example = render_example(config, "train", index)
        again = render_example(config, "train", index)
        assert np.array_equal(example.image, again.image)
        ymin, xmin, ymax, xmax = np.round(example.box * config.canvas_size).astype(int)
        inside = np.zeros_like(example.target_layer, bool)
        inside[ymin:ymax, xmin:xmax] = True
        assert example.target_layer[~inside].max() == 0
        assert example.target_layer[ymin, xmin:xmax].max() > 0  # tight: ink touches each edge
        assert example.target_layer[ymax - 1, xmin:xmax].max() > 0
        assert example.target_layer[ymin:ymax, xmin].max() > 0
        assert example.target_layer[ymin:ymax, xmax - 1].max() > 0
        assert (ymax - ymin) <= SOURCE_SIZE * config.scale


def test_pipeline_batches_boxes_and_is_reproducible(built, data_dir):
    kwargs = dict(data_dir=str(data_dir), with_boxes=True, deterministic=True, **OPTIONS)
    dataset, info = load_dataset("cluttered_digits", "train", 16, **kwargs)
    first_epoch = list(dataset.as_numpy_iterator())
    second_epoch = list(dataset.as_numpy_iterator())
    again, _ = load_dataset("cluttered_digits", "train", 16, **kwargs)
    for first, repeated in zip(first_epoch, again.as_numpy_iterator()):
        assert all(np.array_equal(a, b) for a, b in zip(first, repeated))
    assert not np.array_equal(first_epoch[0][1], second_epoch[0][1])  # reshuffled each epoch

    images, labels, boxes = first_epoch[0]
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.float32
    assert labels.shape == (16,) and labels.dtype == np.int32
    assert boxes.shape == (16, 4) and np.all((boxes >= 0) & (boxes <= 1))
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.max() > 0.9
    assert len(first_epoch) == 3  # 60 examples, remainder dropped when training
    assert (info.num_classes, info.num_examples, info.steps_per_epoch) == (10, 60, 3)
    assert info.has_boxes and not info.multi_label and info.image_shape == (32, 32, 3)

    test, test_info = load_dataset("cluttered_digits", "test", 7, image_size=48, **kwargs)
    batches = list(test)
    assert sum(len(b[1]) for b in batches) == 30 and test_info.steps_per_epoch == 5
    assert batches[0][0].shape == (7, 48, 48, 3)


def test_the_dataset_harness_holds(built, data_dir):
    passes = check_dataset("cluttered_digits", 16, data_dir=str(data_dir), **OPTIONS)
    assert (passes.train_info.num_examples, passes.test_info.num_examples) == (60, 30)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="valid options"):
        make_config(num_distractor=3)
    with pytest.raises(ValueError, match="canvas_size"):
        make_config(canvas_size=8)
    with pytest.raises(ValueError, match="cluttered_digits"):
        load_dataset("mnist", "train", 8)


# ---- The textured config: the checks above again, then what makes it textured. ----

TEXTURED = dict(background="textured", **OPTIONS)
WINDOW = 4  # a quarter of the target's side: the scale of a stroke, smaller than any digit


def _windows(layer):
    """Every WINDOW x WINDOW window (stride 1) of a 2-D array, flattened: [N, WINDOW**2]."""
    view = np.lib.stride_tricks.sliding_window_view(layer, (WINDOW, WINDOW))
    return view.reshape(-1, WINDOW * WINDOW)


@pytest.fixture(scope="module")
def textured(data_dir):
    return _build(data_dir, **TEXTURED)


def test_textured_config_is_named_and_selected_by_the_background_option():
    assert make_config(background="textured") is TEXTURED_CONFIG
    assert make_config(background="empty") is DEFAULT_CONFIG
    assert make_config(**TEXTURED).name == "textured_num_test30_num_train60"
    assert make_config(**OPTIONS).name == "num_test30_num_train60"  # default paths unchanged
    assert tfds.builder("cluttered_digits/textured").builder_config is TEXTURED_CONFIG
    with pytest.raises(ValueError, match="background"):
        make_config(background="grass")
    with pytest.raises(ValueError, match="only with background=textured"):
        make_config(background_contrast=0.2)


def test_textured_same_seed_builds_the_same_data_and_another_seed_does_not(textured, tmp_path):
    again = _build(tmp_path / "again", **TEXTURED)
    other = _build(tmp_path / "other", data_seed=1, **TEXTURED)
    for split in ("train", "test"):
        assert _signature(again[split]) == _signature(textured[split])
        assert _signature(other[split]) != _signature(textured[split])


def test_textured_split_sizes_labels_and_distractor_classes(textured):
    test_split_sizes_labels_and_distractor_classes(textured)


def test_textured_no_test_composite_uses_a_training_source_digit(textured):
    test_no_test_composite_uses_a_training_source_digit(textured)
    # The background fragments too: they are drawn from the example's own split.
    config = make_config(**TEXTURED)
    pools = source_pools(config)
    for split, count in (("train", 60), ("test", 30)):
        for index in range(0, count, 7):
            fragments = render_example(config, split, index).background_indices
            assert len(fragments) > 0 and set(fragments) <= set(pools[split])


def test_textured_target_digit_lies_inside_its_tight_box(textured):
    test_the_target_digit_lies_inside_its_tight_box(textured)


def test_textured_examples_are_the_default_ones_over_a_background():
    """Same target, box, distractors and label as the default example: only the canvas differs."""
    plain, config = make_config(**OPTIONS), make_config(**TEXTURED)
    for split in ("train", "test"):
        for index in range(10):
            a, b = render_example(plain, split, index), render_example(config, split, index)
            assert a.label == b.label
            assert np.array_equal(a.box, b.box)
            assert np.array_equal(a.target_layer, b.target_layer)
            assert np.array_equal(a.source_indices, b.source_indices)
            # Max-compositing: the digits are kept, the background only fills under them.
            assert np.array_equal(b.image, np.maximum(a.image, b.image))
            background = np.round(b.background_layer * 255)
            assert np.array_equal(b.image[..., 0], np.maximum(a.image[..., 0], background))
            assert a.background_indices.size == 0 and not a.background_layer.any()


def test_textured_canvas_has_no_empty_region_and_stays_dim():
    """Every 4x4 window holds dim, varying structure; the digits' ink stays far brighter.

    Thresholds: the background is contrast 0.3 x (0.15 floor + 0.35 uniform noise + 0.5
    fragments), so every pixel is >= 0.045 (11.5/255) and a window of 16 noisy pixels has a
    standard deviation around 7.7/255 (of 2,000 examples the lowest was 2.8/255); 1/255 means
    "not flat" with a wide margin. On the default canvas most windows are pure zero.
    """
    config, plain = make_config(**TEXTURED), make_config(**OPTIONS)
    for split in ("train", "test"):
        for index in range(10):
            example = render_example(config, split, index)
            background = _windows(example.background_layer)
            image = _windows(example.image[..., 0].astype(np.float64))
            assert background.std(axis=1).min() >= 1 / 255  # structure in every window
            assert image.min() >= 11  # no black pixel left on the stored image
            assert example.background_layer.max() <= 0.35
            assert example.image.max() == 255  # the digits' ink is still full scale
            empty = _windows(render_example(plain, split, index).image[..., 0]).max(axis=1) == 0
            assert empty.mean() > 0.2  # the default canvas does have empty regions


def test_textured_pipeline_batches_boxes(textured, data_dir):
    passes = check_dataset("cluttered_digits", 16, data_dir=str(data_dir), **TEXTURED)
    images = passes.train[0][0]
    assert images.shape == (16, 32, 32, 3) and passes.train_info.has_boxes
    assert images.min() >= 11 / 255 and images.max() == 1.0
    assert passes.train_info.tfds_name == "cluttered_digits/textured_num_test30_num_train60"
    stored = {ex["source_indices"].tobytes(): ex["image"] for ex in textured["train"]}
    example = render_example(make_config(**TEXTURED), "train", 0)
    assert np.array_equal(stored[example.source_indices.tobytes()], example.image)


def test_first_preparation_says_it_generates_and_not_unknown_size(tmp_path, capfd):
    builder = tfds.builder("cluttered_digits", config=make_config(**TEXTURED), data_dir=str(tmp_path))
    builder.download_and_prepare()
    first = capfd.readouterr()
    output = first.out + first.err
    assert (
        f"Generating the bundled cluttered_digits dataset (config "
        f"textured_num_test30_num_train60) into {builder.data_dir}: about 1 s, once." in output
    )
    assert "Unknown size" not in output and "Downloading" not in output
    assert "later runs reuse it" in output
    builder.download_and_prepare()  # prepared: silent
    again = capfd.readouterr()
    assert "Generating the bundled" not in again.out + again.err
