"""What the three commands share: ``--help`` that lists the command's own flags (absl's would
list every library's), absl's parsing otherwise, quiet libraries, and a user error as
``<command>: error: ...`` on stderr with a non-zero exit."""

import sys

from absl import app, flags, logging

HELP_ARGS = ("-h", "--help", "-help", "--helpshort", "-?")


def start(body, argv, help_text):
    """Prints ``help_text()`` for any of HELP_ARGS and exits; runs ``body`` under ``app.run`` otherwise."""
    argv = list(sys.argv if argv is None else argv)
    if any(arg in HELP_ARGS for arg in argv[1:]):
        print(help_text())
        sys.exit(0)
    app.run(body, argv=argv)


def module_help(usage, module_name):
    """``--help`` of evaluate/visualize: the usage lines, then the flags that module defines."""
    return lambda: usage + "\n\n" + flags.FLAGS.module_help(module_name)


def begin(argv):
    """Refuses stray arguments; keeps TFDS's and TensorFlow's info lines out of the output
    unless the user asked for a --verbosity."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)


def fail(command, error, status=2):
    """Ends the command with ``<command>: error: <message>`` on stderr (instructions that
    follow the message on their own lines, such as an image folder's layout, stay as written)."""
    print(f"{command}: error: {str(error).strip()}", file=sys.stderr, flush=True)
    sys.exit(status)
