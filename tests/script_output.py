"""What a script printed, without TensorFlow's own start-up lines (TF 2.21 prints its oneDNN
and CPU-feature notes through absl's C++ logging whatever TF_CPP_MIN_LOG_LEVEL says)."""

import re

_TENSORFLOW_START_UP = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\]"
    r"|To enable the following instructions:)"
)


def our_lines(text):
    """The lines of ``text`` that are not TensorFlow's start-up notes."""
    return [line for line in text.strip().splitlines() if not _TENSORFLOW_START_UP.match(line)]
