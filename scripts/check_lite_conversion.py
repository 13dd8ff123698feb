"""How the EfficientNet-Lite conversion was checked: the converted model, and the same weights under
conventions it could have got wrong, on the photographs that ship with installed packages.

    python scripts/check_lite_conversion.py                 # lite0 at 224 px
    python scripts/check_lite_conversion.py --arch=efficientnet_lite2 --image_size=260

Prints one row per variant: the top-1 ImageNet class of each photograph, how many of the five
unambiguous photographs it names as expected, and the mean top-1 probability. A subtly wrong
conversion (padding, BatchNormalization epsilon, channel order, input scaling) shows up as
wrong or unsure predictions.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ runtime warnings; read when it loads


import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from icasc_tf.backbones import build_backbone, efficientnet_lite
from icasc_tf.backbones.imagenet_classes import imagenet_class_names
from icasc_tf.photos import bundled_photos, center_square

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", "efficientnet_lite0", "EfficientNet-Lite variant.")
flags.DEFINE_integer("image_size", 224, "Input side in pixels.")
flags.DEFINE_string("save_reference_dir", "", "Also write the photographs and the converted model's logits to "
                    "<dir>/lite_ref_<arch>.npz (for scripts/verify_lite_against_pytorch.py).")

# The unambiguous photographs and the class a correct ImageNet model gives them (as the tests).
EXPECTED = {
    "flower": "daisy", "grace_hopper": "military uniform", "coffee": "espresso", "chelsea": "Egyptian cat",
    "motorcycle": "moped",
}
# name -> (build options, BatchNormalization epsilon, input transform)
VARIANTS = {
    "converted (same padding, eps 1e-3, RGB, (255x-127)/128)": ({}, 1e-3, None),
    "symmetric padding (PyTorch's k//2)": ({"padding": "symmetric"}, 1e-3, None),
    "BN epsilon 1e-5 (PyTorch's default)": ({}, 1e-5, None),
    "BGR channel order": ({}, 1e-3, lambda x: x[..., ::-1]),
    "torchvision mean/std scaling": ({"preprocess": "torch"}, 1e-3, None),
    "inputs in [0, 1], no scaling": ({"preprocess": "none"}, 1e-3, None),
}


def _model(options, epsilon):
    """The converted weights in the variant's network (the module constant read when layers are made)."""
    saved = efficientnet_lite.BN_EPSILON
    efficientnet_lite.BN_EPSILON = epsilon
    try:
        padding = options.get("padding", "same")
        preprocess = options.get("preprocess", "lite")
        reference = build_backbone(FLAGS.arch, 1000, (FLAGS.image_size,) * 2 + (3,), weights="imagenet").model
        inputs = keras.Input((FLAGS.image_size,) * 2 + (3,))
        trunk = efficientnet_lite.efficientnet_lite(inputs, name=FLAGS.arch, preprocess=preprocess, padding=padding)
        pooled = keras.layers.GlobalAveragePooling2D()(trunk.features)
        logits = keras.layers.Dense(1000, name="logits")(pooled)
        model = keras.Model(inputs, logits)
    finally:
        efficientnet_lite.BN_EPSILON = saved
    for layer in model.layers:
        if layer.weights:
            layer.set_weights(reference.get_layer(layer.name).get_weights())
    return model


def main(argv):
    del argv
    photos = bundled_photos()
    names = list(photos)
    batch = np.stack([center_square(photos[n], FLAGS.image_size) for n in names])
    classes = imagenet_class_names()
    print(f"{FLAGS.arch} at {FLAGS.image_size} px on {len(names)} photographs: {', '.join(names)}")
    print("| variant | right (of 5) | mean top-1 p | top-1 per photograph |")
    print("|---|---|---|---|")
    for title, (options, epsilon, transform) in VARIANTS.items():
        model = _model(options, epsilon)
        x = batch if transform is None else transform(batch)
        probs = tf.nn.softmax(model(x, training=False)).numpy()
        top1 = [classes[i] for i in probs.argmax(1)]
        right = sum(top1[names.index(n)] == c for n, c in EXPECTED.items() if n in names)
        shown = ", ".join(f"{n}: {t} {p:.2f}" for n, t, p in zip(names, top1, probs.max(1)))
        print(f"| {title} | {right} | {probs.max(1).mean():.2f} | {shown} |", flush=True)
        if FLAGS.save_reference_dir and not options and epsilon == efficientnet_lite.BN_EPSILON and transform is None:
            path = os.path.join(FLAGS.save_reference_dir, f"lite_ref_{FLAGS.arch}.npz")
            np.savez(path, images=batch, logits=model(batch, training=False).numpy(), names=np.array(names))


if __name__ == "__main__":
    app.run(main)
