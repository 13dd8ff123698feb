"""What each supported dataset is in TFDS, how it is augmented, and how to get its files.

One `DatasetSpec` per name in `SPECS` (add a dataset there: BUILD_NOTES.md, "How to add… A
dataset"); `prepare_builder` turns a name into a prepared TFDS builder or a `MissingDataError`
that says exactly which files to fetch and where to put them. The augmentations a spec names
are those of `augmentations.AUGMENTATION_SPECS`, re-exported here with their names.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import tensorflow as tf
import tensorflow_datasets as tfds

from icasc_tf.data import caltech256, cluttered_digits, fashion_mnist, image_folder
from icasc_tf.data.augmentations import AUGMENTATION_SPECS, AUGMENTATIONS, Augmentation, get_augmentation
from icasc_tf.data.errors import MissingDataError


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """The facts the pipeline needs about one dataset."""

    tfds_name: str
    image_size: int  # default output side (the papers' input size)
    augmentation: str  # one of AUGMENTATIONS
    test_split: str  # the split results are reported on (the papers' test split)
    # An official labelled validation split to choose models on (ImageNet, VOC: the same split
    # the papers report on, having no labelled test split); None: a share of train is held out.
    validation_split: str | None = None
    label_key: str = "label"
    multi_label: bool = False  # labels are a Sequence(ClassLabel) turned into a multi-hot vector
    box_key: str | None = None
    label_name_key: str | None = None  # a text feature naming the class, where ClassLabel does not
    unlabelled_splits: tuple[str, ...] = ()  # splits without public labels
    in_memory: bool = False  # small enough to cache decoded in memory
    manual_files: tuple[tuple[str, ...], ...] = ()  # groups of alternatives, all groups required
    download_files: tuple[str, ...] = ()  # archives TFDS downloads; also accepted in manual_dir
    make_config: Callable[..., tfds.core.BuilderConfig] | None = None
    # make_config takes the manual_dir first: the config is derived from the folder (image_folder).
    config_from_manual_dir: bool = False
    instructions: str = ""
    # Where the source files are looked for when no manual_dir is given (None: TFDS's folder).
    default_manual_dir: Callable[[], str | None] | None = None
    # Grayscale images (MNIST-like) are zero-padded to this side and repeated to RGB; 0: as is.
    gray_pad_to: int = 0
    # The paper's recipe a run of this dataset takes as defaults (flags/<recipe>.flags; see
    # icasc_tf.train.recipes); None: the run's own defaults, no recipe.
    recipe: str | None = None


SPECS: dict[str, DatasetSpec] = {
    "cluttered_digits": DatasetSpec(
        tfds_name="cluttered_digits",
        image_size=32,
        augmentation="none",
        test_split="test",
        box_key="bbox",
        in_memory=True,
        make_config=cluttered_digits.make_config,
    ),
    "cluttered_fashion": DatasetSpec(
        tfds_name="cluttered_digits",
        image_size=96,
        augmentation="none",
        test_split="test",
        box_key="bbox",
        in_memory=True,
        manual_files=tuple((name,) for name in fashion_mnist.FILE_NAMES),
        make_config=lambda **options: cluttered_digits.make_config(
            **{"source": "fashion_mnist", **options}
        ),
        instructions=fashion_mnist.INSTRUCTIONS,
        default_manual_dir=fashion_mnist.default_folder,
    ),
    "fashion_mnist": DatasetSpec(
        tfds_name="fashion_mnist_files",
        image_size=32,
        augmentation="cifar",
        test_split="test",
        in_memory=True,
        manual_files=tuple((name,) for name in fashion_mnist.FILE_NAMES),
        instructions=fashion_mnist.INSTRUCTIONS,
        default_manual_dir=fashion_mnist.default_folder,
        gray_pad_to=32,
    ),
    "cifar100": DatasetSpec(
        tfds_name="cifar100",
        image_size=32,
        augmentation="cifar",
        test_split="test",
        in_memory=True,
        download_files=("cifar-100-binary.tar.gz",),
        recipe="cifar100_resnet110",
    ),
    "caltech256": DatasetSpec(
        tfds_name="caltech256",
        image_size=299,
        augmentation="squash",
        test_split="test",
        manual_files=((caltech256.FOLDER_NAME, caltech256.ARCHIVE_NAME),),
        make_config=caltech256.make_config,
        instructions=caltech256.MANUAL_DOWNLOAD_INSTRUCTIONS,
        recipe="caltech256_resnet18_n30",
    ),
    "imagenet2012": DatasetSpec(
        tfds_name="imagenet2012",
        image_size=224,
        augmentation="inception",
        test_split="validation",
        validation_split="validation",
        manual_files=(("ILSVRC2012_img_train.tar",), ("ILSVRC2012_img_val.tar",)),
        instructions="Register at https://image-net.org/download-images to get them.\n",
        recipe="imagenet2012_resnet18",
    ),
    "cub200": DatasetSpec(
        tfds_name="caltech_birds2011",
        image_size=448,
        augmentation="squash",
        test_split="test",
        box_key="bbox",
        label_name_key="label_name",
        download_files=("CUB_200_2011.tgz", "segmentations.tgz"),
        recipe="cub200_resnet50",
    ),
    "voc2012": DatasetSpec(
        tfds_name="voc/2012",
        image_size=299,
        augmentation="squash",
        test_split="validation",
        validation_split="validation",
        label_key="labels",
        multi_label=True,
        unlabelled_splits=("test",),
        download_files=("VOCtrainval_11-May-2012.tar", "VOC2012test.tar"),
        recipe="voc2012_resnet18",
    ),
    "image_folder": DatasetSpec(
        tfds_name="image_folder",
        image_size=224,
        augmentation="squash",
        test_split="test",
        make_config=image_folder.make_config,
        config_from_manual_dir=True,
        instructions=image_folder.INSTRUCTIONS,
    ),
}
# The names as imported (choices of command-line flags); lookups read `SPECS` itself.
DATASETS: tuple[str, ...] = tuple(SPECS)


def get_spec(name: str) -> DatasetSpec:
    if name not in SPECS:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {tuple(SPECS)}.")
    return SPECS[name]


def datasets_augmented_by(augmentations) -> list[str]:
    """The datasets whose own augmentation is one of `augmentations` (for messages and help texts)."""
    return [name for name, spec in SPECS.items() if spec.augmentation in augmentations]


def default_data_dir(data_dir: str | None) -> str:
    """`data_dir` or TFDS's default (`$TFDS_DATA_DIR`, else ~/tensorflow_datasets)."""
    return os.path.expanduser(data_dir or tfds.core.constants.DATA_DIR)


