"""Train ICASC (or its baseline, or painless attention) from the command line.

    python scripts/train.py                                   # bundled cluttered digits, minutes on a CPU
    python scripts/train.py --dataset=caltech256 --arch=vgg19 --weights=...  # the paper's recipe (flags/)
    python scripts/train.py --flagfile=flags/cifar100_resnet110.flags --data_dir=/data/tfds
    python scripts/train.py --baseline --model_dir=runs/baseline
    python scripts/train.py --help                            # the run's flags, by group

Every option is a field of icasc_tf.train.TrainConfig; the run's folder (--model_dir)
holds its flags, checkpoints, TensorBoard logs, best and final models and metrics.
Without --flagfile, --dataset (and --arch) take the paper's recipe from flags/ as defaults
(icasc_tf.train.recipes); flags given on the command line win.
"""

import sys

from absl import flags

from icasc_tf.cli import command
from icasc_tf.train import config as run_config
from icasc_tf.train.checkpoint import CheckpointError
from icasc_tf.train.recipes import resolve
from icasc_tf.train.run import run_training
from icasc_tf.train.run_callbacks import RunInterrupted, metric_of

run_config.define_flags()
FLAGS = flags.FLAGS
USAGE = (
    "usage: python scripts/train.py [--flag=value ...]   (or icasc-train; --flagfile=F reads flags from F)\n"
    "Trains ICASC into --model_dir. Without --flagfile, --dataset (and --arch) take the paper's recipe\n"
    "from flags/ as defaults. --helpfull also lists absl's and TensorFlow's own flags."
)


def _main(argv):
    command.begin(argv)
    try:
        resolution = resolve(FLAGS, sys.argv)
        for line in [resolution.recipe_line, *resolution.notes]:
            if line:
                print(f"train.py: {line}", flush=True)
        for line in resolution.warnings:
            print(f"train.py: {line}", file=sys.stderr, flush=True)
        config = resolution.config
        header = [resolution.recipe_line] if resolution.recipe_line else []
        summary = run_training(config, header=header)
    except RunInterrupted as stopped:
        print(f"train.py: {stopped}", file=sys.stderr, flush=True)
        sys.exit(128 + stopped.signum)  # as the shell reports a process ended by that signal
    except CheckpointError as error:
        command.fail("train.py", error, status=1)
    except (ValueError, FileNotFoundError) as error:
        command.fail("train.py", error)
    print(done_lines(config.model_dir, summary))


def _score(results):
    """The headline number of a results dict: accuracy, else mAP."""
    for key, name in (("accuracy", "top-1"), ("map", "mAP")):
        if key in results:
            return f"{name} {100 * results[key]:.1f}%"
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(results.items()))


def _on(block, split):
    """`` on 32 of 40 test images`` when an evaluation covered part of its split (--eval_steps), else ``""``."""
    examples, total = block.get("examples"), block.get("split_examples")
    return "" if examples == total else f" on {examples} of {total} {split} images"


def done_lines(model_dir, summary):
    """The ``done:`` line, each number with the split, the share of it and the model it is from,
    and what to run next."""
    test, validation = summary["test"], summary["validation"]
    best = validation.get("best") or {}
    monitor = summary["selected_on"]
    parts = [f"final.keras {_score(test['final'])}"]
    if "best" in test:
        chosen = (f"epoch {best.get('epoch')}, validation {metric_of(monitor)} "
                  f"{100 * best.get(monitor, float('nan')):.1f}%{_on(validation, 'validation')}")
        parts.append(f"best.keras ({chosen}) {_score(test['best'])}")
    partial = f",{_on(test, 'test')} (--eval_steps)" if _on(test, "test") else ""
    return "\n".join([
        f"done: {model_dir}: test split {test['split']!r}{partial}: " + "; ".join(parts),
        "next:",
        f"  python scripts/evaluate.py --model_dir={model_dir}    # every metric on the test split (best.keras)",
        f"  python scripts/visualize.py --model_dir={model_dir}   # top-5 classes and their attention maps",
        f"  tensorboard --logdir {model_dir}                     # curves and attention panels",
    ])


def main(argv=None):
    """``icasc-train``: the run's flags, grouped, for --help; absl's parsing otherwise."""
    command.start(_main, argv, lambda: run_config.grouped_help(USAGE))


if __name__ == "__main__":
    main()
