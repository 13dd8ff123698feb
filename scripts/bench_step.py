"""Step time of the ICASC train step against the plain step on the same backbone.

Prints, from one process, the median time of a training step for:
  plain     Keras's own train_step (compile(loss=...)) on the backbone alone;
  baseline  ICASC with every attention weight 0 (must cost the same as plain);
  batch     ICASC, bn_mode="batch";
  exact     ICASC, bn_mode="exact";
  first     ICASC, bn_mode="batch", second_order=False (dY/dF detached);
and the ratio of each to plain. Configurations are timed in interleaved rounds so
that drift of the machine hits all of them alike.

    python scripts/bench_step.py                      # CIFAR ResNet-18-like, batch 64
    python scripts/bench_step.py --arch=resnet20 --batch_size=128 --rounds=5
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ runtime warnings; read when it loads

import statistics
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from icasc_tf import ICASC
from icasc_tf.backbones import build_backbone

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", "resnet18", "Backbone name from icasc_tf.backbones.")
flags.DEFINE_integer("image_size", 32, "Square input size.")
flags.DEFINE_integer("num_classes", 100, "Classes of the classifier head.")
flags.DEFINE_integer("batch_size", 64, "Batch size of every step.")
flags.DEFINE_integer("warmup", 2, "Untimed steps per configuration (tracing, allocation).")
flags.DEFINE_integer("steps", 3, "Timed steps per configuration and round.")
flags.DEFINE_integer("rounds", 3, "Interleaved rounds over the configurations.")
flags.DEFINE_list("configs", ["plain", "baseline", "batch", "exact", "first"], "Which steps to time.")
flags.DEFINE_bool("jit_compile", False, "Compile the steps with XLA.")


def _model(config):
    spec = build_backbone(FLAGS.arch, FLAGS.num_classes, (FLAGS.image_size,) * 2 + (3,))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    if config == "plain":
        model = spec.model
        model.compile(
            optimizer,
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=FLAGS.jit_compile,
        )
        return model
    weights = (0.0, 0.0, 0.0) if config == "baseline" else (1.0, 1.0, 1.0)
    bn_mode = "exact" if config == "exact" else "batch"
    model = ICASC(
        spec.model, **spec.icasc_layers(), loss_weights=weights, bn_mode=bn_mode, second_order=config != "first"
    )
    model.compile(optimizer, jit_compile=FLAGS.jit_compile)
    return model


def main(argv):
    del argv
    rng = np.random.default_rng(0)
    size = FLAGS.image_size
    x = tf.constant(rng.random((FLAGS.batch_size, size, size, 3), dtype=np.float32))
    y = tf.constant(rng.integers(0, FLAGS.num_classes, FLAGS.batch_size))
    models = {name: _model(name) for name in FLAGS.configs}
    for model in models.values():
        for _ in range(FLAGS.warmup):
            model.train_on_batch(x, y)
    times = {name: [] for name in models}
    for _ in range(FLAGS.rounds):
        for name, model in models.items():
            for _ in range(FLAGS.steps):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                times[name].append(time.perf_counter() - start)
    print(
        f"arch={FLAGS.arch} input={size}x{size} batch={FLAGS.batch_size} "
        f"jit_compile={FLAGS.jit_compile} devices={[d.name for d in tf.config.list_logical_devices()]} "
        f"threads(intra/inter)={tf.config.threading.get_intra_op_parallelism_threads()}/"
        f"{tf.config.threading.get_inter_op_parallelism_threads()} cpus={os.cpu_count()}"
    )
    reference = statistics.median(times.get("plain", next(iter(times.values()))))
    print(f"{'step':<10}{'median s':>10}{'min s':>10}{'x plain':>10}")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<10}{median:>10.3f}{min(values):>10.3f}{median / reference:>10.2f}")


if __name__ == "__main__":
    app.run(main)
