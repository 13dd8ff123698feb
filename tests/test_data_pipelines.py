"""Pipelines of the downloadable datasets on TFDS mock data, transforms, and the error messages."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from icasc_tf.data import DATASETS, MissingDataError, load_dataset
from icasc_tf.data.pipeline import read_split, transform_example
from icasc_tf.data.registry import SPECS
from tests.dataset_harness import check_dataset

NUM_MOCK = 6


@pytest.fixture(autouse=True)
def _quiet():
    tfds.disable_progress_bar()


@pytest.fixture
def imagenet_manual_dir(tmp_path):
    """Placeholders for the two tars: the pipeline checks they exist, mock data never reads them."""
    manual = tmp_path / "manual"
    manual.mkdir()
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (manual / name).write_bytes(b"")
    return str(manual)


def test_cifar100_subtracts_the_cached_train_mean(tmp_path):
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        train, info = load_dataset(
            "cifar100", "train", 4, data_dir=str(tmp_path), deterministic=True
        )
        plain_train, _ = load_dataset(
            "cifar100", "train", 4, data_dir=str(tmp_path), training=False
        )
        test, test_info = load_dataset("cifar100", "test", 4, data_dir=str(tmp_path))
        centred = np.concatenate([images for images, _ in plain_train.as_numpy_iterator()])
        test_images = np.concatenate([images for images, _ in test.as_numpy_iterator()])
        images, labels = next(iter(train))
    cached = list((tmp_path / "icasc_tf").glob("cifar100-*-train_pixel_mean.npy"))
    assert len(cached) == 1
    mean = np.load(cached[0])
    assert mean.shape == (32, 32, 3) and 0.0 < mean.mean() < 1.0
    assert np.array_equal(info.pixel_mean, mean)
    # The train images, unaugmented, average to zero at every pixel: the mean is theirs.
    assert centred.shape == (NUM_MOCK, 32, 32, 3)
    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=1e-5)
    # Adding the mean back gives the original 8-bit pixels.
    restored = (test_images + mean) * 255.0
    np.testing.assert_allclose(restored, np.round(restored), atol=1e-3)
    assert restored.min() > -1e-3 and restored.max() < 255.001
    assert images.shape == (4, 32, 32, 3) and labels.dtype == "int32"
    assert np.all((labels.numpy() >= 0) & (labels.numpy() < 100))
    assert -1.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
    assert (info.num_classes, info.num_examples, info.steps_per_epoch) == (100, NUM_MOCK, 1)
    assert test_info.steps_per_epoch == 2 and not test_info.training


def test_imagenet_train_eval_and_ten_crop(tmp_path, imagenet_manual_dir):
    kwargs = dict(data_dir=str(tmp_path), manual_dir=imagenet_manual_dir, image_size=40)
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        train, info = load_dataset("imagenet2012", "train", 3, **kwargs)
        single, _ = load_dataset("imagenet2012", "validation", 3, **kwargs)
        ten, ten_info = load_dataset("imagenet2012", "validation", 3, crops="ten", **kwargs)
        batches = {"train": next(iter(train)), "single": next(iter(single)), "ten": next(iter(ten))}
    assert batches["train"][0].shape == (3, 40, 40, 3)
    assert batches["single"][0].shape == (3, 40, 40, 3)
    assert batches["ten"][0].shape == (3, 10, 40, 40, 3)
    for images, labels in batches.values():
        assert 0.0 <= float(np.min(images)) and float(np.max(images)) <= 1.0
        assert labels.shape == (3,) and np.all(labels.numpy() < 1000)
    # The centre crop is crop 4 of the ten; crops 5-9 are the mirrors of crops 0-4.
    np.testing.assert_allclose(batches["ten"][0][:, 4], batches["single"][0], atol=1e-6)
    np.testing.assert_allclose(batches["ten"][0][:, 9], batches["single"][0][:, :, ::-1], atol=1e-6)
    assert info.num_classes == 1000 and ten_info.num_crops == 10 and info.test_split == "validation"


def _cub_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """CUB mock examples with valid boxes (TFDS's random ones may have ymin > ymax)."""
    del split, read_config, shuffle_files
    features = self.info.features
    if isinstance(decoders, tfds.decode.PartialDecoding):
        features, decoders = decoders.extract_features(features), decoders.decoders
    rng = np.random.default_rng(0)
    examples = []
    for index in range(NUM_MOCK):
        height, width = rng.integers(30, 60, size=2)
        ymin, ymax = np.sort(rng.uniform(0, 1, 2))
        xmin, xmax = np.sort(rng.uniform(0, 1, 2))
        full = {
            "image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            "image/filename": f"{index}.jpg",
            "label": index % 200,
            "label_name": f"bird_{index % 200:03d}",
            "bbox": tfds.features.BBox(ymin, xmin, ymax, xmax),
            "segmentation_mask": np.zeros((height, width, 1), np.uint8),
        }
        examples.append(features.encode_example({key: full[key] for key in features.keys()}))
    signature = tf.nest.map_structure(
        lambda info: tf.TensorSpec(info.shape, info.dtype), features.get_serialized_info()
    )
    dataset = tf.data.Dataset.from_generator(lambda: iter(examples), output_signature=signature)
    dataset = dataset.apply(tf.data.experimental.assert_cardinality(NUM_MOCK))
    return dataset.map(lambda ex: features.decode_example(ex, decoders=decoders))


def test_cub200_keeps_boxes_through_crop_flip_and_resize(tmp_path):
    with tfds.testing.mock_data(as_dataset_fn=_cub_as_dataset):
        kwargs = dict(data_dir=str(tmp_path), with_boxes=True, image_size=(24, 32))
        train, info = load_dataset("cub200", "train", 3, **kwargs)
        test, _ = load_dataset("cub200", "test", 3, **kwargs)
        train_batches, test_batches = list(train), list(test)
        source = list(tfds.load("caltech_birds2011", split="test").as_numpy_iterator())
    images, labels, boxes = train_batches[0]
    assert images.shape == (3, 24, 32, 3) and labels.dtype == "int32" and boxes.shape == (3, 4)
    for _, _, boxes in train_batches + test_batches:
        boxes = boxes.numpy()
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert np.all(boxes[:, 2] >= boxes[:, 0]) and np.all(boxes[:, 3] >= boxes[:, 1])
    # Evaluation squashes the image to 27x37 (8/7 of 24x32) and takes the centre crop.
    test_boxes = np.concatenate([boxes for _, _, boxes in test_batches])
    resized, offset, size = np.array([27, 37] * 2), np.array([1, 2] * 2), np.array([24, 32] * 2)
    expected = np.clip((np.array([ex["bbox"] for ex in source]) * resized - offset) / size, 0, 1)
    np.testing.assert_allclose(test_boxes, expected, atol=1e-6)
    assert info.class_names[:2] == ("bird_000", "bird_001") and len(info.class_names) == 200
    assert info.has_boxes and info.image_shape == (24, 32, 3)


def test_voc2012_multi_hot_targets_and_names(tmp_path):
    kwargs = dict(data_dir=str(tmp_path), image_size=32)
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        train, info = load_dataset("voc2012", "train", 3, **kwargs)
        plain, _ = load_dataset("voc2012", "train", NUM_MOCK, training=False, **kwargs)
        ten, _ = load_dataset("voc2012", "validation", 2, crops="ten", **kwargs)
        images, _ = next(iter(train))
        ten_images, _ = next(iter(ten))
        targets = next(iter(plain))[1].numpy()
        builder = tfds.builder("voc/2012", data_dir=str(tmp_path))
        raw = list(read_split(builder, SPECS["voc2012"], "train").as_numpy_iterator())
        with pytest.raises(ValueError, match="validation"):
            load_dataset("voc2012", "test", 2, **kwargs)
    assert images.shape == (3, 32, 32, 3) and ten_images.shape == (2, 10, 32, 32, 3)
    assert targets.shape == (NUM_MOCK, 20) and targets.dtype == np.float32
    expected = np.zeros((NUM_MOCK, 20), np.float32)
    for row, example in enumerate(raw):
        expected[row, example["labels"]] = 1.0  # repeated objects of a class count once
    np.testing.assert_array_equal(targets, expected)
    assert info.multi_label and info.num_classes == 20
    assert info.class_names[:3] == ("aeroplane", "bicycle", "bird")


@pytest.mark.slow  # four datasets on TFDS mock data: the full suite
def test_the_dataset_harness_holds_for_the_downloadable_datasets_on_mock_data(tmp_path, imagenet_manual_dir):
    data_dir = str(tmp_path)
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        cifar = check_dataset("cifar100", 4, data_dir=data_dir)
        imagenet = check_dataset("imagenet2012", 4, data_dir=data_dir, manual_dir=imagenet_manual_dir, image_size=24)
        voc = check_dataset("voc2012", 4, data_dir=data_dir, image_size=24)
    with tfds.testing.mock_data(as_dataset_fn=_cub_as_dataset):
        cub = check_dataset("cub200", 4, data_dir=data_dir, image_size=24)
    assert cifar.train_info.pixel_mean.shape == (32, 32, 3) and cifar.test_info.num_classes == 100
    assert imagenet.test_info.split == "validation" and voc.train_info.multi_label and cub.test_info.has_boxes


def test_random_crop_and_flip_move_the_box_with_the_object():
    """A white rectangle drawn at the box must stay at the transformed box."""
    image = np.zeros((60, 80, 3), np.uint8)
    box = np.array([0.25, 0.1, 0.75, 0.4], np.float32)
    image[15:45, 8:32] = 255
    for seed in range(6):
        for augmentation in ("squash", "inception"):
            out, out_box = transform_example(
                tf.constant(image),
                tf.constant(box),
                tf.constant([seed, 7], tf.int64),
                augmentation=augmentation,
                size=(28, 28),
                training=True,
                crops="single",
            )
            bright = out.numpy()[..., 0] > 0.5
            if not bright.any():
                assert out_box[2] - out_box[0] < 0.1 or out_box[3] - out_box[1] < 0.1
                continue
            rows, cols = np.flatnonzero(bright.any(1)), np.flatnonzero(bright.any(0))
            found = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1]) / 28.0
            np.testing.assert_allclose(found, out_box.numpy(), atol=2.5 / 28)


