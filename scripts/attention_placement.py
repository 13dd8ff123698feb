"""Where do the attention maps go? A diagnostic for runs on cluttered digits.

For each run, on the first test images: the share of ground-truth and most-confusing-class
last-layer maps whose peak lies on ink (any digit stroke, target or distractor) and the
share of their mass on ink, against how much of the canvas is ink. Attention that leaves
the strokes for the empty canvas separates the two maps without looking at the digits,
which is how L_AS can fall while localization gets worse (BUILD_NOTES.md, the study).

    python scripts/attention_placement.py --runs=runs/study/baseline/seed-0,runs/study/ach/seed-0
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Run folders (each with final.keras), trained on cluttered_digits.")
flags.DEFINE_integer("num_images", 500, "Test images to look at.")
flags.DEFINE_float("ink_threshold", 0.05, "A pixel is ink above this intensity.")
flags.DEFINE_string("data_dir", "", "TFDS data folder.")


def placement(model, images, labels, ink):
    """{class kind: (peak-on-ink rate, mean mass share on ink)} for the last-layer maps."""
    import numpy as np
    import tensorflow as tf

    from icasc_tf.selection import confusing_class

    confusing = confusing_class(labels, model.predict(images, verbose=0)).numpy()
    maps = model.attention_maps(images, classes=np.stack([labels, confusing], axis=1))
    size = images.shape[1:3]
    upsampled = tf.image.resize(np.moveaxis(maps["last"], 1, -1), size).numpy()
    rows = np.arange(len(images))
    result = {}
    for k, kind in enumerate(("target", "confusing")):
        a = upsampled[..., k]
        peak = a.reshape(len(images), -1).argmax(axis=1)
        on_ink = ink[rows, peak // size[1], peak % size[1]].mean()
        mass = ((a * ink).sum(axis=(1, 2)) / (a.sum(axis=(1, 2)) + 1e-12)).mean()
        result[kind] = (float(on_ink), float(mass))
    return result


def main(argv):
    del argv
    import keras

    import icasc_tf  # noqa: F401  (registers the custom layers)
    from icasc_tf.data import load_dataset

    if not FLAGS.runs:
        print("attention_placement.py: error: give --runs=DIR[,DIR...]", file=sys.stderr)
        sys.exit(2)
    dataset, _ = load_dataset(
        "cluttered_digits", "test", FLAGS.num_images, training=False, data_dir=FLAGS.data_dir or None
    )
    images, labels = (t.numpy() for t in next(iter(dataset)))
    ink = images.max(axis=-1) > FLAGS.ink_threshold
    print(f"ink covers {ink.mean():.2f} of the canvas ({len(images)} test images)")
    print(f"{'run':<40}{'target peak/mass on ink':>26}{'confusing peak/mass on ink':>29}")
    for run in FLAGS.runs:
        path = os.path.join(run, "final.keras")
        if not os.path.exists(path):
            print(f"attention_placement.py: error: no final.keras in {run}", file=sys.stderr)
            sys.exit(2)
        found = placement(keras.models.load_model(path), images, labels, ink)
        t, c = found["target"], found["confusing"]
        print(f"{run:<40}{t[0]:>14.2f} / {t[1]:.2f}{c[0]:>18.2f} / {c[1]:.2f}")


if __name__ == "__main__":
    app.run(main)
