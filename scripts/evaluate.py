"""`python scripts/evaluate.py --help`: see icasc_tf/cli/evaluate.py (also installed as `icasc-evaluate`)."""

# Importing icasc_tf starts TensorFlow quietly in a command (icasc_tf/cli/command.py).
from icasc_tf.cli.evaluate import main

if __name__ == "__main__":
    main()
