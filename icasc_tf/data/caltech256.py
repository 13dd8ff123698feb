"""Caltech-256 as a TFDS builder over the official archive, with the papers' per-class split.

TFDS has no Caltech-256 builder and the dataset has no official split: the papers draw 25
test and N (30 or 60) train images per class at random and drop class 257 'clutter'. The
draw here is seeded per class, so one seed always gives the same split.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import tarfile
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from icasc_tf.data.errors import MissingDataError

NUM_CLASSES = 256
FOLDER_NAME = "256_ObjectCategories"
ARCHIVE_NAME = FOLDER_NAME + ".tar"
CLUTTER_CLASS = "257.clutter"
IMAGE_EXTENSIONS = (".jpg", ".jpeg")
MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Get `{ARCHIVE_NAME}` (1.2 GB) from the Caltech data repository
(https://data.caltech.edu/records/nyy15-4j048), and put it, or the `{FOLDER_NAME}/` folder
extracted from it, in the manual directory: `<data_dir>/downloads/manual/` by default, or any
folder passed as `manual_dir` (command line: `--manual_dir DIR`).
"""
_log = logging.getLogger(__name__)


@dataclasses.dataclass(eq=False)
class Caltech256Config(tfds.core.BuilderConfig):
    """How many images per class go to each split, and the seed of the draw."""

    train_per_class: int = 30
    test_per_class: int = 25
    data_seed: int = 0

    def __post_init__(self):
        if self.train_per_class < 1 or self.test_per_class < 1:
            raise ValueError(
                "Invalid caltech256 config: train_per_class and test_per_class must be >= 1, got "
                f"{self.train_per_class} and {self.test_per_class}."
            )


PRESET_CONFIGS = (
    Caltech256Config(name="train30", description="30 train, 25 test images per class."),
    Caltech256Config(
        name="train60", train_per_class=60, description="60 train, 25 test images per class."
    ),
)
_OPTION_NAMES = ("train_per_class", "test_per_class", "data_seed")


def make_config(**options) -> Caltech256Config:
    """Returns the preset matching these options (default: `train30`), or a custom named config."""
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(
            f"Unknown caltech256 option(s) {unknown}; valid options: {list(_OPTION_NAMES)}."
        )
    wanted = dataclasses.replace(PRESET_CONFIGS[0], **options)
    for preset in PRESET_CONFIGS:
        if all(getattr(preset, key) == getattr(wanted, key) for key in _OPTION_NAMES):
            return preset
    name = f"train{wanted.train_per_class}_test{wanted.test_per_class}_seed{wanted.data_seed}"
    return dataclasses.replace(wanted, name=name, description=f"custom: {options}")


def split_files(
    files_by_class: Mapping[str, Sequence[str]],
    train_per_class: int,
    test_per_class: int,
    data_seed: int,
) -> dict[str, list[tuple[str, int]]]:
    """Draws (file, label) pairs per split: test first, then train, from a seeded shuffle per class.

    Labels follow the sorted class names. A class with too few images keeps its full test quota
    and gives train what is left (Caltech-256 has classes of 80 images, fewer than 25 + 60).
    """
    splits: dict[str, list[tuple[str, int]]] = {"train": [], "test": []}
    for label, class_name in enumerate(sorted(files_by_class)):
        files = sorted(files_by_class[class_name])
        order = np.random.default_rng([data_seed, label]).permutation(len(files))
        shuffled = [files[i] for i in order]
        test = shuffled[:test_per_class]
        train = shuffled[test_per_class : test_per_class + train_per_class]
        if len(test) < test_per_class or len(train) < train_per_class:
            _log.warning(
                "caltech256 class %s has %d readable images: %d test, %d train (asked %d + %d).",
                class_name,
                len(files),
                len(test),
                len(train),
                test_per_class,
                train_per_class,
            )
        splits["test"] += [(name, label) for name in test]
        splits["train"] += [(name, label) for name in train]
    return splits


