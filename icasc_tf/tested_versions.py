"""The Keras releases the whole test suite passed on: the one list of them.

``setup.py`` derives the install requirement from it and ``keras_compat.py`` warns outside it.
Plain Python with no imports: setup.py runs this file before anything is installed.
"""

TESTED_KERAS = ("3.12.4", "3.13.2", "3.14.1", "3.15.1")


def keras_minor_versions():
    """``("3.12", "3.13", ...)``: the major.minor versions of ``TESTED_KERAS``."""
    return tuple(".".join(version.split(".")[:2]) for version in TESTED_KERAS)


def keras_requirement():
    """The pip requirement: the oldest tested minor version up to, excluding, the next untested one."""
    major, minor = (int(part) for part in keras_minor_versions()[-1].split("."))
    return f"keras>={keras_minor_versions()[0]},<{major}.{minor + 1}"
