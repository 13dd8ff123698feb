"""The evidence: ICASC against its baselines on the bundled cluttered digits.

Trains and evaluates every arm with the same recipe and seeds, then writes
``study.json``, ``study.md`` (the table) and ``study.png`` (top-1 per arm) into
--output_dir, and a baseline-vs-ICASC attention figure. An arm/seed already finished in
--output_dir is not trained again, so the study survives interruption.

    python scripts/study.py                                    # every arm, 3 seeds
    python scripts/study.py --arms=baseline,ach --seeds=5
    python scripts/study.py --smoke                            # one arm, a few steps (CI)

Arms: baseline (no attention losses); ach, gradcam, apx (ICASC with each map);
as_in, as_in_ac (the ablation of ICCV Table 3; `ach` is all three terms); bn_exact
(`ach` with bn_mode=exact; `ach` itself is bn_mode=batch); wrna, wrna_icasc
(painless attention, alone and with the ICASC losses); ach_warmup, ach_w01 (the
attention terms ramped in over 2 epochs, or weighted 0.1); mask_grad (gradients through
the target mask); ft_baseline, ft_ach
(fine-tuning each seed's trained baseline, without and with ICASC; run `baseline` first).
"""

import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags
from absl import logging as absl_logging

FLAGS = flags.FLAGS
ARMS = {
    "baseline": dict(baseline=True),
    "ach": dict(attention="ach"),
    "gradcam": dict(attention="gradcam"),
    "apx": dict(attention="apx"),
    "as_in": dict(loss_weights=["1", "0", "0"]),
    "as_in_ac": dict(loss_weights=["1", "0", "1"]),
    "bn_exact": dict(bn_mode="exact"),
    "wrna": dict(baseline=True, painless_depth=2, painless_width=2),
    "wrna_icasc": dict(painless_depth=2, painless_width=2),
    # Why ICASC trails from scratch here: the attention terms ramped in, or weighted down...
    "ach_warmup": dict(attention_warmup=2.0),
    "ach_w01": dict(loss_weights=["0.1", "0.1", "0.1"]),
    "mask_grad": dict(mask_gradient=True),  # METHOD §1.4's other mask option
    # ...or, as in most of the paper's tables, fine-tuning a trained network: both arms
    # start from the same seed's trained baseline and train FINETUNE_EPOCHS more at lr/10.
    "ft_baseline": dict(baseline=True, finetune=True),
    "ft_ach": dict(finetune=True),
}
FINETUNE_EPOCHS = 3
flags.DEFINE_list("arms", list(ARMS), f"Arms to run: {', '.join(ARMS)}.")
flags.DEFINE_integer("seeds", 3, "Seeds per arm (0, 1, ...).")
flags.DEFINE_string("output_dir", "", "Where every run and the tables go (default runs/study, runs/study_smoke).")
flags.DEFINE_string("arch", "resnet20", "Backbone (a CIFAR-style ResNet keeps it CPU-sized).")
flags.DEFINE_list("arch_options", [], "Backbone options, key=value.")
flags.DEFINE_list("dataset_config", [], "cluttered_digits options, key=value.")
flags.DEFINE_integer("epochs", 6, "Epochs per run.")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch (0 = the whole split).")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 0.1, "Initial learning rate (cosine schedule).")
flags.DEFINE_string("data_dir", "", "TFDS data folder.")
flags.DEFINE_integer("eval_batches", 0, "Evaluate on this many test batches (0 = all).")
flags.DEFINE_integer("timing_steps", 5, "Timed train steps per arm for the relative step time.")
flags.DEFINE_bool("smoke", False, "CI: one arm, one seed, two epochs of two steps, tiny data.")
flags.DEFINE_integer("verbose", 2, "Keras progress of each run.")


