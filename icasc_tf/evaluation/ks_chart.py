"""The Kolmogorov-Smirnov chart of the paper's Fig. 9, as a PNG."""

import os

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from icasc_tf.evaluation.statistics import ks_statistic


def ks_chart(target_probs, confusing_probs, path, title=None):
    """Draw the empirical CDFs of both probabilities, the KS gap marked, into ``path``.

    Uses a bare ``matplotlib.figure.Figure`` (Agg canvas), so it never touches pyplot's
    global backend or opens a window. Returns ``(statistic, location)``.
    """
    target = np.ravel(np.asarray(target_probs, dtype=np.float64))
    confusing = np.ravel(np.asarray(confusing_probs, dtype=np.float64))
    statistic, location = ks_statistic(target, confusing)
    cdf_target = float(stats.ecdf(target).cdf.evaluate(location))
    cdf_confusing = float(stats.ecdf(confusing).cdf.evaluate(location))

    figure = Figure(figsize=(5, 4), dpi=120)
    axes = figure.add_subplot()
    axes.ecdf(target, label="target class", color="tab:blue")
    axes.ecdf(confusing, label="most confusing class", color="tab:red")
    axes.vlines(location, min(cdf_target, cdf_confusing), max(cdf_target, cdf_confusing),
                colors="black", linestyles="--", label=f"KS = {statistic:.2f} at p = {location:.2f}")
    axes.set_xlim(0.0, 1.0)
    axes.set_ylim(0.0, 1.02)
    axes.set_xlabel("predicted probability")
    axes.set_ylabel("cumulative fraction of examples")
    axes.set_title(title or "Kolmogorov-Smirnov chart")
    axes.legend(loc="best")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    figure.savefig(path, format="png")
    return statistic, location
