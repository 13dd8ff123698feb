"""The evidence: ICASC against its baselines, every arm with the same recipe and seeds.

Trains and evaluates every arm, then writes ``study.json``, ``study.md`` (one table per
background, with each arm's difference to the baseline and its 95% confidence interval) and
``study.png`` into --output_dir, and a baseline-vs-ICASC attention figure per background. A
finished arm/seed is not trained again, so the study survives interruption and can run
across sessions.

    python scripts/study.py                                     # the default arms, 3 seeds
    python scripts/study.py --arms=baseline,ach,baseline@textured,ach@textured
    python scripts/study.py --arms=baseline+x4,ach_w01+x4 --seeds=3
    python scripts/study.py --smoke                             # one arm, a few steps (CI)
    # A regime is a flagfile (dataset, backbone, weights, image size, recipe):
    python scripts/study.py --flagfile=flags/study_finetune_cluttered_fashion.flags \
        --arms=baseline,ach,ach_w01,baseline+scratch,ach+scratch --output_dir=runs/study3/finetune

The recipe is ``TrainConfig`` (every flag of scripts/train.py is a flag here too, flagfiles
included), with the study's defaults: CIFAR ResNet-8 on cluttered digits, 5 epochs, no
TensorBoard images. An arm is ``NAME[+MODIFIER...][@BACKGROUND]``:
  NAME        an entry of ARMS below (a change to the recipe);
  +x4         four times the epochs; +r20: a CIFAR ResNet-20 instead of the recipe's arch;
  +scratch    random initialisation instead of the recipe's --weights;
  @textured   the cluttered background config ``textured`` (default: the empty canvas).
Each arm is compared with the baseline of the same modifiers and background. Every arm is
evaluated (``final.keras``) on the dataset's test split. Runs go to
OUTPUT_DIR/BACKGROUND/NAME[+MODIFIER...]/seed-N, seed by seed, so that a partial study has
every arm's first seed before any arm's second.
"""

import icasc_tf  # noqa: F401  (first: a command starts TensorFlow quietly, before keras loads it)

# isort: split
import dataclasses
import json
import os
import statistics
import sys
import time

import keras
import matplotlib
import numpy as np
from absl import app, flags
from absl import logging as absl_logging

from icasc_tf.data import load_dataset
from icasc_tf.data.registry import get_spec
from icasc_tf.evaluation import evaluate_model
from icasc_tf.evaluation.statistics import difference_to_baseline
from icasc_tf.figures import top5_figure
from icasc_tf.train import RunDir, RunExistsError, run_training
from icasc_tf.train import config as run_config
from icasc_tf.train.files import atomic_write_json, atomic_write_text
from icasc_tf.train.run import build_model
from icasc_tf.train.stream import Splits, data_options

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # after the Agg backend is chosen

FLAGS = flags.FLAGS
ARMS = {
    "baseline": dict(baseline=True),
    "ach": dict(attention="ach"),
    "gradcam": dict(attention="gradcam"),
    "apx": dict(attention="apx"),
    # The ablation of ICCV Table 3 (`ach` is all three terms), and L_AS^la alone.
    "as_in": dict(loss_weights=["1", "0", "0"]),
    "as_in_ac": dict(loss_weights=["1", "0", "1"]),
    "as_la": dict(loss_weights=["0", "1", "0"]),
    # Options of the method: per-sample BN gradients, the mask, the second-order path.
    "bn_exact": dict(bn_mode="exact"),
    "mask_grad": dict(mask_gradient=True),
    "first_order": dict(second_order=False),
    # The attention terms ramped in over 2 epochs, or weighted down.
    "ach_warmup": dict(attention_warmup=2.0),
    "ach_w003": dict(loss_weights=["0.03", "0.03", "0.03"]),
    "ach_w01": dict(loss_weights=["0.1", "0.1", "0.1"]),
    "ach_w03": dict(loss_weights=["0.3", "0.3", "0.3"]),
    # Painless attention, alone and with the ICASC losses.
    "wrna": dict(baseline=True, painless_depth=2, painless_width=2),
    "wrna_icasc": dict(painless_depth=2, painless_width=2),
    # Fine-tuning each seed's trained baseline (run `baseline` first), without and with ICASC.
    "ft_baseline": dict(baseline=True, finetune=True),
    "ft_ach": dict(finetune=True),
}
MODIFIERS = {
    "x4": lambda c: dataclasses.replace(c, epochs=4 * c.epochs),
    "r20": lambda c: dataclasses.replace(c, arch="resnet20"),
    "scratch": lambda c: dataclasses.replace(c, weights=""),
}
# Class pairs the papers' "visual confusion" is about, by dataset class names (lower case):
# the study reports how often a test image of one is predicted as the other.
CONFUSABLE_PAIRS = (
    ("t-shirt/top", "shirt"), ("pullover", "coat"), ("shirt", "coat"), ("pullover", "shirt"),
)
BACKGROUNDS = ("empty", "textured")
FINETUNE_EPOCHS = 3
STUDY_DEFAULTS = dict(arch="resnet8", epochs=5, attention_images=0, verbose=2)