def _missing_files(spec: DatasetSpec, manual_dir: str, groups) -> list[str]:
    return [
        " or ".join(group)
        for group in groups
        if not any(os.path.exists(os.path.join(manual_dir, name)) for name in group)
    ]


def _missing_data_message(name: str, spec: DatasetSpec, files: list[str], manual_dir: str) -> str:
    return (
        f"Dataset {name!r} ({spec.tfds_name}) is not prepared and its source files are missing: "
        f"{', '.join(files)}.\n"
        f"{spec.instructions}"
        + (
            "TFDS downloads them by itself on a machine with network access.\n"
            if spec.download_files
            else ""
        )
        + f"Put them in {manual_dir} (the manual directory; choose another with `manual_dir=` or "
        f"`--manual_dir DIR`), or point `data_dir=` / `--data_dir DIR` at a folder where "
        f"`tfds build {spec.tfds_name}` was already run."
    )


def builder_config(name: str, options: dict, manual_dir: str | None = None) -> tfds.core.BuilderConfig | None:
    """The builder config for `options` (and, for image_folder, the folder); only datasets built here take options."""
    spec = get_spec(name)
    if spec.config_from_manual_dir:
        return spec.make_config(manual_dir, **options)
    if spec.make_config is not None:
        return spec.make_config(**options)
    if options:
        raise ValueError(
            f"Dataset {name!r} takes no options, got {sorted(options)}; options exist for "
            f"{[n for n, s in SPECS.items() if s.make_config is not None]}."
        )
    return None


def prepare_builder(
    name: str, data_dir: str | None, manual_dir: str | None, options: dict
) -> tfds.core.DatasetBuilder:
    """The TFDS builder of `name`, prepared in `data_dir` (generating or downloading if needed)."""
    spec = get_spec(name)
    config = builder_config(name, options, manual_dir)
    config_kwargs = {} if config is None else {"config": config}  # "voc/2012" names its config
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir, **config_kwargs)
    manual_dir = (
        manual_dir
        or (spec.default_manual_dir and spec.default_manual_dir())
        or os.path.join(os.fspath(builder.data_dir_root), "downloads", "manual")
    )
    if not builder.is_prepared():
        missing = _missing_files(spec, manual_dir, spec.manual_files)
        if missing:
            raise MissingDataError(_missing_data_message(name, spec, missing, manual_dir))
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    try:
        builder.download_and_prepare(download_config=download_config)
    except (OSError, tf.errors.NotFoundError) as error:
        if not spec.download_files:
            raise
        files = _missing_files(spec, manual_dir, [(f,) for f in spec.download_files])
        message = _missing_data_message(name, spec, files or list(spec.download_files), manual_dir)
        raise MissingDataError(f"{message}\nThe download failed with: {error}") from error
    return builder


__all__ = [
    "AUGMENTATIONS",
    "AUGMENTATION_SPECS",
    "DATASETS",
    "SPECS",
    "Augmentation",
    "DatasetSpec",
    "builder_config",
    "datasets_augmented_by",
    "default_data_dir",
    "get_augmentation",
    "get_spec",
    "prepare_builder",
]
