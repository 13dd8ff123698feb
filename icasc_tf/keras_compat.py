"""Every place where ICASC works around a behaviour of a particular Keras (or TF) version.

Each workaround names the behaviour it works around. They rely on Keras internals, so an
import-time check warns when the installed Keras is not one they were tested with: if a
private method was renamed, the override would silently stop applying.
"""

import contextlib
import warnings

import keras
import tensorflow as tf

from icasc_tf.tested_versions import keras_minor_versions

# --- backbones/ and packaging: the tested Keras versions ---------------------------------------
TESTED_KERAS = keras_minor_versions()  # major.minor versions the suite passed on (tested_versions.py)
# --- end of the backbones/packaging block ------------------------------------------------------
LABEL_ERROR = "icasc_tf labels:"  # prefix of the in-graph label checks' messages


def _check_keras_version():
    minor = ".".join(keras.__version__.split(".")[:2])
    if minor not in TESTED_KERAS:
        warnings.warn(
            f"icasc_tf's Keras workarounds (icasc_tf/keras_compat.py: the multi-worker symbolic "
            f"build, [1]-shaped logs, reading a functional model's graph) were tested with Keras "
            f"{', '.join(TESTED_KERAS)}; this is Keras {keras.__version__}. If multi-worker training or "
            "maps of a nested model fail, check them against it.",
            stacklevel=2,
        )
    if not hasattr(keras.Model, "_maybe_symbolic_build"):
        warnings.warn(
            "keras.Model has no _maybe_symbolic_build in this Keras: ICASC's multi-worker "
            "workaround no longer applies (icasc_tf/keras_compat.py).",
            stacklevel=2,
        )
    if _functional_class() is None or not hasattr(_functional_class(), "_run_through_graph"):
        warnings.warn(
            "keras.src.models.functional.Functional._run_through_graph is not in this Keras: icasc_tf cannot read "
            "a functional model's graph (explain, ICASC; icasc_tf/keras_compat.py).",
            stacklevel=2,
        )


def _functional_class():
    """Keras's Functional model class (not exported publicly), or None where it has moved."""
    try:
        from keras.src.models.functional import Functional
    except ImportError:
        return None
    return Functional


_check_keras_version()


def multi_worker(strategy):
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and (
        strategy.cluster_resolver is not None and bool(strategy.cluster_resolver.task_type)
    )


@contextlib.contextmanager
def label_errors_as_value_errors():
    """Label range checks run in the graph and fail as ``InvalidArgumentError`` with TF's
    message text; surface them as the ``ValueError`` users expect, with our message only."""
    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if LABEL_ERROR not in error.message:
            raise
        detail = error.message.split(LABEL_ERROR, 1)[1].split("]", 1)[0].replace("\\'", "'")
        raise ValueError(f"Bad labels:{detail} Fix the dataset's labels.") from None


class KerasCompat:
    """Mixin for ``keras.Model`` subclasses; put it before ``keras.Model`` in the bases."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        """Build metrics/optimizer from one replica's batch.

        Keras 3.15's ``Trainer._maybe_symbolic_build`` averages a distributed batch over
        replicas with ``strategy.reduce`` to build symbolically, which fails under
        MultiWorkerMirroredStrategy (it cannot convert the PerReplica batch); one replica's
        local batch has the same shapes. Reads Keras's private iterator protocol
        (``for _, _, it in iterator``) of that version.
        """
        strategy = self._distribute_strategy
        if strategy is not None and self._symbolically_built():
            # Keras 3.15 reads a batch from the epoch's iterator on every fit/evaluate call,
            # built or not: a dataset is then iterated twice per call (its shuffle buffer
            # filled twice, a reshuffling pipeline trained in its second order). Nothing is
            # left to build, so read nothing.
            return None
        if iterator is not None and strategy is not None:
            for _, _, it in iterator:
                data_batch = tf.nest.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(it)
                )
                break
            iterator = None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def _symbolically_built(self):
        """What Keras 3.15's ``Trainer._symbolic_build`` checks before it builds anything."""
        parts = [
            all(layer.built for layer in self._flatten_layers()),
            self._compile_metrics is None or self._compile_metrics.built,
            self._compile_loss is None or self._compile_loss.built,
            self.optimizer is None or self.optimizer.built,
        ]
        return all(parts)

    def fit(self, *args, **kwargs):
        with label_errors_as_value_errors():
            return super().fit(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        with label_errors_as_value_errors():
            return super().evaluate(*args, **kwargs)

    @staticmethod
    def distributable_logs(results):
        """Keras 3.15 reduces logs across workers with ``reduce("MEAN", axis=0)``, which needs a
        batch axis; our values are global already, so shaping them ``[1]`` loses nothing."""
        if multi_worker(tf.distribute.get_strategy()):
            return {k: tf.reshape(v, [1]) for k, v in results.items()}
        return results


# ---------------------------------------------------------------------- reading a model's graph
# icasc_tf.feature_maps walks a functional model's graph to call its layers again (nested models
# included). Keras 3 has no public API for a Functional's nodes: ``keras.models.clone_model``'s
# ``call_function`` sees every call, but cloning a nested model on an outer tensor rebuilds that
# tensor's history (the outer graph loses its input), so the walk itself is taken from Keras.


def is_functional(model):
    """A model built from a graph of layers (``keras.Model(inputs, outputs)`` and its subclasses)."""
    functional = _functional_class()
    if functional is None:
        raise ImportError("keras.src.models.functional.Functional is not in this Keras: icasc_tf cannot tell a "
                          f"functional model (tested with Keras {', '.join(TESTED_KERAS)}).")
    return isinstance(model, functional)


def run_functional_graph(model, inputs, call):
    """Calls ``call(operation, *args, **kwargs)`` at each node of ``model``'s graph in order, with
    the node's own arguments, on ``inputs``; returns the outputs. ``Function._run_through_graph(
    inputs, operation_fn, call_fn)`` of the tested Keras versions, as ``clone_model`` uses it."""
    return model._run_through_graph([inputs], operation_fn=lambda operation: operation, call_fn=call)
