"""README's "Your own Keras model", runnable: the classifier of Keras's transfer-learning guide (a
pretrained base nested in it as one layer) through ``explain``, ``AttentionImages`` and ICASC training.

    python scripts/example_transfer_learning.py      # then: tensorboard --logdir runs/transfer_learning

As the guide does it: the base frozen, the new head trained with plain ``model.fit`` (Grad-CAM panels
in TensorBoard); then the whole model fine-tuned at a low learning rate, here with ICASC. The base is
EfficientNet-Lite0 with its ImageNet weights (they come with the install; keras.applications' would
be downloaded), headless, as ``keras.applications.*(include_top=False)`` gives it; the images are the
bundled cluttered digits at 96 pixels. ``--base=mobilenet_v2`` takes keras.applications' MobileNetV2
instead (``--weights=imagenet`` where Keras can download or has cached them). About 3 minutes on 2
cores; it shows the mechanics, not a result (about 28 % test accuracy on the digits, chance 10 %).
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ runtime warnings; read when it loads

import icasc_tf  # noqa: F401  (before TensorFlow loads: in our scripts it keeps TensorFlow's start-up notes out)

# isort: split
import keras
import numpy as np
from absl import app, flags

from icasc_tf import ICASC, AttentionImages, explain
from icasc_tf.backbones import build_backbone
from icasc_tf.cli import command
from icasc_tf.data import load_dataset

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/transfer_learning", "TensorBoard logs and the saved models.")
flags.DEFINE_enum("base", "efficientnet_lite0", ["efficientnet_lite0", "mobilenet_v2"], "The pretrained base.")
flags.DEFINE_enum("weights", "imagenet", ["imagenet", "none"], "The base's weights.")
flags.DEFINE_integer("epochs", 3, "Epochs of the head alone (the base frozen).")
flags.DEFINE_integer("fine_tune_epochs", 3, "Epochs of ICASC fine-tuning the whole model.")
flags.DEFINE_integer("num_train", 2000, "Training images (of the bundled cluttered digits).")
flags.DEFINE_integer("num_test", 500, "Test images.")
SIZE = 96


def pretrained_base(name, weights):
    """A headless ImageNet base taking images in [0, 1], and the Rescaling its inputs need."""
    if name == "mobilenet_v2":
        base = keras.applications.MobileNetV2(input_shape=(SIZE, SIZE, 3), include_top=False,
                                              weights=None if weights == "none" else weights)
        return base, keras.layers.Rescaling(2.0, offset=-1.0)  # MobileNetV2 takes [-1, 1]
    lite = build_backbone(name, 1000, (SIZE, SIZE, 3), weights=None if weights == "none" else weights)
    base = keras.Model(lite.model.input, lite.model.get_layer(lite.last_layer).output, name=f"{name}_base")
    return base, keras.layers.Rescaling(1.0)  # Lite0 normalises [0, 1] itself


def guide_model(base, rescale, num_classes):
    """The guide's classifier: augmentation, rescaling, the base called as one layer, a new head."""
    inputs = keras.Input(shape=(SIZE, SIZE, 3))
    x = keras.layers.RandomFlip("horizontal")(inputs)
    x = keras.layers.RandomRotation(0.05)(x)
    x = rescale(x)
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    outputs = keras.layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs)


def main(argv):
    command.begin(argv)  # quiet libraries, no stray arguments
    keras.utils.set_random_seed(0)
    data = dict(image_size=SIZE, num_train=FLAGS.num_train, num_test=FLAGS.num_test)
    train, info = load_dataset("cluttered_digits", "train", 32, training=True, **data)
    test, _ = load_dataset("cluttered_digits", "test", 32, training=False, **data)
    x_val, y_val = (np.asarray(t) for t in next(iter(test)))

    base, rescale = pretrained_base(FLAGS.base, FLAGS.weights)
    base.trainable = False
    model = guide_model(base, rescale, info.num_classes)
    out = explain(model, x_val[:4], method="gradcam", top_k=3)
    print(f"explain: maps {out['maps'].shape} at {out['layer']!r} (the base's last feature map)")

    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    panels = AttentionImages(os.path.join(FLAGS.output_dir, "head"), x_val[:6], y_val[:6], info.class_names)
    model.fit(train, validation_data=test, epochs=FLAGS.epochs, callbacks=[panels], verbose=2,
              shuffle=False)  # the dataset shuffles itself
    panels.close()

    base.trainable = True  # fine-tuning: the whole model, at a low learning rate, with ICASC's losses
    icasc = ICASC(model)  # the base's last map and its last map at twice the resolution, found by itself
    print(f"ICASC layers: inner {icasc.inner_layer!r}, last {icasc.last_layer!r}")
    icasc.compile(keras.optimizers.SGD(1e-2, momentum=0.9), metrics=["accuracy"])
    panels = AttentionImages(os.path.join(FLAGS.output_dir, "icasc"), x_val[:6], y_val[:6], info.class_names)
    history = icasc.fit(train, validation_data=test, epochs=FLAGS.fine_tune_epochs, callbacks=[panels], verbose=2,
                        shuffle=False)
    panels.close()
    icasc.save(os.path.join(FLAGS.output_dir, "icasc.keras"))
    model.save(os.path.join(FLAGS.output_dir, "classifier.keras"))
    print(f"test accuracy after fine-tuning: {history.history['val_accuracy'][-1]:.3f}")
    print(f"tensorboard --logdir {FLAGS.output_dir}")


if __name__ == "__main__":
    app.run(main)
