"""What a ``trainforge tune`` trial costs against a plain Optuna script of the same work (issue 27).

1. Whole studies, as processes: ``trainforge tune --model mlp --dataset digits --n-trials N --epochs 20
   --pruner none --seed 0`` with a ``search_space:`` fixing everything but ``adam.lr`` (the MLP
   64-128-128-10, ReLU, dropout 0.1, batch 64, weight decay 0, no early stopping), in a new working
   directory (a new SQLite store) each time, against ``benchmarks/plain_tune.py --n-trials N`` (same model,
   lr range, sampler seed, enqueued trial 0, epochs, batch and training rows; in-memory Optuna storage,
   nothing tracked or exported). N = 10, 30, 100, interleaved: round ``i`` runs every (contender, N) once, in
   an order that rotates each round. Reported: the whole-study ratio per N (paired per round) and the
   marginal per-trial cost (the slope between the smallest and largest N) of each, and its ratio.
   ``--mlflow`` adds three contenders: the plain script tracked in MLflow by hand (``plain_tune.py
   --mlflow``), the same then exporting, checking, logging and registering its best (``--export``), and
   ``tune --no-export``; reported as the paired ratios of tune against its hand-wired equivalent and of
   MLflow's own cost (plain + MLflow against plain).
2. ``--n-jobs 2`` against 1 on the 30-trial study: scaling efficiency ``T(1) / (2 T(2))``.
3. A profile of one study (``--profile``, in a child process): the study's wall time split by phase (process
   start and imports, setup, each trial's steps inside ``train()``, Optuna's ask/tell, the summary and the
   export), from timers wrapped around the functions that do each step (a few microseconds per call).

    python benchmarks/bench_tune.py                         # everything, 3 rounds, writes RESULTS_tune.md
    python benchmarks/bench_tune.py --trials 10 30 --rounds 3 --no-jobs
    python benchmarks/bench_tune.py --profile-only --profile-trials 10
    python benchmarks/bench_tune.py --trials 10 30 --rounds 3 --no-jobs --no-profile --mlflow

The machine may be shared: the load average before and after is reported with the figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import Section, Stats, log, machine, num, paired_ratios

HERE = Path(__file__).resolve().parent
PLAIN = [sys.executable, str(HERE / "plain_tune.py")]
EPOCHS = 20
#: everything but adam.lr fixed: the MLP 64-128-128-10 of the plain script
SPACE = {"search_space": {"mlp.n_layers": 2, "mlp.width": 128, "mlp.dropout": 0.1, "mlp.activation": "relu",
                          "trainer.batch_size": 64, "adam.weight_decay": 0.0},
         "trainer": {"patience": 0}}
TUNE = ["tune", "--model", "mlp", "--dataset", "digits", "--epochs", str(EPOCHS), "--pruner", "none",
        "--seed", "0", "--quiet"]


def _exe() -> list[str]:
    script = Path(sys.executable).parent / "trainforge"
    return [str(script)] if script.exists() else [sys.executable, "-m", "trainforge.cli.main"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")}
    env["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    return env


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(), timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-3000:]}")
    return proc.stdout


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


class Studies:
    """Fresh working directories under ``tmp``; each call runs one study and returns its wall time."""

    def __init__(self, tmp: Path) -> None:
        self.tmp, self.count = tmp, 0
        (tmp / "space.yaml").write_text(json.dumps(SPACE))  # JSON is YAML

    def _cwd(self) -> Path:
        self.count += 1
        cwd = self.tmp / f"s{self.count}"
        cwd.mkdir()
        return cwd

    def trainforge(self, n: int, jobs: int = 1, *extra: str) -> float:
        cmd = [*_exe(), *TUNE, "--config", str(self.tmp / "space.yaml"), "--n-trials", str(n), "--n-jobs", str(jobs),
               *extra]
        started = time.perf_counter()
        _run(cmd, self._cwd())
        return time.perf_counter() - started

    def plain(self, n: int, *extra: str) -> float:
        started = time.perf_counter()
        _run([*PLAIN, "--n-trials", str(n), "--epochs", str(EPOCHS), *extra], self._cwd())
        return time.perf_counter() - started

    def run(self, kind: str, n: int, jobs: int) -> float:
        """One study of a contender of :data:`KINDS`."""
        tool, extra = KINDS[kind]
        return self.trainforge(n, jobs, *extra) if tool == "trainforge" else self.plain(n, *extra)


#: contender -> (program, extra arguments). The ``plain-mlflow*`` scripts are the same plain study tracked in
#: MLflow by hand (``plain_tune.py --mlflow``: parent and child runs, params, per-epoch metrics, best state),
#: then exported, checked, logged and registered (``--export``); ``trainforge-no-export`` is ``tune
#: --no-export`` (runs, metrics, checkpoints, summary and plots; no export or registry).
KINDS = {"trainforge": ("trainforge", ()), "plain": ("plain", ()),
         "trainforge-no-export": ("trainforge", ("--no-export",)), "plain-mlflow": ("plain", ("--mlflow",)),
         "plain-mlflow-export": ("plain", ("--mlflow", "--export"))}
#: with ``--mlflow``: (row, numerator, denominator) of the extra table
PAIRS = [("trainforge tune / plain script + MLflow + export", "trainforge", "plain-mlflow-export"),
         ("tune --no-export / plain script + MLflow", "trainforge-no-export", "plain-mlflow"),
         ("plain script + MLflow / plain script (MLflow's own cost)", "plain-mlflow", "plain"),
         ("plain + MLflow + export / plain script", "plain-mlflow-export", "plain")]


def studies(section: Section, trials: list[int], rounds: int, jobs: bool, tracked: bool = False) -> None:
    kinds = list(KINDS) if tracked else ["trainforge", "plain"]
    contenders = [(kind, n, 1) for n in trials for kind in kinds]
    if jobs:
        contenders.append(("trainforge", 30, 2))
    times: dict[tuple[str, int, int], list[float]] = {c: [] for c in contenders}
    load_before = _load()
    with tempfile.TemporaryDirectory(prefix="bench-tune-") as tmp:
        runner = Studies(Path(tmp))
        for kind in kinds:  # warm-up: page cache, the store's schema template
            runner.run(kind, 2, 1)
        for r in range(rounds):
            order = contenders[r % len(contenders):] + contenders[: r % len(contenders)]
            for kind, n, j in order:
                seconds = runner.run(kind, n, j)
                times[(kind, n, j)].append(seconds)
                log(f"  round {r + 1}: {kind} n={n} jobs={j}: {seconds:.1f} s (load {_load()})")
    section.add(f"Load average (1/5/15 min) before: {load_before}; after: {_load()}. {rounds} rounds, "
                "interleaved; cells are median (min–max) over rounds, ratios paired per round.", "")
    rows = []
    for n in trials:
        tf, plain = times[("trainforge", n, 1)], times[("plain", n, 1)]
        rows.append([n, Stats.of(tf).fmt(3) + " s", Stats.of(plain).fmt(3) + " s",
                     "**" + paired_ratios(tf, plain).fmt(3) + "×**"])
    lo, hi = min(trials), max(trials)
    if hi > lo:
        slope = {k: [(b - a) / (hi - lo) for a, b in zip(times[(k, lo, 1)], times[(k, hi, 1)], strict=True)]
                 for k in ("trainforge", "plain")}
        rows.append([f"marginal per trial ({hi} vs {lo})", Stats.of(slope["trainforge"]).fmt(3) + " s",
                     Stats.of(slope["plain"]).fmt(3) + " s",
                     "**" + paired_ratios(slope["trainforge"], slope["plain"]).fmt(3) + "×**"])
    section.table(["trials", "trainforge tune, wall", "plain Optuna script, wall", "ratio"], rows)
    if tracked:
        _tracked_table(section, times, trials)
    if jobs:
        one, two = times[("trainforge", 30, 1)], times[("trainforge", 30, 2)]
        eff = Stats.of([a / (2 * b) for a, b in zip(one, two, strict=True)])
        section.add(f"`--n-jobs 2`, 30 trials: {Stats.of(two).fmt(3)} s against {Stats.of(one).fmt(3)} s with "
                    f"`--n-jobs 1`: speed-up {paired_ratios(one, two).fmt(3)}×, scaling efficiency "
                    f"T(1) / (2 T(2)) = {eff.fmt(3)} on {os.cpu_count()} CPUs.", "")
    section.add("Raw seconds: " + json.dumps({f"{k}-{n}-j{j}": [round(s, 2) for s in v]
                                               for (k, n, j), v in times.items()}), "")


def _tracked_table(section: Section, times: dict[tuple[str, int, int], list[float]], trials: list[int]) -> None:
    """``--mlflow``: each contender's wall per study size, then the paired ratios of :data:`PAIRS`."""
    section.add("Against the same study tracked in MLflow by hand (`plain_tune.py --mlflow [--export]`), "
                "same rounds:", "")
    section.table(["contender", *[f"{n} trials, wall" for n in trials]],
                  [[f"`{k}`", *[Stats.of(times[(k, n, 1)]).fmt(3) + " s" for n in trials]] for k in KINDS])
    section.table(["ratio (paired per round)", *[f"{n} trials" for n in trials]],
                  [[label, *[paired_ratios(times[(a, n, 1)], times[(b, n, 1)]).fmt(3) + "×" for n in trials]]
                   for label, a, b in PAIRS])


