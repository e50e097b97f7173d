"""The tuning search space: the chosen plugins' declared spaces plus the trainer's, with user overrides.

Parameter names (what Optuna records, what ``best_params`` and the ``search_space:`` config section use):

- ``model`` / ``optimizer``: the categorical choice between plugins, present only when several are given
  (``--model cnn,mlp``). Every other parameter is conditional on its plugin being chosen.
- ``<model>.<name>``: a name the model plugin's ``search_space`` suggests, prefixed by the plugin name,
  e.g. ``cnn.dropout1``, ``mlp.width``. The prefix keeps conditional spaces apart (``mlp.dropout`` and
  ``cnn.dropout1`` never collide) and tells the reader which plugin a value belongs to.
- ``<optimizer>.<name>``: e.g. ``adam.lr``, ``sgd.momentum``. An optimizer whose spec declares no space
  still gets ``lr`` (log-uniform over a decade either side of its default, see :func:`optimizer_space`);
  one with a ``weight_decay`` default its space leaves alone gets a log-uniform ``weight_decay``.
- ``trainer.<name>``: the trainer's own space (:func:`trainer_space`), e.g. ``trainer.batch_size``.
- ``export.quantize``: ``none`` or ``int8``, with ``--search-quantization`` only (the shipped file's
  precision; measured by :mod:`trainforge.tuning.deployment`, not part of the training config).

Overrides (``search_space:`` section of ``--config``; flat dotted keys, or one level of nesting such as
``{cnn: {dropout1: 0.3}}``)::

    search_space:
      trainer.batch_size: 64                      # fix: a constant, not searched (reported in best_params)
      adam.lr: {low: 0.0005, high: 0.005}         # narrow a float/int range (log: true|false, step: ...)
      cnn.filters1: {choices: [32, 64]}           # replace with a categorical choice

An unknown name raises :class:`ConfigError` listing the valid names. Names are found by probing each
plugin's space once with a recording trial, so a parameter a plugin suggests only on some branch of its
own ``if`` is found only on the branch the probe takes (the lowest value / first choice).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainforge import manager
from trainforge.errors import ConfigError

RANGE_KEYS = frozenset({"low", "high", "log", "step"})
CHOICE_KEY = "choices"
#: The trainer's search space (Optuna names without the ``trainer.`` prefix). Batch sizes: powers of two
#: around the default 64; the digits/iris training splits have 100 to 1300 rows.
BATCH_SIZES = [32, 64, 128]
#: ``export.quantize`` choices with ``--search-quantization``
QUANTIZE_CHOICES = ["none", "int8"]


def trainer_space(trial: Any) -> dict[str, Any]:
    """The trainer's own hyperparameters: ``trial -> {trainer key: value}``."""
    return {"batch_size": trial.suggest_categorical("batch_size", BATCH_SIZES)}


def optimizer_space(spec: Any, trial: Any) -> dict[str, Any]:
    """An optimizer's space: its declared one, plus core's learning rate and weight decay where missing.

    ``lr``: log-uniform on ``[default / 10, default * 10]``; ``weight_decay``: log-uniform on
    ``[1e-6, 1e-2]`` (the range of Optuna's and Keras Tuner's examples) when the spec has that default.
    """
    values = dict(spec.search_space(trial)) if spec.search_space else {}
    if "lr" not in values:
        lr = float(spec.defaults["lr"])
        values["lr"] = trial.suggest_float("lr", lr / 10, lr * 10, log=True)
    if "weight_decay" in spec.defaults and "weight_decay" not in values:
        values["weight_decay"] = trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
    return values


