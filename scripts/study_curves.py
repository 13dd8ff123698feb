"""Per-epoch curves of a study's runs: validation accuracy and the share of validation samples whose
target map is all zero at each layer, mean over seeds, one table per arm.

    python scripts/study_curves.py --output_dir=runs/study3/scratch

Reads each run's test evaluation (``RunDir.evaluation_path("test")``: its ``validation_curve``,
written by ``scripts/study.py``), so it runs on a finished or partial study without training
anything.
"""

import glob
import json
import os
import statistics

from absl import app, flags

from icasc_tf.train.run_callbacks import validation_log
from icasc_tf.train.run_dir import RunDir

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", "runs/study", "The --output_dir of a scripts/study.py study.")
KEYS = tuple((validation_log(metric), title) for metric, title in (
    ("accuracy", "validation top-1"), ("zero_target_inner", "zero map (inner)"),
    ("zero_target_last", "zero map (last)"),
))


def curves(output_dir):
    """``{arm folder: {key: [per-epoch mean over seeds]}}`` and the seeds found per arm."""
    found = {}
    for run in sorted(glob.glob(os.path.join(output_dir, "*", "*", "seed-*"))):
        path = RunDir(run).evaluation_path("test")
        if not os.path.isfile(path):
            continue
        arm = os.path.relpath(os.path.dirname(run), output_dir)
        with open(path, encoding="utf-8") as f:
            curve = json.load(f).get("validation_curve", {})
        found.setdefault(arm, []).append(curve)
    table = {}
    for arm, runs in found.items():
        table[arm] = {
            key: [statistics.fmean(values) for values in zip(*(run[key] for run in runs if key in run))]
            for key, _ in KEYS
            if any(key in run for run in runs)
        }
    return table, {arm: len(runs) for arm, runs in found.items()}


def main(argv):
    del argv
    table, seeds = curves(FLAGS.output_dir)
    for arm, values in table.items():
        epochs = max((len(v) for v in values.values()), default=0)
        print(f"\n{arm} ({seeds[arm]} seeds)\n")
        print("| epoch | " + " | ".join(title for key, title in KEYS if key in values) + " |")
        print("|---|" + "---|" * sum(key in values for key, _ in KEYS))
        for epoch in range(epochs):
            cells = [
                f"{values[key][epoch]:.4f}" if epoch < len(values[key]) else "" for key, _ in KEYS if key in values
            ]
            print(f"| {epoch + 1} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    app.run(main)
