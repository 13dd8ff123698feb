"""A classifier's layers by path, through nested models: the one graph every map is taken from.

Keras's transfer-learning guide nests a pretrained base as one layer of the classifier
(``base(x, training=False)``), and a nested model's layers are not layers of the outer graph:
``model.get_layer("out_relu")`` fails and the outer graph's last 4-D tensor is a preprocessing
layer's. ``FeatureGraph(model)`` calls the model's own layer objects again on a new input,
descending into every nested functional or Sequential model, so that every layer's output is a
tensor of one flat graph (the same weights, the same computation) named by its path, e.g.
``"mobilenetv2_1.00_96/out_relu"``. A name that is unique in the whole network may be given bare.

``training``: Keras 3 lets the outermost call's ``training`` replace every nested call's own
(keras-team/keras#20285), and a node's own value applies when the outer call gives none. The
flat graph bakes each layer's innermost-applicable value in the same way (the outermost value
given on its nesting path), so that it computes what the nested model computes in both cases.
"""

import inspect

import keras
from keras import ops

from icasc_tf import keras_compat

# The layer every classifier here ends with: a Dense of class logits (no activation). Pretrained
# weights skip it when the class count differs; painless attention combines its output.
HEAD_LAYER = "logits"
SEPARATOR = "/"
_CACHE = "_icasc_feature_graph"  # where FeatureGraph.of keeps a model's graph
_SQUASHING = {"softmax": False, "sigmoid": True}  # activation -> multi-label probabilities


def _rank(tensor):
    return len(tensor.shape) if hasattr(tensor, "shape") else -1  # several outputs: no map


def _convolves(layer):
    """A layer with a kernel of rank 3 or more (Conv*, DepthwiseConv*, a block holding them):
    what makes a 4-D tensor a learned feature map rather than the (pre-processed) image."""
    return any(len(w.shape) >= 3 for w in getattr(layer, "weights", ()))


def _takes_training(operation):
    call = getattr(operation, "call", None)
    return call is not None and "training" in inspect.signature(call).parameters


def _squashing(operation):
    """``"softmax"``/``"sigmoid"`` when ``operation`` turns scores into probabilities, else None."""
    if isinstance(operation, keras.layers.Softmax):
        return "softmax"
    name = type(operation).__name__.lower()  # keras.ops.softmax / sigmoid applied in the graph
    if not isinstance(operation, keras.layers.Layer) and name in _SQUASHING:
        return name
    name = getattr(getattr(operation, "activation", None), "__name__", "")
    return name if name in _SQUASHING else None


class PreActivation(keras.layers.Layer):
    """A ``Dense`` layer's scores before its softmax/sigmoid, with that layer's own variables."""

    def __init__(self, dense, **kwargs):
        super().__init__(name=f"{dense.name}_scores", dtype=dense.dtype_policy, **kwargs)
        self.dense = dense

    def call(self, inputs):
        scores = ops.matmul(inputs, ops.cast(self.dense.kernel, inputs.dtype))
        if self.dense.use_bias:
            scores = scores + ops.cast(self.dense.bias, inputs.dtype)
        return scores