def test_cifar_pad_keeps_the_box_and_same_seed_same_crop():
    image = tf.zeros((32, 32, 3), tf.uint8)
    args = dict(
        augmentation="cifar",
        size=(32, 32),
        training=True,
        crops="single",
        mean=np.zeros((32, 32, 3), np.float32),
    )
    box = tf.constant([0.0, 0.0, 1.0, 1.0])
    first = transform_example(image, box, tf.constant([1, 2], tf.int64), **args)
    second = transform_example(image, box, tf.constant([1, 2], tf.int64), **args)
    np.testing.assert_array_equal(first[1], second[1])
    height, width = first[1][2] - first[1][0], first[1][3] - first[1][1]
    assert 28 / 32 - 1e-6 <= float(height) <= 1.0 and 28 / 32 - 1e-6 <= float(width) <= 1.0


def test_augmentation_can_be_chosen_and_sets_how_evaluation_resizes(tmp_path):
    """`augmentation=` replaces the dataset's own; CIFAR-100 keeps its mean subtraction under any."""
    with tfds.testing.mock_data(num_examples=NUM_MOCK):
        raw = read_split(tfds.builder("cifar100", data_dir=str(tmp_path)), SPECS["cifar100"], "test",
                         decode_images=True, with_boxes=False, shuffle_files=False)
        originals = np.stack([example["image"] for example in raw.as_numpy_iterator()]).astype(np.float32) / 255
        own, info = load_dataset("cifar100", "test", NUM_MOCK, data_dir=str(tmp_path))
        squash, _ = load_dataset("cifar100", "test", NUM_MOCK, data_dir=str(tmp_path), augmentation="squash",
                                 image_size=28)
        none, _ = load_dataset("cifar100", "test", NUM_MOCK, data_dir=str(tmp_path), augmentation="none")
        with pytest.raises(ValueError, match="Unknown augmentation 'crop'; choose one of none, cifar"):
            load_dataset("cifar100", "test", 4, data_dir=str(tmp_path), augmentation="crop")
        ten, _ = load_dataset("cifar100", "test", 2, data_dir=str(tmp_path), augmentation="squash", crops="ten")
    centred = originals - info.pixel_mean
    np.testing.assert_allclose(next(iter(own))[0].numpy(), centred, atol=1e-6)
    np.testing.assert_allclose(next(iter(none))[0].numpy(), centred, atol=1e-6)  # 32 px: nothing to resize
    # squash, evaluated: resized to 8/7 of 28 = 32 (the image itself), then the central 28x28.
    np.testing.assert_allclose(next(iter(squash))[0].numpy(), centred[:, 2:30, 2:30], atol=1e-6)
    assert next(iter(ten))[0].shape == (2, 10, 32, 32, 3)