class ScopedTrial:
    """A view of an Optuna trial that prefixes parameter names and applies the user's overrides.

    Plugins' ``search_space`` functions receive this object; they call ``suggest_float``,
    ``suggest_int`` and ``suggest_categorical`` with their own short names. Anything else is passed
    through to the wrapped trial.
    """

    def __init__(self, trial: Any, prefix: str, overrides: dict[str, Any], fixed: dict[str, Any]) -> None:
        self._trial, self._prefix, self._overrides, self._fixed = trial, prefix, overrides, fixed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def _override(self, name: str) -> tuple[str, Any]:
        full = self._prefix + name
        return full, self._overrides.get(full)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> Any:
        full, rule = self._override(name)
        if rule is None:
            return self._trial.suggest_float(full, low, high, step=step, log=log)
        return self._apply(full, rule, low, high, step, log, kind="float")

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> Any:
        full, rule = self._override(name)
        if rule is None:
            return self._trial.suggest_int(full, low, high, step=step, log=log)
        return self._apply(full, rule, low, high, step, log, kind="int")

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        full, rule = self._override(name)
        if rule is None:
            return self._trial.suggest_categorical(full, list(choices))
        if isinstance(rule, dict) and CHOICE_KEY not in rule:
            raise ConfigError(f"search_space.{full}: a categorical parameter (choices {list(choices)}) "
                              "can be fixed or given new {choices: [...]}, not a low/high range")
        return self._apply(full, rule, None, None, None, False, kind="categorical")

    def _apply(self, full: str, rule: Any, low: Any, high: Any, step: Any, log: bool, kind: str) -> Any:
        if not isinstance(rule, dict):  # fixed value
            self._fixed[full] = rule
            return rule
        if CHOICE_KEY in rule:
            return self._trial.suggest_categorical(full, list(rule[CHOICE_KEY]))
        low, high = rule.get("low", low), rule.get("high", high)
        log, step = bool(rule.get("log", log)), rule.get("step", step)
        if log and (step is not None if kind == "float" else step not in (None, 1)):
            raise ConfigError(f"search_space.{full}: log and step cannot be combined")
        if not low <= high or (log and low <= 0):
            raise ConfigError(f"search_space.{full}: need low <= high{' and low > 0 on a log scale' if log else ''},"
                              f" got low={low}, high={high}")
        if kind == "int":
            return self._trial.suggest_int(full, int(low), int(high), step=int(step or 1), log=log)
        return self._trial.suggest_float(full, float(low), float(high), step=step, log=log)


class Recorder:
    """A stand-in trial that records each suggested distribution and returns a representative value.

    Used to list a space's parameter names and distributions without a study (the lowest value or
    first choice is returned, so plugin code runs on valid values).
    """

    number = 0  # a space may read trial.number; the probe is "trial 0"

    def __init__(self) -> None:
        self.distributions: dict[str, Any] = {}
        self.params: dict[str, Any] = {}
        self.user_attrs: dict[str, Any] = {}

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        from optuna.distributions import FloatDistribution

        self.distributions[name] = FloatDistribution(low, high, step=step, log=log)
        self.params[name] = float(low)
        return float(low)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        from optuna.distributions import IntDistribution

        self.distributions[name] = IntDistribution(low, high, step=step, log=log)
        self.params[name] = int(low)
        return int(low)

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        from optuna.distributions import CategoricalDistribution

        self.distributions[name] = CategoricalDistribution(list(choices))
        self.params[name] = list(choices)[0]
        return list(choices)[0]


def normalize_overrides(raw: dict[str, Any] | None) -> dict[str, Any]:
    """Flatten ``{cnn: {dropout1: 0.3}}`` to ``{"cnn.dropout1": 0.3}`` and check each rule's shape."""
    out: dict[str, Any] = {}
    for key, value in (raw or {}).items():
        key = str(key)
        if isinstance(value, dict) and "." not in key and not set(value) <= RANGE_KEYS | {CHOICE_KEY}:
            for sub, rule in value.items():
                out[f"{key}.{sub}"] = rule
        else:
            out[key] = value
    for key, rule in out.items():
        if not isinstance(rule, dict):
            continue
        extra = set(rule) - RANGE_KEYS - {CHOICE_KEY}
        if extra:
            raise ConfigError(f"search_space.{key}: unknown key(s) {', '.join(sorted(extra))}; "
                              "use a value, {low:, high:, log:, step:} or {choices: [...]}")
        if CHOICE_KEY in rule and (set(rule) - {CHOICE_KEY} or not isinstance(rule[CHOICE_KEY], list)
                                   or not rule[CHOICE_KEY]):
            raise ConfigError(f"search_space.{key}: choices must be a non-empty list, alone")
    return out


