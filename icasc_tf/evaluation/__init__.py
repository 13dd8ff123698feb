"""Evaluation of ICASC models: the papers' metrics (docs/method.md §1.8) and attention metrics (§4)."""

from icasc_tf.evaluation.attention_metrics import (
    box_masks,
    confidence_change,
    energy_in_box,
    explanation_masked_images,
    pointing_game,
    upsample_maps,
)
from icasc_tf.evaluation.evaluator import evaluate_model
from icasc_tf.evaluation.ks_chart import ks_chart
from icasc_tf.evaluation.statistics import ks_statistic, multilabel_scores

__all__ = [
    "box_masks",
    "confidence_change",
    "energy_in_box",
    "evaluate_model",
    "explanation_masked_images",
    "ks_chart",
    "ks_statistic",
    "multilabel_scores",
    "pointing_game",
    "upsample_maps",
]