def test_argument_errors_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="cifar100"):
        load_dataset("cifar10", "train", 8)
    with pytest.raises(ValueError, match="evaluation"):
        load_dataset("imagenet2012", "train", 8, crops="ten")
    with pytest.raises(ValueError, match="crops must be one of"):
        load_dataset("imagenet2012", "validation", 8, crops="five")
    with pytest.raises(ValueError, match="cluttered_digits.*cub200"):
        load_dataset("cifar100", "test", 8, with_boxes=True)
    with pytest.raises(ValueError, match="caltech256.*image_size"):
        load_dataset("cifar100", "test", 8, resize=40)
    with pytest.raises(ValueError, match="takes no options"):
        load_dataset("cifar100", "test", 8, data_dir=str(tmp_path), num_train=10)
    assert DATASETS == (
        "cluttered_digits",
        "cluttered_fashion",
        "fashion_mnist",
        "cifar100",
        "caltech256",
        "imagenet2012",
        "cub200",
        "voc2012",
        "image_folder",
    )


def test_missing_imagenet_names_the_tars_and_the_flags(tmp_path):
    with pytest.raises(MissingDataError) as error:
        load_dataset(
            "imagenet2012", "train", 8, data_dir=str(tmp_path), manual_dir=str(tmp_path / "m")
        )
    message = str(error.value)
    for needed in (
        "ILSVRC2012_img_train.tar",
        "ILSVRC2012_img_val.tar",
        str(tmp_path / "m"),
        "--manual_dir",
        "--data_dir",
    ):
        assert needed in message
    assert isinstance(error.value, ValueError)
