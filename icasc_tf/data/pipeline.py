"""`load_dataset`: one call from a dataset name to a batched, augmented `tf.data` pipeline.

It runs in named steps: `_read` (the split's examples, a held-out share set aside or kept),
`_augment` (shuffle and per-example seeds in training, then the augmentation), and `_describe`
(the `DatasetInfo`). Each dataset's facts are its `DatasetSpec` in `registry.SPECS`; each
augmentation is one function in `augmentations.AUGMENTATION_SPECS`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from icasc_tf.data.augmentations import AUGMENTATION_SPECS, get_augmentation
from icasc_tf.data.registry import (
    DATASETS,
    SPECS,
    DatasetSpec,
    datasets_augmented_by,
    default_data_dir,
    get_spec,
    prepare_builder,
)

CROPS = ("single", "ten")
AUTOTUNE = tf.data.AUTOTUNE
_MAX_SHUFFLE_BUFFER = 10_000  # of encoded images for large datasets (about 1 GB for ImageNet)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a model and its evaluation need to know about the pipeline `load_dataset` returned."""

    name: str
    split: str
    num_classes: int
    class_names: tuple[str, ...]
    multi_label: bool
    has_boxes: bool  # the dataset has boxes (whether they are yielded is `with_boxes`)
    image_shape: tuple[int, int, int]  # of one image (one crop) as yielded
    num_examples: int  # in this split
    steps_per_epoch: int  # batches per pass over the split
    num_crops: int  # 10 with crops="ten": images are then [B, 10, H, W, 3]
    training: bool
    test_split: str  # the split results are reported on
    validation_split: str | None  # the official validation split, if the dataset has one
    tfds_name: str  # e.g. "voc/2012" or "cluttered_digits/default"
    pixel_mean: np.ndarray | None = None  # [H, W, 3] at the dataset's own size, subtracted before resizing


def _image_size(image_size, default: int) -> tuple[int, int]:
    size = default if image_size is None else image_size
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"image_size must be an int or (height, width) >= 1, got {image_size!r}.")
    return int(size[0]), int(size[1])


def _check_arguments(name, spec, split, augmentation, batch_size, training, with_boxes, crops, resize, hold_out):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    crops_after_resize = get_augmentation(augmentation).crops_after_resize
    cropping = [n for n, a in AUGMENTATION_SPECS.items() if a.crops_after_resize]
    if resize is not None and (not crops_after_resize or resize < 1):
        raise ValueError(
            f"resize={resize!r}: a side >= 1 for the augmentations that crop after resizing "
            f"{', '.join(cropping)} (the default of {', '.join(datasets_augmented_by(cropping))}); {name!r} with "
            f"{augmentation!r} "
            "is used at its own size (set image_size instead)."
        )
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS}, got {crops!r}.")
    if crops == "ten":
        if training:
            raise ValueError(
                'crops="ten" is for evaluation; pass training=False or crops="single".'
            )
        if not crops_after_resize:
            raise ValueError(
                f'crops="ten" works with the augmentations {", ".join(cropping)} (the default of '
                f"{', '.join(datasets_augmented_by(cropping))}), not {name!r} with {augmentation!r}."
            )
        if with_boxes:
            raise ValueError(
                'with_boxes=True needs crops="single": a box has no meaning over ten crops.'
            )
    if with_boxes and spec.box_key is None:
        raise ValueError(
            f"Dataset {name!r} has no boxes; with_boxes=True works for "
            f"{[n for n, s in SPECS.items() if s.box_key]}."
        )
    if split.split("[")[0] in spec.unlabelled_splits:
        raise ValueError(f"Split {split!r} of {name!r} has no labels; use {spec.test_split!r}.")
    if not 0.0 <= hold_out < 1.0:
        raise ValueError(f"hold_out must be in [0, 1): the share of {split!r} set aside; got {hold_out}.")


def _cache_path(data_dir: str | None, builder, what: str) -> str:
    """Files derived from a prepared dataset live beside TFDS's, keyed by name, config, version."""
    key = builder.info.full_name.replace("/", "-")
    return os.path.join(default_data_dir(data_dir), "icasc_tf", f"{key}-{what}")