def _class_of(relative_path: str) -> str:
    return relative_path.split("/")[0]


def _is_image(relative_path: str) -> bool:
    parts = relative_path.split("/")
    return len(parts) == 2 and parts[1].lower().endswith(IMAGE_EXTENSIONS)


def open_source(manual_dir: str) -> tuple[list[str], Callable[[str], bytes]]:
    """Lists `class/file` image paths in the extracted folder or the tar, and returns a reader."""
    folder = os.path.join(manual_dir, FOLDER_NAME)
    archive = os.path.join(manual_dir, ARCHIVE_NAME)
    if os.path.isdir(folder):
        paths = [
            f"{class_dir}/{name}"
            for class_dir in os.listdir(folder)
            if os.path.isdir(os.path.join(folder, class_dir))
            for name in os.listdir(os.path.join(folder, class_dir))
        ]

        def read(path: str) -> bytes:
            with open(os.path.join(folder, path), "rb") as file:
                return file.read()

    elif os.path.isfile(archive):
        tar = tarfile.open(archive)  # Kept open for the reads below; closed with the process.
        members = {
            member.name.split(FOLDER_NAME + "/", 1)[-1]: member
            for member in tar.getmembers()
            if member.isfile()
        }
        paths = list(members)

        def read(path: str) -> bytes:
            return tar.extractfile(members[path]).read()

    else:
        raise MissingDataError(
            f"Caltech-256 not found: neither {folder}/ nor {archive} exists.\n"
            + MANUAL_DOWNLOAD_INSTRUCTIONS
        )
    images = sorted(p for p in paths if _is_image(p) and _class_of(p) != CLUTTER_CLASS)
    return images, read


def readable_image(data: bytes) -> bool:
    """Whether PIL decodes the whole file (a truncated JPEG fails only on full decode)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return False
    return True


def as_jpeg_feature(data: bytes):
    """The stored bytes as they are when TensorFlow decodes them to RGB; else a converted image."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L"):
            return data
        return image.convert("RGB")


class Caltech256(tfds.core.GeneratorBasedBuilder):
    """TFDS builder reading `256_ObjectCategories(.tar)` from the manual directory."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = list(PRESET_CONFIGS)
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                    "image/filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://data.caltech.edu/records/nyy15-4j048",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        try:
            manual_dir = os.fspath(dl_manager.manual_dir)
        except AssertionError as error:  # TFDS's way of saying the manual dir is missing or empty.
            raise MissingDataError(
                f"Caltech-256 not found: {error}\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
            ) from error
        paths, read = open_source(manual_dir)
        files_by_class: dict[str, list[str]] = {}
        skipped = []
        for path in paths:
            files_by_class.setdefault(_class_of(path), [])
            if readable_image(read(path)):
                files_by_class[_class_of(path)].append(path)
            else:
                skipped.append(path)
                _log.warning("caltech256: skipping unreadable image %s", path)
        if len(files_by_class) != NUM_CLASSES:
            raise MissingDataError(
                f"Caltech-256 in {manual_dir} has {len(files_by_class)} class folders with images "
                f"(without {CLUTTER_CLASS}); expected {NUM_CLASSES}. Is the archive complete?\n"
                + MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        if skipped:
            _log.warning("caltech256: skipped %d unreadable image(s).", len(skipped))
        self.info.features["label"].names = [
            name.split(".", 1)[-1] for name in sorted(files_by_class)
        ]
        self.info.metadata["skipped_images"] = skipped
        config = self.builder_config
        splits = split_files(
            files_by_class, config.train_per_class, config.test_per_class, config.data_seed
        )
        return {name: self._generate_examples(pairs, read) for name, pairs in splits.items()}

    def _generate_examples(self, pairs: list[tuple[str, int]], read: Callable[[str], bytes]):
        for path, label in pairs:
            yield path, {
                "image": as_jpeg_feature(read(path)),
                "label": label,
                "image/filename": path,
            }
