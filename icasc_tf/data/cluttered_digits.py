"""Cluttered digits: the bundled, download-free visual-confusion benchmark (METHOD.md section 3).

Built from the 1,797 8x8 digits that ship inside scikit-learn, after the cluttered
translated MNIST of Mnih et al. (2014) used by the painless-attention paper: one upscaled
target digit and D upscaled crops of digits of *other* classes on a blank canvas. The
crops are pieces of real strokes, so they look like parts of the target's competitors,
which is the confusion ICASC is meant to reduce.

Distractors are 4x4 source crops by default (8x8 pixels on the canvas, half the target's
side). Measured with a small CIFAR ResNet (3 stages of 16/32/64 channels, SGD, 10 epochs,
2 CPU cores): 6x6 crops (three quarters of a digit) left it at 36% train / 18% test accuracy;
4x4 crops give 95% / 86% in about three minutes.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

NUM_CLASSES = 10
SOURCE_SIZE = 8  # load_digits images are 8x8
SOURCE_MAX = 16.0  # and hold integers in [0, 16]
_SPLIT_IDS = {"train": 0, "test": 1}


@dataclasses.dataclass(eq=False)
class ClutteredDigitsConfig(tfds.core.BuilderConfig):
    """Sizes, counts and seed of a cluttered-digits variant (each is its own TFDS config)."""

    canvas_size: int = 32
    scale: int = 2
    num_distractors: int = 6
    distractor_crop: int = 4
    num_train: int = 10_000
    num_test: int = 2_000
    test_fraction: float = 0.25
    data_seed: int = 0

    def __post_init__(self):
        # Checked here so that a bad option fails at once, not in the middle of generation.
        target_side = SOURCE_SIZE * self.scale
        problems = []
        if self.scale < 1:
            problems.append(f"scale={self.scale} must be >= 1")
        if not 1 <= self.distractor_crop <= SOURCE_SIZE:
            problems.append(f"distractor_crop={self.distractor_crop} must be in [1, {SOURCE_SIZE}]")
        if self.canvas_size < target_side:
            problems.append(
                f"canvas_size={self.canvas_size} must be >= the upscaled target ({target_side})"
            )
        if self.num_distractors < 0 or self.num_train < 1 or self.num_test < 1:
            problems.append("num_distractors must be >= 0 and num_train, num_test >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            problems.append(f"test_fraction={self.test_fraction} must be in (0, 1)")
        if problems:
            raise ValueError("Invalid cluttered_digits config: " + "; ".join(problems) + ".")


DEFAULT_CONFIG = ClutteredDigitsConfig(
    name="default",
    description="32x32x3 canvas, 16x16 target, 6 distractors of 4x4 crops, 10k train, 2k test.",
)
_OPTION_NAMES = tuple(
    f.name
    for f in dataclasses.fields(ClutteredDigitsConfig)
    if f.name not in {f2.name for f2 in dataclasses.fields(tfds.core.BuilderConfig)}
)


def make_config(**options) -> ClutteredDigitsConfig:
    """Returns the config for these options, named after the ones that differ from the default.

    The name becomes part of the TFDS data path, so different options never share files.
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(
            f"Unknown cluttered_digits option(s) {unknown}; valid options: {list(_OPTION_NAMES)}."
        )
    changed = {k: v for k, v in options.items() if v != getattr(DEFAULT_CONFIG, k)}
    if not changed:
        return DEFAULT_CONFIG
    name = "_".join(f"{key}{value}" for key, value in sorted(changed.items()))
    return dataclasses.replace(
        DEFAULT_CONFIG, name=name, description=f"custom: {changed}", **changed
    )


