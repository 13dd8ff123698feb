"""Cluttered digits: the bundled, download-free visual-confusion benchmark (docs/method.md §3).

Built from the 1,797 8x8 digits that ship inside scikit-learn, after the cluttered
translated MNIST of Mnih et al. (2014) used by the painless-attention paper: one upscaled
target digit and D upscaled crops of digits of *other* classes on a blank canvas. The
crops are pieces of real strokes, so they look like parts of the target's competitors,
which is the confusion ICASC is meant to reduce.

Distractors are 4x4 source crops by default (8x8 pixels on the canvas, half the target's
side). Measured with a small CIFAR ResNet (3 stages of 16/32/64 channels, SGD, 10 epochs,
2 CPU cores): 6x6 crops (three quarters of a digit) left it at 36% train / 18% test accuracy;
4x4 crops give 95% / 86% in about three minutes.

The `textured` config (option `background=textured`) is the same data with a background:
every pixel of the canvas carries dim structure (digit fragments plus noise, at most
`background_contrast` of full scale) under the target and the distractors. On the blank
canvas an attention map can satisfy ICASC's separation loss by moving onto empty pixels;
natural images have no empty pixels, and neither does this config.

The `fashion` config (option `source=fashion_mnist`) draws the target and the distractor
crops from Fashion-MNIST's real product photographs instead (training composites from its
train split, test composites from its test split), on a 96x96 canvas so that a stride-32
ImageNet backbone still has a 3x3 last feature map. The files are read from the manual
folder (Debian's `dataset-fashion-mnist` by default; see `icasc_tf.data.fashion_mnist`).
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from icasc_tf.data import fashion_mnist

NUM_CLASSES = 10
SOURCE_SIZE = 8  # load_digits images are 8x8
SOURCE_MAX = 16.0  # and hold integers in [0, 16]
_SPLIT_IDS = {"train": 0, "test": 1}
BACKGROUNDS = ("empty", "textured")
SOURCES = ("digits", "fashion_mnist")
# Whole preparation (drawing, PNG encoding, writing, shuffling) of 12,000 32x32 examples on a
# busy 2-core CPU: 7.2 s empty (4.5 s idle), 15 s textured; only used to tell the user what to
# expect, and the time it took is printed at the end.
_SECONDS_PER_EXAMPLE = {"empty": 0.6e-3, "textured": 1.3e-3}
_TEXTURE_CONTRAST = 0.3  # default peak of the textured background, digits' ink being 1.0
# Shares of that peak: a floor (no pixel is black), per-pixel noise (no window is flat) and
# digit fragments (stroke-like structure); they add up to 1.
_TEXTURE_FLOOR, _TEXTURE_NOISE, _TEXTURE_FRAGMENTS = 0.15, 0.35, 0.5


def source_side_of(source: str) -> int:
    """The side of the source items (8 for digits, 28 for Fashion-MNIST)."""
    return SOURCE_SIZE if source == "digits" else fashion_mnist.SIDE


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
    background: str = "empty"
    background_contrast: float = _TEXTURE_CONTRAST
    source: str = "digits"

    def __post_init__(self):
        # Checked here so that a bad option fails at once, not in the middle of generation.
        problems = []
        if self.source not in SOURCES:
            problems.append(f"source={self.source!r} must be one of {SOURCES}")
        source_side = source_side_of(self.source)
        target_side = source_side * self.scale
        if self.scale < 1:
            problems.append(f"scale={self.scale} must be >= 1")
        if not 1 <= self.distractor_crop <= source_side:
            problems.append(f"distractor_crop={self.distractor_crop} must be in [1, {source_side}]")
        if self.canvas_size < target_side:
            problems.append(
                f"canvas_size={self.canvas_size} must be >= the upscaled target ({target_side})"
            )
        if self.num_distractors < 0 or self.num_train < 1 or self.num_test < 1:
            problems.append("num_distractors must be >= 0 and num_train, num_test >= 1")
        if not 0.0 < self.test_fraction < 1.0:
            problems.append(f"test_fraction={self.test_fraction} must be in (0, 1)")
        elif self.source != "digits" and self.test_fraction != 0.25:
            problems.append("test_fraction applies only to source=digits (Fashion-MNIST has splits)")
        if self.background not in BACKGROUNDS:
            problems.append(f"background={self.background!r} must be one of {BACKGROUNDS}")
        elif self.background == "empty" and self.background_contrast != _TEXTURE_CONTRAST:
            problems.append("background_contrast applies only with background=textured")
        if not 0.0 < self.background_contrast < 1.0:
            problems.append(
                f"background_contrast={self.background_contrast} must be in (0, 1): "
                "a fraction of the digits' ink"
            )
        if problems:
            raise ValueError("Invalid cluttered_digits config: " + "; ".join(problems) + ".")


DEFAULT_CONFIG = ClutteredDigitsConfig(
    name="default",
    description="32x32x3 canvas, 16x16 target, 6 distractors of 4x4 crops, 10k train, 2k test.",
)
TEXTURED_CONFIG = dataclasses.replace(
    DEFAULT_CONFIG,
    name="textured",
    description="The default examples over a dense, dim background of digit fragments and noise.",
    background="textured",
)
FASHION_CONFIG = ClutteredDigitsConfig(
    name="fashion",
    description=(
        "Fashion-MNIST: 96x96x3 canvas, 56x56 target item, 4 distractors of 14x14 crops of "
        "items of other classes, 10k train composites from its train split, 2k test from test."
    ),
    source="fashion_mnist",
    canvas_size=96,
    scale=2,
    num_distractors=4,
    distractor_crop=14,
)
FASHION_TEXTURED_CONFIG = dataclasses.replace(
    FASHION_CONFIG,
    name="fashion_textured",
    description="The fashion examples over a dense, dim background of item fragments and noise.",
    background="textured",
)
# The named config each (source, background) starts from; other options are named after it.
_BASE_CONFIGS = {
    ("digits", "empty"): DEFAULT_CONFIG,
    ("digits", "textured"): TEXTURED_CONFIG,
    ("fashion_mnist", "empty"): FASHION_CONFIG,
    ("fashion_mnist", "textured"): FASHION_TEXTURED_CONFIG,
}
_OPTION_NAMES = tuple(
    f.name
    for f in dataclasses.fields(ClutteredDigitsConfig)
    if f.name not in {f2.name for f2 in dataclasses.fields(tfds.core.BuilderConfig)}
)


def make_config(**options) -> ClutteredDigitsConfig:
    """Returns the config for these options, named after the ones that differ from its base.

    The base is the named config of the `source` and `background` ("default", "textured",
    "fashion", "fashion_textured"); other options are appended to a named base's name
    ("textured_num_train60"). The name becomes part of the TFDS data path, so different
    options never share files.
    """
    unknown = sorted(set(options) - set(_OPTION_NAMES))
    if unknown:
        raise ValueError(
            f"Unknown cluttered_digits option(s) {unknown}; valid options: {list(_OPTION_NAMES)}."
        )
    background = options.pop("background", DEFAULT_CONFIG.background)
    source = options.pop("source", DEFAULT_CONFIG.source)
    if background not in BACKGROUNDS:
        raise ValueError(f"Invalid cluttered_digits background {background!r}: {BACKGROUNDS}.")
    if source not in SOURCES:
        raise ValueError(f"Invalid cluttered_digits source {source!r}: {SOURCES}.")
    base = _BASE_CONFIGS[(source, background)]
    changed = {k: v for k, v in options.items() if v != getattr(base, k)}
    if not changed:
        return base
    name = "_".join(f"{key}{value}" for key, value in sorted(changed.items()))
    if base is not DEFAULT_CONFIG:
        name = f"{base.name}_{name}"
    return dataclasses.replace(base, name=name, description=f"custom: {changed}", **changed)


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


@dataclasses.dataclass(frozen=True, eq=False)
class Source:
    """The items composites are drawn from, and which of them each split may use."""

    images: np.ndarray  # float32 [N, side, side] in [0, 1]
    labels: np.ndarray  # int64 [N]
    pools: dict[str, np.ndarray]  # split -> sorted indices into images; the pools are disjoint

    @property
    def side(self) -> int:
        return self.images.shape[1]


def load_source(config: ClutteredDigitsConfig, folder: str | None = None) -> Source:
    """The source of `config`; Fashion-MNIST is read from `folder` (else Debian's folder)."""
    if config.source == "digits":
        images, labels = source_digits()
        return Source(images, labels, source_pools(config))
    return _fashion_source(fashion_mnist.find_folder(folder))


@functools.lru_cache(maxsize=2)
def _fashion_source(folder: str) -> Source:
    """Train items first, then test items; each split's composites use only its own items."""
    (train_images, train_labels), (test_images, test_labels) = (
        fashion_mnist.load_split(folder, split) for split in ("train", "test")
    )
    images = np.concatenate([train_images, test_images]).astype(np.float32) / 255.0
    num_train = len(train_labels)
    return Source(
        images=images,
        labels=np.concatenate([train_labels, test_labels]),
        pools={"train": np.arange(num_train), "test": np.arange(num_train, len(images))},
    )


@dataclasses.dataclass(frozen=True)
class Composite:
    """One generated example; the layers and `background_indices` are for tests and figures,
    not stored by TFDS."""

    image: np.ndarray  # uint8 [S, S, 3]
    label: int
    box: np.ndarray  # float32 [4], normalised [ymin, xmin, ymax, xmax], tight around the ink
    source_indices: np.ndarray  # int32 [1 + D]: target first, then the distractors
    target_layer: np.ndarray  # float32 [S, S] in [0, 1]: the target alone on the canvas
    background_layer: np.ndarray  # float32 [S, S]: the background alone (zeros when empty)
    background_indices: np.ndarray  # int32 [F]: digits the background's fragments come from


def _paste(canvas: np.ndarray, patch: np.ndarray, top: int, left: int) -> None:
    """Composites by maximum, so that no stroke erases another (as in cluttered MNIST)."""
    height, width = patch.shape
    region = canvas[top : top + height, left : left + width]
    np.maximum(region, patch, out=region)


def render_background(config, source: Source, pool, rng) -> tuple[np.ndarray, np.ndarray]:
    """A dim texture with structure in every pixel, and the items its fragments come from.

    Fragments are `distractor_crop` crops of digits of the split's pool, of every class (so
    the background says nothing about the label), upscaled like the digits and laid on a
    jittered grid that overlaps the canvas' edges, so they cover it; a floor and per-pixel
    noise fill what the strokes leave, so no pixel is black and no window is flat. The peak is
    `background_contrast`, below the digits' ink, so the target stays the brightest thing.
    """
    images = source.images
    size, scale, crop = config.canvas_size, config.scale, config.distractor_crop
    side = crop * scale
    step = max(1, (3 * side) // 4)  # fragments overlap by a quarter of their side
    starts = np.arange(-side // 2, size, step)
    num = len(starts) ** 2
    indices = rng.choice(pool, size=num)
    offsets = rng.integers(0, source.side - crop, size=(num, 2), endpoint=True)
    jitter = rng.integers(-(side // 4), side // 4, size=(num, 2), endpoint=True)
    margin = 2 * side  # fragments may stick out of the canvas; the margin is cut off
    fragments = np.zeros((size + 2 * margin, size + 2 * margin), np.float32)
    upscale = np.ones((scale, scale), np.float32)
    for k, (top, left) in enumerate(np.stack(np.meshgrid(starts, starts), -1).reshape(-1, 2)):
        y, x = offsets[k]
        piece = np.kron(images[indices[k], y : y + crop, x : x + crop], upscale)
        _paste(fragments, piece, margin + top + jitter[k, 0], margin + left + jitter[k, 1])
    fragments = fragments[margin : margin + size, margin : margin + size]
    noise = rng.random((size, size), dtype=np.float32)
    texture = _TEXTURE_FLOOR + _TEXTURE_NOISE * noise + _TEXTURE_FRAGMENTS * fragments
    return (config.background_contrast * texture).astype(np.float32), indices.astype(np.int32)


def render_example(
    config: ClutteredDigitsConfig, split: str, index: int, source: Source | None = None
) -> Composite:
    """Draws example `index` of `split`; it depends only on (data_seed, split, index).

    `source` defaults to `load_source(config)`; pass it to draw many examples at once.

    Target classes cycle through 0..9 so every split is exactly balanced (up to its remainder).
    A textured example is the empty-canvas example of the same index with its background
    drawn last and composited under it, so the two configs differ only by the background.
    """
    source = source or load_source(config)
    images, labels = source.images, source.labels
    pool = source.pools[split]
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
        y, x = rng.integers(0, source.side - crop, size=2, endpoint=True)
        piece = np.kron(images[distractor_index, y : y + crop, x : x + crop], upscale)
        piece_top, piece_left = rng.integers(0, size - piece.shape[0], size=2, endpoint=True)
        _paste(canvas, piece, piece_top, piece_left)

    background_layer = np.zeros_like(canvas)
    background_indices = np.zeros([0], np.int32)
    if config.background == "textured":
        background_layer, background_indices = render_background(config, source, pool, rng)
        np.maximum(canvas, background_layer, out=canvas)

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
        background_layer=background_layer,
        background_indices=background_indices,
    )


_HOMEPAGES = {
    "digits": "https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
}


def _class_names(source: str) -> list[str]:
    return list(fashion_mnist.CLASS_NAMES) if source == "fashion_mnist" else [
        str(d) for d in range(NUM_CLASSES)
    ]


def _generation_seconds(config: ClutteredDigitsConfig) -> int:
    """A rough duration of the first preparation, from rates measured on a 2-core CPU."""
    per_example = _SECONDS_PER_EXAMPLE[config.background] * (config.canvas_size / 32) ** 2
    return max(1, int(round(per_example * (config.num_train + config.num_test))))


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
    """TFDS builder: `tfds.load("cluttered_digits")` works once `icasc_tf.data` is imported."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [DEFAULT_CONFIG, TEXTURED_CONFIG, FASHION_CONFIG, FASHION_TEXTURED_CONFIG]
    MANUAL_DOWNLOAD_INSTRUCTIONS = "Only the fashion configs read files:\n" + (
        fashion_mnist.INSTRUCTIONS
    )

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        size = config.canvas_size
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                    "label": tfds.features.ClassLabel(names=_class_names(config.source)),
                    "bbox": tfds.features.BBoxFeature(),
                    "source_indices": tfds.features.Tensor(
                        shape=(1 + config.num_distractors,), dtype=np.int32
                    ),
                }
            ),
            supervised_keys=("image", "label"),
            homepage=_HOMEPAGES[config.source],
        )

    def _log_download_bytes(self) -> None:
        # TFDS prints "Downloading and preparing dataset Unknown size (download: Unknown
        # size, ...)" here, just before generation; nothing is downloaded, so say what happens.
        config = self.builder_config
        seconds = _generation_seconds(config)
        self._generation_started = time.monotonic()
        print(
            f"Generating the bundled cluttered_digits dataset (config {config.name}) into "
            f"{self.data_dir}: about {seconds} s, once.",
            flush=True,
        )

    def _log_download_done(self) -> None:
        # Replaces TFDS's "Dataset ... downloaded and prepared to ...": nothing was downloaded.
        took = time.monotonic() - getattr(self, "_generation_started", time.monotonic())
        print(f"Generated cluttered_digits/{self.builder_config.name} in {took:.0f} s; later runs reuse it.")

    def _split_generators(self, dl_manager):
        # Digits come from scikit-learn; Fashion-MNIST from its files: nothing is downloaded.
        config = self.builder_config
        folder = None
        if config.source == "fashion_mnist":
            folder = fashion_mnist.manual_folder(dl_manager)
        source = load_source(config, folder)  # read and checked before anything is written
        return {
            "train": self._generate_examples(source, "train", config.num_train),
            "test": self._generate_examples(source, "test", config.num_test),
        }

    def _generate_examples(self, source: Source, split: str, num_examples: int):
        for index in range(num_examples):
            example = render_example(self.builder_config, split, index, source)
            yield index, {
                "image": example.image,
                "label": example.label,
                "bbox": tfds.features.BBox(*example.box.tolist()),
                "source_indices": example.source_indices,
            }
