"""The bundled cluttered-digits builder: determinism, boxes, disjoint source pools, pipeline."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from icasc_tf.data import load_dataset
from icasc_tf.data.cluttered_digits import (
    DEFAULT_CONFIG,
    SOURCE_SIZE,
    make_config,
    render_example,
    source_digits,
    source_pools,
)

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


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="valid options"):
        make_config(num_distractor=3)
    with pytest.raises(ValueError, match="canvas_size"):
        make_config(canvas_size=8)
    with pytest.raises(ValueError, match="cluttered_digits"):
        load_dataset("mnist", "train", 8)
