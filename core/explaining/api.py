"""``explain(...)``: attributions of a trained model, checked, written and logged (``trainforge explain`` calls
exactly this; ``train --explain`` and ``tune --explain`` call :func:`explain_run`).

Order: load the subject (:mod:`~trainforge.explaining.subject`) -> pick the methods -> count the model
calls each will make (refuse over ``budget``) -> run them on the onnxruntime session (permutation, SHAP,
occlusion) and the torch model (IG) -> checks (:mod:`~trainforge.explaining.checks`), re-running each method
on re-initialised models -> plots -> ``explain/`` artifacts and ``explain_*`` metrics on the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.errors import ConfigError, TrainforgeError
from trainforge.explaining import METHODS
from trainforge.explaining import checks as checks_mod
from trainforge.explaining import methods as m
from trainforge.explaining.subject import OUTPUTS, Subject, load_subject

log = logging.getLogger(__name__)

#: rows each re-initialised model is explained on (Adebayo's check compares the same rows)
RANDOMISATION_ROWS = 64
#: test rows ``train --explain`` and ``tune --explain`` explain unless told (``--explain-rows``): the first of
#: the test split, enough for a stable global ranking while SHAP stays within seconds on a small table
RUN_ROWS = 100


@dataclass
class ExplainReport:
    """``importance``: method -> feature -> global importance; ``checks``: check -> value; ``calls``: method ->
    model calls made; ``warnings``: one line per failed check."""

    source: str
    rows: int
    importance: dict[str, dict[str, float]]
    checks: dict[str, float | None]
    calls: dict[str, int]
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    artifacts: list[str] = field(default_factory=list)
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "run_id": self.run_id, "rows": self.rows, "importance": self.importance,
                "checks": self.checks, "calls": self.calls, "settings": self.settings, "warnings": self.warnings,
                "artifacts": self.artifacts}

    def ranking(self, method: str) -> list[str]:
        """Features of ``method`` from the most to the least important."""
        return sorted(self.importance[method], key=lambda f: -self.importance[method][f])


def default_methods(subject: Subject) -> list[str]:
    """What fits the model: permutation importance (when targets are known) and SHAP on the ONNX file, IG on a
    torch model, occlusion on images (SHAP only up to 256 features: a pixel grid is too many)."""
    width = int(np.prod(subject.input_shape))
    chosen = ["permutation"] if subject.y is not None else []
    if width <= 256:
        chosen.append("shap")
    if subject.torch_model is not None:
        chosen.append("integrated-gradients")
    if len(subject.input_shape) == 3:
        chosen.append("occlusion")
    return chosen


def estimate_calls(method: str, n: int, d: int, settings: dict[str, int], input_shape: tuple[int, ...]) -> int:
    """Model calls ``method`` will make on ``n`` rows of ``d`` features (IG: at its first step count)."""
    b = settings["background"]
    if method == "permutation":
        return n * (1 + d * settings["repeats"])
    if method == "shap":
        return n * settings["permutations"] * (2 * d + 1) * b
    if method == "kernel-shap":
        return n * (2 * d + 2048) * b + b
    if method == "integrated-gradients":
        return n * (m.IG_STEPS + 2) + m.IG_TUNE_ROWS * m.IG_STEPS
    h, w = input_shape[-2:]
    side = max(2, h // 8)
    stride = max(1, side // 2)
    return n * (1 + ((h - side) // stride + 1) * ((w - side) // stride + 1))


@dataclass(frozen=True)
class ExplainSettings:
    """How :func:`explain` explains (``trainforge explain``'s method options, one field each).

    ``methods``: names of :data:`METHODS` (empty: :func:`default_methods`); ``rows``: the first rows of the input
    explained (None: all); ``background``: training rows SHAP masks with (a seeded sample); ``repeats``:
    permutation shuffles per feature; ``permutations``: shap's permutations per row; ``budget``: refuse (one
    :class:`TrainforgeError` line suggesting a smaller job) when the methods would make more model calls;
    ``randomise``: run the model-randomisation check.
    """

    methods: tuple[str, ...] = ()
    rows: int | None = None
    background: int = 100
    repeats: int = 5
    permutations: int = 1
    budget: int | None = None
    randomise: bool = True


def explain(source: str, input_path: str | Path | None = None, *, target: str | None = None,
            settings: ExplainSettings | None = None, log_to_run: bool = False, output: str | Path | None = None,
            tracking_uri: str | None = None, subject: Subject | None = None, progress: bool = False) -> ExplainReport:
    """Explain ``source`` (a run id, ``runs:/``, ``models:/`` URI or ``.onnx`` file) on ``input_path``'s rows
    (default: the run's test split), as ``settings`` say (:class:`ExplainSettings`; default its defaults).
    ``log_to_run``: ``explain/`` artifacts and ``explain_*`` metrics on the run. ``output``: CSV, one row per
    (row, feature), one column per method. Raises :class:`ConfigError` for an unknown or unfitting method,
    :class:`TrainforgeError` over the budget or for a source that cannot be loaded."""
    opts = settings or ExplainSettings()
    subject = subject or load_subject(source, input_path, target, rows=opts.rows, tracking_uri=tracking_uri)
    chosen = list(opts.methods) or default_methods(subject)
    _check_methods(chosen, subject)
    n, d = len(subject.x), int(np.prod(subject.input_shape))
    settings_used = {"background": min(opts.background, len(subject.pool)), "repeats": opts.repeats,
                     "permutations": opts.permutations}
    costs = {method: estimate_calls(method, n, d, settings_used, subject.input_shape) for method in chosen}
    _check_budget(costs, opts.budget, n, settings_used)
    predict = onnx_predict(subject.onnx_path, subject.task)
    targets = predict(subject.x).argmax(1) if subject.task == "classification" else None
    bg = subject.pool[np.random.default_rng(0).choice(len(subject.pool), settings_used["background"], replace=False)]
    done: dict[str, m.Attribution] = {}
    for method in chosen:
        log.info("%s: about %s model calls on %d rows", method, f"{costs[method]:,}", n)
        total = n * (opts.repeats * d if method == "permutation" else 1)
        done[method] = _with_bar(f"{method} (~{costs[method]:,} model calls)", total, progress,
                                 lambda bar, method=method: run_method(method, subject, predict, subject.x, targets,
                                                                       bg, settings_used, bar))
    results = {"importance": done, "targets": targets, "background": bg}
    check_values = run_checks(subject, predict, results, settings_used, opts.randomise)
    report = ExplainReport(source, n, {k: dict(zip(subject.feature_names, map(float, a.importance), strict=True))
                                       for k, a in done.items()}, check_values, {k: a.calls for k, a in done.items()},
                           settings={k: a.info for k, a in done.items()}, run_id=subject.run_id)
    report.settings["shap_background_rows"] = {"rows": settings_used["background"]}
    report.warnings = checks_mod.warn_failed(check_values)
    if output is not None:
        write_attributions(output, done, subject.feature_names)
    if log_to_run and subject.run_id:
        from trainforge.explaining.logged import log_explanation

        report.artifacts = log_explanation(subject, report, done, targets, bg)
    return report


def explain_run(run_id: str, onnx_path: str | None = None, *, model_run: str | None = None,
                rows: int | None = RUN_ROWS, tracking_uri: str | None = None, progress: bool = False) -> ExplainReport:
    """What ``train --explain`` and ``tune --explain`` do after the export: :func:`explain` the exported file
    (``onnx_path``, a local path; default the run's ``onnx/model.onnx``) with the default methods on the first
    ``rows`` test rows, and log ``explain/`` and the ``explain_*`` metrics to run ``run_id``. ``model_run``: the
    run whose config and checkpoint are behind the file when it is not ``run_id`` (a study's best model lives in
    the parent run, its checkpoint in a trial's or the refit's run). Failed checks are logged warnings and
    listed in the report; raises :class:`TrainforgeError` as :func:`~trainforge.explaining.subject.load_subject`."""
    subject = load_subject(onnx_path or run_id, rows=rows, tracking_uri=tracking_uri, model_run=model_run)
    subject.run_id = run_id  # where the explanation is logged
    return explain(run_id, subject=subject, log_to_run=True, progress=progress)


def _check_methods(chosen: list[str], subject: Subject) -> None:
    unknown = [x for x in chosen if x not in METHODS]
    if unknown:
        raise ConfigError(f"unknown explain method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if "integrated-gradients" in chosen and subject.torch_model is None:
        raise ConfigError("integrated-gradients needs a torch model from a run; "
                          f"{subject.model_kind} models: {', '.join(x for x in METHODS if x != 'integrated-gradients')}")
    if "permutation" in chosen and subject.y is None:
        raise ConfigError("permutation importance needs targets: give --target COLUMN of --input")
    if "occlusion" in chosen and len(subject.input_shape) != 3:
        raise ConfigError(f"occlusion is for images (C, H, W); this model's input is {list(subject.input_shape)}")
    if {"integrated-gradients", "occlusion"} & set(chosen) and subject.baseline is None:
        raise ConfigError("integrated-gradients and occlusion need the training mean as baseline: explain a run")


def _check_budget(costs: dict[str, int], budget: int | None, n: int, settings: dict[str, int]) -> None:
    total = sum(costs.values())
    if budget is None or total <= budget:
        return
    scale = budget / total
    raise TrainforgeError(
        f"the explanation would make {total:,} model calls ({', '.join(f'{k} {v:,}' for k, v in costs.items())}), "
        f"over --budget {budget:,}: try --rows {max(1, int(n * scale))} or --background "
        f"{max(1, int(settings['background'] * scale))}")


def _with_bar(method: str, total: int, progress: bool, job: Any) -> m.Attribution:
    from tqdm.auto import tqdm

    with tqdm(total=total, desc=method, unit="row", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        return job(bar)


def onnx_predict(path: str, task: str) -> m.Predict:
    """The served output of the ONNX file as ``predict(x (N, *shape) float32) -> (N, K)`` on onnxruntime's CPU
    provider, in runs of at most 4096 rows."""
    from trainforge.exporting.predictor import RUN_ROWS
    from trainforge.exporting.sessions import open_session

    session, _ = open_session(path, provider="cpu")
    name, output = session.get_inputs()[0].name, OUTPUTS[task]

    def predict(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        parts = [session.run([output], {name: x[i:i + RUN_ROWS]})[0] for i in range(0, len(x), RUN_ROWS)]
        out = np.concatenate(parts) if parts else np.empty((0, 1), np.float32)
        return out.reshape(len(x), -1)

    return predict


def torch_predict(model: Any, output: int) -> m.Predict:
    """``predict`` of a torch model (its task head's ``output``-th tensor), without gradients."""
    import torch

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(torch.as_tensor(np.asarray(x, np.float32)))[output]
        return out.numpy().reshape(len(x), -1)

    return predict


def run_method(method: str, subject: Subject, predict: m.Predict, x: np.ndarray, targets: np.ndarray | None,
               bg: np.ndarray, settings: dict[str, int], bar: Any = None, model: Any = None) -> m.Attribution:
    """One method on rows ``x`` of ``subject`` through ``predict`` (IG: through ``model``, default the trained
    torch model)."""
    if method == "permutation":
        return m.permutation(predict, x, subject.y[:len(x)], subject.task, settings["repeats"], progress=bar)
    if method in ("shap", "kernel-shap"):
        return m.shap_values(predict, x, bg, targets, algorithm="kernel" if method == "kernel-shap" else "permutation",
                             permutations=settings["permutations"], progress=bar)
    if method == "occlusion":
        return m.occlusion(predict, x, subject.baseline, targets, progress=bar)
    model = model if model is not None else subject.torch_model(None)
    return m.integrated_gradients(model, x, subject.baseline, targets, 1 if subject.task == "classification" else 0,
                                  progress=bar)


def run_checks(subject: Subject, predict: m.Predict, results: dict[str, Any], settings: dict[str, int],
               randomise: bool) -> dict[str, float | None]:
    """The values of :mod:`~trainforge.explaining.checks`' checks for the methods in ``results["importance"]``."""
    done, targets = results["importance"], results["targets"]
    out: dict[str, float | None] = {}
    if "integrated-gradients" in done:
        out["ig_completeness_gap"] = done["integrated-gradients"].info["gap"]
    for name in ("shap", "kernel-shap"):
        if name in done:
            f = m.pick(predict(subject.x), targets)
            key = "shap_additivity_error" if name == "shap" else "kernel_shap_additivity_error"
            out[key] = checks_mod.additivity_error(done[name].values, done[name].base, f)
    if randomise:
        for method, attribution in done.items():
            out[f"{method.replace('-', '_')}_randomisation_spearman"] = _randomisation(
                method, attribution, subject, targets, results["background"], settings)
    if "integrated-gradients" in done and ("shap" in done or "kernel-shap" in done):
        shap_side = done.get("shap") or done["kernel-shap"]
        k = max(1, min(10, len(shap_side.importance) // 4))
        out[f"agreement_top{k}"] = checks_mod.top_k_overlap(shap_side.importance, done["integrated-gradients"].importance, k)
    return out


def _randomisation(method: str, trained: m.Attribution, subject: Subject, targets: np.ndarray | None,
                   bg: np.ndarray, settings: dict[str, int]) -> float | None:
    """Adebayo's statistic for ``method`` (see :func:`~trainforge.explaining.checks.randomisation`), or None
    (with a warning) when the model cannot be re-initialised (an ONNX file without its run)."""
    if subject.torch_model is None and subject.refit is None:
        log.warning("check %s_randomisation_spearman skipped: no run to re-initialise the model from", method)
        return None
    rows = len(subject.x) if method == "permutation" else min(RANDOMISATION_ROWS, len(subject.x))
    x, tgt = subject.x[:rows], None if targets is None else targets[:rows]
    per_row = len(subject.input_shape) > 1 and trained.values is not None
    output = 1 if subject.task == "classification" else 0

    def attribute(seed: int) -> np.ndarray:
        if subject.torch_model is not None:
            model = subject.torch_model(seed)
            predict = torch_predict(model, output)
        else:
            model, predict = None, subject.refit(seed)
        other = run_method(method, subject, predict, x, tgt, bg, settings, model=model)
        return other.values if per_row else other.importance if other.values is None else np.abs(other.values).mean(0)

    if trained.values is None:
        reference = trained.importance
    else:
        reference = trained.values[:rows] if per_row else np.abs(trained.values[:rows]).mean(0)
    varying = np.ptp(subject.x.reshape(len(subject.x), -1), axis=0) > 0
    return checks_mod.randomisation(reference, attribute, varying, per_row)


def write_attributions(path: str | Path, done: dict[str, m.Attribution], names: list[str]) -> None:
    """CSV: ``row, feature`` and one column per method with per-row values (global-only methods left out)."""
    import pandas as pd

    from trainforge.atomic import atomic_output

    per_row = {k: a.values for k, a in done.items() if a.values is not None}
    if not per_row:
        raise ConfigError("--output needs a per-row method (shap, kernel-shap, integrated-gradients, occlusion)")
    n = len(next(iter(per_row.values())))
    frame = pd.DataFrame({"row": np.repeat(np.arange(n), len(names)), "feature": np.tile(names, n),
                          **{k: v.reshape(-1) for k, v in per_row.items()}})
    with atomic_output(path) as tmp:
        frame.to_csv(tmp, index=False)
