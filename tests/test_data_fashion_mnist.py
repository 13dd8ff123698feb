"""Fashion-MNIST from its four files, and the cluttered composites drawn from its items.

Most tests use small IDX files written here (a few items per class); the tests marked
`real_files` read the original files of Debian's `dataset-fashion-mnist`, which `.ci/run`
installs, and are skipped on a machine without them.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from icasc_tf.data import MissingDataError, fashion_mnist, load_dataset
from icasc_tf.data.cluttered_digits import FASHION_CONFIG, load_source, make_config, render_example
from icasc_tf.data.registry import prepare_builder
from tests.dataset_harness import check_dataset

real_files = pytest.mark.skipif(
    fashion_mnist.default_folder() is None,
    reason=f"needs `{fashion_mnist.APT_COMMAND}` ({fashion_mnist.DEBIAN_DIR})",
)
PER_CLASS = {"train": 4, "test": 2}


def _items(split):
    """Distinct items: a bright rectangle whose place and value depend on the index."""
    rng = np.random.default_rng(_SEEDS[split])
    count = 10 * PER_CLASS[split]
    labels = np.arange(count) % 10
    images = np.zeros((count, 28, 28), np.uint8)
    for k in range(count):
        top, left = rng.integers(0, 10, size=2)
        height, width = rng.integers(8, 18, size=2)
        images[k, top : top + height, left : left + width] = rng.integers(60, 256)
    return images, labels


_SEEDS = {"train": 0, "test": 1}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tfds.disable_progress_bar()
    path = tmp_path_factory.mktemp("fashion_files")
    for split, (images_name, labels_name) in fashion_mnist.FILES.items():
        images, labels = _items(split)
        fashion_mnist.write_idx(str(path / images_name), images)
        fashion_mnist.write_idx(str(path / labels_name), labels)
    return path


def test_class_names_are_those_of_tfds_fashion_mnist(tmp_path):
    names = tfds.builder("fashion_mnist", data_dir=str(tmp_path)).info.features["label"].names
    assert list(fashion_mnist.CLASS_NAMES) == names


def _pairs(images, labels):
    """The (image, label) pairs as a sorted list: TFDS stores a split in its own order."""
    return sorted((np.asarray(i).tobytes(), int(label)) for i, label in zip(images, labels))


def test_the_builder_holds_exactly_the_files_items(folder, tmp_path):
    builder = prepare_builder("fashion_mnist", str(tmp_path), str(folder), {})
    for split in ("train", "test"):
        examples = list(builder.as_dataset(split=split).as_numpy_iterator())
        stored = _pairs([ex["image"][..., 0] for ex in examples], [ex["label"] for ex in examples])
        assert stored == _pairs(*_items(split))


def test_the_pipeline_pads_items_to_32x32_rgb_and_subtracts_the_train_mean(folder, tmp_path):
    dataset, info = load_dataset(
        "fashion_mnist", "test", 20, training=False, data_dir=str(tmp_path), manual_dir=str(folder)
    )
    assert info.image_shape == (32, 32, 3) and info.num_classes == 10
    assert info.class_names[0] == "T-shirt/top" and info.class_names[9] == "Ankle boot"
    images, labels = next(iter(dataset))
    train_images, _ = _items("train")
    padded_train = np.pad(train_images, ((0, 0), (2, 2), (2, 2))) / 255.0
    np.testing.assert_allclose(info.pixel_mean[..., 0], padded_train.mean(0), atol=1e-6)
    restored = np.round((images.numpy() + info.pixel_mean) * 255).astype(np.uint8)
    assert np.array_equal(restored[..., 0], restored[..., 2])  # gray repeated to RGB
    assert restored[:, :2].max() == restored[:, -2:].max() == restored[:, :, :2].max() == 0
    test_images, test_labels = _items("test")
    assert _pairs(restored[:, 2:30, 2:30, 0], labels.numpy()) == _pairs(test_images, test_labels)


def test_the_dataset_harness_holds_for_fashion_mnist_and_its_cluttered_composites(folder, tmp_path):
    plain = check_dataset("fashion_mnist", 8, data_dir=str(tmp_path), manual_dir=str(folder))
    assert (plain.train_info.num_examples, plain.test_info.num_examples) == (40, 20)
    cluttered = check_dataset("cluttered_fashion", 8, data_dir=str(tmp_path), manual_dir=str(folder), num_train=30,
                              num_test=20, image_size=48)
    assert cluttered.train_info.image_shape == (48, 48, 3) and cluttered.train_info.class_names[0] == "T-shirt/top"


def test_missing_files_get_one_error_naming_the_apt_line_the_files_and_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingDataError) as caught:
        load_dataset("fashion_mnist", "train", 8, data_dir=str(tmp_path / "d"), manual_dir=str(empty))
    message = str(caught.value)
    assert "apt-get install dataset-fashion-mnist" in message and str(empty) in message
    assert all(name in message for name in fashion_mnist.FILE_NAMES)
    assert "--manual_dir" in message


@pytest.mark.parametrize("damage", ["truncated", "swapped"])
def test_a_damaged_file_is_named_and_nothing_is_prepared_or_lost(folder, tmp_path, damage):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    images_file = broken / fashion_mnist.FILES["train"][0]
    if damage == "truncated":
        data = images_file.read_bytes()
        images_file.write_bytes(data[: len(data) // 2])
    else:  # a labels file under the images' name
        shutil.copy(broken / fashion_mnist.FILES["train"][1], images_file)
    before = {p.name: p.read_bytes() for p in broken.iterdir()}
    with pytest.raises(fashion_mnist.CorruptFileError, match=str(images_file)):
        prepare_builder("fashion_mnist", str(tmp_path / "d"), str(broken), {})
    assert not tfds.builder("fashion_mnist_files", data_dir=str(tmp_path / "d")).is_prepared()
    assert {p.name: p.read_bytes() for p in broken.iterdir()} == before


@pytest.fixture(scope="module")
def cluttered(folder, tmp_path_factory):
    options = dict(num_train=30, num_test=20)
    data_dir = tmp_path_factory.mktemp("cluttered_fashion")
    builder = prepare_builder("cluttered_fashion", str(data_dir), str(folder), options)
    return {
        split: list(builder.as_dataset(split=split).as_numpy_iterator()) for split in ("train", "test")
    }


def test_cluttered_fashion_uses_only_its_splits_items_and_other_classes_as_distractors(cluttered):
    num_train = 10 * PER_CLASS["train"]
    labels = np.concatenate([_items("train")[1], _items("test")[1]])
    for split, examples in cluttered.items():
        for ex in examples:
            used = ex["source_indices"]
            assert ex["image"].shape == (96, 96, 3)
            assert np.all(used < num_train) if split == "train" else np.all(used >= num_train)
            assert labels[used[0]] == ex["label"]
            assert len(used) == 1 + FASHION_CONFIG.num_distractors
            assert np.all(labels[used[1:]] != ex["label"])


def test_cluttered_fashion_is_deterministic_and_the_target_fills_its_box(folder, cluttered):
    config = make_config(source="fashion_mnist", num_train=30, num_test=20)
    source = load_source(config, str(folder))
    for split, examples in cluttered.items():
        for index in range(5):
            example = render_example(config, split, index, source)
            stored = [ex for ex in examples if np.array_equal(ex["source_indices"], example.source_indices)]
            assert len(stored) == 1 and np.array_equal(stored[0]["image"], example.image)
            ymin, xmin, ymax, xmax = np.round(example.box * 96).astype(int)
            item = source.images[example.source_indices[0]]
            rows, cols = np.flatnonzero(item.any(1)), np.flatnonzero(item.any(0))
            assert (ymax - ymin, xmax - xmin) == (2 * len(rows), 2 * len(cols))
            window = example.image[ymin:ymax, xmin:xmax, 0].astype(float)
            upscaled = np.kron(item[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1], np.ones((2, 2)))
            assert np.all(window >= np.round(upscaled * 255) - 1)  # max-compositing keeps it


def test_the_textured_option_selects_the_fashion_textured_config():
    config = make_config(source="fashion_mnist", background="textured")
    assert config.name == "fashion_textured" and config.canvas_size == 96
    assert make_config(source="fashion_mnist").name == "fashion"
    with pytest.raises(ValueError, match="distractor_crop=29 must be in \\[1, 28\\]"):
        make_config(source="fashion_mnist", distractor_crop=29)


@real_files
def test_the_original_files_hold_70000_balanced_items():
    images, labels = fashion_mnist.load_split(fashion_mnist.DEBIAN_DIR, "train")
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [6_000] * 10
    assert labels[:3].tolist() == [9, 0, 0]  # ankle boot, T-shirt/top, T-shirt/top
    test_images, test_labels = fashion_mnist.load_split(fashion_mnist.DEBIAN_DIR, "test")
    assert test_images.shape == (10_000, 28, 28) and np.bincount(test_labels).tolist() == [1_000] * 10
    assert 0.25 < images.mean() / 255 < 0.35  # Fashion-MNIST's pixel mean is 0.286


@real_files
def test_real_cluttered_composites_keep_train_and_test_items_apart():
    source = load_source(FASHION_CONFIG)
    assert os.fspath(fashion_mnist.find_folder(None)) == fashion_mnist.DEBIAN_DIR
    for split in ("train", "test"):
        for index in range(10):
            example = render_example(FASHION_CONFIG, split, index, source)
            in_test = example.source_indices >= 60_000
            assert np.all(in_test) if split == "test" else not np.any(in_test)
            assert source.labels[example.source_indices[0]] == example.label == index % 10