def read_split(
    builder,
    spec: DatasetSpec,
    split: str,
    *,
    decode_images=True,
    with_boxes=False,
    shuffle_files=False,
    read_config=None,
) -> tf.data.Dataset:
    """The TFDS examples of a split, parsing only the image, label and (optionally) box features.

    With `decode_images=False` the images stay encoded, so that a shuffle buffer holds bytes.
    Every example also carries TFDS's `tfds_id` (its file and position), which names it
    whatever order the files are read in.
    """
    read_config = read_config or tfds.ReadConfig()
    read_config.add_tfds_id = True
    wanted = {"image": True, spec.label_key: True, **({spec.box_key: True} if with_boxes else {})}
    skip_image = None if decode_images else {"image": tfds.decode.SkipDecoding()}
    dataset = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        decoders=tfds.decode.PartialDecoding(wanted, decoders=skip_image),
        read_config=read_config,
    )
    if spec.gray_pad_to and decode_images:
        dataset = dataset.map(lambda ex: {**ex, "image": gray_to_rgb_canvas(ex["image"], spec.gray_pad_to)})
    return dataset


def gray_to_rgb_canvas(image: tf.Tensor, side: int) -> tf.Tensor:
    """A [h, w, 1] uint8 image zero-padded (centred) to [side, side] and repeated to RGB.

    Fashion-MNIST's 28x28 items are padded to CIFAR's 32x32 with their own black background,
    not resized, so that an item keeps its pixels.
    """
    image = tf.image.pad_to_bounding_box(
        image, (side - image.shape[0]) // 2, (side - image.shape[1]) // 2, side, side
    )
    return tf.image.grayscale_to_rgb(image)


def train_pixel_mean(builder, spec: DatasetSpec, data_dir: str | None) -> np.ndarray:
    """Per-pixel RGB mean in [0, 1] of the train split, computed once and cached as .npy."""
    path = _cache_path(data_dir, builder, "train_pixel_mean.npy")
    if os.path.exists(path):
        return np.load(path)
    images = read_split(builder, spec, "train").map(lambda ex: ex["image"]).batch(1024)
    total, count = 0.0, 0
    for batch in images.as_numpy_iterator():
        total = total + batch.astype(np.float64).sum(axis=0)
        count += len(batch)
    mean = (total / count / 255.0).astype(np.float32)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.save(path, mean)
    return mean


def held_out_ids(builder, spec: DatasetSpec, split: str, share: float, seed: int, data_dir) -> list[str]:
    """The `tfds_id`s of a seeded, stratified `share` of `split`, set aside for validation.

    round(share * N) examples in all, shared among the classes (the single label; multi-label
    data is drawn as one group) in proportion to their sizes by largest remainder, so that
    even classes too small for a whole example each get their fair part; within a class, the
    examples held out are the first of a permutation seeded with (seed, class). Computed once
    from the labels alone and cached beside the prepared dataset.
    """
    digest = hashlib.sha1(split.encode("utf-8")).hexdigest()[:10]  # "train[:90%]" and "train[:90]" differ
    key = f"held-out-{re.sub(r'[^A-Za-z0-9]+', '_', split)}-{digest}-{share:g}-{seed}.json"
    path = _cache_path(data_dir, builder, key)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    only_labels = tfds.decode.PartialDecoding({spec.label_key: True})
    examples = builder.as_dataset(
        split=split, shuffle_files=False, decoders=only_labels, read_config=tfds.ReadConfig(add_tfds_id=True)
    )
    by_class: dict[int, list[str]] = {}
    for example in examples.as_numpy_iterator():
        group = -1 if spec.multi_label else int(example[spec.label_key])
        by_class.setdefault(group, []).append(example["tfds_id"].decode("utf-8"))
    groups = sorted(by_class)
    quotas = np.array([share * len(by_class[g]) for g in groups])
    counts = np.floor(quotas).astype(int)
    rng = np.random.default_rng([seed % 2**32, 0])
    remainders = quotas - counts + 1e-9 * rng.random(len(groups))  # seeded tie-break
    left = int(round(share * sum(len(ids) for ids in by_class.values()))) - int(counts.sum())
    counts[np.argsort(-remainders)[:max(left, 0)]] += 1
    held_out = []
    for group, count in zip(groups, counts):
        ids = sorted(by_class[group])
        order = np.random.default_rng([seed % 2**32, group + 2]).permutation(len(ids))
        held_out += [ids[i] for i in order[:count]]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as file:
        json.dump(sorted(held_out), file)
    os.replace(tmp, path)
    return sorted(held_out)


