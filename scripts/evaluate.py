"""`python scripts/evaluate.py --help`: see icasc_tf/cli/evaluate.py (also installed as `icasc-evaluate`)."""

from icasc_tf.cli.evaluate import main

if __name__ == "__main__":
    main()
