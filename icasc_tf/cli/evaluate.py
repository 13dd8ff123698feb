"""Evaluate a trained ICASC model on a split: accuracy, KS chart, separation, localization, faithfulness.

    python scripts/evaluate.py --model_dir=runs/default                 # best.keras on the run's test split
    python scripts/evaluate.py --model_dir=runs/default --which_model=final --max_batches=10
    python scripts/evaluate.py --model=model.keras --dataset=cluttered_digits --output=/tmp/eval.json

Dataset flags default to the run's config.json. Writes the results as JSON (default
<model_dir>/eval_<split>.json) and the KS chart beside it (<output stem>_ks.png), and
prints them as a table: how many of the split's images were evaluated (fewer with
--max_batches), then every number, the confusion matrix with its class names. See
icasc_tf.evaluation.evaluate_model for what each number is.
"""

import json
import os

from absl import flags

from icasc_tf.attention import ATTENTIONS
from icasc_tf.cli import command
from icasc_tf.data import load_dataset
from icasc_tf.data.registry import get_spec
from icasc_tf.evaluation import evaluate_model
from icasc_tf.train import TrainConfig
from icasc_tf.train.run_dir import MODELS, RunDir, load_model_file

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "Training run folder holding best.keras / final.keras and config.json.")
flags.DEFINE_enum("which_model", "best", list(MODELS), "Which model of --model_dir: best.keras or final.keras.")
flags.DEFINE_string("model", None, "Path of a .keras ICASC model (instead of, or overriding, --model_dir's).")
flags.DEFINE_string("dataset", None, "Dataset name; default the run's, else cluttered_digits.")
flags.DEFINE_string("split", None, "Split to evaluate; default the run's test split (the dataset's, else test).")
flags.DEFINE_string("data_dir", None, "TFDS data folder; default the run's.")
flags.DEFINE_string("manual_dir", None, "Folder of source files TFDS cannot download (an image_folder run: its "
                    "images); default the run's.")
flags.DEFINE_integer("batch_size", None, "Batch size; default the run's, else 64.")
flags.DEFINE_integer("image_size", None, "Input size in pixels; default the run's (0 = dataset default).")
flags.DEFINE_list("dataset_config", None, "Dataset builder options key=value; default the run's.")
flags.DEFINE_string(
    "attention", None, f"Map for localization/faithfulness: {', '.join(ATTENTIONS)}; default the model's."
)
flags.DEFINE_integer("max_batches", None, "Evaluate only this many batches (the output says on how many of the "
                     "split's images).")
flags.DEFINE_bool("ten_crop", False, "Also report ten-crop accuracy (datasets that define ten crops).")
flags.DEFINE_string("output", None, "Results JSON path; default <model_dir>/eval_<split>.json.")

DEFAULT_DATASET = "cluttered_digits"
DEFAULT_BATCH_SIZE = 64


class EvaluationError(ValueError):
    """A bad command line: reported as one line and a non-zero exit."""


def _run_config(model_dir):
    """The run's options (``{}`` without --model_dir or config.json)."""
    if model_dir is None:
        return {}
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise EvaluationError(f"--model_dir={model_dir} is a file: pass the folder of a training run (or --model=).")
    if not os.path.isdir(model_dir):
        raise EvaluationError(f"--model_dir={model_dir} does not exist: pass the folder of a training run.")
    return RunDir(model_dir).saved_options() or {}


def _test_split(dataset):
    try:
        return get_spec(dataset).test_split
    except ValueError as error:
        raise EvaluationError(str(error)) from None


def resolve_settings(flag_values):
    """Model path, data options and output paths: flags first, then the run's config.json."""
    if not flag_values.model_dir and not flag_values.model:
        raise EvaluationError("Pass --model_dir (a training run folder) or --model (a .keras file).")
    config = _run_config(flag_values.model_dir)
    if flag_values.model:
        model_path = flag_values.model
    else:
        model_path = RunDir(flag_values.model_dir).model_path(flag_values.which_model)
    if not os.path.isfile(model_path):
        raise EvaluationError(f"Model file {model_path} does not exist.")

    def pick(flag, key, default):
        value = getattr(flag_values, flag)
        if value is None:
            value = config.get(key)
        return default if value in (None, "") else value

    dataset = pick("dataset", "dataset", DEFAULT_DATASET)
    split = pick("split", "test_split", "") or _test_split(dataset)
    output = flag_values.output or RunDir(
        flag_values.model_dir or os.path.dirname(os.path.abspath(model_path))
    ).evaluation_path(split)
    return {
        "model_path": model_path,
        "dataset": dataset,
        "split": split,
        "batch_size": int(pick("batch_size", "batch_size", DEFAULT_BATCH_SIZE)),
        "data_dir": pick("data_dir", "data_dir", None),
        "manual_dir": pick("manual_dir", "manual_dir", None),
        "image_size": int(pick("image_size", "image_size", 0)) or None,
        "dataset_config": list(pick("dataset_config", "dataset_config", [])),
        "augmentation": config.get("augmentation") or None,  # how the run's evaluation resized
        "seed": int(config.get("seed", 0)),
        "output": output,
        "ks_chart": RunDir.chart_beside(output),
    }


