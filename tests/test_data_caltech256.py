"""The Caltech-256 builder on a tiny JPEG tree: classes, split sizes and seeds, corrupt files."""

import io
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from icasc_tf.data import MissingDataError, load_dataset
from icasc_tf.data.caltech256 import FOLDER_NAME, make_config, split_files
from tests.dataset_harness import check_dataset

OPTIONS = dict(train_per_class=2, test_per_class=1)
CORRUPT = "001.class001/001_0004.jpg"


def _jpeg(rng, mode="RGB", fmt="JPEG") -> bytes:
    pixels = rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def manual_dir(tmp_path_factory):
    """256 classes of 3 images, 257.clutter, a truncated JPEG, a grey JPEG, a PNG named .jpg."""
    root = tmp_path_factory.mktemp("caltech_manual")
    rng = np.random.default_rng(0)
    for number in range(1, 258):
        name = "257.clutter" if number == 257 else f"{number:03d}.class{number:03d}"
        folder = root / FOLDER_NAME / name
        folder.mkdir(parents=True)
        for index in range(1, 4):
            (folder / f"{number:03d}_{index:04d}.jpg").write_bytes(_jpeg(rng))
    (root / FOLDER_NAME / CORRUPT).write_bytes(_jpeg(rng)[:-60])  # truncated: fails on decode
    (root / FOLDER_NAME / "002.class002/002_0004.jpg").write_bytes(_jpeg(rng, mode="L"))
    (root / FOLDER_NAME / "003.class003/003_0004.jpg").write_bytes(_jpeg(rng, "RGBA", "PNG"))
    (root / FOLDER_NAME / "004.class004/RENAME2").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def built(manual_dir, tmp_path_factory):
    tfds.disable_progress_bar()
    data_dir = tmp_path_factory.mktemp("caltech_data")
    builder = tfds.builder("caltech256", config=make_config(**OPTIONS), data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    splits = {
        split: list(builder.as_dataset(split=split).as_numpy_iterator())
        for split in ("train", "test")
    }
    return data_dir, builder, splits


def test_classes_and_split_sizes(built):
    _, builder, splits = built
    names = builder.info.features["label"].names
    assert len(names) == 256 and "clutter" not in names and names[0] == "class001"
    assert len(splits["test"]) == 256 * 1
    assert len(splits["train"]) == 256 * 2
    for split in splits.values():
        assert np.all(
            np.bincount([ex["label"] for ex in split], minlength=256) == len(split) // 256
        )
        assert all(ex["image"].ndim == 3 and ex["image"].shape[2] == 3 for ex in split)


def test_no_image_in_both_splits_and_corrupt_file_skipped(built):
    _, builder, splits = built
    files = {s: {ex["image/filename"].decode() for ex in exs} for s, exs in splits.items()}
    assert not files["train"] & files["test"]
    assert CORRUPT not in files["train"] | files["test"]
    assert not any(
        name.startswith("257.") or "RENAME2" in name for name in files["train"] | files["test"]
    )
    assert list(builder.info.metadata["skipped_images"]) == [CORRUPT]
    # The truncated file's class still fills its quotas from its three readable images.
    assert sum(name.startswith("001.") for name in files["train"] | files["test"]) == 3


def test_split_depends_only_on_the_seed():
    files = {f"{c:03d}.c": [f"{c:03d}.c/{i}.jpg" for i in range(10)] for c in range(1, 6)}
    first = split_files(files, 3, 2, data_seed=0)
    assert first == split_files(dict(reversed(files.items())), 3, 2, data_seed=0)
    assert first != split_files(files, 3, 2, data_seed=1)
    assert [len(first["train"]), len(first["test"])] == [15, 10]
    short = split_files(
        {"001.c": ["a", "b", "c"]}, train_per_class=5, test_per_class=2, data_seed=0
    )
    assert (len(short["test"]), len(short["train"])) == (2, 1)


def test_presets_and_custom_configs_are_named_apart():
    assert make_config().name == "train30"
    assert make_config(train_per_class=60).name == "train60"
    assert make_config(**OPTIONS).name == "train2_test1_seed0"
    assert make_config(**OPTIONS, data_seed=3).name == "train2_test1_seed3"
    with pytest.raises(ValueError, match="valid options"):
        make_config(train=30)


def test_pipeline_resizes_and_ten_crops(built, manual_dir):
    """The harness (shapes, ranges, ten crops, order, seeds), then caltech256's own figures."""
    data_dir, _, _ = built
    kwargs = dict(data_dir=str(data_dir), manual_dir=str(manual_dir), image_size=24, **OPTIONS)
    passes = check_dataset("caltech256", 32, **kwargs)
    info = passes.train_info
    assert passes.train[0][0].shape == (32, 24, 24, 3) and info.image_shape == (24, 24, 3)
    assert (info.num_classes, info.num_examples, info.test_split) == (256, 512, "test")
    assert passes.test_info.num_examples == 256
    wide, _ = load_dataset("caltech256", "train", 4, resize=40, seed=3, **kwargs)
    assert next(iter(wide))[0].shape == (4, 24, 24, 3)


def test_missing_archive_says_what_to_get_and_where(tmp_path):
    empty = tmp_path / "manual"
    empty.mkdir()
    with pytest.raises(MissingDataError) as error:
        load_dataset(
            "caltech256", "train", 8, data_dir=str(tmp_path / "data"), manual_dir=str(empty)
        )
    message = str(error.value)
    for needed in (
        "256_ObjectCategories.tar",
        FOLDER_NAME,
        str(empty),
        "--manual_dir",
        "--data_dir",
    ):
        assert needed in message
    assert os.listdir(empty) == []
