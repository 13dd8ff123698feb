"""What the three commands share: a quiet start (TensorFlow's start-up notes left out), ``--help``
that lists the command's own flags (absl's would list every library's), absl's parsing otherwise,
quiet libraries, and a user error as ``<command>: error: ...`` on stderr with a non-zero exit.

Imports nothing heavy: ``icasc_tf/__init__.py`` calls ``quiet_tensorflow_start_up`` before
TensorFlow loads.
"""

import contextlib
import os
import re
import sys
import tempfile

from absl import app, flags, logging

# The repository's scripts (python scripts/train.py, ...): commands like the icasc-* ones.
SCRIPTS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")
# TensorFlow 2.21 logs its start-up notes (oneDNN, CPU features) through absl's C++ logging
# before absl is initialised, so TF_CPP_MIN_LOG_LEVEL never reaches them: absl prints them, after
# its own "before absl::InitializeLog()" warning, once per shared library that carries its own copy
# of absl (twice: _pywrap_cpu_feature_guard and _pywrap_profiler_plugin each load one).
_PREAMBLE = re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called")
_LOG_LINE = re.compile(r"^([IWEF])\d{4} [\d:.]+ +\d+ \S+:\d+\]")
_CONTINUATION = re.compile(r"^To enable the following instructions:")  # of cpu_feature_guard's note
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}  # TF_CPP_MIN_LOG_LEVEL's scale


def is_command(argv=None):
    """Whether this process is one of our commands: an ``icasc-*`` console command, or a script of
    the repository's ``scripts/`` folder."""
    argv = sys.argv if argv is None else argv
    program = argv[0] if argv else ""
    return os.path.basename(program).startswith("icasc-") or (
        program.endswith(".py") and os.path.dirname(os.path.abspath(program)) == SCRIPTS_DIR
    )


def tensorflow_start_up_filter(min_level):
    """``line -> bool``: whether a line of stderr is a TensorFlow start-up note below ``min_level``
    (TF_CPP_MIN_LOG_LEVEL: 1 drops the info notes, 2 the warnings too, 3 the errors)."""
    def drop(line):
        if _PREAMBLE.match(line):
            return min_level >= 1
        if _CONTINUATION.match(line):
            return min_level >= 1
        match = _LOG_LINE.match(line)
        return bool(match) and _SEVERITY[match.group(1)] < min_level

    return drop


@contextlib.contextmanager
def filtered_stderr(drop):
    """The process's stderr (file descriptor 2, where C++ libraries write) diverted to a file while
    the block runs, then every line but those ``drop`` names written to stderr, in order."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not drop(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


def quiet_tensorflow_start_up():
    """In our commands only (``is_command``): TF_CPP_MIN_LOG_LEVEL=2 unless set, and TensorFlow
    imported with its start-up notes below that level left out of stderr (every other line is
    written as it came). A library import (any other program) leaves the process alone."""
    if not is_command() or "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    except ValueError:
        level = 0
    with filtered_stderr(tensorflow_start_up_filter(level)):
        import tensorflow  # noqa: F401

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
    unless the user asked for a --verbosity, and TFDS's progress bars out of a redirected one."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.ERROR)
    if not sys.stderr.isatty():  # a log file gets our one line on a dataset's preparation, not redrawn bars
        import tensorflow_datasets as tfds

        tfds.disable_progress_bar()


def fail(command, error, status=2):
    """Ends the command with ``<command>: error: <message>`` on stderr (instructions that
    follow the message on their own lines, such as an image folder's layout, stay as written)."""
    print(f"{command}: error: {str(error).strip()}", file=sys.stderr, flush=True)
    sys.exit(status)
