"""``compare(...)``: ``trainforge compare`` -- a leaderboard of model kinds on identical folds and test split.

One parent run (``trainforge.role=compare``); under it one cv run per model (:func:`trainforge.cv.runner.cross_validate`,
with its fold and refit child runs). The folds are loaded once per task and shared, so every model trains and
validates on the same rows and is tested on the same test split. Each row's refit model is exported through the
ONNX gate; the row records:

- the CV mean and standard deviation of the monitored metric (``trainer.monitor``, e.g. ``val_loss``);
- the refit's test score of that metric;
- fit seconds (the folds' and the refit's training time, no tracking or export);
- onnxruntime p50 latency per row at batch 1 and 64 (:func:`trainforge.exporting.latency.measure`: CPU, one
  intra-op thread, on validation rows), and the ONNX file size in bytes.

The top two rows are compared with the corrected resampled t-test on their fold scores
(:func:`trainforge.cv.stats.corrected_t_test`). The parent run logs ``leaderboard.csv`` and ``leaderboard.png``.
"""

from __future__ import annotations

import copy
import csv
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

LATENCY_BATCHES = (1, 64)


@dataclass
class Row:
    """One model's line of the leaderboard (see the module doc); latencies in ms per row, size in bytes."""

    model: str
    cv_mean: float
    cv_std: float
    test_score: float
    fit_seconds: float
    p50_ms_per_row_batch1: float | None
    p50_ms_per_row_batch64: float | None
    onnx_bytes: int | None
    run_id: str
    refit_run_id: str | None
    onnx_path: str | None
    fold_scores: list[float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Leaderboard:
    """The rows best first by ``metric`` (``mode`` min or max), the paired test of the top two, the parent run."""

    run_id: str
    metric: str
    mode: str
    rows: list[Row]
    paired_test: dict[str, Any] | None = None
    registered: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"leaderboard": [r.to_dict() for r in self.rows], "metric": self.metric, "mode": self.mode,
                "run_id": self.run_id, "paired_test": self.paired_test, "registered": self.registered}


def compare(models: list[str], k: int, config: dict[str, Any] | str | Path | None = None, *,
            overrides: tuple[str, ...] = (), tracking_uri: str | None = None, experiment: str | None = None,
            run_name: str | None = None, quiet: bool = True, register: str | None = None,
            **flags: Any) -> Leaderboard:
    """Cross-validate every model in ``models`` on the same ``k`` folds, refit, export and rank them.

    ``config``/``overrides``/``flags``: as :func:`trainforge.run.api.build_config`, for every model; a config's
    ``model`` section applies only to the model it names (the others take their defaults). ``register``: register
    the winner's refit model under this name. Raises :class:`ConfigError` for fewer than two models or a
    duplicate; the parent run ends FAILED with the error.
    """
    from mlflow.tracking import MlflowClient
    from mlflow.tracking.context.registry import resolve_tags

    from trainforge import config as config_mod
    from trainforge.run.api import build_config
    from trainforge.tracking import store as tracking
    from trainforge.tracking.stale import process_tags

    if len(models) < 2 or len(set(models)) != len(models):
        raise ConfigError(f"--model: give two or more different models to compare, got {','.join(models)}")
    base = config_mod.load_file(config) if isinstance(config, (str, Path)) else dict(config or {})
    cfgs = []
    for name in models:
        own = copy.deepcopy(base)
        if own.get("model", {}).get("name") not in (None, name):
            own.pop("model")
        cfgs.append(build_config(own, overrides, **{**flags, "model__name": name}))
    experiment_id = tracking.setup(tracking_uri, experiment)
    dataset = cfgs[0]["dataset"]["name"]
    name = run_name or f"compare-{dataset}-cv{k}"
    run_id = MlflowClient().create_run(experiment_id, run_name=name, tags=resolve_tags({
        tag.COMMAND: "compare", tag.ROLE: "compare", tag.DATASET: dataset, tag.CV_FOLDS: str(k),
        **process_tags()})).info.run_id
    try:
        with tracking.run_status(run_id):
            return _compare(cfgs, k, run_id, tracking_uri, experiment, quiet, register)
    except KeyboardInterrupt as exc:
        exc.run_id = run_id
        raise


