"""What a script printed, without TensorFlow's own start-up notes. The commands leave them out
themselves (``icasc_tf.cli.command``; tests/test_console.py checks that they do); error-output
comparisons drop them too, with the commands' own filter, so that they test one thing."""

from icasc_tf.cli.command import tensorflow_start_up_filter

_START_UP = tensorflow_start_up_filter(1)


def our_lines(text):
    """The lines of ``text`` that are not TensorFlow's start-up notes."""
    return [line for line in text.strip().splitlines() if not _START_UP(line)]
