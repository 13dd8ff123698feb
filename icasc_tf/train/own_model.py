"""A user's saved Keras classifier as a run's network: ``--arch=path/to/model.keras``.

Any functional or Sequential classifier (a pretrained base nested in it, as Keras's
transfer-learning guide builds it, included), or an ICASC model saved by a run. The run's data
are images in [0, 1]; a model that takes [0, 255] (``--pixel_scale=255``: Keras's
``image_dataset_from_directory`` and keras.applications' convention) is called behind a
``Rescaling(255)`` layer, so that the run's saved models take [0, 1] like every other run's and
``evaluate.py``/``visualize.py`` treat them alike. The pixel range is the user's to say: it cannot
be read from the model, and a wrong guess would train without an error.
"""

import dataclasses
import os

import keras

from icasc_tf.feature_maps import SEPARATOR, FeatureGraph
from icasc_tf.model import ICASC

SUFFIX = ".keras"
PIXEL_SCALES = (1, 255)
PIXEL_SCALE_HELP = ("the pixel range the model takes, 255 ([0, 255]: Keras's image_dataset_from_directory, "
                    "keras.applications) or 1 ([0, 1]; ICASC models of this project). Required: it cannot be read "
                    "from the model, and a wrong range trains without an error")


def is_model_file(arch):
    """Whether ``--arch`` names a saved model rather than a registered backbone."""
    return str(arch).endswith(SUFFIX)


def model_name(arch):
    """A short name for a saved model (its file name without ``.keras``), e.g. for a run folder."""
    return os.path.splitext(os.path.basename(arch))[0]


@dataclasses.dataclass
class OwnModel:
    """The network a run trains: ``model`` takes images in [0, 1]; the layers are paths in it;
    ``head`` is the path of the layer computing the class scores (``--head_lr_multiplier``)."""

    model: keras.Model
    inner_layer: str
    last_layer: str
    head: str
    image_size: int
    num_classes: int


def load_own_model(path, pixel_scale, inner_layer="", last_layer=""):
    """The classifier in ``path`` ready to train; errors name the problem and the flag that fixes it."""
    model = keras.models.load_model(path, compile=False)
    defaults = None
    if isinstance(model, ICASC):  # a run's model: its own layers, its own convention
        defaults, model = (model.inner_layer, model.last_layer), model.backbone
    graph = FeatureGraph.of(model)
    height, width = model.inputs[0].shape[1:3]
    if height is None or height != width:
        raise ValueError(f"--arch={path} takes images of {height}x{width} pixels: a run trains on square images of "
                         "one size; save the model with keras.Input(shape=(size, size, 3)).")
    if defaults and not inner_layer and not last_layer:
        inner, last = defaults
    else:
        inner, last = graph.layer_pair(inner_layer, last_layer, roles=("--inner_layer", "--last_layer"))
    head, classes = graph.head_path, int(graph.scores()[0].shape[-1])
    if pixel_scale != 1:
        inputs = keras.Input(model.inputs[0].shape[1:], name="image")
        scaled = keras.layers.Rescaling(float(pixel_scale), name=f"pixels_0_{pixel_scale}")(inputs)
        model = keras.Model(inputs, model(scaled), name=f"{model.name}_on_0_1")
        inner, last, head = (f"{graph.model.name}{SEPARATOR}{p}" for p in (inner, last, head))
    return OwnModel(model, inner, last, head, int(height), classes)