def _compare(cfgs: list[dict[str, Any]], k: int, run_id: str, tracking_uri: str | None, experiment: str | None,
             quiet: bool, register: str | None) -> Leaderboard:
    """Every model's cv run under the open parent ``run_id``, then the ranking, the test and the artifacts."""
    import mlflow

    from trainforge.cv.runner import cross_validate
    from trainforge.run.options import RunOptions
    from trainforge.training.folds import load_folds
    from trainforge.training.modeling import choose_task
    from trainforge.training.tasks import get_task, metric_mode

    monitor = str(cfgs[0]["trainer"]["monitor"])
    shared: dict[str, Any] = {}  # task -> FoldData: identical rows for every model of a task
    rows, mode = [], "min"
    for cfg in cfgs:
        task_name = choose_task(cfg["model"]["name"], cfg["dataset"]["name"])
        if task_name not in shared:
            shared[task_name] = load_folds(cfg["dataset"], cfg["trainer"], k, task=task_name)
        fold_data = shared[task_name]
        options = RunOptions(config=cfg, folds=k, tracking_uri=tracking_uri, experiment=experiment,
                             parent_run_id=run_id, run_name=f"{cfg['model']['name']}-{cfg['dataset']['name']}-cv{k}",
                             quiet=quiet)
        result = cross_validate(options, fold_data=fold_data)
        mode = metric_mode(monitor, get_task(fold_data.refit.meta.task, meta=fold_data.refit.meta)) \
            if cfg["trainer"]["mode"] == "auto" else str(cfg["trainer"]["mode"])
        rows.append(_row(cfg["model"]["name"], monitor, result, fold_data))
    rows.sort(key=lambda r: r.cv_mean, reverse=mode == "max")
    paired = _paired(rows, shared) if len(rows) >= 2 else None
    board = Leaderboard(run_id, monitor, mode, rows, paired)
    mlflow.log_metrics({f"{r.model}_cv_mean": r.cv_mean for r in rows}, run_id=run_id)
    _log_artifacts(board)
    if register and rows[0].refit_run_id:
        board.registered = _register(rows[0], register)
    return board


def _row(model: str, monitor: str, result: Any, fold_data: Any) -> Row:
    """A leaderboard row from a model's :class:`~trainforge.cv.runner.CVResult` (latency measured here)."""
    import os

    from trainforge.exporting.latency import measure
    from trainforge.training.data import sample_rows

    base = monitor.removeprefix("val_")
    refit = result.refit
    onnx_path = refit.onnx_path if refit is not None else None
    latencies: dict[int, float | None] = dict.fromkeys(LATENCY_BATCHES)
    size = None
    if onnx_path:
        rows = sample_rows(fold_data.bundles[0].val, 256)
        for batch in LATENCY_BATCHES:
            latencies[batch] = measure(onnx_path, rows, batch=batch).p50_ms / batch
        size = os.path.getsize(onnx_path)
    return Row(model, result.metrics.get(f"cv_{monitor}_mean", float("nan")),
               result.metrics.get(f"cv_{monitor}_std", float("nan")),
               float(refit.metrics.get(f"test_{base}", float("nan"))) if refit is not None else float("nan"),
               result.seconds, latencies[1], latencies[64], size, result.run_id,
               refit.run_id if refit is not None else None, onnx_path, result.fold_scores(monitor))


def _paired(rows: list[Row], shared: dict[str, Any]) -> dict[str, Any]:
    """The corrected resampled t-test of the top two rows' fold scores, with who was compared."""
    from trainforge.cv.stats import corrected_t_test

    fold_data = next(iter(shared.values()))
    n_train, n_val = len(fold_data.bundles[0].train), len(fold_data.bundles[0].val)
    test = corrected_t_test(rows[0].fold_scores, rows[1].fold_scores, n_train, n_val)
    return {"a": rows[0].model, "b": rows[1].model, **test.to_dict()}


def _log_artifacts(board: Leaderboard) -> None:
    """``leaderboard.csv`` and ``leaderboard.png`` (CV mean ± std per model, test score marked) on the parent."""
    import mlflow

    from trainforge.plots import _pyplot

    with tempfile.TemporaryDirectory(prefix="trainforge-compare-") as tmp:
        path = Path(tmp) / "leaderboard.csv"
        fields = [f for f in Row.__dataclass_fields__ if f != "fold_scores"]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=[*fields, "fold_scores"])
            writer.writeheader()
            for r in board.rows:
                writer.writerow({**{f: getattr(r, f) for f in fields},
                                 "fold_scores": " ".join(f"{s:.6g}" for s in r.fold_scores)})
        plt = _pyplot()
        fig, ax = plt.subplots(figsize=(max(4, 1.3 * len(board.rows)), 3.5))
        names = [r.model for r in board.rows]
        ax.bar(names, [r.cv_mean for r in board.rows], yerr=[r.cv_std for r in board.rows], capsize=4,
               color="#4c72b0", label=f"CV {board.metric} (mean ± std)")
        ax.plot(names, [r.test_score for r in board.rows], "o", color="#dd8452", label="test (refit)")
        ax.set_ylabel(board.metric)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(Path(tmp) / "leaderboard.png", dpi=100)
        plt.close(fig)
        mlflow.log_artifact(str(path), run_id=board.run_id)
        mlflow.log_artifact(str(Path(tmp) / "leaderboard.png"), run_id=board.run_id)


def _register(row: Row, name: str) -> str:
    """Register the winner's refit model (its pyfunc model, with labels) as ``name``; returns ``name/version``."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = MlflowClient().get_run(row.refit_run_id).data.tags.get(tag.MODEL_URI)
    if not uri:
        raise ConfigError(f"{row.model}'s refit run {row.refit_run_id} logged no model to register")
    version = mlflow.register_model(uri, name, tags={tag.SOURCE_RUN_ID: row.refit_run_id})
    return f"{name}/{version.version}"