def load_split(settings, crops="single"):
    """The split as batches, with boxes where the dataset has them, and its DatasetInfo."""
    options = dict(
        data_dir=settings["data_dir"],
        manual_dir=settings["manual_dir"],
        training=False,
        image_size=settings["image_size"],
        seed=settings["seed"],
        crops=crops,
        augmentation=settings["augmentation"],
        **TrainConfig(dataset_config=settings["dataset_config"]).options("dataset_config"),
    )
    name, split, batch_size = settings["dataset"], settings["split"], settings["batch_size"]
    dataset, info = load_dataset(name, split, batch_size, **options)
    if info.has_boxes and crops == "single":
        dataset, info = load_dataset(name, split, batch_size, with_boxes=True, **options)
    return dataset, info


_PERCENT_KEYS = ("top1", "top5", "mAP", "per_class_ap", "average_drop", "increase_in_confidence",
                 "pointing_game", "energy_in_box")


def _text(value, percent):
    if isinstance(value, bool) or not isinstance(value, float):
        return "n/a" if value is None else str(value)
    return f"{100 * value:.2f} %" if percent else f"{value:.4f}"


def format_table(results):
    """The results as aligned ``name  value`` lines; accuracies, AP and attention shares in %; the
    examples as ``N of M``; the confusion matrix last, as a table of its own."""
    rows = []
    for key, value in results.items():
        if key in ("split_examples", "confusion_matrix", "confusion_matrix_classes"):
            continue
        if key == "examples":
            rows.append((key, f"{value} of {results.get('split_examples', value)}"))
        elif isinstance(value, dict):
            rows.append((key, ""))
            rows.extend(
                (f"  {k}", _text(v, key.startswith(_PERCENT_KEYS) or k.startswith(_PERCENT_KEYS)))
                for k, v in value.items()
            )
        else:
            rows.append((key, _text(value, key.startswith(_PERCENT_KEYS))))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {text}".rstrip() for name, text in rows]
    if "confusion_matrix" in results:
        lines += ["", *confusion_table(results["confusion_matrix"], results.get("confusion_matrix_classes"))]
    return "\n".join(lines)


CONFUSION_TABLE_MAX_CLASSES = 20  # wider tables stay in the JSON file only


def confusion_table(matrix, class_names=None):
    """The confusion matrix as lines: a row per true class (index and name), a column per predicted
    class (by index), or one line saying where it is when it has too many classes to read."""
    names = list(class_names or range(len(matrix)))
    if len(matrix) > CONFUSION_TABLE_MAX_CLASSES:
        return [f"confusion_matrix: {len(matrix)} classes, in the results file (rows true, columns predicted)"]
    corner = "true \\ predicted"
    labels = [str(name) if str(name) == str(i) else f"{i} {name}" for i, name in enumerate(names)]
    first = max(len(corner), *(len(label) for label in labels))
    width = max(len(str(len(matrix) - 1)), *(len(str(count)) for row in matrix for count in row))

    def line(label, cells):
        return f"{label:<{first}}  " + " ".join(f"{cell:>{width}}" for cell in cells)

    body = [line(label, row) for label, row in zip(labels, matrix)]
    return ["confusion_matrix (rows: true class, columns: predicted class, by index)",
            line(corner, range(len(matrix))), *body]


def evaluated_line(results, settings, max_batches):
    """``<model> on split '<split>': N of M images`` (and the flag, when only part of it was evaluated)."""
    examples, total = results["examples"], results.get("split_examples", results["examples"])
    partial = f" (--max_batches={max_batches}: part of the split)" if examples != total else ""
    model = os.path.basename(settings["model_path"])
    return f"{model} on split {settings['split']!r}: {examples} of {total} images{partial}"


def evaluate(settings, attention=None, max_batches=None, ten_crop=False):
    """Load data (failing fast on data problems), then the model; evaluate, write JSON and chart."""
    dataset, info = load_split(settings)
    ten_crops = load_split(settings, crops="ten") if ten_crop else None
    model = load_model_file(settings["model_path"])
    results = {"model": settings["model_path"], "split": settings["split"]}
    results.update(
        evaluate_model(
            model, dataset, info, attention=attention, max_batches=max_batches,
            ks_chart_path=settings["ks_chart"],
        )
    )
    if ten_crops is not None:
        ten = evaluate_model(model, *ten_crops, max_batches=max_batches)
        results["ten_crop"] = {k: v for k, v in ten.items() if k not in ("dataset", "multi_label", "crops")}
    os.makedirs(os.path.dirname(os.path.abspath(settings["output"])), exist_ok=True)
    with open(settings["output"], "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return results


def _main(argv):
    command.begin(argv)
    try:
        settings = resolve_settings(FLAGS)
        results = evaluate(settings, FLAGS.attention, FLAGS.max_batches, FLAGS.ten_crop)
    except (ValueError, FileNotFoundError) as error:
        command.fail("evaluate.py", error)
    print(evaluated_line(results, settings, FLAGS.max_batches))
    print(format_table(results))
    print(f"wrote {settings['output']} and {settings['ks_chart']}")


USAGE = (
    "usage: python scripts/evaluate.py --model_dir=RUN [--flag=value ...]   (or icasc-evaluate)\n"
    "Evaluates a run's best.keras (or final.keras) on its test split: top-1/5, KS chart, separation, localization.\n"
    "--helpfull also lists absl's and TensorFlow's own flags."
)


def main(argv=None):
    """``icasc-evaluate``: this command's flags for --help; absl's parsing otherwise."""
    command.start(_main, argv, command.module_help(USAGE, __name__))


if __name__ == "__main__":
    main()
