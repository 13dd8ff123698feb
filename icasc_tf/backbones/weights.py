"""Copy weights from a local file into a backbone, layer by layer; nothing is downloaded here
(``weights="imagenet"`` fetches keras.applications' files first: see ``imagenet.py``).

Two kinds of files exist, and they address layers differently:
- legacy HDF5 (keras.applications' ``*_notop.h5`` files, ``model.save("x.h5")``): by
  layer *name*, so any file whose names match ours loads (e.g. ImageNet VGG-19/ResNets).
- Keras 3 (``model.save_weights("x.weights.h5")``, ``model.save("x.keras")``): by layer
  *position* (class name + counter, e.g. ``conv2d_7``; Keras does not store names there),
  so they load into the same architecture only; that is checked, not assumed.
Layers whose shapes disagree are skipped (and reported); the ``logits`` head is the
expected case, when the class count changed.
"""

import io
import os
import re
import zipfile

import h5py
import numpy as np

from icasc_tf.feature_maps import HEAD_LAYER

# Below this share of the model's weighted layers matched, the file is for another net.
MIN_MATCHED_FRACTION = 0.5
_KERAS_ZIP_WEIGHTS = "model.weights.h5"


def _open_hdf5(path):
    """The file's HDF5 weights (inside the zip for ``.keras``), or a ValueError saying why not."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            if _KERAS_ZIP_WEIGHTS not in archive.namelist():
                raise ValueError(
                    f"{path!r} is a zip archive without {_KERAS_ZIP_WEIGHTS}: "
                    "not a .keras model file."
                )
            return h5py.File(io.BytesIO(archive.read(_KERAS_ZIP_WEIGHTS)), "r")
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"Cannot read weights from {path!r}: it is neither a .keras model nor an HDF5 "
            "(.weights.h5 / .h5) weights file."
        )
    return h5py.File(path, "r")


def _legacy_group(h5):
    """The group of a legacy (name-addressed) HDF5 file that lists ``layer_names``, if any."""
    for group in (h5, h5.get("model_weights")):
        if isinstance(group, h5py.Group) and "layer_names" in group.attrs:
            return group
    return None


def _as_str(value):
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def _read_legacy(group):
    """``{layer name: [arrays]}`` in each layer's saved weight order."""
    weights = {}
    for layer_name in map(_as_str, group.attrs["layer_names"]):
        layer_group = group[layer_name]
        names = [_as_str(n) for n in layer_group.attrs.get("weight_names", [])]
        if names:
            weights[layer_name] = [np.asarray(layer_group[n]) for n in names]
    return weights


def _read_keras3_candidates(h5):
    """Every ``layers`` group of a Keras 3 file as ``{position key: [arrays]}``.

    A backbone saved on its own keeps its layers at ``/layers``; one saved inside a
    wrapper model (e.g. ``ICASC``) keeps them deeper, e.g. ``/backbone/layers``.
    """
    candidates = []

    def visit(path, item):
        if path.split("/")[-1] != "layers" or not isinstance(item, h5py.Group):
            return
        weights = {}
        for key, layer_group in item.items():
            variables = layer_group.get("vars")
            if isinstance(variables, h5py.Group) and len(variables):
                weights[key] = [np.asarray(variables[i]) for i in sorted(variables, key=int)]
        if weights:
            candidates.append(weights)

    h5.visititems(visit)
    return candidates


def _snake_case(class_name):
    """keras.src.utils.naming.to_snake_case, which Keras 3 uses for weight-file keys."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _positional_keys(model):
    """``{Keras 3 weight-file key: layer}`` for ``model``'s layers with weights."""
    counts, keys = {}, {}
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        key = base if base not in counts else f"{base}_{counts[base] + 1}"
        counts[base] = counts[base] + 1 if base in counts else 0
        if layer.weights:
            keys[key] = layer
    return keys


def _source_weights(model, path):
    """``{model layer name: [arrays]}`` from ``path`` plus the file's unmatched entries."""
    with _open_hdf5(path) as h5:
        legacy = _legacy_group(h5)
        if legacy is not None:
            by_name = _read_legacy(legacy)
            model_names = {layer.name for layer in model.layers}
            return by_name, sorted(set(by_name) - model_names)
        candidates = _read_keras3_candidates(h5)
    if not candidates:
        raise ValueError(f"{path!r} holds no layer weights Keras could have written.")
    keys = _positional_keys(model)
    for candidate in candidates:
        if set(candidate) == set(keys):
            return {keys[k].name: arrays for k, arrays in candidate.items()}, []
    raise ValueError(
        f"{path!r} is a Keras 3 weights file, which addresses layers by position, and its layers "
        f"({len(candidates[0])} with weights) do not line up with {model.name!r}'s ({len(keys)}): "
        "it was saved from a different architecture. Load it into the backbone it came from, "
        "or save that model with model.save('file.h5') to get a file that loads by layer name."
    )


def load_pretrained_weights(model, path, *, skip_head=True):
    """Copy ``path``'s weights into ``model`` where layer and shapes agree.

    ``path``: a ``.keras`` model, a Keras 3 ``.weights.h5`` file of the same architecture,
    or a legacy ``.h5`` file addressed by layer name (e.g. keras.applications'
    ``*_notop.h5``). ``skip_head``: leave the ``logits`` head as initialised when its
    shape differs from the file's (a new class count); with False that is an error.
    Other layers with different shapes are skipped and reported.

    Returns ``{"loaded", "skipped", "missing", "unused"}``: lists of layer names copied,
    skipped for a shape mismatch, holding weights in the model but absent from the file,
    and present in the file but absent from the model.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"No weights file at {path!r}. Pass a local .keras, .weights.h5 or .h5 file "
            "(only weights='imagenet' is downloaded, for vgg19, resnet50 and resnet101)."
        )
    source, unused = _source_weights(model, path)
    plan, skipped, missing = [], [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        arrays = source.get(layer.name)
        if arrays is None:
            missing.append(layer.name)
            continue
        wanted = [tuple(w.shape) for w in layer.weights]
        found = [a.shape for a in arrays]
        if wanted == found:
            plan.append((layer, arrays))
            continue
        if layer.name == HEAD_LAYER and not skip_head:
            raise ValueError(
                f"The head {HEAD_LAYER!r} has weight shapes {wanted} but {path!r} has {found} "
                "(another class count). Pass skip_head=True to keep the model's new head."
            )
        skipped.append(layer.name)

    body = [layer.name for layer in model.layers if layer.weights and layer.name != HEAD_LAYER]
    loaded_body = [layer.name for layer, _ in plan if layer.name != HEAD_LAYER]
    if len(loaded_body) < MIN_MATCHED_FRACTION * len(body) or not loaded_body:
        raise ValueError(
            f"{path!r} matches only {len(loaded_body)} of {model.name!r}'s {len(body)} layers "
            f"with weights (by name and shape; skipped for shape: {skipped[:5]}, "
            f"missing: {missing[:5]}). "
            "It was written for another architecture or input channel count."
        )
    for layer, arrays in plan:
        layer.set_weights(arrays)
    return {
        "loaded": [layer.name for layer, _ in plan],
        "skipped": skipped,
        "missing": missing,
        "unused": unused,
    }
