"""Train ICASC (or its baseline, or painless attention) from the command line.

    python scripts/train.py                                   # bundled cluttered digits, minutes on a CPU
    python scripts/train.py --dataset=caltech256 --arch=vgg19 --weights=...  # the paper's recipe (flags/)
    python scripts/train.py --flagfile=flags/cifar100_resnet110.flags --data_dir=/data/tfds
    python scripts/train.py --baseline --model_dir=runs/baseline
    python scripts/train.py --helpfull                        # every flag

Every option is a field of icasc_tf.config.TrainConfig; the run's folder (--model_dir)
holds its flags, checkpoints, TensorBoard logs, best and final models and metrics.
Without --flagfile, --dataset (and --arch) take the paper's recipe from flags/ as defaults
(icasc_tf.recipes); flags given on the command line win.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging

from icasc_tf import config as run_config

run_config.define_flags()
FLAGS = flags.FLAGS


def main(argv):
    if not FLAGS["verbosity"].present:  # TFDS is chatty at INFO/WARNING
        logging.set_verbosity(logging.ERROR)
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from icasc_tf.recipes import resolve
    from icasc_tf.training import run_training

    try:
        resolution = resolve(FLAGS, sys.argv)
        for line in [resolution.recipe_line, *resolution.notes]:
            if line:
                print(f"train.py: {line}", flush=True)
        for line in resolution.warnings:
            print(f"train.py: {line}", file=sys.stderr, flush=True)
        config = resolution.config
        summary = run_training(config, recipe=resolution.recipe_line)
    except (ValueError, FileNotFoundError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    final = ", ".join(f"{k}={v:.4f}" for k, v in sorted(summary["final"].items()))
    print(f"done: {config.model_dir}: {final}")


if __name__ == "__main__":
    app.run(main)
