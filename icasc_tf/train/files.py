"""Atomic file writes: a reader (or a resumed run) sees the old content or the new, never half."""

import json
import os
import shutil


def atomic_write_text(path, text):
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, rename it over ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path, value, **kwargs):
    atomic_write_text(path, json.dumps(value, indent=2, **kwargs))


def atomic_copy(source, path):
    """Copy ``source`` to a temporary file beside ``path``, flush it to disk, rename it over ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.copyfile(source, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_save_model(model, path):
    """``model.save`` into a temporary file, then rename over ``path``."""
    tmp = f"{path}.tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, path)


def fsync_tree(path, files=True):
    """Flush a folder's files (``files``) and the folder itself to disk, so that a rename that
    follows publishes complete files even after a power loss."""
    if files:
        for name in os.listdir(path):
            file_path = os.path.join(path, name)
            if os.path.isfile(file_path):
                with open(file_path, "rb") as f:
                    os.fsync(f.fileno())
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
