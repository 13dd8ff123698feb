"""Fashion-MNIST read from its four original files: real images with no download at run time.

Debian's package `dataset-fashion-mnist` installs the files Zalando Research published
(70,000 28x28 grayscale product photographs, 10 classes) in `DEBIAN_DIR`. The builder here is
TFDS's own `fashion_mnist` (its features, class names, version and example order) with one
change: the files come from a folder (`--manual_dir`, else `DEBIAN_DIR`) instead of a
download. The files are checked before anything is generated, so a truncated or wrong file
gets one clear error rather than a failure half-way through preparation.
"""

from __future__ import annotations

import functools
import gzip
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from icasc_tf.data.errors import MissingDataError

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
APT_COMMAND = "apt-get install dataset-fashion-mnist"
# (images, labels) per split, the names Zalando Research publishes them under.
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FILE_NAMES = tuple(name for pair in FILES.values() for name in pair)
NUM_EXAMPLES = {"train": 60_000, "test": 10_000}  # in the original files
SIDE = 28
# TFDS's names of the classes, by label (tests check them against TFDS's builder).
CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# IDX magic numbers: unsigned bytes, with 3 dimensions (images) or 1 (labels).
_MAGIC = {3: 0x00000803, 1: 0x00000801}

INSTRUCTIONS = (
    f"Fashion-MNIST's four files are installed by Debian's package: `{APT_COMMAND}` "
    f"(as root, after `apt-get update`) puts them in {DEBIAN_DIR}, where they are found "
    f"without any flag. Elsewhere, download {', '.join(FILE_NAMES)} from "
    "https://github.com/zalandoresearch/fashion-mnist and pass their folder as `--manual_dir`.\n"
)


class CorruptFileError(MissingDataError):
    """A source file is there but cannot be what it claims to be (truncated, wrong format)."""


def default_folder() -> str | None:
    """`DEBIAN_DIR` when the Debian package is installed, else None."""
    return DEBIAN_DIR if os.path.isdir(DEBIAN_DIR) else None


def read_idx(path: str, dims: int) -> np.ndarray:
    """The uint8 array of a gzipped IDX file: [N, 28, 28] images (dims=3) or [N] labels (1)."""
    try:
        with gzip.open(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:  # gzip.BadGzipFile is an OSError
        raise CorruptFileError(
            f"{path} is not a complete gzip file ({error}). It is truncated or damaged: "
            f"reinstall it (`apt-get install --reinstall dataset-fashion-mnist`) or download "
            f"it again.\n{INSTRUCTIONS}"
        ) from error
    header = 4 * (1 + dims)
    fields = np.frombuffer(data[:header], ">u4").tolist() if len(data) >= header else []
    shape = tuple(fields[1:])
    if (
        not fields
        or fields[0] != _MAGIC[dims]
        or shape[1:] != (SIDE,) * (dims - 1)
        or len(data) != header + int(np.prod(shape))
    ):
        raise CorruptFileError(
            f"{path} is not a Fashion-MNIST IDX file of {'28x28 images' if dims == 3 else 'labels'}: "
            f"header {fields}, {len(data):,} bytes once decompressed. Replace it with the "
            f"original file.\n{INSTRUCTIONS}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes uint8 `array` ([N, 28, 28] or [N]) as a gzipped IDX file (for tests and tools)."""
    array = np.asarray(array, np.uint8)
    header = np.array([_MAGIC[array.ndim], *array.shape], ">u4").tobytes()
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.tobytes())


def missing_files(folder: str | None) -> list[str]:
    if not folder:
        return list(FILE_NAMES)
    return [name for name in FILE_NAMES if not os.path.isfile(os.path.join(folder, name))]


def find_folder(folder: str | None) -> str:
    """`folder` if it holds the four files, else Debian's folder if that does; else one error."""
    for candidate in (folder, default_folder()):
        if candidate and not missing_files(candidate):
            return os.fspath(candidate)
    looked = [f for f in (folder, DEBIAN_DIR) if f]
    raise MissingDataError(
        f"Fashion-MNIST's files ({', '.join(FILE_NAMES)}) are not in "
        f"{' nor in '.join(looked)}.\n{INSTRUCTIONS}"
    )


def manual_folder(dl_manager) -> str:
    """The folder of the files for a TFDS builder: its manual folder, else Debian's."""
    try:
        folder = os.fspath(dl_manager.manual_dir)
    except (AssertionError, ValueError):  # TFDS: no manual folder, or an empty one
        folder = None
    return find_folder(folder)


@functools.lru_cache(maxsize=2)
def load_split(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels int64 [N] of a split, from the files in `folder`."""
    missing = missing_files(folder)
    if missing:
        raise MissingDataError(
            f"Fashion-MNIST files missing in {folder}: {', '.join(missing)}.\n{INSTRUCTIONS}"
        )
    images_path, labels_path = (os.path.join(folder, name) for name in FILES[split])
    images = read_idx(images_path, 3)
    labels = read_idx(labels_path, 1).astype(np.int64)
    if len(images) != len(labels) or labels.max(initial=0) >= len(CLASS_NAMES):
        raise CorruptFileError(
            f"{images_path} and {labels_path} do not belong together: {len(images)} images, "
            f"{len(labels)} labels (largest {labels.max(initial=0)}; 10 classes). Replace them "
            f"with the original files.\n{INSTRUCTIONS}"
        )
    return images, labels


class FashionMnistFiles(tfds.builder_cls("fashion_mnist")):
    """TFDS's `fashion_mnist`, generated from the four files in the manual folder."""

    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _log_download_bytes(self) -> None:
        # TFDS would print "Downloading ... Unknown size": nothing is downloaded here.
        print(f"Preparing fashion_mnist from its files into {self.data_dir}, once.", flush=True)

    def _log_download_done(self) -> None:
        print("Prepared fashion_mnist; later runs reuse it.", flush=True)

    def _split_generators(self, dl_manager):
        folder = manual_folder(dl_manager)
        arrays = {split: load_split(folder, split) for split in FILES}  # checked before writing
        return {split: self._generate_examples(*arrays[split]) for split in FILES}

    def _generate_examples(self, images, labels):
        for index, (image, label) in enumerate(zip(images, labels)):
            yield index, {"image": image[:, :, None], "label": int(label)}