def arm_config(arm, seed):
    from icasc_tf.config import TrainConfig

    values = dict(
        dataset="cluttered_digits",
        dataset_config=list(FLAGS.dataset_config),
        arch=FLAGS.arch,
        arch_options=list(FLAGS.arch_options),
        epochs=FLAGS.epochs,
        steps_per_epoch=FLAGS.steps_per_epoch,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        lr_schedule="cosine",
        seed=seed,
        data_dir=FLAGS.data_dir,
        attention_images=0,
        verbose=FLAGS.verbose,
        model_dir=os.path.join(FLAGS.output_dir, arm, f"seed-{seed}"),
    )
    arm_values = dict(ARMS[arm])
    if arm_values.pop("finetune", False):
        arm_values.update(
            weights=os.path.join(FLAGS.output_dir, "baseline", f"seed-{seed}", "final.keras"),
            epochs=min(FINETUNE_EPOCHS, FLAGS.epochs),
            learning_rate=FLAGS.learning_rate / 10,
        )
    values.update(arm_values)
    return TrainConfig(**values)


def run_arm(arm, seed):
    """Train (unless finished) and evaluate (unless evaluated) one arm/seed; return its eval dict."""
    import keras

    from icasc_tf.data import load_dataset
    from icasc_tf.evaluation import evaluate_model
    from icasc_tf.training import RunExistsError, changed_options, run_training

    config = arm_config(arm, seed)
    changed = changed_options(config)
    if changed:
        raise RunExistsError(
            f"{config.model_dir} was trained with other options ({', '.join(changed)}); "
            "use another --output_dir for another recipe."
        )
    eval_path = os.path.join(config.model_dir, "eval_test.json")
    if os.path.exists(eval_path):
        with open(eval_path, encoding="utf-8") as f:
            return json.load(f)
    if not os.path.exists(os.path.join(config.model_dir, "metrics.json")):
        run_training(config)
    model = keras.models.load_model(os.path.join(config.model_dir, "final.keras"))
    dataset, info = load_dataset(
        "cluttered_digits", "test", FLAGS.batch_size, training=False, with_boxes=True,
        data_dir=config.data_dir or None, **config.options("dataset_config"),
    )
    results = evaluate_model(
        model, dataset, info, max_batches=FLAGS.eval_batches or None,
        ks_chart_path=os.path.join(config.model_dir, "ks_test.png"),
    )
    tmp = eval_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    os.replace(tmp, eval_path)
    return results


