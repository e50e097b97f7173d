"""Deployment-aware objectives: what ``--objective`` may name, and how one trial is measured for them.

Objectives (``--objective NAME`` repeatable, ``NAME:max`` / ``NAME:min`` to set the direction):

- any validation metric the task computes (``val_accuracy``, ``val_loss``, ``val_f1``, ...; direction from
  the task, e.g. accuracy is maximised, loss minimised);
- ``latency_ms``: p50 onnxruntime latency in milliseconds of one call of ``--latency-batch`` rows (min);
- ``throughput``: rows per second at :data:`~trainforge.exporting.latency.THROUGHPUT_BATCH` rows (max);
- ``model_bytes``: the size of the .onnx file a trial would ship (min);
- ``params``: the model's parameter count (min).

Measured, not estimated: every complete trial's best-epoch model goes through the same verified ONNX gate
as ``train`` (:func:`trainforge.exporting.exporter.export_model`, into a temporary folder), is quantized
to int8 when its ``export.quantize`` is ``int8`` (:func:`trainforge.exporting.quantize.quantize_model`:
dynamic for MLP/RNN, static QDQ calibrated on the training split for CNNs), and is timed in onnxruntime
(:mod:`trainforge.exporting.latency`) while holding the study's lock, so that two workers never time at
the same moment. An int8 trial's validation metrics are the quantized file's, computed in onnxruntime on
the validation split; an fp32 trial's are the trainer's at its best epoch (the gate holds onnxruntime
within 1e-4 of torch). An export or quantization failure makes the trial FAIL with the reason.

Logged on the trial's child run: ``latency_ms_p50``, ``latency_ms_p90``, ``model_bytes``, ``params``
(``throughput`` when it is an objective, ``int8_val_*`` for int8 trials) and the tags
``trainforge.quantize``, ``trainforge.latency_batch``, ``trainforge.latency_threads``,
``trainforge.provider``; the trial's user attr ``objectives`` maps each objective name to its value.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

from trainforge.errors import ConfigError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

#: deployment objectives and their direction
KNOWN = {"latency_ms": "minimize", "throughput": "maximize", "model_bytes": "minimize", "params": "minimize"}
SHORT = {"max": "maximize", "min": "minimize", "maximize": "maximize", "minimize": "minimize"}
PROVIDERS = ("cpu", "cuda")
OBJECTIVES_ATTR = "objectives"


@dataclass
class Deployment:
    """A study's objectives ``[(name, "maximize" | "minimize"), ...]`` and how trials are measured."""

    objectives: list[tuple[str, str]]
    latency_batch: int = 1
    latency_threads: int = 1
    provider: str = "cpu"
    search_quantization: bool = False
    lock: Any = field(default=None, repr=False, compare=False)  # the study's lock, set in each worker

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [direction for _, direction in self.objectives]

    @property
    def multi(self) -> bool:
        """Two or more objectives: a multi-objective Optuna study (``directions=``), no pruning."""
        return len(self.objectives) > 1

    def prunable(self, metric: str) -> bool:
        """Whether a pruner may judge the trials: one objective, and it is the monitored validation ``metric``
        (the value reported every epoch). Otherwise the study runs with the ``none`` pruner."""
        return not self.multi and self.names[0] == metric

    def to_settings(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("lock")
        data["objectives"] = [f"{n}:{d[:3]}" for n, d in self.objectives]
        return data

    def measure(self, trial: Any, result: Any, best: dict[str, float], bundle: Any, quantize: str = "none") -> list[float]:
        """Export, (quantize), time and log one trained trial; returns its objective values in :attr:`names` order.

        ``result``: the trial's :class:`~trainforge.contracts.TrainResult` (its ``model`` holds the best-epoch
        weights); ``best``: the trainer's metrics at that epoch. The measuring is the export wing's
        (:func:`trainforge.exporting.latency.measure_model`), the logging :mod:`trainforge.tuning.parent_run`'s.
        Raises ExportError from the gate or the quantizer, TrainforgeError when the provider cannot run the file.
        """
        from trainforge.exporting.latency import Timing, measure_model
        from trainforge.training.tasks import get_task
        from trainforge.tuning.parent_run import log_measures

        task = get_task(bundle.meta.task, meta=bundle.meta)
        found = measure_model(result.model, task, bundle, best, run_id=result.run_id, config=result.config,
                              quantize=quantize, lock=self.lock, timing=Timing(
                                  self.latency_batch, self.latency_threads, self.provider, "throughput" in self.names))
        values = {name: found.figures[name] for name in self.names}
        log_measures(result.run_id, found, values, quantize=quantize, batch=self.latency_batch,
                     threads=self.latency_threads)
        trial.set_user_attr(OBJECTIVES_ATTR, values)
        trial.set_user_attr("quantize", quantize)
        log.info("trial %d: %s", trial.number, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
        return [values[name] for name in self.names]

    @classmethod
    def from_settings(cls, data: dict[str, Any] | None) -> Deployment | None:
        if not data:
            return None
        values = dict(data)
        values["objectives"] = [(s.rsplit(":", 1)[0], SHORT[s.rsplit(":", 1)[1]]) for s in values["objectives"]]
        return cls(**values)


def parse_objectives(raw: list[str], computed: list[str], maximize: Any) -> list[tuple[str, str]]:
    """``["val_accuracy", "latency_ms", "model_bytes:max"]`` -> ``[(name, direction), ...]``.

    ``computed``: the task's validation metric names; ``maximize(name) -> bool`` for them. Raises
    ConfigError for an unknown name (listing the known ones), a bad direction or a repeated name.
    """
    out: list[tuple[str, str]] = []
    for item in raw:
        name, _, given = str(item).strip().partition(":")
        if name not in computed and name not in KNOWN:
            raise ConfigError(f"unknown objective {name!r}; choose from {', '.join([*computed, *KNOWN])} "
                              "(NAME:max or NAME:min sets the direction)")
        if given and given not in SHORT:
            raise ConfigError(f"objective {item!r}: the direction after ':' must be max or min")
        default = KNOWN.get(name) or ("maximize" if maximize(name) else "minimize")
        if name in (n for n, _ in out):
            raise ConfigError(f"objective {name!r} is given twice")
        out.append((name, SHORT[given] if given else default))
    return out


def resolve(settings: Any, explicit: set[str], resuming: bool, computed: list[str], maximize: Any) -> Deployment | None:
    """The study's :class:`Deployment` from a :class:`~trainforge.tuning.settings.TuneSettings` (``objectives``,
    ``latency_batch``, ``latency_threads``, ``provider``, ``search_quantization``; a resumed study's own values
    fill what was not given), else None: a plain single-objective study (no ``--objective``, or one
    validation metric and nothing to measure). ``explicit``: the names given as arguments or in ``tune:``.

    Raises ConfigError for ``--metric`` together with ``--objective``, measurement options without anything
    to measure, a measured objective on a resumed plain study, or a ``cuda`` provider that cannot run here.
    """
    if "objectives" in explicit and "metric" in explicit:
        raise ConfigError("give the validation metric as an --objective, not --metric, in a study with --objective")
    objectives = parse_objectives(list(settings.objectives), computed, maximize) if settings.objectives else []
    quantize = bool(settings.search_quantization)
    if not quantize and (not objectives or (len(objectives) == 1 and objectives[0][0] in computed)):
        given = [f"--{k.replace('_', '-')}" for k in ("latency_batch", "latency_threads", "provider") if k in explicit]
        if given:
            raise ConfigError(f"{', '.join(given)}: nothing is timed without a latency_ms/throughput/model_bytes/"
                              "params --objective or --search-quantization")
        return None
    if resuming and not (settings._stored.get("deployment")):
        raise ConfigError("this study was created without --objective/--search-quantization; its objective "
                          "cannot change (start a new --study)")
    if not objectives:
        objectives = parse_objectives([settings.metric or computed[0]], computed, maximize)
    dep = Deployment(objectives, settings.latency_batch, settings.latency_threads, settings.provider, quantize)
    from trainforge.exporting.predictor import usable_providers

    usable_providers(dep.provider)  # ConfigError now, not in every trial
    return dep


def monitor_metric(dep: Deployment, computed: list[str], default: str) -> str:
    """The validation metric the trainer keeps its best epoch by: the first validation objective, else ``default``."""
    return next((name for name in dep.names if name in computed), default)


def study_directions(dep: Deployment | None, direction: str) -> str | list[str]:
    """What :func:`trainforge.tuning.study.open_study` is given: the objectives' directions (a list when
    there are several), else the monitored metric's ``direction``."""
    if dep is None:
        return direction
    return dep.directions if dep.multi else dep.directions[0]


def name_metrics(study: Any, dep: Deployment | None) -> None:
    """Name a new study's objectives (``study.set_metric_names``: plots, ``trials_dataframe`` columns)."""
    if dep is None:
        return
    import warnings

    with warnings.catch_warnings():  # experimental in Optuna 5
        warnings.simplefilter("ignore")
        study.set_metric_names(dep.names)


def version_tags(trial: Any, dep: Deployment | None) -> dict[str, str]:
    """Registered-model-version tags: ``trainforge.objective.<name>`` and ``trainforge.quantize``."""
    if dep is None:
        return {}
    values = trial.user_attrs.get(OBJECTIVES_ATTR) or {}
    return {**{tag.named("objective", k): f"{float(v):.6g}" for k, v in values.items()},
            tag.QUANTIZE: str(trial.user_attrs.get("quantize", "none"))}


def for_worker(settings: dict[str, Any], storage: str | None, study: str) -> Deployment | None:
    """The study's :class:`Deployment` in a worker, holding the study's lock
    (:func:`trainforge.tracking.locks.storage_lock`, the one ``--study-trials`` workers share): trials time
    one at a time, whichever process or machine runs them."""
    dep = Deployment.from_settings(settings.get("deployment"))
    if dep is not None:
        from trainforge.tracking.locks import storage_lock
        from trainforge.tuning.study import DEFAULT_STORAGE

        dep.lock = storage_lock(storage or DEFAULT_STORAGE, f"study-{study}")
    return dep
