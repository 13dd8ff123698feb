"""The command lines (``scripts/*.py`` and the ``icasc-*`` console commands): thin absl mains
over ``icasc_tf.train`` (train), ``icasc_tf.evaluation`` (evaluate) and ``icasc_tf.figures``."""