# ---- the profile: timers around the functions that do each step, in a child process --------------------

#: (label, "module:attribute" or "module:Class.method", parent label or "" for a top phase)
PHASES = [
    ("tune(): setup (storage, data, space, study, parent run)", "", ""),
    ("settings (TuneSettings.resolve)", "trainforge.tuning.settings:TuneSettings.resolve", "tune(): setup (storage, data, space, study, parent run)"),
    ("export worker (jobs.choose)", "trainforge.exporting.jobs:choose", "tune(): setup (storage, data, space, study, parent run)"),
    ("data + task (tune._data)", "trainforge.tuning.tune:_data", "tune(): setup (storage, data, space, study, parent run)"),
    ("load the data", "trainforge.run.api:load_data", "data + task (tune._data)"),
    ("search space (tune._space)", "trainforge.tuning.tune:_space", "tune(): setup (storage, data, space, study, parent run)"),
    ("create the study (tune._open_study)", "trainforge.tuning.tune:_open_study", "tune(): setup (storage, data, space, study, parent run)"),
    ("MLflow store + experiment (setup_tracking)", "trainforge.tuning.parent_run:setup_tracking", "tune(): setup (storage, data, space, study, parent run)"),
    ("open/attach the parent run", "trainforge.tuning.parent_run:ensure_parent_run",
     "tune(): setup (storage, data, space, study, parent run)"),
    ("parent params, tags, search_space.json", "trainforge.tuning.parent_run:log_study_start", "tune(): setup (storage, data, space, study, parent run)"),
    ("trials (study.optimize)", "optuna.study.study:Study.optimize", ""),
    ("Optuna ask (sampler, storage)", "optuna.study.study:Study.ask", "trials (study.optimize)"),
    ("Optuna tell (storage)", "optuna.study.study:Study.tell", "trials (study.optimize)"),
    ("objective, one trial", "trainforge.tuning.objective:Objective.__call__", "trials (study.optimize)"),
    ("train()", "trainforge.run.api:train", "objective, one trial"),
    ("tracking.setup", "trainforge.tracking.store:setup", "train()"),
    ("mlflow.start_run (child run)", "mlflow:start_run", "train()"),
    ("log_params + plugin tags", "trainforge.tracking.runlog:log_params", "train()"),
    ("build model", "trainforge.training.modeling:build_model", "train()"),
    ("Trainer.fit", "trainforge.training.trainer:Trainer.fit", "train()"),
    ("MLflowLogger.on_epoch_end", "trainforge.tracking.logger:MLflowLogger.on_epoch_end", "Trainer.fit"),
    ("ResumeCheckpoint.on_epoch_end (last.pt upload)",
     "trainforge.tracking.logger:ResumeCheckpoint.on_epoch_end", "Trainer.fit"),
    ("Checkpoint.on_epoch_end (best.pt)", "trainforge.training.callbacks:Checkpoint.on_epoch_end", "Trainer.fit"),
    ("OptunaPruning.on_epoch_end (report)", "trainforge.tuning.objective:OptunaPruning.on_epoch_end",
     "Trainer.fit"),
    ("evaluate_with_state (validation each epoch, and the test pass)", "trainforge.training.trainer:Trainer.evaluate_with_state", "Trainer.fit"),
    ("test evaluation", "trainforge.run.api:_test_metrics", "train()"),
    ("log_artifacts", "trainforge.tracking.runlog:log_artifacts", "train()"),
    ("save best.pt", "trainforge.tracking.runlog:save_best_checkpoint", "train()"),
    ("upload checkpoints/", "trainforge.tracking.runlog:upload_checkpoint", "train()"),
    ("learning-curve plot", "trainforge.plots:learning_curves", "log_artifacts"),
    ("confusion-matrix plot", "trainforge.training.tasks:Classification.state_plots", "log_artifacts"),
    ("wait for the metric writer", "trainforge.tracking.logger:MLflowLogger.on_close", "train()"),
    ("mlflow.end_run", "mlflow:end_run", "train()"),
    ("finish_child (state tag, optuna.* params, objective)", "trainforge.tuning.parent_run:finish_child",
     "objective, one trial"),
    ("log the objective metric (before: its own call)", "trainforge.tuning.parent_run:log_objective",
     "objective, one trial"),
    ("tune(): summary, plots, export, registry", "", ""),
    ("export + register the best", "trainforge.tuning.best_model:export_best",
     "tune(): summary, plots, export, registry"),
    ("study summary + plots", "trainforge.tuning.parent_run:log_study_summary",
     "tune(): summary, plots, export, registry"),
]


