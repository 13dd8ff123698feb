"""The "How to add…" recipes of BUILD_NOTES.md, proven: a toy dataset and a toy augmentation, each
registered for one test (undone after it), flow end to end through `load_dataset` and the harness."""

import ast
import pathlib

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from icasc_tf import ICASC
from icasc_tf.data import load_dataset
from icasc_tf.data.augmentations import AUGMENTATION_SPECS, Augmentation, at_size
from icasc_tf.data.registry import SPECS, DatasetSpec
from tests.dataset_harness import check_dataset
from tests.nets import tiny_convnet

COLOURS = {"red": (230, 30, 30), "green": (30, 210, 40), "blue": (40, 50, 220)}
SIDE = 24
DIGITS = dict(num_train=60, num_test=30)


class ToySquares(tfds.core.GeneratorBasedBuilder):
    """A coloured square (its class) on black, with its box: the toy dataset of the recipe test."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(SIDE, SIDE, 3)),
                "label": tfds.features.ClassLabel(names=list(COLOURS)),
                "bbox": tfds.features.BBoxFeature(),
            }),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated, nothing to fetch
        return {"train": self._generate_examples("train", 24), "test": self._generate_examples("test", 9)}

    def _generate_examples(self, split, count):
        rng = np.random.default_rng(0 if split == "train" else 1)
        for index in range(count):
            label = index % len(COLOURS)
            side = int(rng.integers(6, 13))
            top, left = rng.integers(0, SIDE - side + 1, size=2)
            image = np.zeros((SIDE, SIDE, 3), np.uint8)
            image[top : top + side, left : left + side] = list(COLOURS.values())[label]
            box = tfds.features.BBox(top / SIDE, left / SIDE, (top + side) / SIDE, (left + side) / SIDE)
            yield f"{split}{index}", {"image": image, "label": label, "bbox": box}


TOY_SPEC = DatasetSpec(tfds_name="toy_squares", image_size=16, augmentation="squash", test_split="test",
                       box_key="bbox", in_memory=True)


@pytest.fixture
def toy_dataset():
    """`toy_squares` registered in SPECS for one test; the registry is as before afterwards."""
    before = dict(SPECS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(SPECS, "toy_squares", TOY_SPEC)
        yield "toy_squares"
    assert SPECS == before


def invert(image, box, seed, *, size, resize, training, crops):
    """Black for white, resized to the input size: the toy augmentation of the recipe test."""
    del seed, resize, training, crops
    return 1.0 - at_size(image, *size), box


@pytest.fixture
def invert_augmentation():
    """`invert` registered in AUGMENTATION_SPECS for one test; the registry is as before afterwards."""
    before = dict(AUGMENTATION_SPECS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(AUGMENTATION_SPECS, "invert", Augmentation(invert))
        yield "invert"
    assert AUGMENTATION_SPECS == before


def test_a_registered_dataset_flows_through_load_dataset_the_harness_and_an_icasc_step(toy_dataset, tmp_path):
    tfds.disable_progress_bar()
    passes = check_dataset(toy_dataset, 4, data_dir=str(tmp_path))
    info = passes.train_info
    assert info.class_names == tuple(COLOURS) and info.image_shape == (16, 16, 3) and info.has_boxes
    assert (info.num_examples, passes.test_info.num_examples) == (24, 9)
    # The evaluation squash (resize to 18, centre 16) keeps every square's colour: its class.
    for images, labels, _ in passes.test:
        colour = np.argmax(images.reshape(len(images), -1, 3).max(axis=1), axis=-1)
        np.testing.assert_array_equal(colour, labels)
    for images, _, boxes in passes.train:  # the box follows the square through the random crop and flip
        for image, box in zip(images, boxes):
            bright = image.max(axis=-1) > 0.5
            rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
            found = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / 16.0
            np.testing.assert_allclose(found, box, atol=1.5 / 16)
    images, labels, _ = passes.train[0]
    model = ICASC(tiny_convnet(num_classes=3, size=16), "inner", "last")
    model.compile(keras.optimizers.SGD(0.05))
    logs = model.train_on_batch(images, labels, return_dict=True)
    assert np.isfinite(logs["loss"]) and logs["loss"] > 0 and np.isfinite(logs["as_inner"])


def test_a_registered_augmentation_is_used_for_training_and_evaluation(invert_augmentation, tmp_path):
    tfds.disable_progress_bar()
    kwargs = dict(data_dir=str(tmp_path), with_boxes=True, **DIGITS)
    for split, training in (("train", True), ("test", False)):
        plain, _ = load_dataset("cluttered_digits", split, 16, training=training, deterministic=True,
                                augmentation="none", **kwargs)
        inverted, info = load_dataset("cluttered_digits", split, 16, training=training, deterministic=True,
                                      augmentation=invert_augmentation, **kwargs)
        pairs = list(zip(plain.as_numpy_iterator(), inverted.as_numpy_iterator()))
        assert len(pairs) == info.steps_per_epoch == (3 if training else 2)
        for (images, labels, boxes), (inverted_images, inverted_labels, inverted_boxes) in pairs:
            np.testing.assert_array_equal(inverted_images, 1.0 - images)
            np.testing.assert_array_equal(inverted_labels, labels)
            np.testing.assert_array_equal(inverted_boxes, boxes)
    check_dataset("cluttered_digits", 16, augmentation=invert_augmentation, data_dir=str(tmp_path), **DIGITS)
    with pytest.raises(ValueError, match="choose one of none, cifar, squash, inception, invert"):
        load_dataset("cluttered_digits", "test", 4, augmentation="mirror", **kwargs)
    with pytest.raises(ValueError, match="augmentations that crop after resizing"):
        load_dataset("cluttered_digits", "test", 4, augmentation=invert_augmentation, resize=40, **kwargs)


def _harnessed_names():
    """Dataset names given as a literal first argument to `check_dataset` in the tests."""
    names = set()
    for path in pathlib.Path(__file__).parent.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_dataset" and node.args
                    and isinstance(node.args[0], ast.Constant)):
                names.add(node.args[0].value)
    return names


def test_every_registered_dataset_is_checked_by_the_harness():
    assert set(SPECS) <= _harnessed_names(), sorted(set(SPECS) - _harnessed_names())

