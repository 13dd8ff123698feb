"""Draw the papers' top-5 attention figure (ICCV Figs. 2 and 10) for trained models, or the maps
of a classifier on photographs: an ImageNet-pretrained backbone, or your own saved Keras model
(no ICASC, no training needed).

    python scripts/visualize.py --pretrained=efficientnet_lite0              # photos that ship with packages
    python scripts/visualize.py --pretrained=efficientnet_lite0 --photos=my_photos/,cat.jpg
    python scripts/visualize.py --model=my_classifier.keras --photos=my_photos/ --class_names=cat,dog
    python scripts/visualize.py --model_dir=runs/icasc                       # 4 test images
    python scripts/visualize.py --model_dir=runs/icasc --compare_model_dir=runs/baseline \\
        --images=0,5,17 --attention=gradcam --layer=inner --output=figures/top5.png

Each image gets one row per model (the --compare_model_dir row above the --model_dir
row): the image, then its top-5 classes' attention maps with probabilities; ground-truth
classes are framed in green, the dataset's boxes outlined in magenta. The dataset, its
options and folders default to those in the model_dir's config.json. With --photos (and
--pretrained or --model), each photograph gets rows of its top-5 classes: A_ch and Grad-CAM
at the model's inner and last layers (ICASC's own, else the last feature map before pooling
and the last one at twice its resolution, nested models included).
"""

import os
import re

import keras
import numpy as np
from absl import flags

from icasc_tf import ICASC
from icasc_tf.attention import ATTENTIONS
from icasc_tf.backbones import IMAGENET_BACKBONES, build_backbone
from icasc_tf.backbones.efficientnet_lite import NATIVE_SIZES
from icasc_tf.backbones.imagenet_classes import imagenet_class_names
from icasc_tf.cli import command
from icasc_tf.data import load_dataset
from icasc_tf.data.registry import get_spec
from icasc_tf.explain import LAYER_ROLES
from icasc_tf.figures import top5_figure
from icasc_tf.photos import bundled_photos, center_square, load_photos, photo_attention_figure
from icasc_tf.train import TrainConfig
from icasc_tf.train.own_model import PIXEL_SCALE_HELP, PIXEL_SCALES
from icasc_tf.train.run_dir import MODELS, RunDir, load_model_file

FLAGS = flags.FLAGS
PHOTOS_FOLDER = "runs"  # where photograph figures go by default (beside the training runs, out of the repository)
flags.DEFINE_string("model_dir", "", "Training run folder (holds best.keras, final.keras, config.json).")
flags.DEFINE_string("model", "", "A saved .keras model (instead of --model_dir): an ICASC model, or any functional or "
                    "Sequential Keras classifier (a pretrained base nested in it included).")
flags.DEFINE_enum("which_model", "best", list(MODELS), "Which model of a model_dir to load.")
flags.DEFINE_string("compare_model_dir", "", "A second run (e.g. the baseline), drawn above --model_dir's rows.")
flags.DEFINE_string("compare_model", "", "A second saved .keras model (instead of --compare_model_dir).")
flags.DEFINE_enum("attention", "ach", list(ATTENTIONS), "Attention map to draw.")
flags.DEFINE_string("layer", LAYER_ROLES[0], f"Feature layer whose maps are drawn: {' or '.join(LAYER_ROLES)} (ICASC's "
                    "layers, or a classifier's default pair), or a layer's name or path (base/out_relu).")
flags.DEFINE_list("images", [], "Indices of the images in the split (default: the first --num_images).")
flags.DEFINE_integer("num_images", 4, "How many images from the start of the split, if --images is empty.")
flags.DEFINE_integer("top_k", 5, "Predicted classes per row.")
flags.DEFINE_string("split", "", "TFDS split (default: the run's test split).")
flags.DEFINE_string("dataset", "", "Dataset name (default: the run's; else cluttered_digits).")
flags.DEFINE_list("dataset_config", None, "Dataset builder options key=value (default: the run's).")
flags.DEFINE_string("data_dir", None, "TFDS data folder (default: the run's).")
flags.DEFINE_string("manual_dir", None, "Folder of manual downloads (default: the run's).")
flags.DEFINE_bool("boxes", True, "Outline the dataset's boxes where it has them.")
flags.DEFINE_string("output", "", "PNG path (default: <model folder>/top5_<split>_<attention>_<layer>.png; with "
                    f"photographs {PHOTOS_FOLDER}/photos_<model>.png).")
flags.DEFINE_string("pretrained", "", "An ImageNet-pretrained backbone (e.g. efficientnet_lite0): draw its maps on "
                    "--photos instead of a trained run's.")
flags.DEFINE_list("photos", [], "Image files or folders to draw --pretrained's or --model's maps on (default with "
                  "--pretrained: the photographs that ship with scikit-learn, matplotlib and scikit-image).")
flags.DEFINE_list("class_names", [], "With --model and --photos: the model's class names, in order, or one file "
                  "with a name per line (default: class ids; 'imagenet' for ImageNet's 1000).")
flags.DEFINE_enum("pixel_scale", None, [str(s) for s in PIXEL_SCALES],
                  f"With --model and --photos, for a model that is not ICASC: {PIXEL_SCALE_HELP}.")