class FeatureGraph:
    """The layers of a functional or Sequential classifier (nested models included) as one graph.

    ``paths`` lists every layer's path in call order; ``feature_maps`` the paths of the 4-D
    maps computed through at least one convolution (never the input, a preprocessing or an
    augmentation layer's output). ``tap(paths, scores)`` is a ``keras.Model`` from the model's
    input to those tensors, sharing the classifier's layers.
    """

    @classmethod
    def of(cls, model):
        """``model``'s graph, built once per model: every build calls each layer again (a new node on
        each), so repeated ``explain`` calls reuse it."""
        layers, graph = model.__dict__.get(_CACHE, (None, None))
        if graph is None or layers != len(model.layers):  # a Sequential may have grown since
            graph = cls(model)
            object.__setattr__(model, _CACHE, (len(model.layers), graph))  # not a tracked attribute: never saved
        return graph

    def __init__(self, model):
        _check_graph_model(model)
        self._scores = {}
        self.model = model
        self.input = model.inputs[0]  # the layers are called again on it: new nodes, the same input layer
        self._tensors, self._layers, self._aliases = {}, {}, {}
        self._calls = {}
        self._made_by = {}  # id(output) -> (operation, args, output): its producer, for the scores
        self._named = {}  # id(tensor) -> the path that first produced it
        self._convolved = set()  # ids of tensors computed through a convolution
        self._reduced = []  # the 4-D maps that a spatial reduction consumes, in call order
        self._opaque = []  # nested models whose layers cannot be reached (subclassed)
        self.output = self._run(model, self.input, "", None)
        if _rank(self.output) != 2:
            raise ValueError(
                f"{model.name!r} must have one output of class scores [batch, classes]; it has "
                f"{getattr(self.output, 'shape', 'several outputs')}."
            )
        self.paths = list(self._tensors)
        self.feature_maps = [p for p in self.paths if self._is_feature_map(p)]
        self._pooled = [self._named.get(id(t)) for t in self._reduced]

    # ------------------------------------------------------------------ building
    def _run(self, model, inputs, prefix, training):
        """Calls ``model``'s layers on ``inputs``; ``training`` is the value its callers gave."""

        def call(operation, *args, **kwargs):
            given = training if training is not None else kwargs.get("training")
            if _is_graph_model(operation):
                if kwargs.get("mask") is not None:
                    raise ValueError(f"Nested model {operation.name!r} is called with a mask: not supported.")
                outputs = self._run(operation, args[0], f"{prefix}{operation.name}{SEPARATOR}", given)
                self._aliases.setdefault(prefix + operation.name, self._named.get(id(outputs)))
                return outputs
            if given is not None and _takes_training(operation):
                kwargs["training"] = given
            outputs = operation(*args, **kwargs)
            if isinstance(operation, keras.Model):
                self._opaque.append(prefix + operation.name)
            self._follow(operation, outputs, args, kwargs)
            self._record(prefix + operation.name, operation, outputs)  # layers, and keras.ops calls by their name
            return outputs

        if isinstance(model, keras.Sequential):
            outputs = inputs
            for layer in model.layers:
                outputs = call(layer, outputs)
            return outputs
        outputs = keras_compat.run_functional_graph(model, inputs, call)
        if isinstance(outputs, (list, tuple)) and len(outputs) == 1:  # keras.Model(inputs, [outputs])
            outputs = outputs[0]
        return outputs

    def _follow(self, operation, outputs, args, kwargs):
        """What every call tells: its producer, whether its outputs went through a convolution,
        and whether it reduces a feature map spatially (pooling, flattening)."""
        self._made_by[id(outputs)] = (operation, args, outputs)
        inputs = [t for t in keras.tree.flatten((args, kwargs)) if keras.backend.is_keras_tensor(t)]
        if _convolves(operation) or any(id(t) in self._convolved for t in inputs):
            self._convolved.update(id(t) for t in keras.tree.flatten(outputs))
        maps = [t for t in inputs if _rank(t) == 4 and id(t) in self._convolved]
        if maps and all(_rank(t) < 4 for t in keras.tree.flatten(outputs)):
            self._reduced.append(maps[-1])

    def _record(self, path, layer, outputs):
        self._calls[path] = self._calls.get(path, 0) + 1
        self._tensors[path], self._layers[path] = outputs, layer
        self._named.setdefault(id(outputs), path)

    def _is_feature_map(self, path):
        tensor = self._tensors[path]
        return _rank(tensor) == 4 and id(tensor) in self._convolved and self._named.get(id(tensor)) == path

    # ------------------------------------------------------------------ lookups
    def tensor(self, path):
        return self._tensors[self._aliases.get(path, path)]

    def resolve(self, name, role="layer"):
        """The full path of ``name`` (a path, or a name unique in the network), checked to be 4-D."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{role} must be a layer name or path; got {name!r}.")
        path = self._aliases.get(name, name)
        if path not in self._tensors:
            matches = [p for p in self.paths if p.rsplit(SEPARATOR, 1)[-1] == name]
            if len(matches) > 1:
                raise ValueError(f"{role}={name!r} names {len(matches)} layers: give its path, one of "
                                 f"{', '.join(matches)}.")
            if not matches:
                raise ValueError(f"{role}={name!r} is not a layer of {self.model.name!r} (nested models included)"
                                 f"{self._opaque_note()}. {self.candidates()}")
            path = matches[0]
        if self._calls[path] > 1:
            raise ValueError(f"{role}={name!r}: layer {path!r} is called {self._calls[path]} times in "
                             f"{self.model.name!r}, so its output is ambiguous. {self.candidates()}")
        if _rank(self._tensors[path]) != 4:
            raise ValueError(f"{role}={name!r} ({path}) outputs {getattr(self._tensors[path], 'shape', 'several')}, "
                             f"not a 4-D [batch, height, width, channels] feature map. {self.candidates()}")
        return path

    def layer_paths(self):
        """``(path, layer)`` of every layer called in the graph, in call order."""
        return [(p, layer) for p, layer in self._layers.items() if isinstance(layer, keras.layers.Layer)]

    @property
    def head_path(self):
        """The path of the layer that computes the class scores (the classifier's head): the output's
        layer, or, when that only applies softmax/sigmoid (an ``Activation``), the layer before it."""
        operation, features = self.final_layer()
        tensor = self.output
        if _squashing(operation) and not getattr(operation, "weights", None):
            tensor = features
        return self._named[id(tensor)]

    def candidates(self):
        if not self.feature_maps:
            return f"{self.model.name!r} has no 4-D feature map computed by a convolution."
        return f"Layers with 4-D feature maps: {', '.join(self.feature_maps)}."

    def _opaque_note(self):
        if not self._opaque:
            return ""
        return (f"; the layers inside {', '.join(self._opaque)} cannot be reached (a subclassed model: build it "
                "with the functional API or keras.Sequential)")

    def default_map(self, role="layer"):
        """The deepest feature map that the network's spatial pooling reduces (``explain``'s default
        layer); ``role`` names the argument that overrides it, for the errors."""
        if not self._pooled:
            raise ValueError(
                f"{self.model.name!r} has no 4-D feature map that a convolution computed and a pooling or flattening "
                f"layer reduces{self._opaque_note()}: name the {role}. {self.candidates()}"
            )
        if None in self._pooled:
            raise ValueError(f"{self.model.name!r} pools a map that is one output of a layer with several: name the "
                             f"{role}. {self.candidates()}")
        last = max(self._pooled, key=self.paths.index)
        return self.resolve(last, f"the default {role}")  # a layer called twice is refused here too

    def default_pair(self, roles=("inner_layer", "last_layer")):
        """``(inner, last)``: the last map before pooling and, before it, the last map at twice its
        resolution (the last layer of the penultimate stage, docs/method.md §1.3). ``roles`` name the
        arguments (or flags) that override them, for the errors."""
        last = self.default_map(roles[1])
        height, width = self._tensors[last].shape[1:3]
        if height is None or width is None:
            raise ValueError(f"{self.model.name!r} takes images of any size, so no inner layer can be chosen by "
                             f"resolution: name {' and '.join(roles)}. {self.candidates()}")
        earlier = self.feature_maps[: self.feature_maps.index(last)]
        inner = [p for p in earlier if _halves(self._tensors[p].shape[1:3], (height, width))]
        if not inner:
            raise ValueError(f"{self.model.name!r} has no feature map at twice the resolution of {last!r} "
                             f"({height}x{width}): name {' and '.join(roles)}. {self.candidates()}")
        return self.resolve(inner[-1], f"the default {roles[0]}"), last

    def layer_pair(self, inner=None, last=None, roles=("inner_layer", "last_layer")):
        """``(inner, last)`` paths: both given (resolved), or neither (``default_pair``)."""
        if bool(inner) != bool(last):
            raise ValueError(f"Give both {' and '.join(roles)}, or neither (the default pair).")
        if inner:
            return self.resolve(inner, roles[0]), self.resolve(last, roles[1])
        return self.default_pair(roles)

    def final_layer(self):
        """The layer that computes the output, and its input tensor."""
        operation, args, _ = self._made_by.get(id(self.output), (None, (None,), None))
        return operation, args[0]

    def scores(self, output="auto"):
        """``_scores_of(output)``, built once per graph (each build adds a node to the head)."""
        if output not in self._scores:
            self._scores[output] = self._scores_of(output)
        return self._scores[output]

    def _scores_of(self, output):
        """The class scores the maps are taken from, and whether they are sigmoid (multi-label) scores.

        ``"auto"``: the scores before a final softmax or sigmoid (a ``Softmax``/``Activation``
        layer's input, or the final ``Dense``'s pre-activation with its own weights), else the
        output itself; ``"probabilities"`` insists on such an ending; ``"logits"`` takes the output.
        """
        operation, features = self.final_layer()
        squash = _squashing(operation)
        if output == "logits" and squash is not None:
            raise ValueError(f"output='logits', but {self.model.name!r} ends in a {squash} ({operation.name!r}): its "
                             "output is probabilities, and maps of them are not the paper's. Pass output='auto'.")
        if output == "logits" or (output == "auto" and squash is None):
            return self.output, False
        if squash is None:
            raise ValueError(
                f"output='probabilities' needs a model ending in softmax or sigmoid; {self.model.name!r} ends in "
                f"{getattr(operation, 'name', type(operation).__name__)!r}. Pass output='logits' if it outputs scores."
            )
        if isinstance(operation, keras.layers.Dense):
            if getattr(operation, "quantization_mode", None):
                raise ValueError(f"{operation.name!r} is a quantized Dense: its scores before the {squash} cannot be "
                                 "recomputed; end the model with a separate Softmax/Activation layer.")
            return PreActivation(operation)(features), _SQUASHING[squash]
        if isinstance(operation, (keras.layers.Softmax, keras.layers.Activation)) or not isinstance(
                operation, keras.layers.Layer):
            return features, _SQUASHING[squash]
        raise ValueError(f"Cannot take the scores before {operation.name!r}'s {squash}: end the model with a Dense "
                         "layer (or a separate Softmax/Activation layer), or pass output='logits'.")

    def tap(self, paths, scores, name="feature_tap"):
        """``keras.Model``: image -> ``[map for each path..., scores]``."""
        return keras.Model(self.input, [self.tensor(p) for p in paths] + [scores], name=name)


def _halves(size, last):
    """Whether one stride-2 step takes a map of ``size`` to ``last`` ("same" padding: 2n or 2n - 1 to n)."""
    return all(s is not None and s in (2 * n - 1, 2 * n) and n > 1 for s, n in zip(size, last))


def _is_graph_model(operation):
    return isinstance(operation, keras.Sequential) or keras_compat.is_functional(operation)


def _check_graph_model(model):
    if not isinstance(model, keras.Model) or not _is_graph_model(model):
        raise ValueError(
            f"Maps need a functional or Sequential Keras model (nested ones included) whose layers can be read; got "
            f"{type(model).__name__}. A subclassed model's graph cannot be read: build it with the functional API "
            "(keras.Model(inputs, outputs)) or keras.Sequential, with a keras.Input."
        )
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(f"{model.name!r} has no input yet: build it on a keras.Input (keras.Sequential([keras.Input("
                         "shape), ...]) or keras.Model(inputs, outputs)).")
    if len(inputs) != 1 or _rank(inputs[0]) != 4:
        raise ValueError(f"{model.name!r} must take one image batch [batch, height, width, channels]; its inputs are "
                         f"{[tuple(x.shape) for x in inputs]}.")