@dataclass
class SearchSpace:
    """The space of one study: candidate models and optimizers, and the user's overrides.

    :meth:`sample` turns an Optuna trial into config sections; :meth:`distributions` lists every
    parameter the space can suggest (after overrides) with the condition under which it is sampled.
    """

    models: list[str]
    optimizers: list[str]
    overrides: dict[str, Any] = field(default_factory=dict)
    #: name -> (condition such as ``"model == cnn"`` or ``""``, optuna distribution); filled by :meth:`probe`
    params: dict[str, tuple[str, Any]] = field(default_factory=dict, repr=False)
    fixed: dict[str, Any] = field(default_factory=dict, repr=False)
    #: search ``export.quantize`` in ``{none, int8}`` (``--search-quantization``)
    quantization: bool = False

    def __post_init__(self) -> None:
        if not self.models or not self.optimizers:
            raise ConfigError("tuning needs at least one model and one optimizer")
        self.overrides = normalize_overrides(self.overrides)
        for kind, names in (("model", self.models), ("optimizer", self.optimizers)):
            if len(set(names)) != len(names):
                raise ConfigError(f"--{kind} lists a plugin twice: {','.join(names)}")
            for name in names:
                manager.get(kind, name)  # PluginError listing the available ones
            rule = self.overrides.pop(kind, None)  # search_space.model / .optimizer narrow the choice
            if rule is None:
                continue
            chosen = rule[CHOICE_KEY] if isinstance(rule, dict) and CHOICE_KEY in rule else [rule]
            if isinstance(rule, dict) and CHOICE_KEY not in rule or not set(chosen) <= set(names):
                raise ConfigError(f"search_space.{kind}: give one of {', '.join(names)} or "
                                  f"{{choices: [...]}} among them (the --{kind} list)")
            names[:] = list(chosen)
            if not isinstance(rule, dict):
                self.fixed[kind] = rule
        self.probe()

    def _choose(self, trial: Any, kind: str, names: list[str]) -> str:
        return names[0] if len(names) == 1 else trial.suggest_categorical(kind, list(names))

    def sample(self, trial: Any, *, model: str | None = None, optimizer: str | None = None,
               fixed: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Config sections ``{"model": {"name": ..., ...}, "optimizer": {...}, "trainer": {...}}``.

        ``fixed`` (if given) receives the overridden constants. ``model``/``optimizer`` force a branch
        (used by :meth:`probe`).
        """
        fixed = {} if fixed is None else fixed
        model = model or self._choose(trial, "model", self.models)
        optimizer = optimizer or self._choose(trial, "optimizer", self.optimizers)
        model_spec, opt_spec = manager.get("model", model), manager.get("optimizer", optimizer)
        scoped = lambda prefix: ScopedTrial(trial, prefix, self.overrides, fixed)  # noqa: E731
        model_values = dict(model_spec.search_space(scoped(f"{model}."))) if model_spec.search_space else {}
        sections = {
            "model": {"name": model, **model_values},
            "optimizer": {"name": optimizer, **optimizer_space(opt_spec, scoped(f"{optimizer}."))},
            "trainer": trainer_space(scoped("trainer.")),
        }
        if self.quantization:
            sections["export"] = {"quantize": scoped("export.").suggest_categorical("quantize", QUANTIZE_CHOICES)}
        return sections

    def probe(self) -> None:
        """Record every parameter of every branch, then reject override names the space never suggests."""
        from optuna.distributions import CategoricalDistribution

        params: dict[str, tuple[str, Any]] = {}
        fixed: dict[str, Any] = {k: v for k, v in self.fixed.items() if k in ("model", "optimizer")}
        for kind, names in (("model", self.models), ("optimizer", self.optimizers)):
            if len(names) > 1:
                params[kind] = ("", CategoricalDistribution(names))
        for model in self.models:
            for optimizer in self.optimizers:
                rec = Recorder()
                self.sample(rec, model=model, optimizer=optimizer, fixed=fixed)
                for name, dist in rec.distributions.items():
                    owner = name.split(".", 1)[0]
                    cond = f"model == {model}" if owner == model and len(self.models) > 1 else \
                        f"optimizer == {optimizer}" if owner == optimizer and len(self.optimizers) > 1 else ""
                    params[name] = (cond, dist)
        known = set(params) | set(fixed) | {"model", "optimizer"}
        unknown = sorted(set(self.overrides) - known)
        if unknown:
            raise ConfigError(f"search_space: unknown parameter(s) {', '.join(unknown)}; "
                              f"valid: {', '.join(sorted(known))}")
        self.params, self.fixed = params, fixed

    def default_params(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """The first model/optimizer branch at its documented defaults, as Optuna params.

        Values come from ``base`` (the tune config: ``-p``/``--config``), else the plugin's ``defaults``,
        else the trainer defaults; a number outside its searched range is clamped to the nearest bound
        (Adam's ``weight_decay`` 0.0 -> the log range's lower end), a categorical default not among the
        choices is left out (Optuna samples it). ``tune`` enqueues this as a new study's first trial, so
        the search starts from the configuration ``trainforge train`` would run.
        """
        from optuna.distributions import CategoricalDistribution

        from trainforge.config import TRAINER_DEFAULTS

        base = base or {}
        model, optimizer = self.models[0], self.optimizers[0]
        sources = {
            model: {**manager.get("model", model).defaults, **_section(base, "model", model)},
            optimizer: {**manager.get("optimizer", optimizer).defaults, **_section(base, "optimizer", optimizer)},
            "trainer": {**TRAINER_DEFAULTS, **(base.get("trainer") or {})},
            "export": {"quantize": "none"},  # train exports fp32
        }
        params: dict[str, Any] = {}
        if len(self.models) > 1:
            params["model"] = model
        if len(self.optimizers) > 1:
            params["optimizer"] = optimizer
        for name, (_cond, dist) in self.params.items():
            owner, _, key = name.partition(".")
            if owner not in sources or key not in sources[owner]:
                continue
            value = sources[owner][key]
            if isinstance(dist, CategoricalDistribution):
                if value in dist.choices:
                    params[name] = value
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                params[name] = type(dist.low)(min(max(value, dist.low), dist.high))
        return params

    def check_compatible(self, trials: list[Any]) -> None:
        """Raise ConfigError if a parameter's distribution conflicts with the one of an existing trial.

        Optuna refuses a parameter whose kind, log scale or categorical choices change within a study.
        """
        from optuna.distributions import check_distribution_compatibility

        for trial in trials:
            for name, old in trial.distributions.items():
                if name in self.params:
                    try:
                        check_distribution_compatibility(old, self.params[name][1])
                    except ValueError as exc:
                        raise ConfigError(
                            f"search space parameter {name!r} conflicts with trial {trial.number} of this "
                            f"study ({exc} was {_describe(old)}, now {_describe(self.params[name][1])}); "
                            "start a new --study"
                        ) from None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description: ``{"params": {name: {...}}, "fixed": {...}, "models": [...], ...}``."""
        return {
            "models": self.models,
            "optimizers": self.optimizers,
            "params": {name: {**_describe(dist), **({"condition": cond} if cond else {})}
                       for name, (cond, dist) in sorted(self.params.items())},
            "fixed": self.fixed,
            "overrides": self.overrides,
        }

    def config(self, base: dict[str, Any], model: str, optimizer: str) -> dict[str, Any]:
        """The resolved config of the branch ``model``/``optimizer`` at its defaults (the probe's values);
        raises as ``config.resolve`` (a branch that cannot resolve fails before any trial runs)."""
        from trainforge import config as config_mod

        return config_mod.resolve(merge_sample(base, self.sample(Recorder(), model=model, optimizer=optimizer)))

    def first_config(self, base: dict[str, Any]) -> dict[str, Any]:
        """:meth:`config` of the first model and optimizer: what the data is loaded with."""
        return self.config(base, self.models[0], self.optimizers[0])


def space_of(settings: dict[str, Any]) -> SearchSpace:
    """The :class:`SearchSpace` of a study's settings (:meth:`TuneSettings.to_json` or the stored form)."""
    deployment = settings.get("deployment") or {}
    quantization = bool(settings.get("search_quantization") or deployment.get("search_quantization"))
    return SearchSpace(list(settings["models"]), list(settings["optimizers"]), settings.get("search_space") or {},
                       quantization=quantization)


def _section(base: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    section = dict(base.get(kind) or {})
    return section if section.pop("name", name) == name else {}


def _describe(dist: Any) -> dict[str, Any]:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    if isinstance(dist, CategoricalDistribution):
        return {"type": "categorical", "choices": list(dist.choices)}
    out = {"type": "float" if isinstance(dist, FloatDistribution) else "int", "low": dist.low,
           "high": dist.high, "log": dist.log}
    if dist.step not in (None, 1) or isinstance(dist, FloatDistribution) and dist.step is not None:
        out["step"] = dist.step
    return out


def merge_sample(base: dict[str, Any], sampled: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Overlay sampled sections on a base config tree (before ``config.resolve``).

    The base's model/optimizer keys apply only when the base names the same plugin (or names none), so
    ``--config`` values meant for ``mlp`` never reach ``cnn``.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for section, values in sampled.items():
        if section == "export":  # how the model ships, not how it trains
            continue
        given = dict(base.get(section) or {})
        if section in ("model", "optimizer") and given.get("name") not in (None, values["name"]):
            given = {}
        out[section] = {**given, **values}
    return out