run_config.define_flags()
for _name, _value in STUDY_DEFAULTS.items():
    FLAGS.set_default(_name, _value)
flags.DEFINE_list("arms", ["baseline", "ach"], "Arms to run, NAME[+MOD...][@BACKGROUND] (see the module doc).")
flags.DEFINE_integer("seeds", 3, "Seeds per arm (0, 1, ...).")
flags.DEFINE_string("output_dir", "", "Where every run and the tables go (default runs/study, runs/study_smoke).")
flags.DEFINE_integer("eval_batches", 0, "Evaluate on this many test batches (0 = all).")
flags.DEFINE_integer("timing_steps", 5, "Timed train steps per arm for the relative step time (0 = none).")
flags.DEFINE_bool("smoke", False, "CI: one arm, one seed, two epochs of two steps, tiny data.")


# ----------------------------------------------------------------------------- arms
@dataclasses.dataclass(frozen=True)
class Arm:
    name: str
    modifiers: tuple
    background: str

    @classmethod
    def parse(cls, spec):
        rest, _, background = spec.partition("@")
        name, *modifiers = rest.split("+")
        background = background or "empty"
        problems = [f"unknown arm {name!r}"] if name not in ARMS else []
        problems += [f"unknown modifier +{m}" for m in modifiers if m not in MODIFIERS]
        if background not in BACKGROUNDS:
            problems.append(f"unknown background @{background}")
        if problems:
            raise ValueError(
                f"--arms item {spec!r}: {'; '.join(problems)}. Arms: {', '.join(ARMS)}; modifiers: "
                f"{', '.join('+' + m for m in MODIFIERS)}; backgrounds: "
                f"{', '.join('@' + b for b in BACKGROUNDS)}."
            )
        return cls(name, tuple(modifiers), background)

    @property
    def key(self):
        """The arm as written on the command line, and its row in the tables."""
        text = "+".join((self.name,) + self.modifiers)
        return text if self.background == "empty" else f"{text}@{self.background}"

    @property
    def folder(self):
        return os.path.join(self.background, "+".join((self.name,) + self.modifiers))

    def baseline(self):
        """The arm this one is compared with: the baseline of the same background and modifiers."""
        return Arm("baseline", self.modifiers, self.background)

    def config(self, recipe, seed, output_dir):
        changes = dict(ARMS[self.name])
        finetune = changes.pop("finetune", False)
        config = dataclasses.replace(
            recipe, seed=seed, model_dir=os.path.join(output_dir, self.folder, f"seed-{seed}"), **changes
        )
        if self.background != "empty":
            config = dataclasses.replace(
                config, dataset_config=list(config.dataset_config) + [f"background={self.background}"]
            )
        for modifier in self.modifiers:
            config = MODIFIERS[modifier](config)
        if finetune:
            base = self.baseline().config(recipe, seed, output_dir)
            config = dataclasses.replace(
                config, weights=RunDir(base.model_dir).model_path("final"),
                epochs=min(FINETUNE_EPOCHS, config.epochs), learning_rate=config.learning_rate / 10,
            )
        return config


def study_recipe():
    """The one recipe of every arm: the command line's TrainConfig (flagfile included)."""
    return run_config.from_flags(FLAGS)


def load_split(config, split, batch_size, training=False):
    """``split`` of the run's dataset as the run saw it (size, builder options), with boxes
    where the dataset has them."""
    spec = get_spec(config.dataset)
    return load_dataset(
        config.dataset, split, batch_size, training=training, seed=config.seed,
        with_boxes=not training and spec.box_key is not None and not spec.multi_label,
        **data_options(config),
    )


def confusable_pair_errors(results, class_names):
    """Per confusable pair present in ``class_names``: the share of the pair's test images
    predicted as the other class of the pair (from the confusion matrix)."""
    matrix = results.get("confusion_matrix")
    index = {str(name).lower(): i for i, name in enumerate(class_names or ())}
    errors = {}
    for a, b in CONFUSABLE_PAIRS:
        if matrix is None or a not in index or b not in index:
            continue
        i, j = index[a], index[b]
        total = sum(matrix[i]) + sum(matrix[j])
        if total:
            errors[f"{a} <-> {b}"] = (matrix[i][j] + matrix[j][i]) / total
    return errors


