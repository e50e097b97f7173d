"""The settings of one training run: :class:`RunOptions`, resolved once by :meth:`RunOptions.resolve`.

``trainforge train`` passes what click parsed straight to :meth:`RunOptions.resolve`, and
``trainforge.train(...)`` its keywords, so a new option is written in two places: its click option and
its field here (``tests/test_options.py`` checks that every ``train`` option has a field).

Precedence of the config tree, lowest first: spec defaults, ``config`` (a YAML file or a dict),
``overrides`` (``-p section.key=value``), then the fields that name a config key (``--lr`` is
``optimizer.lr``) and ``section__key`` keywords (Python). Resuming (``resume=RUN_ID``) takes the config
stored in the run's ``checkpoints/last.pt`` instead; only ``device`` and ``precision`` may change then.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError


def _key(path: str) -> Any:
    """A field that sets the config key ``path`` (``section.key``) when it is not None."""
    return field(default=None, metadata={"config": path})


@dataclass(frozen=True)
class RunOptions:
    """What one run of :func:`trainforge.train` is told (the ``train`` command's options, one field each).

    After :meth:`resolve`, ``config`` is the resolved config tree (every section, defaults filled) and, when
    resuming, ``resume_state`` the trainer state to continue from.
    """

    config: dict[str, Any] | str | Path | None = None  #: ``--config FILE`` or a config dict
    overrides: tuple[str, ...] = ()  #: ``-p SECTION.KEY=VALUE`` (VALUE is YAML)
    model: str | None = _key("model.name")
    dataset: str | None = _key("dataset.name")
    optimizer: str | None = _key("optimizer.name")
    scheduler: str | None = _key("scheduler.name")
    epochs: int | None = _key("trainer.epochs")
    batch_size: int | None = _key("trainer.batch_size")
    lr: float | None = _key("optimizer.lr")  #: learning rate
    seed: int | None = _key("trainer.seed")
    device: str | None = _key("trainer.device")
    precision: str | None = _key("trainer.precision")
    patience: int | None = _key("trainer.patience")
    #: further config keys as ``section__key`` (Python callers: ``trainer__eval_batch_size=256``)
    flags: dict[str, Any] = field(default_factory=dict)
    experiment: str | None = None  #: MLflow experiment name (default ``trainforge``)
    run_name: str | None = None  #: MLflow run name (default ``MODEL-DATASET``)
    tracking_uri: str | None = None  #: MLflow tracking URI (default: ``$MLFLOW_TRACKING_URI``, else the project store)
    parent_run_id: str | None = None  #: nest the run under this MLflow run (tuning trials)
    tags: dict[str, str] = field(default_factory=dict)  #: extra MLflow tags of the run
    export: bool = True  #: run the verified ONNX export after the fit
    #: ``--explain``: after the export, explain the exported file and the torch model on the test split and log
    #: ``explain/`` and ``explain_*`` metrics to the run (:func:`trainforge.explaining.api.explain_run`)
    explain: bool = False
    #: ``--explain-rows N``: test rows explained (default :data:`trainforge.explaining.api.RUN_ROWS`)
    explain_rows: int | None = None
    quiet: bool = False  #: no progress bar
    json: bool = False  #: ``trainforge train`` prints one JSON object instead of text
    resume: str | None = None  #: an MLflow run id to continue from its ``checkpoints/last.pt``
    nproc: int = 1  #: local DDP processes (``trainforge train --nproc N`` starts them under torchrun)
    #: ``--cv K``: K-fold cross-validation then a refit (:func:`trainforge.cv.runner.cross_validate`); None: one run
    folds: int | None = None
    #: export in a forked process while this one logs (:mod:`trainforge.exporting.worker`); only a process
    #: that has not used torch or threads yet may fork (the ``trainforge`` program itself)
    export_worker: bool = False
    #: the MLflow experiment, already set up by the caller in this process (a study's worker sets the store up
    #: once, not once per trial); None: :func:`trainforge.tracking.store.setup` opens the store and finds it
    experiment_id: str | None = None
    resume_state: dict[str, Any] | None = field(default=None, repr=False)  #: filled by :meth:`resolve`

    @classmethod
    def resolve(cls, **given: Any) -> RunOptions:
        """Options from keywords: field names, plus ``section__key`` config keys (collected in ``flags``);
        ``None`` means "not given". Resolves the config tree (see the module docstring) and validates it
        before anything is opened.

        Raises :class:`~trainforge.errors.ConfigError` / :class:`~trainforge.errors.PluginError` on bad input
        (an unknown option, key or plugin, a bad value), :class:`~trainforge.errors.TrainforgeError` for a
        run that cannot be resumed.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        flags = dict(given.pop("flags", None) or {})
        for key in [k for k in given if k not in names]:
            if "__" not in key:
                raise ConfigError(f"unknown run option {key!r}; valid: {', '.join(sorted(names))}")
            flags[key] = given.pop(key)
        given = {k: v for k, v in given.items() if v is not None}
        opts = cls(**{**given, "overrides": tuple(given.get("overrides", ())), "tags": dict(given.get("tags", {}))})
        for f in dataclasses.fields(cls):
            value = getattr(opts, f.name)
            if "config" in f.metadata and value is not None:
                flags[f.metadata["config"].replace(".", "__", 1)] = value
        if opts.resume:
            config, state = _resume_point(opts.resume, opts.tracking_uri)
            for key in ("device", "precision"):  # e.g. continue a CUDA run on the CPU
                if flags.get(f"trainer__{key}") is not None:
                    config["trainer"][key] = str(flags[f"trainer__{key}"])
        else:
            config, state = build_config(opts.config, opts.overrides, **flags), None
        check_optimization(config)
        check_explain(opts)
        if opts.nproc > 1:
            from trainforge.training.distributed import check_gpus

            check_gpus(opts.nproc, str(config["trainer"]["device"]))
        return dataclasses.replace(opts, config=config, flags=flags, resume_state=state)


def build_config(
    config: dict[str, Any] | str | Path | None = None,
    overrides: Iterable[str] = (),
    **flags: Any,
) -> dict[str, Any]:
    """Resolve a config tree: spec defaults < ``config`` (dict or YAML path) < ``-p`` overrides < flags.

    ``flags`` are ``section__key=value`` (e.g. ``trainer__epochs=5``, ``model__name="cnn"``); ``None``
    values are ignored. Resolving a resolved tree gives it back. Raises :class:`ConfigError` /
    :class:`~trainforge.errors.PluginError` on bad input.
    """
    from trainforge import config as config_mod

    base = config_mod.load_file(config) if isinstance(config, (str, Path)) else (config or {})
    flag_tree: dict[str, dict[str, Any]] = {}
    for key, value in flags.items():
        if value is None:
            continue
        section, _, name = key.partition("__")
        flag_tree.setdefault(section, {})[name] = value
    return config_mod.resolve(config_mod.merge(base, config_mod.parse_overrides(list(overrides)), flag_tree))


def check_optimization(config: dict[str, Any]) -> None:
    """Refuse optimizer and scheduler values that torch would accept and train into NaN weights with
    (``lr: .nan``), or reject only after the run is open (``lr: -0.1``): every number in those sections must
    be finite, and ``optimizer.lr`` positive. Raises :class:`~trainforge.errors.ConfigError` naming the key."""
    for section in ("optimizer", "scheduler"):
        for key, value in (config.get(section) or {}).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{key} must be a finite number, got {value}")
    lr = (config.get("optimizer") or {}).get("lr")
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr <= 0:
        raise ConfigError(f"optimizer.lr (learning rate) must be positive, got {lr}")


def check_explain(opts: RunOptions) -> None:
    """``--explain`` needs the export it explains and the ``explain`` extra; ``--explain-rows`` needs
    ``--explain``. Raises :class:`~trainforge.errors.ConfigError` before any run opens."""
    if opts.explain_rows is not None and not opts.explain:
        raise ConfigError("--explain-rows sets how many test rows --explain explains: add --explain")
    if not opts.explain:
        return
    if not opts.export:
        raise ConfigError("--explain explains the exported ONNX file: drop --no-export")
    if opts.folds:
        raise ConfigError("--explain with --cv: explain the refit run afterwards (trainforge explain RUN_ID "
                          "--log-to-run)")
    from trainforge.explaining import require_extra

    require_extra("train --explain")


def _resume_point(run_id: str, tracking_uri: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The config and trainer state in run ``run_id``'s ``checkpoints/last.pt``."""
    from trainforge.errors import TrainforgeError
    from trainforge.tracking import checkpoints, store

    store.setup_uri(tracking_uri)
    run = store.get_run(run_id)
    if run.info.status == "FINISHED":
        raise TrainforgeError(f"run {run_id} already FINISHED; nothing to resume")
    saved = checkpoints.fetch(run_id, checkpoints.LAST, missing=(
        f"run {run_id} has no resumable checkpoint ({checkpoints.LAST}); they are written every "
        "trainer.resume_every_s seconds"))
    return saved["config"], saved["trainer"]