def _wrap(totals: dict[str, list[float]], label: str, target: str) -> None:
    import functools
    import importlib

    module_name, _, attr = target.partition(":")
    owner = importlib.import_module(module_name)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part, None)
        if owner is None:
            totals.setdefault(label, [])
            return
    original = getattr(owner, name, None)
    if original is None:
        totals.setdefault(label, [])
        return

    @functools.wraps(original)
    def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            totals.setdefault(label, []).append(time.perf_counter() - started)

    setattr(owner, name, timed)


def profile_child(n_trials: int, workdir: str) -> None:
    """Run one study with timers; print one JSON line ``{"totals": {label: [seconds...]}, ...}``."""
    started = time.perf_counter()
    os.chdir(workdir)
    import mlflow  # noqa: F401 - imports timed as a phase
    import optuna  # noqa: F401
    import torch  # noqa: F401

    import trainforge.cli.main  # noqa: F401
    from trainforge.tuning.tune import tune

    imported = time.perf_counter()
    totals: dict[str, list[float]] = {}
    for label, target, _ in PHASES:
        if target:
            _wrap(totals, label, target)
    (Path(workdir) / "space.yaml").write_text(json.dumps(SPACE))
    result = tune(str(Path(workdir) / "space.yaml"), models="mlp", dataset="digits", epochs=EPOCHS,
                  n_trials=n_trials, pruner="none", seed=0)
    done = time.perf_counter()
    print(json.dumps({"totals": totals, "imports": imported - started, "tune": done - imported,
                      "best_value": result.best_value, "n_complete": result.n_complete}))


