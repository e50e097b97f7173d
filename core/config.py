"""The resolved configuration tree.

One tree drives a run::

    model:     {name: cnn, dropout1: 0.25, ...}      # ModelSpec.defaults
    optimizer: {name: adam, lr: 0.001, ...}          # OptimizerSpec.defaults
    dataset:   {name: digits, ...}                   # DatasetSpec.defaults
    scheduler: {name: none, ...}                     # SchedulerSpec.defaults
    trainer:   {epochs: 50, batch_size: 64, ...}     # TRAINER_DEFAULTS below

Precedence, lowest first: spec defaults, ``--config FILE``, ``-p section.key=value`` overrides, then
explicit flags such as ``--lr``. Values of ``-p`` are parsed as YAML (``[256,128]``, ``0.9``, ``true``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from trainforge.errors import ConfigError

PLUGIN_SECTIONS = ("model", "optimizer", "dataset", "scheduler")
SECTIONS = (*PLUGIN_SECTIONS, "trainer")
#: Sections other commands read from the same file (``trainforge tune`` reads ``search_space``).
EXTRA_SECTIONS = ("search_space", "tune")

TRAINER_DEFAULTS: dict[str, Any] = {
    "epochs": 50,  # full passes over the training split (early stopping usually ends sooner)
    "batch_size": 64,  # samples per optimizer step
    "eval_batch_size": 1024,  # samples per forward pass when evaluating (no gradients)
    "seed": 0,  # seeds the split, the initial weights and the shuffling
    "device": "auto",  # auto | cpu | cuda | cuda:N ; auto picks CUDA when torch sees a GPU
    "precision": "32",  # 32 | bf16-mixed | 16-mixed (16-mixed: CUDA only, with a GradScaler)
    "monitor": "val_loss",  # metric for early stopping, best checkpoint and reduce-on-plateau
    "mode": "auto",  # min | max | auto (max for accuracy/precision/recall/f1/r2, else min)
    "patience": 10,  # epochs without improvement before early stopping; 0 disables it
    "min_delta": 0.0,  # smallest change of the monitored metric that counts as improvement
    # lower-is-better metric that decides between epochs whose monitored value ties (equal val_accuracy is
    # common on a small validation split: 1 row of 180 = 0.56 points); a tie it improves counts as
    # improvement (new best checkpoint, patience restarts); null or none: ties never improve
    "tie_break": "val_loss",
    "grad_clip": None,  # max global L2 norm of the gradients (torch.nn.utils.clip_grad_norm_)
    "val_fraction": 0.1,  # share of all rows held out for validation
    "test_fraction": 0.2,  # share of all rows held out for the final test
    "resume_every_s": 60.0,  # seconds between resumable checkpoints (checkpoints/last.pt); 0 every epoch, -1 off
    # draw the run's plots (plots/learning_curves.png and the task's test plots, e.g. a confusion matrix);
    # tuning trials default to false (trainforge.tuning.settings.TRIAL_TRAINER): matplotlib costs a trial ~0.3 s
    "plots": True,
    # MLflow system metrics on the run (CPU, memory, and per GPU utilization and memory): needs psutil, and
    # nvidia-ml-py for the GPUs (pip install 'trainforge[gpu]'); MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL sets the period
    "system_metrics": False,
}
DEFAULT_SELECTION = {"model": "mlp", "optimizer": "adam", "dataset": "digits", "scheduler": "none"}


def load_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file (UTF-8, as YAML 1.2 requires; a UTF-8 BOM is accepted); raises
    :class:`ConfigError` naming the file (and line) on bad input: missing or unreadable, not UTF-8, not YAML."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = yaml.safe_load(raw.decode("utf-8-sig")) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:  # a folder, no permission
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path}: line {line} is not UTF-8 (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    unknown = set(data) - set(SECTIONS) - set(EXTRA_SECTIONS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(sorted(unknown))}; "
            f"expected {', '.join(SECTIONS + EXTRA_SECTIONS)}"
        )
    for section in SECTIONS:
        value = data.get(section)
        if isinstance(value, str) and section in PLUGIN_SECTIONS:
            data[section] = {"name": value}
        elif value is not None and not isinstance(value, dict):
            raise ConfigError(f"{path}: section {section!r} must be a mapping")
    return data


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Parse ``["model.hidden_sizes=[256,128]", ...]`` into ``{"model": {"hidden_sizes": [256, 128]}}``."""
    tree: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"bad -p {item!r}: expected SECTION.KEY=VALUE, e.g. model.dropout=0.3")
        if section not in SECTIONS:
            raise ConfigError(f"bad -p {item!r}: unknown section {section!r}; expected {', '.join(SECTIONS)}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        tree.setdefault(section, {})[name] = value
    return tree


def merge(*layers: dict[str, Any] | None) -> dict[str, Any]:
    """Merge config trees section by section; later layers win. Inputs are not modified."""
    out: dict[str, Any] = {}
    for layer in layers:
        for section, values in (layer or {}).items():
            if isinstance(values, dict):
                out.setdefault(section, {}).update(copy.deepcopy(values))
            else:
                out[section] = copy.deepcopy(values)
    return out


def resolve(tree: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults from the registered specs and reject unknown keys.

    Raises :class:`ConfigError` for an unknown hyperparameter (listing the valid ones) and
    :class:`PluginError` for an unknown plugin name (listing the available ones).
    """
    from trainforge import manager

    out: dict[str, Any] = {}
    for section in PLUGIN_SECTIONS:
        given = dict(tree.get(section) or {})
        name = given.pop("name", None) or DEFAULT_SELECTION[section]
        entry = manager.entry(section, str(name))
        spec = entry.spec
        _check_keys(f"{section} {name!r}", given, spec.defaults)
        _check_types(f"{section}.", given, spec.defaults, allow_none=True)
        out[section] = {"name": entry.name, **copy.deepcopy(spec.defaults), **given}
    trainer = dict(tree.get("trainer") or {})
    _check_keys("trainer", trainer, TRAINER_DEFAULTS)
    _check_types("trainer.", trainer, TRAINER_DEFAULTS, allow_none=False)
    out["trainer"] = {**TRAINER_DEFAULTS, **trainer}
    for section in EXTRA_SECTIONS:
        if tree.get(section):
            out[section] = copy.deepcopy(tree[section])
    _check_trainer(out["trainer"])
    return out


def _check_keys(where: str, given: dict[str, Any], defaults: dict[str, Any]) -> None:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        valid = ", ".join(sorted(defaults)) or "(none)"
        raise ConfigError(f"unknown parameter(s) for {where}: {', '.join(unknown)}; valid: {valid}")


def _check_types(prefix: str, given: dict[str, Any], defaults: dict[str, Any], *, allow_none: bool) -> None:
    """Each value must have its documented default's type: a bool for a bool, an integer for an int, a
    number for a float, a list for a list (``None`` defaults and strings accept anything). Raises
    :class:`ConfigError` naming the key, e.g. ``trainer.seed must be an integer (default 0), got 'abc'``."""
    kinds = ((bool, "true or false", lambda v: isinstance(v, bool)),
             (int, "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
             (float, "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)),
             ((list, tuple), "a list", lambda v: isinstance(v, (list, tuple))))
    for key, value in given.items():
        default = defaults.get(key)
        if default is None or (value is None and allow_none):
            continue
        if isinstance(default, float) and isinstance(value, str):  # YAML 1.1 reads 1e-3 as a string
            try:
                value = given[key] = float(value)
            except ValueError:
                pass
        for cls, what, ok in kinds:
            if isinstance(default, cls):
                if not ok(value):
                    raise ConfigError(f"{prefix}{key} must be {what} (default {default!r}), got {value!r}")
                break


def _check_trainer(t: dict[str, Any]) -> None:
    for key in ("epochs", "batch_size", "eval_batch_size"):
        if not isinstance(t[key], int) or isinstance(t[key], bool) or t[key] < 1:
            raise ConfigError(f"trainer.{key} must be a positive integer, got {t[key]!r}")
    if str(t["precision"]) not in ("32", "bf16-mixed", "16-mixed"):
        raise ConfigError(f"trainer.precision must be 32, bf16-mixed or 16-mixed, got {t['precision']!r}")
    t["precision"] = str(t["precision"])
    if t["mode"] not in ("auto", "min", "max"):
        raise ConfigError(f"trainer.mode must be auto, min or max, got {t['mode']!r}")
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 < float(t[key]) < 1.0:
            raise ConfigError(f"trainer.{key} must be between 0 and 1, got {t[key]!r}")
    if not isinstance(t["system_metrics"], bool):
        raise ConfigError(f"trainer.system_metrics must be true or false, got {t['system_metrics']!r}")
    if float(t["val_fraction"]) + float(t["test_fraction"]) >= 0.9:
        raise ConfigError("trainer.val_fraction + trainer.test_fraction must leave at least 10% for training")


def flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"model": {"dropout": 0.1}}`` -> ``{"model.dropout": 0.1}`` (MLflow params)."""
    return {
        f"{section}.{key}": value
        for section, values in config.items()
        if isinstance(values, dict) and section in SECTIONS
        for key, value in values.items()
    }
