"""Checks that attributions mean something. Each gives one number, logged as the metric ``explain_<name>``;
a failed check is a warning naming it (:func:`warn_failed`).

- ``ig_completeness_gap`` <= 0.01: IG's relative completeness gap (captum's convergence delta; Sundararajan
  et al. 2017's completeness axiom).
- ``shap_additivity_error`` <= 1e-4: max over rows of |Σ SHAP values + expected value - f(x)|, divided by
  the range of f over the rows (Lundberg & Lee 2017's local accuracy).
- ``<method>_randomisation_spearman`` < 0.5: Spearman rank correlation between the attributions of the
  trained model and those of the same architecture re-initialised (Adebayo et al., *Sanity Checks for
  Saliency Maps*, NeurIPS 2018), mean over re-initialisations. Tables compare global importances over the
  features that vary; images and sequences compare each row's signed map (global importances of an
  image follow the pixels' spread, |x - baseline|, whatever the weights: see :func:`randomisation`).
- ``agreement_top<k>``: share of the top-k features of the ONNX-side SHAP ranking also in the torch-side IG
  ranking (reported, no threshold).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

log = logging.getLogger(__name__)

#: check name -> (threshold, "max" when the value must stay at most the threshold, "below" when under it)
THRESHOLDS = {"ig_completeness_gap": (0.01, "max"), "shap_additivity_error": (1e-4, "max"),
              "randomisation_spearman": (0.5, "below")}
REINITS = 3


def additivity_error(values: np.ndarray, base: np.ndarray, outputs: np.ndarray) -> float:
    """Max over rows of |Σ_j values[i, j] + base[i] - outputs[i]| / (max(outputs) - min(outputs)) (1 when the
    range is 0). ``values`` ``(N, D)``, ``base`` and ``outputs`` ``(N,)``."""
    scale = float(np.ptp(outputs)) or 1.0
    return float(np.abs(values.sum(1) + base - outputs).max() / scale)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two vectors (0 when either is constant)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0
    return float(spearmanr(a, b).statistic)


def randomisation(trained: np.ndarray, attribute: Callable[[int], np.ndarray], varying: np.ndarray,
                  per_row: bool, reinits: int = REINITS) -> float:
    """Adebayo et al.'s model-randomisation statistic: mean over ``reinits`` seeds of the Spearman rank
    correlation between ``trained`` (attributions ``(N, D)``, or a global importance ``(D,)``) and
    ``attribute(seed)`` (the same method on the re-initialised model, same shape), over the features
    where ``varying`` ``(D,)`` is True. ``per_row``: correlate each row's signed attributions and average
    (images, sequences); else correlate the global importances (tables)."""
    scores = []
    for seed in range(1, reinits + 1):
        other = attribute(seed)
        if per_row and trained.ndim == 2:
            scores.append(np.mean([spearman(t[varying], o[varying]) for t, o in zip(trained, other, strict=True)]))
        else:
            scores.append(spearman(trained[varying], other[varying]))
    return float(np.mean(scores))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Share of the ``k`` largest entries of ``a`` that are also among the ``k`` largest of ``b``."""
    k = min(k, len(a))
    return len(set(np.argsort(-a)[:k]) & set(np.argsort(-b)[:k])) / k if k else 0.0


def failed(name: str, value: float) -> bool:
    """Whether check ``name`` (a key of :data:`THRESHOLDS`, or ``<method>_randomisation_spearman``) fails."""
    key = "randomisation_spearman" if name.endswith("randomisation_spearman") else name
    if key not in THRESHOLDS or value is None:
        return False
    limit, how = THRESHOLDS[key]
    return bool(value > limit) if how == "max" else bool(value >= limit)


def warning_line(name: str, value: float) -> str:
    """The one-line warning of a failed check, saying what it means."""
    key = "randomisation_spearman" if name.endswith("randomisation_spearman") else name
    limit = THRESHOLDS[key][0]
    meaning = {
        "ig_completeness_gap": "IG's attributions do not add up to f(x) - f(baseline) (raise the step cap)",
        "shap_additivity_error": "the SHAP values do not add up to the model's output",
        "randomisation_spearman": "the explanation does not depend on what the model learned (it looks the "
                                  "same for re-initialised weights)",
    }[key]
    return f"check {name} failed: {value:.4g} (limit {limit:g}): {meaning}"


def warn_failed(checks: dict[str, float | None]) -> list[str]:
    """Log a warning for each failed check; return the warning lines."""
    lines = [warning_line(name, value) for name, value in checks.items() if failed(name, value)]
    for line in lines:
        log.warning("%s", line)
    return lines
