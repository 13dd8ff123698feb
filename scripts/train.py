"""`python scripts/train.py --help`: see icasc_tf/cli/train.py (also installed as `icasc-train`)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ runtime warnings; read when it loads

from icasc_tf.cli.train import main

if __name__ == "__main__":
    main()
