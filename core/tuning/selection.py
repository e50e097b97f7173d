"""Choosing from a study: the best trial, the Pareto front, the one model a front ships. Pure Optuna.

- :func:`best_trial` (single objective): the best COMPLETE trial; ties go to the lower validation loss.
- :func:`front`: Optuna's ``study.best_trials`` (COMPLETE trials no other trial dominates), best first
  objective first.
- :func:`parse_select` / :func:`choose`: ``--select``:

  - empty (default): the best first objective on the front (ties: the next objectives, then the lower
    trial number);
  - constraints ``NAME<=X`` (also ``<``, ``>=``, ``>``, ``==``; several joined by ``,``): the best first
    objective among front points meeting all of them; none meets them -> TrainforgeError listing the front;
  - ``knee`` (two objectives): the front point farthest from the straight line through the front's two
    extreme points, in objectives normalised to [0, 1] over the front (0 = the front's best value, 1 = its
    worst). This is Das's knee (I. Das, "On characterizing the 'knee' of the Pareto curve based on
    Normal-Boundary Intersection", Structural Optimization 18:107-115, 1999): the point of maximum
    distance from the convex hull of the individual minima, which in two dimensions is that line. A front
    of one or two points has no knee; the default choice is made then.

- :func:`trial_of`: the trial ``trainforge export --study S [--trial N]`` exports; the study user attr
  :data:`SELECTED_ATTR` keeps a front's choice.
"""

from __future__ import annotations

import math
import operator
import re
from typing import Any

from trainforge.errors import ConfigError, TrainforgeError
from trainforge.tracking import tags as tag

SELECTED_ATTR = tag.SELECTED_TRIAL
OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")


def best_trial(study: Any) -> Any:
    """The best COMPLETE trial, or None when there is none yet.

    Ties on the objective are common with accuracies on a small validation split (180 rows on digits:
    one row is 0.56 points); among the tied trials the one with the lowest validation loss at its best
    epoch (user attr ``val_loss``) wins, then the earliest. A multi-objective study has no single best:
    None (see :func:`front`).
    """
    import optuna

    if len(study.directions) > 1:
        return None
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if not complete:
        return None
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    top = max(sign * t.value for t in complete)
    tied = [t for t in complete if sign * t.value >= top - 1e-12]
    return min(tied, key=lambda t: (t.user_attrs.get("val_loss", math.inf), t.number))


def parse_select(text: str | None, names: list[str]) -> tuple[str, list[tuple[str, str, float]]]:
    """``("first", [])``, ``("knee", [])`` or ``("constraints", [(name, op, value), ...])``.

    Raises ConfigError for bad syntax, a name that is not one of the study's objectives ``names``, or
    ``knee`` without exactly two objectives.
    """
    text = (text or "").strip()
    if not text or text == "best":
        return "first", []
    if text == "knee":
        if len(names) != 2:
            raise ConfigError(f"--select knee needs exactly two objectives, the study has {len(names)}")
        return "knee", []
    rules = []
    for part in text.split(","):
        match = CONSTRAINT.match(part)
        if not match:
            raise ConfigError(f"--select {text!r}: write knee, or constraints like 'latency_ms<=0.5' "
                              "(<=, <, >=, >, ==; several joined by ',')")
        name, op, raw = match.groups()
        if name not in names:
            raise ConfigError(f"--select {text!r}: {name!r} is not an objective of this study ({', '.join(names)})")
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"--select {text!r}: {raw!r} is not a number") from None
        rules.append((name, op, value))
    return "constraints", rules


def front(study: Any) -> list[Any]:
    """The study's Pareto front (finite values only), best first objective first, then by trial number."""
    trials = [t for t in study.best_trials if t.values and all(math.isfinite(v) for v in t.values)]
    return sorted(trials, key=lambda t: (*_key(t, study.directions), t.number))


def _key(trial: Any, directions: list[Any]) -> tuple[float, ...]:
    import optuna

    return tuple(-v if d == optuna.study.StudyDirection.MAXIMIZE else v for v, d in zip(trial.values, directions,
                                                                                        strict=True))


