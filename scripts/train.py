"""`python scripts/train.py --help`: see icasc_tf/cli/train.py (also installed as `icasc-train`)."""

# Importing icasc_tf starts TensorFlow quietly in a command (icasc_tf/cli/command.py).
from icasc_tf.cli.train import main

if __name__ == "__main__":
    main()