def profile(section: Section, n_trials: int, with_plain: bool = True) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tune-profile-") as tmp:
        plain_started = time.perf_counter()
        if with_plain:
            _run([*PLAIN, "--n-trials", str(n_trials), "--epochs", str(EPOCHS)], Path(tmp))
        plain = time.perf_counter() - plain_started if with_plain else math.nan
        load_before = _load()
        started = time.perf_counter()
        out = _run([sys.executable, str(Path(__file__).resolve()), "--profile-child", str(n_trials), tmp], Path(tmp))
        wall = time.perf_counter() - started
    data = json.loads(out.strip().splitlines()[-1])
    totals = {k: sum(v) for k, v in data["totals"].items()}
    counts = {k: len(v) for k, v in data["totals"].items()}
    optimize = totals.get("trials (study.optimize)", 0.0)
    setup_label, end_label = PHASES[0][0], "tune(): summary, plots, export, registry"
    totals[end_label] = totals.get("export + register the best", 0) + totals.get("study summary + plots", 0)
    totals[setup_label] = data["tune"] - optimize - totals[end_label]
    rows = [["process start + imports (python, torch, mlflow, optuna, trainforge)", num(wall - data["tune"], 3),
             "", ""]]
    depth = {"": -1}
    for label, _target, parent in PHASES:
        depth[label] = depth[parent] + 1
        seconds = totals.get(label, 0.0)
        per = seconds / n_trials if depth[label] >= 1 and parent != setup_label and parent != end_label else None
        children = sum(totals.get(c, 0.0) for c, _, p in PHASES if p == label)
        rows.append([("&nbsp;&nbsp;" * 2 * depth[label]) + label, num(seconds, 3),
                     f"{per * 1000:.1f}" if per is not None else "", str(counts.get(label, ""))])
        if children and label not in (setup_label, end_label):
            rows.append([("&nbsp;&nbsp;" * 2 * (depth[label] + 1)) + "(rest of " + label + ")",
                         num(seconds - children, 3), f"{(seconds - children) / n_trials * 1000:.1f}", ""])
    section.add(f"One {n_trials}-trial study, timers wrapped around each step (inclusive times; a step's "
                f"children are indented under it). Whole process {num(wall, 3)} s; the plain script of the same "
                f"{n_trials} trials, run just before: {num(plain, 3)} s (ratio {wall / plain:.2f}×). "
                f"Load average before: {load_before}; after: {_load()}. "
                f"Best value {data['best_value']}, {data['n_complete']} complete trials.", "")
    section.table(["phase", "seconds", "ms per trial", "calls"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-jobs", action="store_true", help="skip --n-jobs 2 against 1")
    parser.add_argument("--mlflow", action="store_true",
                        help="also the plain study tracked in MLflow by hand (and exported), and tune --no-export")
    parser.add_argument("--profile-trials", type=int, default=10)
    parser.add_argument("--profile-only", action="store_true")
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument("--profile-no-plain", action="store_true", help="profile without running the plain script first")
    parser.add_argument("--output", default=str(HERE / "RESULTS_tune.md"))
    parser.add_argument("--profile-child", nargs=2, metavar=("N", "DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_child:
        profile_child(int(args.profile_child[0]), args.profile_child[1])
        return
    info = machine()
    sections = []
    if not args.profile_only:
        section = Section("Whole studies: trainforge tune against a plain Optuna script")
        studies(section, sorted(args.trials), args.rounds, jobs=not args.no_jobs, tracked=args.mlflow)
        sections.append(section)
    if not args.no_profile:
        section = Section("Where a trial's time goes")
        profile(section, args.profile_trials, with_plain=not args.profile_no_plain)
        sections.append(section)
    text = ["# trainforge tune against a plain Optuna script", "",
            "Written by `benchmarks/bench_tune.py` (see its docstring and `benchmarks/README.md`).", "",
            *[f"- {k}: {v}" for k, v in info.items()], ""]
    text += [s.markdown() for s in sections]
    Path(args.output).write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