flags.DEFINE_integer(
    "image_size", 0, "Input side in pixels (default: the run's; with --pretrained the backbone's own, 224 for lite0)."
)


class UserError(ValueError):
    """Bad input from the command line: reported as one line, exit status 2."""


def _model_path(model_dir, model, which, flag_prefix=""):
    if bool(model_dir) == bool(model):
        raise UserError(
            f"Give exactly one of --{flag_prefix}model_dir (a training run) or --{flag_prefix}model "
            "(a .keras file)."
        )
    if model:
        if not os.path.isfile(model):
            raise UserError(f"--{flag_prefix}model={model}: no such file.")
        return model
    if not os.path.isdir(model_dir):
        raise UserError(f"--{flag_prefix}model_dir={model_dir}: no such folder.")
    path = RunDir(model_dir).model_path(which)
    if not os.path.isfile(path):
        other = "final" if which == "best" else "best"
        raise UserError(f"{path} does not exist: has the run finished? Try --which_model={other}.")
    return path


def _load_model(path):
    model = load_model_file(path)
    if not isinstance(model, keras.Model):
        raise UserError(f"{path} holds a {type(model).__name__}, not a Keras classifier.")
    return model


def _file_part(text):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _input_shape(model):
    """``(height, width, channels)`` a classifier (or an ICASC model's backbone) takes."""
    return tuple((model.backbone if isinstance(model, ICASC) else model).inputs[0].shape[1:])


def _flag_or_run(flag_value, run_value):
    """A folder flag, else the run's value; empty means the library default (None)."""
    return (flag_value if flag_value is not None else run_value) or None


def _row_label(model_dir, model_path):
    return os.path.basename(os.path.normpath(model_dir)) if model_dir else os.path.splitext(
        os.path.basename(model_path))[0]


def _indices(images, num_images):
    try:
        indices = [int(i) for i in images] if images else list(range(num_images))
    except ValueError:
        raise UserError(f"--images takes integer indices, e.g. 0,5,17; got {','.join(images)}.") from None
    if not indices or min(indices) < 0:
        raise UserError("Choose at least one image: --images=0,5 (non-negative) or --num_images=N (N >= 1).")
    return indices


def load_examples(dataset, split, indices, *, data_dir, manual_dir, image_size, seed, options, with_boxes):
    """The images, labels and boxes (or None) at ``indices`` of a split, in that order."""
    common = dict(data_dir=data_dir, manual_dir=manual_dir, training=False, image_size=image_size,
                  seed=seed, deterministic=True, **options)
    data, info = load_dataset(dataset, split, 64, **common)
    if info.has_boxes and with_boxes:
        data, info = load_dataset(dataset, split, 64, with_boxes=True, **common)
    wanted, found = set(indices), {}
    seen = 0
    for batch in data:
        arrays = [np.asarray(part) for part in batch]
        for row in range(len(arrays[0])):
            if seen in wanted:
                found[seen] = [a[row] for a in arrays]
            seen += 1
        if len(found) == len(wanted):
            break
    missing = sorted(wanted - set(found))
    if missing:
        raise UserError(
            f"--images index {missing[0]} is out of range: split {split!r} of {dataset} has "
            f"{seen} examples (indices 0 to {seen - 1})."
        )
    columns = list(zip(*(found[i] for i in indices)))
    images, labels = np.stack(columns[0]), np.stack(columns[1])
    boxes = np.stack(columns[2]) if len(columns) > 2 else None
    return images, labels, boxes, info


def run_pretrained():
    """The photographs' top-5 classes with A_ch and Grad-CAM maps of an ImageNet backbone."""
    if FLAGS.model_dir or FLAGS.model or FLAGS.compare_model_dir or FLAGS.compare_model:
        raise UserError("--pretrained draws an ImageNet backbone's maps; it takes no --model_dir or --model.")
    arch = FLAGS.pretrained
    if arch not in IMAGENET_BACKBONES:
        raise UserError(f"--pretrained={arch}: ImageNet weights exist for {', '.join(IMAGENET_BACKBONES)}.")
    size = FLAGS.image_size or NATIVE_SIZES.get(arch, 224)
    spec = build_backbone(arch, 1000, (size, size, 3), weights="imagenet")
    model = ICASC(spec.model, **spec.icasc_layers())
    return _photo_figure(model, arch, size, imagenet_class_names(), scale=1.0)


def run_own_photos():
    """The photographs' top-5 classes with A_ch and Grad-CAM maps of a saved classifier (``--model``)."""
    if FLAGS.model_dir or FLAGS.compare_model_dir or FLAGS.compare_model:
        raise UserError("--photos draws one saved model's maps: give --model=FILE.keras alone.")
    path = _model_path("", FLAGS.model, FLAGS.which_model)
    model = _load_model(path)
    height, width = _input_shape(model)[:2]
    size = FLAGS.image_size or height or 224
    if height is not None and (height, width) != (size, size):
        raise UserError(f"{path} takes {height}x{width} images: --photos draws square ones; pass no --image_size, or "
                        "a model that takes square images.")
    scale = _pixel_scale({os.path.basename(path): model})
    name = os.path.splitext(os.path.basename(path))[0]
    return _photo_figure(model, name, size, _class_names(FLAGS.class_names), scale=scale)


