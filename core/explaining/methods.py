"""The attribution methods. Each returns an :class:`Attribution`: per-row attributions ``(N, D)`` over the
flattened raw features (or None for a global-only method) and the global importance ``(D,)``.

- ``permutation``: permutation importance (Breiman 2001; scikit-learn's ``permutation_importance``): the
  drop of the task's metric (accuracy, R^2) when one feature's column is shuffled, ``repeats`` times.
- ``shap``: shap's ``PermutationExplainer`` (exact additivity by construction), ``kernel-shap``: shap's
  ``KernelExplainer`` (what ``mlflow.shap`` runs). Both over a background of training rows, through a
  ``predict`` function (the onnxruntime session).
- ``integrated-gradients``: captum's ``IntegratedGradients`` on the torch model, baseline the training mean.
- ``occlusion``: captum's ``Occlusion`` (images only): a patch replaced by the baseline, through ``predict``.

"Model calls" count rows passed through the model (one evaluation of f on one input), whatever the batching.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Predict = Callable[[np.ndarray], np.ndarray]
#: IG's Riemann/Gauss-Legendre steps: start, cap (captum's default is 50; 50 left a 2-5 % gap on the MLP)
IG_STEPS, IG_MAX_STEPS = 50, 1600
#: rows IG's step count is tuned on before it runs on all rows
IG_TUNE_ROWS = 32


@dataclass
class Attribution:
    """``values``: ``(N, D)`` float64 or None; ``importance``: ``(D,)``, the mean |values| per feature (or the
    metric drop); ``spread``: ``(D,)`` std over repeats (permutation) or None; ``info``: method settings."""

    method: str
    values: np.ndarray | None
    importance: np.ndarray
    calls: int
    spread: np.ndarray | None = None
    base: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


class Counted:
    """``predict`` that counts the rows it evaluates (``.calls``)."""

    def __init__(self, predict: Predict) -> None:
        self.predict, self.calls = predict, 0

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls += len(x)
        return self.predict(x)


def metric(task: str, y: np.ndarray, out: np.ndarray) -> float:
    """The task's metric: accuracy for classification (``out`` probabilities ``(N, K)``), R^2 for regression."""
    if task == "classification":
        return float((out.argmax(1) == y.ravel()).mean())
    from sklearn.metrics import r2_score

    return float(r2_score(y.reshape(len(y), -1), out.reshape(len(out), -1)))


def permutation(predict: Predict, x: np.ndarray, y: np.ndarray, task: str, repeats: int = 5, seed: int = 0,
                progress: Any = None) -> Attribution:
    """Permutation importance of each flattened feature of ``x`` ``(N, *shape)``: baseline metric minus the
    metric with that column shuffled, mean and std over ``repeats`` shuffles. ``N * (1 + D * repeats)`` calls."""
    counted, rng = Counted(predict), np.random.default_rng(seed)
    flat = x.reshape(len(x), -1)
    reference = metric(task, y, counted(x))
    drops = np.zeros((flat.shape[1], repeats))
    for j in range(flat.shape[1]):
        for r in range(repeats):
            shuffled = flat.copy()
            shuffled[:, j] = shuffled[rng.permutation(len(flat)), j]
            drops[j, r] = reference - metric(task, y, counted(shuffled.reshape(x.shape)))
        if progress is not None:
            progress.update(len(x) * repeats)
    return Attribution("permutation", None, drops.mean(1), counted.calls, spread=drops.std(1),
                       info={"repeats": repeats, "metric": "accuracy" if task == "classification" else "r2",
                             "reference": reference})


def pick(values: np.ndarray, targets: np.ndarray | None) -> np.ndarray:
    """Per-row values of each row's explained output: ``values`` ``(N, ..., K)`` -> ``(N, ...)``."""
    if targets is None:
        return values[..., 0]
    return np.take_along_axis(values, targets.reshape(-1, *([1] * (values.ndim - 1))), axis=-1)[..., 0]


def shap_values(predict: Predict, x: np.ndarray, background: np.ndarray, targets: np.ndarray | None, *,
                algorithm: str = "permutation", permutations: int = 1, progress: Any = None,
                chunk: int = 50) -> Attribution:
    """SHAP values ``(N, D)`` of each row's explained output (``targets``: class index per row, None for
    regression's first output), over ``background`` rows (the masker's sample: its size is the stated
    background). ``algorithm``: ``permutation`` (``max_evals = permutations * (2 D + 1)``, each masked
    sample evaluated on every background row) or ``kernel`` (``nsamples = 2 D + 2048``, shap's default)."""
    import shap

    shape, flat_bg = x.shape[1:], background.reshape(len(background), -1).astype(np.float64)
    counted = Counted(predict)

    def f(rows: np.ndarray) -> np.ndarray:
        return counted(np.asarray(rows, np.float32).reshape(len(rows), *shape)).astype(np.float64)

    flat, d = x.reshape(len(x), -1).astype(np.float64), int(np.prod(shape))
    values, base = [], []
    if algorithm == "kernel":
        explainer = shap.KernelExplainer(f, flat_bg)
    else:
        masker = shap.maskers.Independent(flat_bg, max_samples=len(flat_bg))
        explainer = shap.PermutationExplainer(f, masker, seed=0)
    for start in range(0, len(flat), chunk):
        rows = flat[start:start + chunk]
        if algorithm == "kernel":
            v = np.asarray(explainer.shap_values(rows, silent=True))  # (n, D, K)
            b = np.broadcast_to(np.asarray(explainer.expected_value), (len(rows), v.shape[-1]))
        else:
            e = explainer(rows, max_evals=permutations * (2 * d + 1), batch_size=10, silent=True)
            v, b = np.asarray(e.values), np.asarray(e.base_values)
        targets_part = None if targets is None else targets[start:start + chunk]
        values.append(pick(v.reshape(len(rows), d, -1), targets_part))
        base.append(pick(b.reshape(len(rows), -1), targets_part))
        if progress is not None:
            progress.update(len(rows))
    v = np.concatenate(values)
    return Attribution("kernel-shap" if algorithm == "kernel" else "shap", v, np.abs(v).mean(0), counted.calls,
                       base=np.concatenate(base),
                       info={"background_rows": len(flat_bg), "background": "sampled training rows",
                             **({"permutations": permutations} if algorithm != "kernel" else {})})