# ----------------------------------------------------------------------------- runs
def run_arm(arm, seed, recipe):
    """Train (unless finished) and evaluate (unless evaluated) one arm/seed; return its eval dict."""
    config = arm.config(recipe, seed, FLAGS.output_dir)
    changed = RunDir(config.model_dir).changed_options(config)
    if changed:
        raise RunExistsError(
            f"{config.model_dir} was trained with other options ({', '.join(changed)}); "
            "use another --output_dir for another recipe."
        )
    run_dir = RunDir(config.model_dir)
    eval_path = run_dir.evaluation_path("test")
    if os.path.exists(eval_path):
        with open(eval_path, encoding="utf-8") as f:
            return json.load(f)
    if not run_dir.finished:
        print(f"study: {arm.key} seed {seed} -> {config.model_dir}", flush=True)
        run_training(config)
    model = run_dir.load_model("final")
    dataset, info = load_split(config, Splits.of(config).test, config.batch_size)
    results = evaluate_model(
        model, dataset, info, max_batches=FLAGS.eval_batches or None,
        ks_chart_path=RunDir.chart_beside(eval_path),
    )
    pairs = confusable_pair_errors(results, info.class_names)
    if pairs:
        results["confusable_pairs"] = pairs
        results["confusable_error"] = statistics.fmean(pairs.values())
    results["validation_curve"] = _validation_curve(run_dir)
    atomic_write_json(eval_path, results)
    return results


def _validation_curve(run_dir):
    """Per-epoch validation accuracy and zero-target-map shares from the run's metrics.json."""
    history = run_dir.metrics().get("history", {})
    keys = [k for k in history if k.endswith(("accuracy", "zero_target_inner", "zero_target_last"))]
    return {k: history[k] for k in keys}


def step_times(arms, recipe):
    """Median train-step seconds per arm, all measured in this process on one batch.

    Arms are timed in interleaved rounds (as scripts/bench_step.py does), so that drift of
    the machine hits every arm alike. Arms that differ only in data share a measurement.
    """
    configs = {arm.key: arm.config(recipe, 0, FLAGS.output_dir) for arm in arms}
    dataset, info = load_split(recipe, recipe.train_split, recipe.batch_size, training=True)
    x, y = next(iter(dataset))
    models = {}
    for key, config in configs.items():
        models[key] = build_model(dataclasses.replace(config, weights=""), info)
        models[key].compile(keras.optimizers.SGD(0.01, momentum=0.9))
        for _ in range(2):
            models[key].train_on_batch(x, y)
    samples = {key: [] for key in models}
    rounds = max(1, min(5, FLAGS.timing_steps))
    for _ in range(rounds):
        for key, model in models.items():
            for _ in range(max(1, FLAGS.timing_steps // rounds)):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                samples[key].append(time.perf_counter() - start)
    return {key: float(np.median(values)) for key, values in samples.items()}


# ----------------------------------------------------------------------------- tables
COLUMNS = [
    ("top1", "test top-1"),
    ("as_inner", "L_AS^in"),
    ("as_last", "L_AS^la"),
    ("pointing_game_last", "pointing (last)"),
    ("energy_in_box_last", "energy in box (last)"),
    ("ks_statistic", "KS"),
    ("zero_target_last", "zero map (last)"),
    ("zero_target_inner", "zero map (inner)"),
    ("confusable_error", "confusable-pair error"),
]


def summarise(results, times):
    """``results``: {arm key: [eval dict per seed]}; returns {arm key: row}."""
    table = {}
    for key, runs in results.items():
        row = {"seeds": len(runs)}
        for column, _ in COLUMNS:
            values = [r[column] for r in runs if column in r]
            if values:
                row[column] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
        baseline = Arm.parse(key).baseline().key
        if baseline != key and baseline in results and "top1" in row:
            row["top1_vs_baseline"] = difference_to_baseline(
                row["top1"]["values"], [r["top1"] for r in results[baseline]]
            )
        if key in times and baseline in times:
            row["step_time_vs_baseline"] = times[key] / times[baseline]
        row["step_seconds"] = times.get(key)
        table[key] = row
    return table


def _cell(value, digits=4):
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}" if value else "n/a"


def markdown(table):
    header = (
        "| arm | test top-1 | Δ top-1 vs baseline [95% CI] | "
        + " | ".join(title for _, title in COLUMNS[1:])
        + " | step time x baseline | seeds |"
    )
    lines = [header, "|" + "---|" * (len(COLUMNS) + 4)]
    for key, row in table.items():
        diff = row.get("top1_vs_baseline")
        diff_text = (
            f"{100 * diff['mean']:+.1f} pts [{100 * diff['ci'][0]:+.1f}, {100 * diff['ci'][1]:+.1f}] "
            f"{diff['verdict']}" if diff else "n/a"
        )
        ratio = row.get("step_time_vs_baseline")
        cells = [_cell(row.get("top1")), diff_text]
        cells += [_cell(row.get(column)) for column, _ in COLUMNS[1:]]
        cells += [f"{ratio:.2f}" if ratio else "n/a", str(row["seeds"])]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table, path):


    arms = [a for a in table if "top1" in table[a]]
    means = [table[a]["top1"]["mean"] * 100 for a in arms]
    stds = [table[a]["top1"]["std"] * 100 for a in arms]
    colours = ["#888888" if Arm.parse(a).name == "baseline" else "#3b75af" for a in arms]
    fig, ax = plt.subplots(figsize=(0.8 * len(arms) + 2, 3.8))
    ax.bar(arms, means, yerr=stds, capsize=4, color=colours)
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0, low - 5), min(100, max(m + s for m, s in zip(means, stds)) + 2))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{FLAGS.dataset}: mean ± std over seeds (grey: baselines)")
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_figure(recipe, background, path):
    """Baseline row over ICASC row on the same test images (seed 0 of each)."""
    arms = {name: Arm(name, (), background) for name in ("baseline", "ach")}
    config = arms["baseline"].config(recipe, 0, FLAGS.output_dir)
    dataset, info = load_split(config, Splits.of(config).test, 6)
    images, labels = next(iter(dataset))[:2]
    models = {
        name: RunDir(arm.config(recipe, 0, FLAGS.output_dir).model_dir).load_model("final")
        for name, arm in arms.items()
    }
    top5_figure(models, np.asarray(images), np.asarray(labels), info.class_names, path=path)


