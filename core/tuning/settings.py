"""The settings of one ``tune`` command: :class:`TuneSettings` and its single :meth:`~TuneSettings.resolve`.

Precedence, field by field: the arguments (what click parsed, or a Python caller's keywords; ``None`` means
"not given") > the config file's ``tune:`` section > the settings stored on the study being resumed (its
user attr ``trainforge.settings``) > the field's default. A new option is written in two places: a field
here and its click option in ``cli/tune.py`` (``tests/test_tune_settings.py`` checks they match).

What the study is about (models, optimizers, dataset, metric, direction, deployment objectives) is frozen
once the study exists: a conflicting value is a ConfigError naming the stored one. Two fields depend on the
data and are settled by :meth:`TuneSettings.for_task` once the dataset is loaded: the metric (default
``val_accuracy`` for classification, ``val_loss`` otherwise) and the direction (from the metric).

The JSON form (:meth:`TuneSettings.to_json` / :meth:`TuneSettings.from_json`) travels in a worker's plan;
:meth:`TuneSettings.stored` is the part kept on the study.

This module stays light (no Optuna, torch or MLflow at import): the CLI reads its choice lists at start-up.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError
from trainforge.tuning import deployment as deployment_mod
from trainforge.tuning import study as study_mod

DEFAULT_N_TRIALS = 20
#: ``trainer.val_fraction`` for tuning unless set: the best of many trials is picked on the validation split,
#: and on a small one the pick follows noise (digits: 180 rows at train's 0.1, one row = 0.56 points; the
#: best of 30 trials scored 0.994 there but 0.972 on the test split). 0.2 doubles it; the test split,
#: drawn first, is the same as ``train``'s. ``--refit`` gives the held-out rows back to the final model.
TUNE_VAL_FRACTION = 0.2
#: what a trial's run does not write unless the config says so (``-p trainer.plots=true``, a ``trainer:``
#: section): no per-trial plots (matplotlib: ~0.3 s a trial on digits, most of a trial's time outside its
#: epochs; the study's plots go on the parent run) and no resumable ``checkpoints/last.pt`` (a trial is re-run,
#: not resumed: an interrupted trial is marked FAIL and the study runs a new one). Set in the study's base config,
#: so a trial's params show them. Measured: ``benchmarks/RESULTS_tune.md``.
TRIAL_TRAINER: dict[str, Any] = {"plots": False, "resume_every_s": -1}
DIRECTIONS = ("maximize", "minimize")
#: the fields kept on the study (its user attr ``trainforge.settings``) and read back on a resume
STUDY_FIELDS = ("models", "optimizers", "dataset", "search_space", "sampler", "pruner", "metric", "direction",
                "deployment", "base", "study", "storage", "cv")
#: fields a resume may not change (ConfigError); the deployment's parts are frozen through ``deployment``
FROZEN = ("models", "optimizers", "dataset", "metric", "direction", "deployment", "cv")
#: fields that are not options: derived from the config, or settled later (no ``tune:`` key, no click option)
DERIVED = frozenset({"base", "search_space", "deployment", "given"})
#: options the ``tune:`` section may not set (they are command-line or Python-call matters)
COMMAND_ONLY = frozenset({"config", "overrides", "dataset", "epochs", "export", "tracking_uri", "experiment", "quiet"})


@dataclass
class TuneSettings:
    """Everything one ``tune`` needs; see the module docstring for where each value comes from.

    Times are seconds. ``models``/``optimizers``: plugin names (``"a,b"`` accepted by :meth:`resolve`).
    ``n_trials``: trials this command runs (default 20; unlimited when only ``timeout`` or ``study_trials``
    is given). ``study_trials``: run until the study holds that many finished (COMPLETE or PRUNED) trials.
    ``heartbeat_interval``/``heartbeat_grace``: RDB storages only (Optuna's ``heartbeat_interval`` and
    ``grace_period``); a dead worker's trial is detected ``grace`` to ``grace + interval`` s after its last
    heartbeat. ``threads``: onnxruntime intra-op threads when the exported best model is scored (default:
    the CPUs this process may use); ``latency_threads`` is the count trials are timed with. ``cv``: K >= 2
    scores every trial by K-fold cross-validation (:mod:`trainforge.tuning.cv_trial`; the study's best
    configuration is then always refit on all non-test rows), frozen once the study exists. ``explain``:
    explain the exported best model on the first ``explain_rows`` test rows (default
    :data:`trainforge.explaining.api.RUN_ROWS`) and log ``explain/`` to the parent run.
    """

    config: str | None = None
    overrides: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    optimizers: list[str] = field(default_factory=list)
    dataset: str | None = None
    epochs: int | None = None
    n_trials: int | None = None
    study_trials: int | None = None
    timeout: float | None = None
    study: str | None = None
    storage: str = study_mod.DEFAULT_STORAGE
    sampler: str = "tpe"
    pruner: str = "median"
    metric: str | None = None
    direction: str | None = None
    n_jobs: int = 1
    seed: int | None = None
    refit: bool = False
    register: str | None = None
    export: bool = True
    tracking_uri: str | None = None
    experiment: str | None = None
    quiet: bool = True
    objectives: list[str] = field(default_factory=list)
    latency_batch: int = 1
    latency_threads: int = 1
    provider: str = "cpu"
    search_quantization: bool = False
    select: str | None = None
    heartbeat_interval: float = study_mod.HEARTBEAT_INTERVAL
    heartbeat_grace: float = study_mod.HEARTBEAT_GRACE
    threads: int | None = None
    cv: int | None = None
    explain: bool = False
    explain_rows: int | None = None
    # derived: the config tree every trial overlays, the search_space: section, the settled objectives
    base: dict[str, Any] = field(default_factory=dict)
    search_space: dict[str, Any] = field(default_factory=dict)
    deployment: dict[str, Any] | None = None
    #: names set by an argument or the ``tune:`` section (not defaulted, not stored)
    given: list[str] = field(default_factory=list)
    _stored: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    _storage: Any = field(default=None, repr=False, compare=False)

    # --- building -------------------------------------------------------------------------------------------
    @classmethod
    def resolve(cls, config: dict[str, Any] | str | Path | None = None, *, stored: dict[str, Any] | None = None,
                **given: Any) -> TuneSettings:
        """Settings from ``config`` (a dict, a YAML path or None), ``stored`` (a study's stored settings;
        None: read from the storage when the study exists) and ``given`` (field name -> value, None = not
        given; ``params`` is accepted for ``overrides``, ``model``/``optimizer`` for the plural fields).

        Raises ConfigError for an unknown ``tune:`` key or argument, a value out of range, a bad study name,
        or a frozen field that conflicts with the stored study; TrainforgeError when the storage cannot open.
        """
        from trainforge import config as config_mod

        given = _aliases(given)
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")} - DERIVED
        if set(given) - names:
            raise TypeError(f"unknown tune setting(s): {', '.join(sorted(set(given) - names))}")
        path = str(config) if isinstance(config, (str, Path)) else None
        raw = config_mod.load_file(config) if path else copy.deepcopy(config or {})
        section = dict(raw.pop("tune", None) or {})
        allowed = names - COMMAND_ONLY
        if set(section) - allowed:
            raise ConfigError(f"unknown key(s) in tune: {', '.join(sorted(set(section) - allowed))}; "
                              f"valid: {', '.join(sorted(allowed))}")
        space = raw.pop("search_space", None)
        chosen = {**section, **{k: v for k, v in given.items() if v is not None and v != [] and v != ()}}
        for key in ("models", "optimizers", "objectives", "overrides"):
            if key in chosen:
                chosen[key] = _names(chosen[key]) if key != "overrides" else [str(v) for v in chosen[key]]
        settings = cls(**{k: v for k, v in chosen.items() if k in names}, config=path, given=sorted(chosen))
        settings._validate()
        if stored is None:
            settings._storage = study_mod.open_storage(settings.storage, settings.heartbeats())
            stored = study_mod.stored_settings(settings._storage, settings.study)
        settings._stored = stored = _upgrade(stored)
        for key in STUDY_FIELDS:  # a resume remembers what was not given again
            if key not in chosen and stored.get(key) is not None and key not in ("base", "search_space", "dataset"):
                setattr(settings, key, copy.deepcopy(stored[key]))
        _lift(settings, stored.get("deployment") or {}, chosen)
        settings._build_base(raw, space, config_mod)
        settings._check_frozen(("models", "optimizers", "dataset", "cv"))
        if settings.cv and stored and not stored.get("cv"):
            raise ConfigError(f"study {settings.study!r} was created without --cv: its trials are scored on one "
                              "validation split; start a new --study for cross-validated trials")
        return settings

    def _build_base(self, raw: dict[str, Any], space: Any, config_mod: Any) -> None:
        flags: dict[str, Any] = {"dataset": {"name": self.dataset}} if self.dataset else {}
        if self.epochs:
            flags["trainer"] = {"epochs": int(self.epochs)}
        base = config_mod.merge(self._stored.get("base"), raw, config_mod.parse_overrides(list(self.overrides)),
                                flags)
        # Trials are chosen on the validation split: hold out more than train's 10% unless told otherwise.
        trainer = base.setdefault("trainer", {})
        trainer.setdefault("val_fraction", TUNE_VAL_FRACTION)
        for key, value in TRIAL_TRAINER.items():
            trainer.setdefault(key, value)
        self.base = base
        self.search_space = space if space is not None else self._stored.get("search_space") or {}
        self.models = self.models or [(raw.get("model") or {}).get("name") or config_mod.DEFAULT_SELECTION["model"]]
        self.optimizers = self.optimizers or [(raw.get("optimizer") or {}).get("name")
                                              or config_mod.DEFAULT_SELECTION["optimizer"]]
        self.dataset = (base.get("dataset") or {}).get("name") or config_mod.DEFAULT_SELECTION["dataset"]

    def for_task(self, task: str, computed: list[str], maximize: Any) -> TuneSettings:
        """A copy with the data-dependent fields settled: ``metric`` (checked against ``computed``, the task's
        validation metric names), ``direction``, ``deployment`` (see :mod:`trainforge.tuning.deployment`),
        ``pruner`` (``none`` when pruning cannot judge the objective) and the trainer's ``monitor``/``mode``.

        ``maximize(name) -> bool`` for the task's metrics. Raises ConfigError as :meth:`resolve`, and for a
        pruner or sampler a multi-objective study cannot use, or ``select`` without two objectives.
        """
        out = dataclasses.replace(self, base=copy.deepcopy(self.base))
        out._stored, out._storage = self._stored, self._storage
        explicit = set(self.given)
        dep = deployment_mod.resolve(out, explicit, bool(self._stored), computed, maximize)
        default = "val_accuracy" if task == "classification" else "val_loss"
        if dep is not None:
            out.metric = deployment_mod.monitor_metric(dep, computed, default)
        out.metric = out.metric or default
        if out.metric not in computed:
            raise ConfigError(f"unknown metric {out.metric!r} for {task}; choose one of {', '.join(computed)}")
        if "direction" not in explicit and "direction" not in self._stored:
            out.direction = "maximize" if maximize(out.metric) else "minimize"
        out.deployment = dep.to_settings() if dep else None
        out._check_frozen(("metric", "direction", "deployment"))
        multi = dep is not None and dep.multi
        if dep is not None and not dep.prunable(out.metric):
            if "pruner" in explicit and out.pruner != "none":
                raise ConfigError(f"--pruner {out.pruner}: pruning needs a single objective that is the validation "
                                  "metric (Optuna's trial.report is single-objective); this study runs every trial "
                                  "to the end")
            out.pruner = "none"
        if multi and out.sampler == "cmaes":
            raise ConfigError("the cmaes sampler is single-objective; use tpe (default), nsga2, gp or random")
        if out.cv and dep is not None:
            raise ConfigError("--cv scores a trial by the mean over its folds; --objective measures one exported "
                              "model per trial: use one or the other")
        if out.select and not multi:
            raise ConfigError("--select picks from a Pareto front: give two or more --objective")
        if multi:
            from trainforge.tuning.selection import parse_select

            parse_select(out.select, dep.names)  # ConfigError now, not after the trials
        out.base.setdefault("trainer", {}).update(monitor=out.metric,
                                                 mode="max" if out.direction == "maximize" else "min")
        return out

    # --- reading --------------------------------------------------------------------------------------------
    def heartbeats(self) -> tuple[float, float]:
        """``(heartbeat_interval, heartbeat_grace)`` in seconds, what :func:`~trainforge.tuning.study.open_storage` takes."""
        return self.heartbeat_interval, self.heartbeat_grace

    def storage_object(self) -> Any:
        """The Optuna storage (opened once, by :meth:`resolve` or here)."""
        if self._storage is None:
            self._storage = study_mod.open_storage(self.storage, self.heartbeats())
        return self._storage

    def trials_to_run(self) -> int | None:
        """Trials this command runs: ``n_trials``, else None (no count: the study target or the timeout
        decides) when ``study_trials`` or ``timeout`` is given, else :data:`DEFAULT_N_TRIALS`."""
        if self.n_trials is not None:
            return int(self.n_trials)
        return None if self.study_trials is not None or self.timeout else DEFAULT_N_TRIALS

    def stored(self) -> dict[str, Any]:
        """The JSON kept on the study (:data:`STUDY_FIELDS`)."""
        data = self.to_json()
        return {key: data[key] for key in STUDY_FIELDS}

    def to_json(self) -> dict[str, Any]:
        """Every public field as JSON values (a worker's plan; :meth:`from_json` reads it back)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if not f.name.startswith("_")}
        return json.loads(json.dumps(data, default=str))

    @classmethod
    def from_json(cls, data: dict[str, Any], stored: dict[str, Any] | None = None) -> TuneSettings:
        names = {f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")}
        out = cls(**{k: copy.deepcopy(v) for k, v in data.items() if k in names})
        out._stored = dict(stored or {})
        return out

    # --- checks ---------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        if self.study is not None:
            study_mod.check_study_name(self.study)
        for key, choices in (("sampler", study_mod.SAMPLERS), ("pruner", study_mod.PRUNERS),
                             ("provider", deployment_mod.PROVIDERS)):
            if getattr(self, key) not in choices:
                raise ConfigError(f"unknown {key} {getattr(self, key)!r}; choose one of {', '.join(choices)}")
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ConfigError(f"direction must be maximize or minimize, got {self.direction!r}")
        if self.cv is not None and (isinstance(self.cv, bool) or not isinstance(self.cv, int) or self.cv < 2):
            raise ConfigError(f"cv must be a whole number of folds >= 2, got {self.cv!r}")
        for key in ("n_trials", "study_trials", "n_jobs", "epochs", "latency_batch", "latency_threads", "threads",
                    "explain_rows"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key} must be a whole number >= 1, got {value!r}")
        for key in ("timeout", "heartbeat_interval", "heartbeat_grace"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"{key} must be a positive number of seconds, got {value!r}")
        if self.heartbeat_grace <= self.heartbeat_interval:
            raise ConfigError(f"heartbeat_grace={self.heartbeat_grace} must be longer than heartbeat_interval="
                              f"{self.heartbeat_interval} (seconds), or live trials would be declared dead")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ConfigError(f"seed must be a whole number, got {self.seed!r}")
        self._validate_explain()

    def _validate_explain(self) -> None:
        if self.explain_rows is not None and not self.explain:
            raise ConfigError("explain_rows sets how many test rows explain explains: set explain (--explain)")
        if self.explain:
            if not self.export:
                raise ConfigError("explain explains the exported best model: drop --no-export")
            from trainforge.explaining import require_extra

            require_extra("tune --explain")

    def _check_frozen(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            before = self._stored.get(key)
            if before is not None and before != getattr(self, key):
                raise ConfigError(f"study {self.study!r} was created with {key}={before!r}; "
                                  f"{getattr(self, key)!r} conflicts (drop the option or start a new --study)")


def _names(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    items = value.split(",") if isinstance(value, str) else list(value)
    return [str(v).strip() for v in items if str(v).strip()]


def _aliases(given: dict[str, Any]) -> dict[str, Any]:
    """The CLI's singular option names (``--model``, ``--optimizer``, ``-p/--param``) as field names."""
    out = dict(given)
    for alias, name in (("model", "models"), ("optimizer", "optimizers"), ("params", "overrides"),
                        ("config_file", "config")):
        if alias in out:
            value = out.pop(alias)
            out.setdefault(name, value)
    out.pop("config", None)  # the positional ``config`` argument of resolve
    return out


def _upgrade(stored: dict[str, Any] | None) -> dict[str, Any]:
    """Settings stored by an older trainforge: the search-space overrides were kept under ``overrides``."""
    stored = dict(stored or {})
    if "overrides" in stored and "search_space" not in stored:
        stored["search_space"] = stored.pop("overrides")
    return stored


def _lift(settings: TuneSettings, deployment: dict[str, Any], chosen: dict[str, Any]) -> None:
    """A resumed study's measurement settings fill the fields that were not given again."""
    for key in ("latency_batch", "latency_threads", "provider", "search_quantization"):
        if key not in chosen and deployment.get(key) is not None:
            setattr(settings, key, deployment[key])
    if "objectives" not in chosen and deployment.get("objectives"):
        settings.objectives = list(deployment["objectives"])