def _keep(ids: list[str], take_listed: bool):
    """A `Dataset.filter` predicate: examples whose `tfds_id` is (or is not) in `ids`."""
    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(ids or [""], tf.string), tf.ones(max(len(ids), 1), tf.int32)),
        default_value=0,
    )
    wanted = 1 if take_listed else 0
    return lambda example: tf.equal(table.lookup(example["tfds_id"]), wanted)


def _class_names(spec: DatasetSpec, builder, data_dir: str | None) -> tuple[str, ...]:
    """The ClassLabel names, or (CUB) the names read once from a text feature and cached."""
    label_feature = builder.info.features[spec.label_key]
    if spec.multi_label:
        label_feature = label_feature.feature
    names = list(label_feature.names)
    text_key = spec.label_name_key
    if text_key is None:
        return tuple(names)
    path = _cache_path(data_dir, builder, "class_names.json")
    if not os.path.exists(path):
        only_names = tfds.decode.PartialDecoding({spec.label_key: True, text_key: True})
        pairs = builder.as_dataset(split="train", decoders=only_names).map(
            lambda ex: (ex[spec.label_key], ex[text_key])
        )
        for label, text in pairs.batch(4096).as_numpy_iterator():
            for index, value in zip(label, text):
                names[index] = value.decode("utf-8")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            json.dump(names, file)
    with open(path, encoding="utf-8") as file:
        return tuple(json.load(file))


def _selector(spec: DatasetSpec, num_classes: int, with_boxes: bool):
    """Maps a TFDS example to {"image", "label"[, "box"]}: int32 labels or multi-hot float32."""

    def select(example):
        if spec.multi_label:
            hot = tf.one_hot(example[spec.label_key], num_classes, dtype=tf.float32)
            label = tf.minimum(tf.reduce_sum(hot, axis=0), 1.0)  # a class seen twice counts once
        else:
            label = tf.cast(example[spec.label_key], tf.int32)
        selected = {"image": example["image"], "label": label}
        if with_boxes:
            selected["box"] = tf.cast(example[spec.box_key], tf.float32)
        return selected

    return select


def transform_example(image, box, seed, *, augmentation, size, training, crops, resize=None, mean=None):
    """Applies an augmentation to one uint8 image (and its box); `seed` is a stateless seed or None.

    `resize` is the side the augmentations that crop after resizing resize to (squash: both
    sides; inception evaluation: the shorter side); None means 8/7 of `size` (256 for 224).
    """
    apply = get_augmentation(augmentation).apply
    image = tf.image.convert_image_dtype(image, tf.float32)
    if mean is not None:  # the dataset's normalisation (CIFAR), whatever the augmentation
        image = image - mean
    return apply(image, box, seed, size=size, resize=resize, training=training, crops=crops)


def _num_classes(builder, spec: DatasetSpec) -> int:
    label_feature = builder.info.features[spec.label_key]
    return (label_feature.feature if spec.multi_label else label_feature).num_classes


def _pixel_mean(builder, spec: DatasetSpec, data_dir) -> np.ndarray | None:
    """The train pixel mean where the dataset's own augmentation subtracts it (whichever one is used)."""
    if get_augmentation(spec.augmentation).subtracts_train_mean:
        return train_pixel_mean(builder, spec, data_dir)
    return None