def step_times(arms):
    """Median train-step seconds per arm, all measured here, in this process, on one batch.

    Arms are timed in interleaved rounds (as scripts/bench_step.py does), so that drift of
    the machine hits every arm alike.
    """
    import keras
    import numpy as np

    from icasc_tf.data import load_dataset
    from icasc_tf.training import build_model

    config = arm_config(arms[0], 0)
    dataset, info = load_dataset(
        "cluttered_digits", "train", FLAGS.batch_size, training=True,
        data_dir=config.data_dir or None, **config.options("dataset_config"),
    )
    x, y = next(iter(dataset))
    models = {}
    for arm in arms:
        models[arm] = build_model(arm_config(arm, 0), info)
        models[arm].compile(keras.optimizers.SGD(0.01, momentum=0.9))
        for _ in range(2):
            models[arm].train_on_batch(x, y)
    samples = {arm: [] for arm in arms}
    rounds = max(1, min(5, FLAGS.timing_steps))
    for _ in range(rounds):
        for arm, model in models.items():
            for _ in range(max(1, FLAGS.timing_steps // rounds)):
                start = time.perf_counter()
                model.train_on_batch(x, y)
                samples[arm].append(time.perf_counter() - start)
    return {arm: float(np.median(values)) for arm, values in samples.items()}


COLUMNS = [
    ("top1", "test top-1"),
    ("as_inner", "L_AS^in"),
    ("as_last", "L_AS^la"),
    ("pointing_game_last", "pointing (last)"),
    ("energy_in_box_last", "energy in box (last)"),
    ("ks_statistic", "KS"),
]


def summarise(results, times):
    table = {}
    for arm, runs in results.items():
        row = {}
        for key, _ in COLUMNS:
            values = [r[key] for r in runs if key in r]
            if values:
                row[key] = {
                    "mean": statistics.fmean(values),
                    "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "values": values,
                }
        if arm in times and "baseline" in times:
            row["step_time_vs_baseline"] = times[arm] / times["baseline"]
        row["step_seconds"] = times.get(arm)
        table[arm] = row
    return table


def markdown(table):
    header = "| arm | " + " | ".join(title for _, title in COLUMNS) + " | step time x baseline |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 2)]
    for arm, row in table.items():
        cells = []
        for key, _ in COLUMNS:
            cell = row.get(key)
            cells.append(f"{cell['mean']:.4f} ± {cell['std']:.4f}" if cell else "n/a")
        ratio = row.get("step_time_vs_baseline")
        cells.append(f"{ratio:.2f}" if ratio else "n/a")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def bar_chart(table, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [a for a in table if "top1" in table[a]]
    means = [table[a]["top1"]["mean"] * 100 for a in arms]
    stds = [table[a]["top1"]["std"] * 100 for a in arms]
    fig, ax = plt.subplots(figsize=(1.1 * len(arms) + 2, 3.5))
    ax.bar(arms, means, yerr=stds, capsize=4, color=["#888888"] + ["#3b75af"] * (len(arms) - 1))
    low = min(m - s for m, s in zip(means, stds))
    ax.set_ylim(max(0, low - 5), min(100, max(m + s for m, s in zip(means, stds)) + 2))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("cluttered digits: mean ± std over seeds")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_figure(path):
    """Baseline row over ICASC row on the same test images (seed 0 of each)."""
    import keras
    import numpy as np

    from icasc_tf.data import load_dataset
    from icasc_tf.visualize import top5_figure

    config = arm_config("baseline", 0)
    dataset, info = load_dataset(
        "cluttered_digits", "test", 6, training=False, data_dir=config.data_dir or None,
        **config.options("dataset_config"),
    )
    images, labels = next(iter(dataset))
    models = {
        arm: keras.models.load_model(os.path.join(FLAGS.output_dir, arm, "seed-0", "final.keras"))
        for arm in ("baseline", "ach")
    }
    top5_figure(models, np.asarray(images), np.asarray(labels), info.class_names, path=path)


def main(argv):
    if not FLAGS["verbosity"].present:  # TFDS is chatty at INFO/WARNING
        absl_logging.set_verbosity(absl_logging.ERROR)
    del argv
    if FLAGS.smoke:
        FLAGS.arms, FLAGS.seeds, FLAGS.epochs, FLAGS.steps_per_epoch = ["ach"], 1, 2, 2
        FLAGS.dataset_config = FLAGS.dataset_config or ["num_train=64", "num_test=32"]
        FLAGS.batch_size, FLAGS.eval_batches, FLAGS.timing_steps = 16, 1, 1
    FLAGS.output_dir = FLAGS.output_dir or ("runs/study_smoke" if FLAGS.smoke else "runs/study")
    unknown = [a for a in FLAGS.arms if a not in ARMS]
    if unknown:
        print(f"error: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    try:
        results = {arm: [run_arm(arm, seed) for seed in range(FLAGS.seeds)] for arm in FLAGS.arms}
    except ValueError as error:
        print(f"study.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    times = step_times(FLAGS.arms)
    table = summarise(results, times)
    with open(os.path.join(FLAGS.output_dir, "study.json"), "w", encoding="utf-8") as f:
        json.dump({"flags": FLAGS.flag_values_dict(), "table": table}, f, indent=2, default=str)
    text = markdown(table)
    with open(os.path.join(FLAGS.output_dir, "study.md"), "w", encoding="utf-8") as f:
        f.write(text)
    bar_chart(table, os.path.join(FLAGS.output_dir, "study.png"))
    if {"baseline", "ach"} <= set(FLAGS.arms):
        comparison_figure(os.path.join(FLAGS.output_dir, "attention_baseline_vs_icasc.png"))
    print(text)


if __name__ == "__main__":
    app.run(main)
