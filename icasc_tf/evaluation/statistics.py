"""Score statistics of the papers' tables: KS separation, multi-label AP / ROC AUC.

All of them are SciPy / scikit-learn calls; this module only chooses what goes in.
"""

import numpy as np
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score


def _sample(values, name):
    values = np.ravel(np.asarray(values, dtype=np.float64))
    if values.size == 0:
        raise ValueError(f"{name} is empty: the KS statistic needs at least one probability per side.")
    return values


def ks_statistic(target_probs, confusing_probs):
    """Two-sample Kolmogorov-Smirnov statistic and the probability where it occurs.

    The papers' Fig. 9: how far apart the distributions of the ground-truth class's
    probability and of the most confusing class's probability are (larger = better
    separated). Returns ``(statistic, location)``: the largest gap between the two
    empirical CDFs and the probability value at which SciPy finds it.
    """
    result = stats.ks_2samp(
        _sample(target_probs, "target_probs"), _sample(confusing_probs, "confusing_probs")
    )
    return float(result.statistic), float(result.statistic_location)


def multilabel_scores(labels, probabilities, class_names=None):
    """Per-class average precision, mAP and macro ROC AUC (the VOC columns of Table 6).

    A class with no positive in ``labels`` has no AP (nor AUC), and one with no negative
    has no AUC: such classes get ``None`` and stay out of the means, instead of
    scikit-learn's warning and an arbitrary 0.
    Returns ``{"mAP", "roc_auc", "per_class_ap": {name: AP or None}}``.
    """
    labels = np.asarray(labels) > 0.5
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if labels.ndim != 2 or labels.shape != probabilities.shape:
        raise ValueError(
            f"labels and probabilities must both be [examples, classes]; got {labels.shape} "
            f"and {probabilities.shape}."
        )
    num_classes = labels.shape[1]
    names = list(class_names) if class_names is not None else [str(c) for c in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"class_names has {len(names)} names for {num_classes} classes.")
    positives = labels.sum(axis=0)
    has_ap = positives > 0
    has_auc = has_ap & (positives < labels.shape[0])
    per_class_ap = [None] * num_classes
    if has_ap.any():
        ap = average_precision_score(labels[:, has_ap], probabilities[:, has_ap], average=None)
        for c, value in zip(np.flatnonzero(has_ap), np.atleast_1d(ap)):
            per_class_ap[c] = float(value)
    roc_auc = None
    if has_auc.any():
        roc_auc = float(
            roc_auc_score(labels[:, has_auc], probabilities[:, has_auc], average="macro")
        )
    valid_ap = [v for v in per_class_ap if v is not None]
    return {
        "mAP": float(np.mean(valid_ap)) if valid_ap else None,
        "roc_auc": roc_auc,
        "per_class_ap": dict(zip(names, per_class_ap)),
    }


def difference_to_baseline(values, baseline_values, confidence=0.95):
    """Mean difference of two groups of runs and its Welch-t confidence interval.

    The study's question per arm: is it better than the baseline of the same recipe?
    ``verdict`` is "gain" or "loss" only when the interval excludes zero. Needs at least
    two runs per group (``None`` otherwise).
    """
    values = np.asarray(values, dtype=np.float64)
    baseline_values = np.asarray(baseline_values, dtype=np.float64)
    if values.size < 2 or baseline_values.size < 2:
        return None
    test = stats.ttest_ind(values, baseline_values, equal_var=False)
    low, high = (float(v) for v in test.confidence_interval(confidence))
    verdict = "gain" if low > 0 else "loss" if high < 0 else "no difference"
    return {
        "mean": float(values.mean() - baseline_values.mean()),
        "ci": [low, high],
        "confidence": confidence,
        "p": float(test.pvalue),
        "verdict": verdict,
    }
