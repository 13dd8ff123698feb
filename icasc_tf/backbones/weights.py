"""Copy weights from a local file into a backbone, layer by layer; nothing is downloaded here
(``weights="imagenet"`` fetches its file first: see ``imagenet.py`` and ``lite_weights.py``).

Two kinds of files exist, and they address layers differently:
- legacy HDF5 (keras.applications' ``*_notop.h5`` files, ``model.save("x.h5")``): by layer
  *name*, so any file whose names match ours loads (e.g. ImageNet VGG-19/ResNets).
- Keras 3 (``model.save_weights("x.weights.h5")``, ``model.save("x.keras")``): by layer
  *position* (Keras stores no names there), so they load into the same architecture only;
  that is checked, not assumed, and with Keras's public API rather than a copy of its file
  layout: a clone of the model writes the weights tree its architecture has
  (``save_weights``), the file must hold that tree (at its root, or inside a wrapper model such
  as ``ICASC``), and Keras's strict ``load_weights`` fills the clone, without its head when the
  file's head has other shapes. ``load_weights(skip_mismatch=True)`` alone cannot tell another
  architecture from another head (BUILD_NOTES, "Keras internals, at the edge").
Layers whose shapes disagree are skipped (and reported); the ``logits`` head is the
expected case, when the class count changed.
"""

import io
import os
import tempfile
import warnings
import zipfile

import h5py
import keras
import numpy as np

from icasc_tf.feature_maps import HEAD_LAYER

# Below this share of the model's weighted layers matched, the file is for another net.
MIN_MATCHED_FRACTION = 0.5
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _open_hdf5(path):
    """The file's HDF5 weights (a .keras file is a zip archive holding one HDF5 file), or a
    ValueError saying why not."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.namelist() if _is_hdf5_member(archive, m)]
            if len(members) != 1:
                raise ValueError(
                    f"{path!r} is a zip archive with {len(members)} HDF5 weights files, not the one "
                    "a .keras model file holds."
                )
            return h5py.File(io.BytesIO(archive.read(members[0])), "r")
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"Cannot read weights from {path!r}: it is neither a .keras model nor an HDF5 "
            "(.weights.h5 / .h5) weights file."
        )
    return h5py.File(path, "r")


def _is_hdf5_member(archive, member):
    with archive.open(member) as f:
        return f.read(len(_HDF5_SIGNATURE)) == _HDF5_SIGNATURE


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


def _dataset_shapes(group, tops=None):
    """``{path inside group: shape}`` of every HDF5 dataset under ``group``'s members ``tops``."""
    shapes = {}

    def visit(path, item):
        if isinstance(item, h5py.Dataset) and (tops is None or path.split("/")[0] in tops):
            shapes[path] = item.shape

    group.visititems(visit)
    return shapes


def _matching_group(h5, ours):
    """The group of ``h5`` holding the dataset tree ``ours`` (paths; shapes may differ), or None.

    The root for a file the backbone wrote; deeper for one a wrapper model wrote (ICASC keeps
    its backbone's weights under its own member), beside the wrapper's other state.
    """
    tops = {path.split("/")[0] for path in ours}
    groups = [h5]
    h5.visititems(lambda _, item: groups.append(item) if isinstance(item, h5py.Group) else None)
    for group in groups:
        if all(top in group for top in tops) and set(_dataset_shapes(group, tops)) == set(ours):
            return group
    return None


def _without_head(model):
    """The model up to its head's input (the same layers, so the same weights file entries)."""
    if HEAD_LAYER not in [layer.name for layer in model.layers]:
        return None
    return keras.Model(model.inputs, model.get_layer(HEAD_LAYER).input)


def _read_by_position(model, path, h5):
    """``{layer name: [arrays]}`` from a Keras 3 file of ``model``'s architecture, or an error.

    Keras itself maps the file to layers: it loads the file into a clone of ``model``, or into
    the clone without its head when the file's head has other shapes. The head's arrays are then
    the datasets whose shapes differ (all others loaded, so they matched).
    """
    probe = keras.models.clone_model(model)
    with tempfile.TemporaryDirectory() as folder:
        ours_path = os.path.join(folder, "ours.weights.h5")
        probe.save_weights(ours_path)
        with h5py.File(ours_path, "r") as ours_file:
            ours = _dataset_shapes(ours_file)
        group = _matching_group(h5, ours)
        theirs = _dataset_shapes(group, {p.split("/")[0] for p in ours}) if group else {}
        differing = sorted(p for p in ours if group is not None and theirs[p] != ours[p])
        target = _without_head(probe) if differing else probe
        if group is None or target is None:
            raise _different_architecture(path, model, len(ours))
        source_path = os.path.join(folder, "source.weights.h5")
        with h5py.File(source_path, "w") as source:
            for top in {p.split("/")[0] for p in ours}:
                group.copy(group[top], source, name=top)
        try:
            with warnings.catch_warnings():  # Keras warns about what it skipped; the error says it
                warnings.simplefilter("ignore")
                target.load_weights(source_path)
        except ValueError as error:
            raise _different_architecture(path, model, len(ours)) from error
    weights = {layer.name: layer.get_weights() for layer in target.layers if layer.weights}
    if differing:
        weights[HEAD_LAYER] = [np.asarray(group[p]) for p in differing]
    return weights


def _different_architecture(path, model, count):
    return ValueError(
        f"{path!r} is a Keras 3 weights file, which addresses layers by position, and its weights "
        f"do not line up with the {count} arrays of {model.name!r}: it was saved from a different "
        "architecture. Load it into the backbone it came from, or save that model with "
        "model.save('file.h5') to get a file that loads by layer name."
    )


def _source_weights(model, path):
    """``{model layer name: [arrays]}`` from ``path`` plus the file's unmatched entries."""
    with _open_hdf5(path) as h5:
        legacy = _legacy_group(h5)
        if legacy is not None:
            by_name = _read_legacy(legacy)
            model_names = {layer.name for layer in model.layers}
            return by_name, sorted(set(by_name) - model_names)
        return _read_by_position(model, path, h5), []


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
            "(only weights='imagenet' of build_backbone is fetched for you, for the backbones "
            "of icasc_tf.backbones.IMAGENET_BACKBONES)."
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
