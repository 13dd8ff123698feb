"""Which classes the attention maps are taken for (docs/method.md §1.2).

The target T is the ground truth (all positives for multi-label); the most confusing
class is the non-target class with the highest predicted probability. Softmax and
sigmoid are monotonic in the logits, so the arg-max over logits picks the same class.
"""

import tensorflow as tf


def target_one_hot(labels, num_classes, multi_label):
    """``[B, C]`` float selector of the target classes (one-hot, or the multi-hot labels)."""
    if multi_label:
        return tf.cast(labels, tf.float32)
    return tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)


def confusing_one_hot(target, logits):
    """``[B, C]`` one-hot of the highest-scoring non-target class, chosen without gradient.

    A sample whose every class is a target has no confusing class: its row is all zeros,
    which makes its confusing-class map zero and its separation loss 0.
    """
    logits = tf.stop_gradient(tf.cast(logits, tf.float32))
    masked = tf.where(target > 0, tf.fill(tf.shape(logits), -float("inf")), logits)
    confusing = tf.one_hot(tf.argmax(masked, axis=-1), tf.shape(logits)[-1])
    has_confusing = tf.reduce_any(target <= 0, axis=-1, keepdims=True)
    return confusing * tf.cast(has_confusing, tf.float32)


def confusing_class(labels, logits, multi_label=False):
    """Index ``[B]`` of the most confusing class for each sample (for evaluation and figures)."""
    target = target_one_hot(labels, tf.shape(logits)[-1], multi_label)
    return tf.argmax(confusing_one_hot(target, logits), axis=-1, output_type=tf.int32)


def probabilities(logits, multi_label=False):
    """Class probabilities from logits: sigmoid per class (multi-label) or softmax."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if multi_label else tf.nn.softmax(logits)
