"""Where do the attention maps go, and which channels put them there? A diagnostic for runs
on images drawn on a blank canvas: cluttered digits, Fashion-MNIST and cluttered Fashion-MNIST.

For each run, on the first test images, at the last layer:
- placement: the share of ground-truth and most-confusing-class maps whose peak lies on
  ink (any stroke or item pixel, target or distractor), and the share of their mass on ink;
  where the dataset has target boxes (the cluttered datasets), also the share of the
  target's map mass inside its box and the pointing game (peak inside the box);
- the exit through an all-zero target map: the share of images whose target A_ch map is
  zero everywhere (ReLU of a map with no positive value), overall and per class;
- channel anatomy: each channel k's *ink share* (its activation mass on ink over its total,
  over the images); channels whose ink share is below the canvas's ink cover fire mostly
  off the strokes ("canvas channels"). Reported: the share of channels that are canvas
  channels; the share of the target's and the confusing class's map mass that comes from
  them (the map is sum_k alpha_k F_k, so each channel's part is exact); and how many classes
  weigh a canvas channel vs an ink channel positively (alpha_k^c > 0 for c in 0..9), and
  the overlap of the target's and the confusing class's channel weights (their soft IoU:
  0 when the two maps are built from disjoint channels), and the median ratio of the target
  map's total mass to the confusing class's (separation by magnitude).

Attention built from canvas channels separates the two classes' maps without looking at
the digits, which is how L_AS can fall while localization gets worse (BUILD_NOTES.md).

    python scripts/attention_placement.py --runs=runs/study/empty/baseline/seed-0,runs/study/empty/ach/seed-0
    python scripts/attention_placement.py --background=textured --runs=runs/study/textured/ach/seed-0
    python scripts/attention_placement.py --dataset=fashion_mnist --runs=runs/study3/scratch/empty/ach/seed-0
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ runtime warnings; read when it loads

import json
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags
from absl import logging as absl_logging

from icasc_tf import method
from icasc_tf.data import load_dataset
from icasc_tf.data.cluttered_digits import ClutteredDigitsConfig
from icasc_tf.data.registry import get_spec
from icasc_tf.evaluation.attention_metrics import energy_in_box, pointing_game
from icasc_tf.selection import confusing_class
from icasc_tf.train import RunDir

FLAGS = flags.FLAGS
flags.DEFINE_list("runs", [], "Run folders (each with final.keras), trained on --dataset.")
flags.DEFINE_enum(
    "dataset", "cluttered_digits", ["cluttered_digits", "cluttered_fashion", "fashion_mnist"],
    "The dataset the runs were trained on (images on a blank canvas, so ink can be told apart).",
)
flags.DEFINE_integer("num_images", 500, "Test images to look at.")
flags.DEFINE_enum("background", "empty", ["empty", "textured"], "Background config of the cluttered datasets.")
flags.DEFINE_float(
    "ink_threshold", -1.0,
    "A pixel is ink this far above the image's darkest value, the blank canvas, judged on the "
    "pixels as drawn, before any mean subtraction (default: 0.05 on the empty canvas; on the "
    "textured one 0.05 above the background's contrast, so texture is not ink).",
)
flags.DEFINE_string("manual_dir", "", "Folder of Fashion-MNIST's four files (default: Debian's).")
flags.DEFINE_string("data_dir", "", "TFDS data folder.")
flags.DEFINE_string("output_json", "", "Also write the figures here.")


def _class_maps(model, images, classes):
    """Last-layer feature map F, and alpha_k^c for each column of ``classes`` ([N, k] ids)."""
    selectors = [tf.one_hot(classes[:, j], model.num_classes) for j in range(classes.shape[1])]
    tap = model.graph.tap([model.last_layer], model.scores)
    (f_last,), _, gradients = method.class_gradients(tap, tf.constant(images), lambda logits: selectors,
                                                     training=False)
    # A_ch's channel weights, the model's default map: alpha_k = mean_ij ReLU(g).
    alphas = [tf.reduce_mean(tf.nn.relu(g_last), axis=[1, 2]).numpy() for (g_last,) in gradients]
    return np.asarray(f_last, np.float64), np.stack(alphas, axis=1)  # [N,h,w,K], [N,k,K]


def anatomy(model, images, labels, ink, boxes=None):
    """Placement and channel anatomy of one model's last-layer A_ch maps (see the module doc).

    ``boxes``: [N, 4] target boxes ``[ymin, xmin, ymax, xmax]`` in image pixels, or None.
    """
    rows = np.arange(len(images))
    confusing = confusing_class(labels, model.predict(images, verbose=0)).numpy()
    every_class = np.tile(np.arange(model.num_classes), (len(images), 1))
    features, alpha_all = _class_maps(model, images, every_class)
    alpha = {"target": alpha_all[rows, labels], "confusing": alpha_all[rows, confusing]}
    h, w = features.shape[1:3]
    ink_small = tf.image.resize(ink[..., None].astype("float32"), (h, w), method="area").numpy()[..., 0]
    cover = float(ink_small.mean())
    channel_mass = features.sum(axis=(0, 1, 2))
    ink_share = (features * ink_small[..., None]).sum(axis=(0, 1, 2)) / np.maximum(channel_mass, 1e-12)
    live = channel_mass > 1e-6 * channel_mass.max()
    canvas = live & (ink_share < cover)
    result = {
        "ink_cover": cover,
        "canvas_channels": float(canvas.sum() / max(live.sum(), 1)),
        "channel_ink_share": float((ink_share * channel_mass).sum() / channel_mass.sum()),
    }
    for kind, a in alpha.items():
        parts = a[:, None, None, :] * features  # [N,h,w,K]: channel k's part of the map
        the_map = np.maximum(parts.sum(-1), 0.0)
        peak = the_map.reshape(len(images), -1).argmax(axis=1)
        ink_peak = ink_small.reshape(len(images), -1)[rows, peak] > 0.5
        result[f"{kind}_peak_on_ink"] = float(ink_peak.mean())
        result[f"{kind}_mass_on_ink"] = float(
            np.mean((the_map * ink_small).sum(axis=(1, 2)) / np.maximum(the_map.sum(axis=(1, 2)), 1e-12))
        )
        mass = parts.sum(axis=(1, 2))  # [N, K]
        result[f"{kind}_from_canvas_channels"] = float(
            np.mean(mass[:, canvas].sum(1) / np.maximum(mass.sum(1), 1e-12))
        )
    # Separation by magnitude: L_AS compares the maps unnormalised, so a target map much
    # larger than the confusing one has little overlap min(A_T, A_C) wherever both lie.
    mass_t = np.maximum((alpha["target"][:, None, None, :] * features).sum(-1), 0).sum(axis=(1, 2))
    mass_c = np.maximum((alpha["confusing"][:, None, None, :] * features).sum(-1), 0).sum(axis=(1, 2))
    target_maps = np.maximum((alpha["target"][:, None, None, :] * features).sum(-1), 0.0)
    zero = target_maps.reshape(len(images), -1).max(axis=1) <= 0
    result["zero_target_last"] = float(zero.mean())
    result["zero_target_by_class"] = {
        int(c): float(zero[labels == c].mean()) for c in range(model.num_classes) if (labels == c).any()
    }
    if boxes is not None:
        size = images.shape[1:3]
        result["target_mass_in_box"] = energy_in_box(target_maps, boxes, size)[1]
        result["target_pointing"] = pointing_game(target_maps, boxes, size)[1]
    result["target_to_confusing_mass"] = float(np.median(mass_t / np.maximum(mass_c, 1e-12)))
    # Separation in channel space: the soft IoU of the target's and the confusing class's
    # channel weights (0: the two maps are built from disjoint channels, wherever they fire).
    at, ac = alpha["target"], alpha["confusing"]
    result["channel_weight_overlap"] = float(
        np.mean(2 * np.minimum(at, ac).sum(1) / np.maximum((at + ac).sum(1), 1e-12))
    )
    breadth = (alpha_all > 1e-3 * alpha_all.max()).mean(axis=0).sum(axis=0)  # [K]: classes per channel
    result["classes_per_canvas_channel"] = float(breadth[canvas].mean()) if canvas.any() else float("nan")
    ink_channels = live & ~canvas
    result["classes_per_ink_channel"] = float(breadth[ink_channels].mean()) if ink_channels.any() else float("nan")
    return result


COLUMNS = (
    ("channel_ink_share", "channel mass on ink"),
    ("target_peak_on_ink", "T peak on ink"),
    ("target_mass_on_ink", "T mass on ink"),
    ("target_mass_in_box", "T mass in box"),
    ("target_pointing", "T pointing"),
    ("zero_target_last", "T map all zero"),
    ("confusing_mass_on_ink", "C mass on ink"),
    ("canvas_channels", "canvas channels"),
    ("target_from_canvas_channels", "T from canvas ch."),
    ("confusing_from_canvas_channels", "C from canvas ch."),
    ("target_to_confusing_mass", "T/C map mass (median)"),
    ("channel_weight_overlap", "T/C channel-weight overlap"),
    ("classes_per_canvas_channel", "classes/canvas ch."),
    ("classes_per_ink_channel", "classes/ink ch."),
)


def main(argv):
    del argv
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's info lines bury the table
    if not FLAGS.runs:
        print("attention_placement.py: error: give --runs=DIR[,DIR...]", file=sys.stderr)
        sys.exit(2)
    cluttered = FLAGS.dataset.startswith("cluttered_")
    options = {"background": "textured"} if cluttered and FLAGS.background == "textured" else {}
    dataset, info = load_dataset(
        FLAGS.dataset, "test", FLAGS.num_images, training=False, data_dir=FLAGS.data_dir or None,
        manual_dir=FLAGS.manual_dir or None, with_boxes=cluttered, **options,
    )
    batch = [t.numpy() for t in next(iter(dataset))]
    images, labels = batch[0], batch[1]
    boxes = batch[2] if cluttered else None
    threshold = FLAGS.ink_threshold
    if threshold < 0:
        textured = cluttered and FLAGS.background == "textured"
        threshold = 0.05 + (ClutteredDigitsConfig.background_contrast if textured else 0.0)
    # Ink is judged on the pixels as drawn: the cifar recipe (Fashion-MNIST) subtracts the
    # train split's per-pixel mean, which would make every background pixel look like ink.
    drawn = images + info.pixel_mean if info.pixel_mean is not None else images
    canvas = drawn.max(axis=-1)
    ink = canvas > canvas.min(axis=(1, 2), keepdims=True) + threshold
    print(f"ink (> {threshold:.2f}) covers {ink.mean():.2f} of the canvas ({len(images)} test images)")
    print(f"| run | {' | '.join(title for _, title in COLUMNS)} |")
    print("|---|" + "---|" * len(COLUMNS))
    found = {}
    for run in FLAGS.runs:
        path = RunDir(run).model_path("final")
        if not os.path.exists(path):
            print(f"attention_placement.py: error: no final.keras in {run}", file=sys.stderr)
            sys.exit(2)
        config, spec = RunDir(run).config(), get_spec(FLAGS.dataset)
        if config.augmentation not in ("", spec.augmentation) or config.image_size not in (0, spec.image_size):
            print(f"attention_placement.py: error: {run} trained with --augmentation={config.augmentation} "
                  f"--image_size={config.image_size}; the diagnostic reads {FLAGS.dataset}'s test images at the "
                  "dataset's own size and augmentation only", file=sys.stderr)
            sys.exit(2)
        found[run] = anatomy(RunDir(run).load_model("final"), images, labels.astype(int), ink, boxes)
        cells = [f"{found[run][key]:.2f}" if key in found[run] else "n/a" for key, _ in COLUMNS]
        print(f"| {run} | " + " | ".join(cells) + " |", flush=True)
        zero_classes = {c: share for c, share in found[run]["zero_target_by_class"].items() if share > 0}
        if zero_classes:
            print(f"  all-zero target maps by class: {zero_classes}", flush=True)
    if FLAGS.output_json:
        with open(FLAGS.output_json, "w", encoding="utf-8") as f:
            json.dump(found, f, indent=2)


if __name__ == "__main__":
    app.run(main)
