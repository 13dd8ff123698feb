"""README's "Maps and TensorBoard panels for any Keras model", runnable: a plain Keras CNN (no ICASC)
trained with ``model.fit`` on the bundled cluttered digits, its Grad-CAM panels in TensorBoard.

    python scripts/example_plain_keras.py             # then: tensorboard --logdir runs/plain_keras
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ runtime warnings; read when it loads

import icasc_tf  # noqa: F401  (before TensorFlow loads: in our scripts it keeps TensorFlow's start-up notes out)

# isort: split
import keras
import numpy as np
from absl import app, flags

from icasc_tf import AttentionImages, explain
from icasc_tf.cli import command
from icasc_tf.data import load_dataset

FLAGS = flags.FLAGS
flags.DEFINE_string("logs", "runs/plain_keras", "TensorBoard folder.")
flags.DEFINE_integer("epochs", 10, "Training epochs.")


def small_cnn(num_classes):
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(64, 3, padding="same", activation="relu", name="features"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(num_classes, name="logits"),
    ])


def main(argv):
    command.begin(argv)  # quiet libraries, no stray arguments
    keras.utils.set_random_seed(0)
    train, info = load_dataset("cluttered_digits", "train", 64, training=True)
    test, _ = load_dataset("cluttered_digits", "test", 64, training=False)
    x_val, y_val = (np.asarray(t) for t in next(iter(test)))
    model = small_cnn(info.num_classes)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    panels = AttentionImages(FLAGS.logs, x_val[:6], y_val[:6], info.class_names)
    model.fit(train, validation_data=test, epochs=FLAGS.epochs, callbacks=[panels], verbose=2,
              shuffle=False)  # the dataset shuffles itself
    panels.close()
    out = explain(model, x_val[:4], method="gradcam", top_k=3)
    print(f"explain: maps {out['maps'].shape} at layer {out['layer']!r}, classes {out['classes'].tolist()}")
    print(f"tensorboard --logdir {FLAGS.logs}")


if __name__ == "__main__":
    app.run(main)