def integrated_gradients(model: Any, x: np.ndarray, baseline: np.ndarray, targets: np.ndarray | None,
                         output: int, *, tolerance: float = 0.01, progress: Any = None) -> Attribution:
    """captum's Integrated Gradients (Sundararajan et al. 2017) of each row's explained output of ``model``
    (``model(x)`` returns the task head's tuple; ``output`` picks probabilities or prediction) from
    ``baseline`` (``input_shape``, raw units). ``n_steps`` doubles from :data:`IG_STEPS` on the first
    :data:`IG_TUNE_ROWS` rows until the relative completeness gap (:func:`completeness_gap`) is at most
    ``tolerance``, up to :data:`IG_MAX_STEPS`; then all rows run at that count. ``info["gap"]``: all rows'."""
    import torch
    from captum.attr import IntegratedGradients

    calls = [0]

    def forward(t: torch.Tensor) -> torch.Tensor:
        calls[0] += len(t)
        out = model(t)[output]
        return out if out.ndim == 2 else out.reshape(len(out), -1)

    ig = IntegratedGradients(forward)
    target = None if targets is None else torch.as_tensor(targets, dtype=torch.long)
    target_default = 0 if targets is None else None

    def run(rows: np.ndarray, tgt: Any, steps: int) -> tuple[np.ndarray, float]:
        inputs = torch.as_tensor(rows, dtype=torch.float32)
        base = torch.as_tensor(baseline, dtype=torch.float32).expand_as(inputs).contiguous()
        attr, delta = ig.attribute(inputs, baselines=base, target=tgt if tgt is not None else target_default,
                                   n_steps=steps, internal_batch_size=max(256, 4 * len(rows)),
                                   return_convergence_delta=True)
        with torch.no_grad():
            change = forward(inputs) - forward(base)
            picked = change[:, 0] if tgt is None else change.gather(1, tgt.reshape(-1, 1))[:, 0]
        return attr.detach().double().numpy().reshape(len(rows), -1), completeness_gap(delta.numpy(), picked.numpy())

    steps, tune = IG_STEPS, x[:IG_TUNE_ROWS]
    while True:
        _, gap = run(tune, None if target is None else target[:IG_TUNE_ROWS], steps)
        if gap <= tolerance or steps >= IG_MAX_STEPS:
            break
        steps *= 2
    values, gaps = [], []
    for start in range(0, len(x), 64):
        v, gap = run(x[start:start + 64], None if target is None else target[start:start + 64], steps)
        values.append(v)
        gaps.append(gap * len(v))
        if progress is not None:
            progress.update(len(v))
    v = np.concatenate(values)
    return Attribution("integrated-gradients", v, np.abs(v).mean(0), calls[0],
                       info={"n_steps": steps, "baseline": "training mean (raw input units)",
                             "gap": float(sum(gaps) / len(x))})


def completeness_gap(delta: np.ndarray, change: np.ndarray) -> float:
    """IG's relative completeness gap: sum |Σ attributions - (f(x) - f(baseline))| over rows (captum's
    convergence delta) divided by sum |f(x) - f(baseline)| (a ratio of sums: one row whose output barely
    moves does not dominate). 0 when nothing moves."""
    total = float(np.abs(change).sum())
    return float(np.abs(delta).sum() / total) if total > 0 else 0.0


def occlusion(predict: Predict, x: np.ndarray, baseline: np.ndarray, targets: np.ndarray | None, *,
              progress: Any = None) -> Attribution:
    """captum's ``Occlusion`` on images ``(N, C, H, W)``: the output drop when a square patch (side
    ``max(2, H // 8)``, stride half of it) is set to the baseline, through ``predict`` (the ONNX session)."""
    import torch
    from captum.attr import Occlusion

    counted = Counted(predict)
    c, h, _ = x.shape[1:]
    side = max(2, h // 8)

    def forward(t: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(counted(t.numpy().astype(np.float32)))

    occ, values = Occlusion(forward), []
    for start in range(0, len(x), 64):
        rows = torch.as_tensor(x[start:start + 64])
        tgt = None if targets is None else torch.as_tensor(targets[start:start + 64], dtype=torch.long)
        base = torch.as_tensor(baseline, dtype=torch.float32).expand_as(rows).contiguous()
        attr = occ.attribute(rows, sliding_window_shapes=(c, side, side), strides=(c, max(1, side // 2),
                             max(1, side // 2)), baselines=base, target=tgt if tgt is not None else 0,
                             perturbations_per_eval=16)
        values.append(attr.double().numpy().reshape(len(rows), -1))
        if progress is not None:
            progress.update(len(rows))
    v = np.concatenate(values)
    return Attribution("occlusion", v, np.abs(v).mean(0), counted.calls,
                       info={"window": side, "baseline": "training mean (raw input units)"})
