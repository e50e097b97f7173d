"""The Pareto front of a multi-objective study, the one model chosen from it, and exporting any member.

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

- :func:`log_front`: ``pareto.csv`` (trial, objective values, quantize, child run id, ``params.<name>``)
  and ``plots/pareto_front.png`` (``optuna.visualization.matplotlib.plot_pareto_front``, front points
  labelled with their trial number, the chosen one starred) on the parent run, with the tags
  ``trainforge.selected_trial`` and ``trainforge.selected.<objective>``; the study user attr
  ``trainforge.selected_trial`` lets ``trainforge export --study S`` find the choice again.
- :func:`export_study_trial`: ``trainforge export --study S [--trial N]``.
"""

from __future__ import annotations

import json
import logging
import math
import operator
import re
import tempfile
from pathlib import Path
from typing import Any

from trainforge.errors import ConfigError, TrainforgeError
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)

SELECTED_ATTR = tag.SELECTED_TRIAL
OPERATORS = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
CONSTRAINT = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|==|<|>)\s*([-+0-9.eE]+)\s*$")


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


def log_front(study: Any, parent_run_id: str, names: list[str], chosen: Any, fixed: dict[str, Any]) -> None:
    """``pareto.csv``, ``plots/pareto_front.png`` and the selection tags on the parent run (module docstring)."""
    import pandas as pd
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    points = front(study)
    rows = [{"trial": t.number, **values_of(t, names), "quantize": t.user_attrs.get("quantize", "none"),
             "run_id": t.user_attrs.get("mlflow_run_id"), "selected": chosen is not None and t.number == chosen.number,
             **{f"params.{k}": v for k, v in {**fixed, **t.params}.items()}} for t in points]
    with tempfile.TemporaryDirectory() as tmp:
        pd.DataFrame(rows, columns=None if rows else ["trial", *names, "quantize", "run_id", "selected"]).to_csv(
            Path(tmp) / "pareto.csv", index=False)
        client.log_artifact(parent_run_id, str(Path(tmp) / "pareto.csv"))
        if points and len(names) in (2, 3):
            (Path(tmp) / "plots").mkdir()
            try:
                plot_front(study, names, chosen, Path(tmp) / "plots" / "pareto_front.png")
                client.log_artifact(parent_run_id, str(Path(tmp) / "plots" / "pareto_front.png"), artifact_path="plots")
            except Exception as exc:  # noqa: BLE001 - a missing plot must not fail the study
                log.info("plot pareto_front skipped: %s", exc)
    if chosen is not None:
        client.set_tag(parent_run_id, SELECTED_ATTR, str(chosen.number))
        for name, value in values_of(chosen, names).items():
            client.set_tag(parent_run_id, tag.named("selected", name), f"{value:.6g}")
        study.set_user_attr(SELECTED_ATTR, chosen.number)


def plot_front(study: Any, names: list[str], chosen: Any, path: Path) -> None:
    """Optuna's Pareto-front plot; in two dimensions front points carry their trial number, the chosen one
    a star, and an objective spanning more than 20x is drawn on a log axis."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization.matplotlib import plot_pareto_front

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = plot_pareto_front(study, target_names=names)
        figure = ax.figure
        if len(names) == 2:
            points = front(study)
            for axis, i in ((ax.set_xscale, 0), (ax.set_yscale, 1)):
                seen = [t.values[i] for t in study.trials if t.values and t.values[i] > 0]
                if seen and max(seen) / min(seen) > 20:
                    axis("log")
            for t in points:
                ax.annotate(f"#{t.number}", (t.values[0], t.values[1]), textcoords="offset points", xytext=(4, 4),
                            fontsize=8)
            if chosen is not None:
                ax.scatter([chosen.values[0]], [chosen.values[1]], marker="*", s=260, facecolors="none",
                           edgecolors="black", label=f"selected (trial {chosen.number})", zorder=5)
                ax.legend(loc="best", fontsize=8)
        figure.set_size_inches(9, 6)
        figure.tight_layout()
        figure.savefig(path, dpi=90)
    finally:
        plt.close("all")


def trial_of(study: Any, number: int | None) -> Any:
    """Trial ``number`` of ``study`` (COMPLETE), or with None the study's choice: the selected trial of a
    multi-objective study (else its default choice), the best trial of a single-objective one.

    Raises TrainforgeError for an unknown or unfinished trial, or a study without a complete trial.
    """
    import optuna

    from trainforge.tuning.tune_report import best_trial

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


def export_study_trial(study: str, trial: int | None = None, output: str | Path | None = None, *,
                       storage: str | None = None, tracking_uri: str | None = None, opset: int | None = None,
                       log_to_run: bool = False, quantize: str | None = None) -> tuple[Any, Any]:
    """Export trial ``trial`` of ``study`` (None: the study's choice, see :func:`trial_of`) through the ONNX gate.

    ``output`` defaults to ``./STUDY.onnx`` (``./STUDY-trial-N.onnx`` with a trial). An int8 trial (its
    ``export.quantize``), or ``quantize="int8"``, also writes ``OUTPUT.int8.onnx``. ``log_to_run`` logs the
    fp32 file to the study's parent run as ``onnx/model.onnx``. Returns ``(ExportReport, QuantizeReport or
    None)``; raises TrainforgeError as :func:`trial_of`.
    """
    from trainforge.exporting.exporter import export
    from trainforge.tuning import study as study_mod

    the_study, _ = study_mod.open_study(study_mod.open_storage(storage), study, None)
    chosen = trial_of(the_study, trial)
    run_id = chosen.user_attrs["mlflow_run_id"]
    report = export(run_id, output or (f"{study}.onnx" if trial is None else f"{study}-trial-{trial}.onnx"),
                    tracking_uri=tracking_uri, opset=opset)
    parent = the_study.user_attrs.get(study_mod.PARENT_ATTR)
    if log_to_run and parent:
        import mlflow

        mlflow.log_artifact(str(report.path), artifact_path="onnx", run_id=parent)
    quantized = None
    if quantize == "int8" or chosen.user_attrs.get("quantize") == "int8":
        from trainforge.exporting.quantize import quantize_run

        quantized = quantize_run(run_id, report.path, tracking_uri=tracking_uri)
    log.info("study %s trial %d exported (%s)", study, chosen.number, json.dumps(str(report.path)))
    return report, quantized
