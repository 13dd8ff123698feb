"""Images per second of the image_folder training pipeline, and of the variants a GPU user would set.

Generates (or reuses, --tree) a class-per-folder tree of photo-sized JPEGs, prepares it with the
image_folder builder (timed), then times the training pipeline alone (no model) for:
  load_dataset    load_dataset(..., training=True) as it is;
  +intra_op=1     the same with tf.data Options threading.max_intra_op_parallelism = 1;
  +pool=N         the same with a private threadpool of N threads;
  rebuilt         load_dataset's pipeline rebuilt here from the same functions (read_split,
                  the selector, transform_example), to show the rows below are comparable;
  parallel=N      rebuilt with num_parallel_calls=N instead of AUTOTUNE;
  cache_resized   rebuilt, the decoded image resized to the squash size (256 for 224) cached in
                  memory as uint8 (the deterministic part), then crop and flip per epoch;
  dct_decode      rebuilt, JPEGs decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) when
                  the image stays at least as large as the squash size, then the same transform.
Variants are timed in interleaved rounds (one pass over the split each) after one untimed pass,
so that drift of a shared machine hits all of them alike; the table gives the median rate.

    python scripts/bench_pipeline.py                           # 300 images of 1600x1200, 10 classes
    python scripts/bench_pipeline.py --tree=/photos --rounds=5 --variants=load_dataset,dct_decode
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ runtime warnings; read when it loads

import shutil
import statistics
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import app, flags, logging
from PIL import Image

from icasc_tf.data import image_folder, load_dataset, transforms
from icasc_tf.data.pipeline import _MAX_SHUFFLE_BUFFER, AUTOTUNE, _selector, read_split, transform_example
from icasc_tf.data.registry import get_spec, prepare_builder

FLAGS = flags.FLAGS
flags.DEFINE_string("tree", None, "An existing class-per-folder tree to use instead of generating one.")
flags.DEFINE_string("work_dir", "/tmp/icasc_bench_pipeline", "Where the generated tree and the TFDS data go.")
flags.DEFINE_integer("num_images", 300, "Images of the generated tree.")
flags.DEFINE_integer("num_classes", 10, "Classes of the generated tree.")
flags.DEFINE_integer("width", 1600, "Width of the generated images (height: --height).")
flags.DEFINE_integer("height", 1200, "Height of the generated images.")
flags.DEFINE_integer("max_side", image_folder.MAX_SIDE, "The builder's max_side.")
flags.DEFINE_bool("reprepare", True, "Prepare again even if the TFDS data of the tree exists (times it).")
flags.DEFINE_integer("image_size", 224, "Output side of the pipeline.")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_integer("rounds", 3, "Interleaved timed passes per variant.")
flags.DEFINE_list(
    "variants",
    ["load_dataset", "+intra_op=1", "+pool", "rebuilt", "parallel", "cache_resized", "dct_decode"],
    "Which pipelines to time.",
)


def _smooth_photo(rng, height, width, tint):
    """Low-frequency colour fields (upsampled from 1/16 scale) plus sensor-like noise."""
    small = rng.normal(0.0, 1.0, size=(height // 16 + 1, width // 16 + 1, 3))
    small = (small - small.min()) / (np.ptp(small) + 1e-9) * 180 + np.array(tint) * 0.3
    field = Image.fromarray(np.clip(small, 0, 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    noise = rng.standard_normal(size=(height, width, 3), dtype=np.float32) * 4.0
    return np.clip(np.asarray(field, np.float32) + noise, 0, 255).astype(np.uint8)


def generate_tree(root):
    rng = np.random.default_rng(0)
    tints = rng.integers(0, 256, size=(FLAGS.num_classes, 3))
    for index in range(FLAGS.num_images):
        label = index % FLAGS.num_classes
        folder = os.path.join(root, f"class_{label:02d}")
        os.makedirs(folder, exist_ok=True)
        pixels = _smooth_photo(np.random.default_rng([0, index]), FLAGS.height, FLAGS.width, tints[label])
        Image.fromarray(pixels).save(os.path.join(folder, f"img_{index:04d}.jpg"), quality=90)


def _folder_bytes(root):
    sizes = [os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files]
    return len(sizes), sum(sizes)


def dct_decode(data, side):
    """A JPEG decoded at the smallest 1/r scale (r in 1, 2, 4, 8) that keeps both sides >= side."""
    shape = tf.io.extract_jpeg_shape(data)
    shorter = tf.reduce_min(shape[:2])
    ratios = (1, 2, 4, 8)
    index = tf.reduce_sum(tf.cast([(shorter + r - 1) // r >= side for r in ratios[1:]], tf.int32))
    branches = [lambda r=r: tf.io.decode_jpeg(data, channels=3, ratio=r) for r in ratios]
    image = tf.switch_case(index, branches)
    image.set_shape([None, None, 3])
    return image


def rebuilt(builder, seed, *, parallel=AUTOTUNE, cache_resized=False, dct=False):
    """load_dataset's training pipeline for image_folder, from its own functions, with one change."""
    spec = get_spec("image_folder")
    size = (FLAGS.image_size, FLAGS.image_size)
    side = transforms.resize_side(FLAGS.image_size)
    feature = builder.info.features["image"]
    num_classes = builder.info.features["label"].num_classes
    options = tf.data.Options()
    options.deterministic = False
    dataset = read_split(
        builder, spec, "train", decode_images=False, shuffle_files=True,
        read_config=tfds.ReadConfig(shuffle_seed=seed, options=options),
    )
    num_examples = builder.info.splits["train"].num_examples
    dataset = dataset.map(_selector(spec, num_classes, False), num_parallel_calls=parallel)
    if cache_resized:
        def decode_resize(example):
            image = tf.image.convert_image_dtype(feature.decode_example(example["image"]), tf.float32)
            image = transforms.resize(image, side, side)
            return {"image": tf.image.convert_image_dtype(image, tf.uint8, saturate=True), "label": example["label"]}

        dataset = dataset.map(decode_resize, num_parallel_calls=parallel).cache()
    dataset = dataset.shuffle(min(num_examples, _MAX_SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
    dataset = tf.data.Dataset.zip(dataset, tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2))

    def transform(example, example_seed):
        if cache_resized:
            image = tf.image.convert_image_dtype(example["image"], tf.float32)
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
            image, _ = transforms.random_crop(image, None, size[0], size[1], crop_seed)
            image, _ = transforms.random_flip(image, None, flip_seed)
            return image, example["label"]
        image = dct_decode(example["image"], side) if dct else feature.decode_example(example["image"])
        image, _ = transform_example(image, None, example_seed, augmentation="squash", size=size, training=True,
                                     crops="single")
        return image, example["label"]

    dataset = dataset.map(transform, num_parallel_calls=parallel)
    dataset = dataset.batch(FLAGS.batch_size, drop_remainder=True).prefetch(AUTOTUNE)
    return dataset.with_options(options)


def _with(dataset, **threading):
    options = tf.data.Options()
    for key, value in threading.items():
        setattr(options.threading, key, value)
    return dataset.with_options(options)


def _one_pass(dataset):
    """(images, seconds) of one full iteration."""
    start, count = time.perf_counter(), 0
    for images, _ in dataset:
        count += int(images.shape[0])
    return count, time.perf_counter() - start


def main(argv):
    del argv
    tfds.disable_progress_bar()
    logging.set_verbosity(logging.ERROR)  # TFDS's info lines; the builder's summary is printed
    cores = os.cpu_count()
    root = FLAGS.tree or os.path.join(FLAGS.work_dir, "tree")
    if FLAGS.tree is None and not os.path.isdir(root):
        start = time.perf_counter()
        generate_tree(root)
        print(f"generated {root} in {time.perf_counter() - start:.1f} s")
    files, total = _folder_bytes(root)
    data_dir = os.path.join(FLAGS.work_dir, "data")
    options = {"max_side": FLAGS.max_side}
    start = time.perf_counter()
    config = image_folder.make_config(root, **options)
    listing = time.perf_counter() - start
    if FLAGS.reprepare:
        shutil.rmtree(os.path.join(data_dir, "image_folder", config.name), ignore_errors=True)
    start = time.perf_counter()
    builder = prepare_builder("image_folder", data_dir, root, options)
    prepare = time.perf_counter() - start
    stored = builder.info.dataset_size
    num_train = builder.info.splits["train"].num_examples
    print(
        f"tree {root}: {files} files, {total / files / 1024:.0f} KB each; listing {listing * 1000:.0f} ms; "
        f"prepare {prepare:.1f} s ({prepare / files * 1000:.0f} ms/image) -> {stored / files / 1024:.0f} KB/image "
        f"stored at max_side {FLAGS.max_side}; train split {num_train} images"
    )
    print(
        f"cpus={cores} load average={os.getloadavg()[0]:.2f} tf={tf.__version__} "
        f"batch={FLAGS.batch_size} image_size={FLAGS.image_size} rounds={FLAGS.rounds}"
    )

    def from_load_dataset(seed, **threading):
        dataset, _ = load_dataset("image_folder", "train", FLAGS.batch_size, data_dir=data_dir, manual_dir=root,
                                  training=True, image_size=FLAGS.image_size, seed=seed, **options)
        return _with(dataset, **threading) if threading else dataset

    makers = {
        "load_dataset": lambda seed: from_load_dataset(seed),
        "+intra_op=1": lambda seed: from_load_dataset(seed, max_intra_op_parallelism=1),
        "+pool": lambda seed: from_load_dataset(seed, private_threadpool_size=2 * cores),
        "rebuilt": lambda seed: rebuilt(builder, seed),
        "parallel": lambda seed: rebuilt(builder, seed, parallel=cores),
        "cache_resized": lambda seed: rebuilt(builder, seed, cache_resized=True),
        "dct_decode": lambda seed: rebuilt(builder, seed, dct=True),
    }
    labels = {"+pool": f"+pool={2 * cores}", "parallel": f"parallel={cores}"}
    unknown = sorted(set(FLAGS.variants) - set(makers))
    if unknown:
        raise app.UsageError(f"Unknown variants {unknown}; choose from {list(makers)}.")
    datasets = {name: makers[name](seed=0) for name in FLAGS.variants}
    for dataset in datasets.values():  # warm-up: tracing, file cache, cache_resized's cache
        _one_pass(dataset)
    rates = {name: [] for name in datasets}
    for _ in range(FLAGS.rounds):
        for name, dataset in datasets.items():
            count, seconds = _one_pass(dataset)
            rates[name].append(count / seconds)
    reference = statistics.median(rates[next(iter(rates))])
    print(f"{'pipeline':<16}{'images/s':>10}{'min':>8}{'max':>8}{'x first':>9}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{labels.get(name, name):<16}{median:>10.0f}{min(values):>8.0f}{max(values):>8.0f}"
              f"{median / reference:>9.2f}")


if __name__ == "__main__":
    app.run(main)
