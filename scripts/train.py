"""`python scripts/train.py --help`: see icasc_tf/cli/train.py (also installed as `icasc-train`)."""

from icasc_tf.cli.train import main

if __name__ == "__main__":
    main()
