"""`python scripts/visualize.py --help`: see icasc_tf/cli/visualize.py (also installed as `icasc-visualize`)."""

from icasc_tf.cli.visualize import main

if __name__ == "__main__":
    main()