def _hold_out(dataset, builder, spec, split, num_examples, *, share, seed, held_out, data_dir, name):
    """The split without (or, `held_out`, only) its seeded held-out share: (dataset, size, split label)."""
    ids = held_out_ids(builder, spec, split, share, seed, data_dir)
    if not ids or len(ids) == num_examples:
        raise ValueError(
            f"Holding out {share:g} of {name!r} {split!r} ({num_examples} examples) leaves "
            f"{len(ids)} to validate on and {num_examples - len(ids)} to train on; choose another share."
        )
    num_examples = len(ids) if held_out else num_examples - len(ids)
    # A filter hides the size; stated again, Keras knows when an epoch ends.
    dataset = dataset.filter(_keep(ids, take_listed=held_out)).apply(
        tf.data.experimental.assert_cardinality(num_examples)
    )
    return dataset, num_examples, f"{split} ({'held out' if held_out else 'without'} {share:g}, seed {seed})"


def _read(builder, spec, split, num_classes, *, training, seed, options, with_boxes, hold_out, data_dir, name):
    """Step one: the split's examples as {"image", "label"[, "box"]}, cached when small.

    Returns (dataset, number of examples, the split's label for `DatasetInfo`). Large images
    stay encoded (decoded after the shuffle); `hold_out` is (share, seed, held_out) or None.
    """
    dataset = read_split(
        builder,
        spec,
        split,
        decode_images=spec.in_memory,
        with_boxes=with_boxes,
        shuffle_files=training,
        read_config=tfds.ReadConfig(shuffle_seed=seed, options=options),
    )
    num_examples = int(dataset.cardinality())
    if num_examples < 0:
        num_examples = builder.info.splits[split].num_examples
    if hold_out is not None:
        share, hold_out_seed, held_out = hold_out
        dataset, num_examples, split = _hold_out(
            dataset, builder, spec, split, num_examples, share=share, seed=hold_out_seed, held_out=held_out,
            data_dir=data_dir, name=name,
        )
    dataset = dataset.map(_selector(spec, num_classes, with_boxes), num_parallel_calls=AUTOTUNE)
    if spec.in_memory:
        dataset = dataset.cache()
    return dataset, num_examples, split


def _augment(dataset, builder, spec, num_examples, *, seed, reshuffle_each_iteration, with_boxes, **transform):
    """Step two: shuffled, with one stateless seed per example (training), then augmented.

    `transform` holds `transform_example`'s options (augmentation, size, training, crops,
    resize, mean); the elements become (image, label[, box]).
    """
    if transform["training"]:
        buffer = num_examples if spec.in_memory else min(num_examples, _MAX_SHUFFLE_BUFFER)
        dataset = dataset.shuffle(max(buffer, 1), seed=seed, reshuffle_each_iteration=reshuffle_each_iteration)
        # One stateless seed per example, new each epoch, fixed by `seed` for a whole run.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=reshuffle_each_iteration)
        dataset = tf.data.Dataset.zip(dataset, seeds.batch(2))
    image_feature = None if spec.in_memory else builder.info.features["image"]

    def augment(example, example_seed=None):
        image = example["image"]
        if image_feature is not None:
            image = image_feature.decode_example(image)
        image, box = transform_example(image, example.get("box"), example_seed, **transform)
        return (image, example["label"], box) if with_boxes else (image, example["label"])

    return dataset.map(augment, num_parallel_calls=AUTOTUNE)


def _describe(name, spec, builder, split, *, num_classes, size, num_examples, batch_size, drop_remainder, crops,
              training, mean, data_dir) -> DatasetInfo:
    """Step three: what the model and its evaluation need to know about the pipeline."""
    steps = num_examples // batch_size if drop_remainder else math.ceil(num_examples / batch_size)
    return DatasetInfo(
        name=name,
        split=split,
        num_classes=num_classes,
        class_names=_class_names(spec, builder, data_dir),
        multi_label=spec.multi_label,
        has_boxes=spec.box_key is not None,
        image_shape=(size[0], size[1], 3),
        num_examples=num_examples,
        steps_per_epoch=steps,
        num_crops=10 if crops == "ten" else 1,
        training=training,
        test_split=spec.test_split,
        validation_split=spec.validation_split,
        tfds_name=builder.info.full_name.rsplit("/", 1)[0],
        pixel_mean=mean,
    )


