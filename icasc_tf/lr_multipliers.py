"""Per-layer learning-rate multipliers (fine-tuning recipes: 10x on the new head).

With SGD, scaling a variable's gradient by f multiplies its learning rate by f, so one
optimizer serves every layer. A prefix matches a layer's path through nested models
(``"base/conv1"``: the prefix ``"base"`` covers the whole nested base) or its own name.
"""


def _matches(prefix, path, name):
    """A path at or under ``prefix`` (``"base"`` covers ``"base/conv1"``, not ``"base2/conv1"``), or a
    layer name starting with it (``"painless_"``)."""
    return path == prefix or path.startswith(prefix.rstrip("/") + "/") or name.startswith(prefix)


class GradientScales:
    """``{layer path or name prefix: factor}`` turned into one factor per trainable variable."""

    def __init__(self, multipliers=None):
        self.multipliers = dict(multipliers or {})
        self._cache = None  # (variable ids, factors): recomputed if the variables change

    def factors(self, layers, variables):
        """``layers``: ``(path, layer)`` pairs (``FeatureGraph.layer_paths()``)."""
        key = tuple(id(v) for v in variables)
        if self._cache is None or self._cache[0] != key:
            factor_of = {}
            for path, layer in layers:
                matching = [p for p in self.multipliers if _matches(p, path, layer.name)]
                factor = self.multipliers[max(matching, key=len)] if matching else 1.0  # the most specific
                for variable in layer.trainable_variables:
                    factor_of[id(variable)] = float(factor)
            self._cache = (key, [factor_of.get(id(v), 1.0) for v in variables])
        return self._cache[1]

    def apply(self, layers, variables, gradients):
        """The gradients, each times its variable's factor (``None`` stays ``None``)."""
        if not self.multipliers:
            return gradients
        return [
            g if g is None or s == 1.0 else g * s
            for g, s in zip(gradients, self.factors(layers, variables))
        ]