def values_of(trial: Any, names: list[str]) -> dict[str, float]:
    return dict(zip(names, (float(v) for v in trial.values), strict=True))


def describe(points: list[Any], names: list[str]) -> str:
    """One line: ``#3 val_accuracy=0.9861 latency_ms=0.0123; #7 ...``."""
    return "; ".join(f"#{t.number} " + " ".join(f"{k}={v:.4g}" for k, v in values_of(t, names).items())
                     for t in points) or "(empty)"


def choose(study: Any, names: list[str], selection: tuple[str, list[tuple[str, str, float]]]) -> Any:
    """The front trial ``selection`` (from :func:`parse_select`) picks; None for an empty front.

    Raises TrainforgeError, listing the front, when no front point meets the constraints.
    """
    points = front(study)
    if not points:
        return None
    kind, rules = selection
    if kind == "knee":
        return knee(points, study.directions)
    meeting = [t for t in points if all(OPERATORS[op](values_of(t, names)[n], x) for n, op, x in rules)]
    if not meeting:
        wanted = ",".join(f"{n}{op}{x:g}" for n, op, x in rules)
        raise TrainforgeError(f"no Pareto-front trial of study {study.study_name!r} meets {wanted}; the front: "
                              f"{describe(points, names)} (pick one with trainforge export --study "
                              f"{study.study_name} --trial N)")
    return meeting[0]


def knee(points: list[Any], directions: list[Any]) -> Any:
    """Das's knee of a two-objective front (module docstring); ``points`` best first objective first."""
    keys = [_key(t, directions) for t in points]  # both to minimise
    lows = [min(k[i] for k in keys) for i in range(2)]
    spans = [max(k[i] for k in keys) - lows[i] or 1.0 for i in range(2)]
    # normalised, the extreme points are (0, 1) and (1, 0): the distance below their line is (1 - x - y) / sqrt 2
    gaps = [1.0 - sum((k[i] - lows[i]) / spans[i] for i in range(2)) for k in keys]
    best = max(gaps)
    return points[[i for i, g in enumerate(gaps) if g >= best - 1e-12][0]]


def entries(points: list[Any], names: list[str]) -> list[dict[str, Any]]:
    """``tune --json``'s ``pareto``: ``[{"trial", "values": {name: value}, "run_id"}, ...]``."""
    return [{"trial": t.number, "values": values_of(t, names), "run_id": t.user_attrs.get("mlflow_run_id")}
            for t in points]


def trial_of(study: Any, number: int | None) -> Any:
    """Trial ``number`` of ``study`` (COMPLETE), or with None the study's choice: the selected trial of a
    multi-objective study (else its default choice), the best trial of a single-objective one.

    Raises TrainforgeError for an unknown or unfinished trial, or a study without a complete trial.
    """
    import optuna

    if number is None:
        if len(study.directions) == 1:
            trial = best_trial(study)
        else:
            number = study.user_attrs.get(SELECTED_ATTR)
            trial = choose(study, study.metric_names or [], ("first", [])) if number is None else None
        if number is None:
            if trial is None:
                raise TrainforgeError(f"study {study.study_name!r} has no complete trial to export yet")
            return trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(int(number))
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE or not trial.user_attrs.get("mlflow_run_id"):
        state = "no such trial" if trial is None else f"state {trial.state.name}"
        names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
        raise TrainforgeError(f"study {study.study_name!r} trial {number}: {state}; complete trials on the front: "
                              f"{describe(front(study), names)}")
    return trial


def pick(study: Any, names: list[str], select: str | None) -> Any:
    """The trial a study ships: :func:`best_trial` for one objective (``names`` empty or one), else the front
    trial ``select`` picks (:func:`parse_select`, :func:`choose`); None when there is none yet."""
    if len(study.directions) == 1:
        return best_trial(study)
    return choose(study, names, parse_select(select, names))
