"""Looking up a functional model's 4-D feature maps by layer name (ICASC taps two, WRNA several)."""

import keras

# The layer every classifier here ends with: a Dense of class logits (no activation). Pretrained
# weights skip it when the class count differs; painless attention combines its output.
HEAD_LAYER = "logits"


def _rank(output):
    return len(output.shape) if hasattr(output, "shape") else -1  # several outputs: no map


def feature_map_names(model):
    """Names of the layers whose output is one ``[batch, height, width, channels]`` map."""
    return [
        layer.name
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and _rank(layer.output) == 4
    ]


def feature_layer(model, name, role):
    """The layer called ``name``, checked to output one 4-D feature map; errors list the choices.

    ``role`` is the argument the name came from (``inner_layer``...), so the error names it.
    """
    try:
        layer = model.get_layer(name)
    except ValueError:
        raise ValueError(
            f"{role}={name!r} is not a layer of backbone {model.name!r}. "
            f"Layers with 4-D feature maps: {', '.join(feature_map_names(model))}."
        ) from None
    if _rank(layer.output) != 4:
        raise ValueError(
            f"{role}={name!r} outputs {getattr(layer.output, 'shape', 'several tensors')}, not a 4-D "
            f"[batch, height, width, channels] feature map. Pick one of: "
            f"{', '.join(feature_map_names(model))}."
        )
    return layer