@functools.lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits as float images in [0, 1] [N, 8, 8] and int labels [N]."""
    digits = load_digits()
    return (digits.images / SOURCE_MAX).astype(np.float32), digits.target.astype(np.int64)


def source_pools(config: ClutteredDigitsConfig) -> dict[str, np.ndarray]:
    """Sorted indices into `source_digits()` for each split: disjoint, stratified, seeded."""
    return _source_pools(config.test_fraction, config.data_seed)


@functools.lru_cache(maxsize=8)
def _source_pools(test_fraction: float, data_seed: int) -> dict[str, np.ndarray]:
    _, labels = source_digits()
    train, test = train_test_split(
        np.arange(len(labels)), test_size=test_fraction, stratify=labels, random_state=data_seed
    )
    return {"train": np.sort(train), "test": np.sort(test)}


@dataclasses.dataclass(frozen=True)
class Composite:
    """One generated example; `target_layer` is kept for tests and figures, not stored by TFDS."""

    image: np.ndarray  # uint8 [S, S, 3]
    label: int
    box: np.ndarray  # float32 [4], normalised [ymin, xmin, ymax, xmax], tight around the ink
    source_indices: np.ndarray  # int32 [1 + D]: target first, then the distractors
    target_layer: np.ndarray  # float32 [S, S] in [0, 1]: the target alone on the canvas


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Composites by maximum, so that no stroke erases another (as in cluttered MNIST)."""
    height, width = patch.shape
    region = canvas[top : top + height, left : left + width]
    np.maximum(region, patch, out=region)


def render_example(config: ClutteredDigitsConfig, split: str, index: int) -> Composite:
    """Draws example `index` of `split`; it depends only on (data_seed, split, index).

    Target classes cycle through 0..9 so every split is exactly balanced (up to its remainder).
    """
    images, labels = source_digits()
    pool = source_pools(config)[split]
    rng = np.random.default_rng([config.data_seed, _SPLIT_IDS[split], index])
    size, scale = config.canvas_size, config.scale
    upscale = np.ones((scale, scale), np.float32)

    label = index % NUM_CLASSES
    target_index = rng.choice(pool[labels[pool] == label])
    target = np.kron(images[target_index], upscale)
    top, left = rng.integers(0, size - target.shape[0], size=2, endpoint=True)
    target_layer = np.zeros((size, size), np.float32)
    _paste(target_layer, target, top, left)
    canvas = target_layer.copy()

    others = pool[labels[pool] != label]
    distractor_indices = rng.choice(others, size=config.num_distractors)
    crop = config.distractor_crop
    for distractor_index in distractor_indices:
        y, x = rng.integers(0, SOURCE_SIZE - crop, size=2, endpoint=True)
        piece = np.kron(images[distractor_index, y : y + crop, x : x + crop], upscale)
        piece_top, piece_left = rng.integers(0, size - piece.shape[0], size=2, endpoint=True)
        _paste(canvas, piece, piece_top, piece_left)

    rows = np.flatnonzero(target_layer.any(axis=1))
    cols = np.flatnonzero(target_layer.any(axis=0))
    box = np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.float32) / size
    gray = np.round(canvas * 255.0).astype(np.uint8)
    return Composite(
        image=np.repeat(gray[:, :, None], 3, axis=2),
        label=int(label),
        box=box,
        source_indices=np.concatenate([[target_index], distractor_indices]).astype(np.int32),
        target_layer=target_layer,
    )


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder: `tfds.load("cluttered_digits")` works once `icasc_tf.data` is imported."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [DEFAULT_CONFIG]

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        size = config.canvas_size
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(NUM_CLASSES)]),
                    "bbox": tfds.features.BBoxFeature(),
                    "source_indices": tfds.features.Tensor(
                        shape=(1 + config.num_distractors,), dtype=np.int32
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Everything comes from scikit-learn: nothing to download.
        config = self.builder_config
        return {
            "train": self._generate_examples("train", config.num_train),
            "test": self._generate_examples("test", config.num_test),
        }

    def _generate_examples(self, split: str, num_examples: int):
        for index in range(num_examples):
            example = render_example(self.builder_config, split, index)
            yield index, {
                "image": example.image,
                "label": example.label,
                "bbox": tfds.features.BBox(*example.box.tolist()),
                "source_indices": example.source_indices,
            }