def main(argv):
    if not FLAGS["verbosity"].present:  # TFDS is chatty at INFO/WARNING
        absl_logging.set_verbosity(absl_logging.ERROR)
    del argv
    if FLAGS.smoke:
        FLAGS.arms, FLAGS.seeds, FLAGS.epochs, FLAGS.steps_per_epoch = ["ach"], 1, 2, 2
        if FLAGS.dataset in ("cluttered_digits", "cluttered_fashion"):  # tiny generated data
            FLAGS.dataset_config = FLAGS.dataset_config or ["num_train=64", "num_test=32"]
        FLAGS.batch_size, FLAGS.eval_batches, FLAGS.timing_steps = 16, 1, 1
    FLAGS.output_dir = FLAGS.output_dir or ("runs/study_smoke" if FLAGS.smoke else "runs/study")
    try:
        arms = [Arm.parse(spec) for spec in FLAGS.arms]
        recipe = study_recipe().validate()
        os.makedirs(FLAGS.output_dir, exist_ok=True)
        results = {arm.key: [] for arm in arms}
        for seed in range(FLAGS.seeds):  # seed-major: every arm's first seed comes first
            for arm in arms:
                results[arm.key].append(run_arm(arm, seed, recipe))
    except ValueError as error:
        print(f"study.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    times = step_times(arms, recipe) if FLAGS.timing_steps else {}
    table = summarise(results, times)
    atomic_write_json(
        os.path.join(FLAGS.output_dir, "study.json"),
        {"flags": FLAGS.flag_values_dict(), "recipe": dataclasses.asdict(recipe), "table": table},
        default=str,
    )
    text = ""
    for background in BACKGROUNDS:
        rows = {k: v for k, v in table.items() if Arm.parse(k).background == background}
        if rows:
            text += f"\nBackground: {background}\n\n" + markdown(rows)
    atomic_write_text(os.path.join(FLAGS.output_dir, "study.md"), text.lstrip("\n"))
    bar_chart(table, os.path.join(FLAGS.output_dir, "study.png"))
    keys = set(results)
    for background in BACKGROUNDS:
        if {Arm("baseline", (), background).key, Arm("ach", (), background).key} <= keys:
            comparison_figure(
                recipe, background, os.path.join(FLAGS.output_dir, f"attention_baseline_vs_icasc_{background}.png")
            )
    print(text)


if __name__ == "__main__":
    app.run(main)
