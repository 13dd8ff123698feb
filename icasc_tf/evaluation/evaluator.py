"""``evaluate_model``: every metric of docs/method.md §1.8 and §4 in one pass over a split."""

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix

from icasc_tf.attention import get_attention
from icasc_tf.evaluation.attention_metrics import (
    confidence_change,
    energy_in_box,
    explanation_masked_images,
    pointing_game,
)
from icasc_tf.evaluation.ks_chart import ks_chart
from icasc_tf.evaluation.statistics import ks_statistic, multilabel_scores
from icasc_tf.explain import LAYER_ROLES
from icasc_tf.method import ATTENTION_TERMS, ZERO_MAP_TERMS
from icasc_tf.model import ICASC
from icasc_tf.selection import confusing_class
from icasc_tf.selection import probabilities as class_probabilities

SEPARATION_TERMS = ("classification_loss",) + ATTENTION_TERMS + ZERO_MAP_TERMS
TEN_CROPS = 10
CONFUSION_MATRIX_MAX_CLASSES = 100  # rows: true class, columns: predicted; kept out of larger JSONs


def _check(model, info, max_batches):
    if not isinstance(model, ICASC):
        raise ValueError(
            f"evaluate_model needs an ICASC model (its attention terms are measured); got "
            f"{type(model).__name__}. Wrap the classifier: ICASC(backbone, inner_layer, last_layer)."
        )
    if int(info.num_classes) != model.num_classes:
        raise ValueError(
            f"Dataset {info.name!r} has {info.num_classes} classes but the model predicts "
            f"{model.num_classes}: evaluate on the dataset the model was trained for."
        )
    if bool(info.multi_label) != model.multi_label:
        raise ValueError(
            f"Dataset {info.name!r} is {'multi' if info.multi_label else 'single'}-label but the "
            f"model was built with multi_label={model.multi_label}."
        )
    if max_batches is not None and int(max_batches) < 1:
        raise ValueError(f"max_batches must be a positive integer or None; got {max_batches}.")


def _unpack(element):
    if not isinstance(element, (tuple, list)) or len(element) not in (2, 3):
        raise ValueError(
            "The dataset must yield (images, labels) or (images, labels, boxes) tuples; got "
            f"{type(element).__name__} of {len(element) if isinstance(element, (tuple, list)) else 1}."
        )
    images, labels = element[0], element[1]
    boxes = element[2] if len(element) == 3 else None
    return tf.cast(images, tf.float32), labels, boxes


