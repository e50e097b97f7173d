"""Summaries of fold scores: mean and standard deviation, and the corrected resampled t-test.

The corrected resampled t-test is Nadeau & Bengio (2003), "Inference for the Generalization Error",
Machine Learning 52: the variance of the K paired differences is inflated by ``1/K + n_val/n_train``
because the training sets of the folds overlap (the plain paired t-test's ``1/K`` is too optimistic).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for a single value) of fold scores."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


def summarize(fold_metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """``cv_<metric>_mean`` and ``cv_<metric>_std`` of every metric all folds report (e.g. ``val_accuracy``)."""
    shared = set.intersection(*(set(m) for m in fold_metrics)) if fold_metrics else set()
    out: dict[str, float] = {}
    for key in sorted(shared):
        out[f"cv_{key}_mean"], out[f"cv_{key}_std"] = mean_std([m[key] for m in fold_metrics])
    return out


@dataclass
class PairedTest:
    """Corrected resampled t-test of two models' scores on the same K folds (module doc)."""

    mean_difference: float  # mean of a - b over the folds
    t: float
    p_value: float  # two-sided, Student t with K - 1 degrees of freedom
    within_noise: bool  # p_value >= alpha

    def to_dict(self) -> dict[str, Any]:
        return {"mean_difference": self.mean_difference, "t": self.t, "p_value": self.p_value,
                "within_noise": self.within_noise}


def corrected_t_test(a: Sequence[float], b: Sequence[float], n_train: int, n_val: int,
                     alpha: float = 0.05) -> PairedTest:
    """Nadeau & Bengio's corrected resampled t-test on paired fold scores ``a`` and ``b`` (length K >= 2).

    ``n_train``/``n_val``: rows a fold trains/validates on (their ratio corrects the variance).
    ``t = mean(d) / sqrt((1/K + n_val/n_train) * var(d, ddof=1))``; identical scores give ``t = 0, p = 1``.
    Raises ``ValueError`` for unequal or fewer than 2 scores.
    """
    from scipy import stats

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if len(a) != len(b) or len(d) < 2:
        raise ValueError(f"need two equal-length score lists of at least 2 folds, got {len(a)} and {len(b)}")
    k, mean, var = len(d), float(d.mean()), float(d.var(ddof=1))
    scale = math.sqrt((1.0 / k + n_val / max(n_train, 1)) * var)
    if scale == 0.0:
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
    else:
        t = mean / scale
        p = float(2.0 * stats.t.sf(abs(t), df=k - 1))
    return PairedTest(mean, t, p, p >= alpha)