def _pixel_scale(models):
    """The factor from the [0, 1] images to what ``models`` take: 1 for ICASC models (a run's take
    [0, 1]), ``--pixel_scale`` (required) for any other classifier; one for all of them."""
    plain = [name for name, model in models.items() if not isinstance(model, ICASC)]
    if not plain:
        if FLAGS.pixel_scale is not None:
            raise UserError("--pixel_scale applies to a classifier that is not ICASC: a run's ICASC model takes "
                            "[0, 1].")
        return 1.0
    if FLAGS.pixel_scale is None:
        raise UserError(f"Say which pixels {plain[0]} takes, --pixel_scale: {PIXEL_SCALE_HELP}.")
    if len(plain) < len(models) and FLAGS.pixel_scale != "1":
        raise UserError(f"The ICASC model takes [0, 1] and {', '.join(plain)} [0, {FLAGS.pixel_scale}]: draw them "
                        "apart.")
    return float(FLAGS.pixel_scale)


def _class_names(given):
    if given == ["imagenet"]:
        return imagenet_class_names()
    if len(given) == 1 and os.path.isfile(given[0]):
        with open(given[0], encoding="utf-8") as lines:
            return [line.strip() for line in lines if line.strip()]
    return list(given) or None


def _photo_figure(model, name, size, class_names, scale):
    photos = load_photos(FLAGS.photos) if FLAGS.photos else bundled_photos()
    squares = {photo: center_square(image, size) * scale for photo, image in photos.items()}
    output = FLAGS.output or os.path.join(PHOTOS_FOLDER, f"photos_{name}.png")
    photo_attention_figure(model, squares, class_names, path=output, top_k=FLAGS.top_k)
    return output


def run():
    if FLAGS.pretrained:
        return run_pretrained()
    if FLAGS.photos:
        return run_own_photos()
    main_path = _model_path(FLAGS.model_dir, FLAGS.model, FLAGS.which_model)
    models = {}
    if FLAGS.compare_model_dir or FLAGS.compare_model:
        compare_path = _model_path(FLAGS.compare_model_dir, FLAGS.compare_model, FLAGS.which_model, "compare_")
        models[_row_label(FLAGS.compare_model_dir, compare_path)] = _load_model(compare_path)
    label = _row_label(FLAGS.model_dir, main_path)
    if label in models:
        label += " (--model_dir)"
    models[label] = _load_model(main_path)
    scale = _pixel_scale(models)

    config = RunDir(FLAGS.model_dir).config() if FLAGS.model_dir else TrainConfig()
    if FLAGS.dataset_config is not None:
        config.dataset_config = FLAGS.dataset_config
    try:
        options = config.options("dataset_config")
    except ValueError as error:
        raise UserError(str(error)) from None
    options["augmentation"] = config.augmentation or None  # how the run's evaluation resized
    dataset = FLAGS.dataset or config.dataset
    split = FLAGS.split or config.test_split or get_spec(dataset).test_split
    indices = _indices(FLAGS.images, FLAGS.num_images)
    images, labels, boxes, info = load_examples(
        dataset, split, indices,
        data_dir=_flag_or_run(FLAGS.data_dir, config.data_dir),
        manual_dir=_flag_or_run(FLAGS.manual_dir, config.manual_dir),
        image_size=FLAGS.image_size or config.image_size or None, seed=config.seed, options=options,
        with_boxes=FLAGS.boxes,
    )
    for name, model in models.items():
        expected = _input_shape(model)
        if tuple(images.shape[1:]) != expected:
            raise UserError(
                f"Model {name!r} takes images of shape {expected}, but {dataset} {split!r} yields "
                f"{tuple(images.shape[1:])}; pass the run's --dataset/--dataset_config."
            )
    output = FLAGS.output or os.path.join(
        FLAGS.model_dir or os.path.dirname(os.path.abspath(main_path)),
        f"top5_{_file_part(split)}_{FLAGS.attention}_{_file_part(FLAGS.layer)}.png",
    )
    top5_figure(
        models, images * scale, labels, class_names=info.class_names, attention=FLAGS.attention,
        path=output, boxes=boxes, layer=FLAGS.layer, top_k=FLAGS.top_k,
    )
    return output


def _main(argv):
    command.begin(argv)
    try:
        output = run()
    except (ValueError, FileNotFoundError) as error:
        command.fail("visualize.py", error)
    print(f"wrote {output}")


USAGE = (
    "usage: python scripts/visualize.py --model_dir=RUN | --pretrained=BACKBONE [--flag=value ...]  (icasc-visualize)\n"
    "Draws the top-5 classes of test images (or photographs) with their attention maps into a PNG.\n"
    "--helpfull also lists absl's and TensorFlow's own flags."
)


def main(argv=None):
    """``icasc-visualize``: this command's flags for --help; absl's parsing otherwise."""
    command.start(_main, argv, command.module_help(USAGE, __name__))


if __name__ == "__main__":
    main()