class _Pass:
    """What one pass accumulates, batch by batch; ``results()`` turns it into numbers."""

    def __init__(self, model, info, attention):
        self.model, self.info, self.attention = model, info, attention
        self.multi_label = model.multi_label
        self.examples = 0
        self.crops = None
        self.target_probs, self.confusing_probs = [], []
        self.labels, self.probabilities = [], []
        self.predicted = []  # single-label: (label, arg-max) pairs for the confusion matrix
        self.top_k = {} if self.multi_label else {
            f"top{k}": keras.metrics.SparseTopKCategoricalAccuracy(k=k)
            for k in (1, 5) if k == 1 or model.num_classes > k
        }
        self.terms = {name: [] for name in SEPARATION_TERMS}
        self.localization = {}
        self.original_probs, self.masked_probs = [], []
        self._terms_fn = tf.function(
            lambda x, y: model.per_sample_terms(x, y),
            reduce_retracing=True,
        )
        self._forward = tf.function(lambda x: model(x, training=False), reduce_retracing=True)

    def _probabilities(self, logits):
        return class_probabilities(logits, self.multi_label)

    def _labels(self, labels):
        if self.multi_label:
            return tf.cast(labels, tf.float32)
        labels = tf.cast(labels, tf.int32)
        return tf.reshape(labels, [-1])

    def add(self, images, labels, boxes):
        crops = "ten" if images.shape.rank == 5 else "single"
        if self.crops not in (None, crops):
            raise ValueError("The dataset mixes single-crop and ten-crop batches; use one kind.")
        self.crops = crops
        labels = self._labels(labels)
        if crops == "ten":
            if images.shape[1] != TEN_CROPS:
                raise ValueError(f"Ten-crop images must be [batch, 10, H, W, C]; got {tuple(images.shape)}.")
            flat = tf.reshape(images, [-1] + images.shape[2:].as_list())
            probabilities = tf.reshape(
                self._probabilities(self._forward(flat)), [-1, TEN_CROPS, self.model.num_classes]
            )
            # Average the 10 crops' probabilities, then score them like one prediction.
            probabilities = tf.reduce_mean(probabilities, axis=1)
        else:
            terms = self._terms_fn(images, labels)
            probabilities = self._probabilities(terms["logits"])
            for name in SEPARATION_TERMS:
                self.terms[name].append(terms[name].numpy())
            self._add_attention(images, labels, probabilities.numpy(), boxes)
        self._add_scores(labels, probabilities.numpy())
        self.examples += int(probabilities.shape[0])

    def _add_scores(self, labels, probabilities):
        # Probabilities are monotonic in the logits: the arg-max picks the same class.
        confusing = confusing_class(labels, probabilities, self.multi_label).numpy()
        rows = np.arange(len(probabilities))
        labels_np = labels.numpy()
        if self.multi_label:
            positive = labels_np > 0.5
            self.target_probs.append(probabilities[positive])
            # A sample whose every class is positive has no confusing class.
            has_confusing = ~positive.all(axis=1)
            self.confusing_probs.append(probabilities[rows, confusing][has_confusing])
            self.labels.append(labels_np)
            self.probabilities.append(probabilities)
        else:
            self.target_probs.append(probabilities[rows, labels_np])
            self.confusing_probs.append(probabilities[rows, confusing])
            for metric in self.top_k.values():
                metric.update_state(labels_np, probabilities)
            self.predicted.append(np.stack([labels_np, probabilities.argmax(axis=1)], axis=1))

    def _add_attention(self, images, labels, probabilities, boxes):
        predicted = probabilities.argmax(axis=1)
        with_boxes = boxes is not None and not self.multi_label
        classes = np.stack([predicted, labels.numpy()] if with_boxes else [predicted], axis=1)
        maps = self.model.attention_maps(images, classes=classes, attention=self.attention)
        # Faithfulness: mask each image by the last-layer map of its predicted class.
        masked = explanation_masked_images(images.numpy(), maps["last"][:, 0])
        masked_probs = self._probabilities(self._forward(tf.constant(masked))).numpy()
        rows = np.arange(len(predicted))
        self.original_probs.append(probabilities[rows, predicted])
        self.masked_probs.append(masked_probs[rows, predicted])
        if with_boxes:
            boxes = np.asarray(boxes, dtype=np.float32)
            size = images.shape[1:3]
            for layer in LAYER_ROLES:
                ground_truth_maps = maps[layer][:, 1]
                hits, _ = pointing_game(ground_truth_maps, boxes, size)
                shares, _ = energy_in_box(ground_truth_maps, boxes, size)
                self.localization.setdefault(f"pointing_game_{layer}", []).append(hits)
                self.localization.setdefault(f"energy_in_box_{layer}", []).append(shares)

    def results(self, ks_chart_path):
        if not self.examples:
            raise ValueError("The dataset yielded no examples: nothing to evaluate.")
        results = {
            "dataset": self.info.name,
            "examples": self.examples,
            # The split's size beside the examples evaluated: fewer with max_batches.
            "split_examples": int(getattr(self.info, "num_examples", self.examples)),
            "multi_label": self.multi_label,
            "crops": self.crops,
        }
        for name, metric in self.top_k.items():
            results[name] = float(metric.result())
        if self.predicted and self.model.num_classes <= CONFUSION_MATRIX_MAX_CLASSES:
            pairs = np.concatenate(self.predicted)
            results["confusion_matrix"] = confusion_matrix(
                pairs[:, 0], pairs[:, 1], labels=np.arange(self.model.num_classes)
            ).tolist()
            results["confusion_matrix_classes"] = _class_names(self.info, self.model.num_classes)
        if self.multi_label:
            results.update(
                multilabel_scores(
                    np.concatenate(self.labels),
                    np.concatenate(self.probabilities),
                    getattr(self.info, "class_names", None),
                )
            )
        target, confusing = np.concatenate(self.target_probs), np.concatenate(self.confusing_probs)
        if target.size and confusing.size:
            if ks_chart_path:
                statistic, location = ks_chart(target, confusing, ks_chart_path, title=self.info.name)
                results["ks_chart"] = str(ks_chart_path)
            else:
                statistic, location = ks_statistic(target, confusing)
            results["ks_statistic"], results["ks_location"] = statistic, location
        if self.crops == "single":
            results["attention"] = self.attention
            for name, values in self.terms.items():
                results[name] = float(np.mean(np.concatenate(values)))
            results["average_drop"], results["increase_in_confidence"] = confidence_change(
                np.concatenate(self.original_probs), np.concatenate(self.masked_probs)
            )
            for name, values in self.localization.items():
                results[name] = float(np.mean(np.concatenate(values)))
        return results


def _class_names(info, num_classes):
    """The dataset's class names (the confusion matrix's rows and columns), else their indices."""
    names = list(getattr(info, "class_names", None) or ())
    return [str(name) for name in names] if len(names) == num_classes else [str(i) for i in range(num_classes)]


def evaluate_model(model, dataset, info, *, attention=None, max_batches=None, ks_chart_path=None):
    """Evaluate an ICASC model on a batched split; returns a JSON-ready dict.

    Always: ``examples`` (evaluated) of ``split_examples`` (the split's, ``info.num_examples``),
    the KS statistic and location between the ground-truth and the most confusing class's
    probabilities (chart at ``ks_chart_path`` if given); top-1 and top-5 accuracy (single-label;
    top-5 only with more than 5 classes) and, up to 100 classes, ``confusion_matrix`` (rows true,
    columns predicted, both in the order of ``confusion_matrix_classes``), or mAP, macro ROC AUC
    and per-class AP by class name (multi-label).
    Single-crop batches add the model's own test terms averaged over examples
    (``classification_loss``, separation ``as_inner``/``as_last``, consistency ``ac``, and
    ``zero_target_inner``/``zero_target_last``: the share whose target map is all zero),
    average drop / increase in confidence for the predicted class's last-layer map, and,
    when the dataset yields boxes (single-label), pointing game and energy-in-box of the
    ground-truth map at both layers. Ten-crop batches ``[B, 10, H, W, C]`` average the 10
    crops' probabilities and give the score metrics only.

    Args:
      model: an ``ICASC`` model.
      dataset: yields ``(images, labels)`` or ``(images, labels, boxes)`` batches.
      info: the dataset's ``DatasetInfo`` (name, num_classes, class_names, multi_label).
      attention: map for localization and faithfulness (a name of
        ``icasc_tf.attention.ATTENTIONS``); default the model's. The separation terms always use the model's own.
      max_batches: stop after this many batches.
      ks_chart_path: where to write the KS chart PNG.
    """
    _check(model, info, max_batches)
    attention = attention or model.attention
    get_attention(attention)
    if max_batches is not None:
        dataset = dataset.take(int(max_batches))
    accumulated = _Pass(model, info, attention)
    for element in dataset:
        accumulated.add(*_unpack(element))
    return accumulated.results(ks_chart_path)