def load_dataset(
    name: str,
    split: str,
    batch_size: int,
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    training: bool | None = None,
    image_size: int | tuple[int, int] | None = None,
    resize: int | None = None,
    seed: int = 0,
    deterministic: bool = False,
    with_boxes: bool = False,
    drop_remainder: bool | None = None,
    crops: str = "single",
    reshuffle_each_iteration: bool = True,
    hold_out: float = 0.0,
    hold_out_seed: int = 0,
    held_out: bool = False,
    augmentation: str | None = None,
    **config,
) -> tuple[tf.data.Dataset, DatasetInfo]:
    """Batches of `(images, labels)` or `(images, labels, boxes)` from one split of `name`.

    `split` is a TFDS split string ("train", "test", "train[:90%]"); `training` (default: the
    split starts with "train") turns on shuffling and augmentation; `image_size` is the output
    side (or (height, width)), `resize` the side photos are resized to before cropping it;
    `config` holds the builder options of the datasets built here (cluttered_digits, caltech256,
    image_folder, whose folder is `manual_dir`). `deterministic=True` fixes the order and the
    augmentation for a `seed`; evaluation always keeps the split's order.
    `reshuffle_each_iteration=False` makes every iteration of the returned dataset draw the same
    order and augmentation (one pass of a training stream; Keras may iterate a dataset twice);
    by default each iteration (epoch) draws new ones.
    `hold_out` > 0 sets aside a seeded (`hold_out_seed`), stratified share of `split`
    (`held_out_ids`): the dataset is the rest, or with `held_out=True` only that share (a
    validation split carved from the training split).
    `augmentation` (a name of `AUGMENTATION_SPECS`; default the dataset's) also sets how evaluation
    resizes and crops (its function's docstring says how).
    Images are float32 RGB in [0, 1] (minus the train pixel mean where the dataset's own augmentation
    subtracts it, `DatasetInfo.pixel_mean`), [B, H, W, 3] or
    [B, 10, H, W, 3] with crops="ten"; labels int32 [B], or multi-hot float32 [B, C] for
    multi-label data; boxes float32 [B, 4] `[ymin, xmin, ymax, xmax]` in the output image.
    """
    spec = get_spec(name)
    training = split.startswith("train") if training is None else training
    augmentation = augmentation or spec.augmentation
    _check_arguments(name, spec, split, augmentation, batch_size, training, with_boxes, crops, resize, hold_out)
    size = _image_size(image_size, spec.image_size)
    drop_remainder = training if drop_remainder is None else drop_remainder

    builder = prepare_builder(name, data_dir, manual_dir, config)
    num_classes, mean = _num_classes(builder, spec), _pixel_mean(builder, spec, data_dir)
    options = tf.data.Options()
    options.deterministic = deterministic or not training  # evaluation keeps the split's order
    dataset, num_examples, split = _read(
        builder, spec, split, num_classes, training=training, seed=seed, options=options, with_boxes=with_boxes,
        hold_out=(hold_out, hold_out_seed, held_out) if hold_out > 0 else None, data_dir=data_dir, name=name,
    )
    dataset = _augment(
        dataset, builder, spec, num_examples, seed=seed, reshuffle_each_iteration=reshuffle_each_iteration,
        with_boxes=with_boxes, augmentation=augmentation, size=size, training=training, crops=crops, resize=resize,
        mean=mean,
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE).with_options(options)
    return dataset, _describe(
        name, spec, builder, split, num_classes=num_classes, size=size, num_examples=num_examples,
        batch_size=batch_size, drop_remainder=drop_remainder, crops=crops, training=training, mean=mean,
        data_dir=data_dir,
    )


__all__ = [
    "CROPS",
    "DATASETS",
    "DatasetInfo",
    "load_dataset",
    "read_split",
    "train_pixel_mean",
    "transform_example",
]
