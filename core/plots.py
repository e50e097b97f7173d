"""PNG plots logged as run artifacts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, float]], path: Path, task: str, main: str | None = None) -> Path:
    """Loss and the task's main metric (``main``; by default accuracy or R²) per epoch, train vs validation,
    saved as a PNG at ``path`` (100 dpi)."""
    plt = _pyplot()
    fig = learning_curves_figure(history, task, main)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def learning_curves_figure(history: list[dict[str, float]], task: str, main: str | None = None) -> Any:
    """The matplotlib figure of :func:`learning_curves` (two axes; the epoch axis has integer ticks only,
    via ``MaxNLocator(integer=True)``). The caller closes it."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    main = main or ("accuracy" if task == "classification" else "r2")
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", main), strict=True):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [h[key] for h in history], label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers: no 1.5 ticks
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], path: Path) -> Path:
    """Test-split confusion matrix (rows: true class, columns: predicted) of class indices ``(N,)``, via
    scikit-learn's ``confusion_matrix``; drawn by :func:`confusion_matrix_counts`."""
    from sklearn.metrics import confusion_matrix as counts

    return confusion_matrix_counts(counts(y_true, y_pred, labels=list(range(len(labels)))), labels, path)


def confusion_matrix_counts(counts: np.ndarray, labels: list[str], path: Path) -> Path:
    """A confusion matrix drawn from its counts ``(K, K)`` int64 (rows: true class, columns: predicted), as
    scikit-learn's ``ConfusionMatrixDisplay.from_predictions`` draws it (no colour bar), saved as a PNG at
    ``path`` (100 dpi). Counts accumulated over a streamed split give the same picture as the rows would."""
    plt = _pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(labels) + 2),) * 2)
    ConfusionMatrixDisplay(confusion_matrix=np.asarray(counts, dtype=np.int64), display_labels=labels).plot(
        ax=ax, colorbar=False)
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def predicted_vs_actual(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> Path:
    """Regression: predicted vs actual on the test split, with the identity line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(y_true.ravel(), y_pred.ravel(), s=8, alpha=0.6)
    lo, hi = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("test: predicted vs actual")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _as_images(rows: np.ndarray) -> np.ndarray:
    """``(N, ...)`` samples as ``(N, H, W)`` grey images: the first channel of ``(N, C, H, W)``, a square
    vector reshaped, anything else as a one-row strip."""
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim == 4:
        return rows[:, 0]
    flat = rows.reshape(len(rows), -1)
    side = int(round(flat.shape[1] ** 0.5))
    if side * side == flat.shape[1]:
        return flat.reshape(len(rows), side, side)
    return flat[:, None, :]


def image_grid(rows: list[tuple[str, np.ndarray]], path: Path, title: str = "") -> Path:
    """One row of images per ``(label, samples)`` pair, e.g. originals above reconstructions.

    ``samples``: ``(N, C, H, W)``, ``(N, H*W)`` or any ``(N, ...)`` array; at most 10 per row are drawn.
    """
    plt = _pyplot()
    shown = [(label, _as_images(samples)[:10]) for label, samples in rows]
    cols = max(len(images) for _, images in shown)
    values = np.concatenate([images.ravel() for _, images in shown])
    lo, hi = float(values.min()), float(values.max())  # one grey scale for all rows: comparable images
    fig, axes = plt.subplots(len(shown), cols, figsize=(1.2 * cols + 1, 1.3 * len(shown) + 0.4), squeeze=False)
    for r, (label, images) in enumerate(shown):
        for c in range(cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(images):
                ax.imshow(images[c], cmap="gray_r", interpolation="nearest", vmin=lo, vmax=hi)
            else:
                ax.axis("off")
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def forecast_vs_actual(actual: np.ndarray, forecast: np.ndarray, naive: np.ndarray | None, path: Path) -> Path:
    """Forecasting: the first forecast step of each test window against the actual value, in time order.

    ``actual``, ``forecast``: ``(N, H)``; ``naive``: ``(N,)`` last value of each window (or ``None``).
    The last step ``H`` is drawn too when the horizon is longer than one.
    """
    plt = _pyplot()
    actual, forecast = np.asarray(actual).reshape(len(actual), -1), np.asarray(forecast).reshape(len(forecast), -1)
    steps = np.arange(len(actual))
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(steps, actual[:, 0], color="black", label="actual")
    ax.plot(steps, forecast[:, 0], label="forecast, 1 step ahead")
    if forecast.shape[1] > 1:
        h = forecast.shape[1]
        ax.plot(steps + h - 1, forecast[:, -1], label=f"forecast, {h} steps ahead", alpha=0.7)
    if naive is not None:
        ax.plot(steps, np.asarray(naive).ravel(), linestyle=":", color="grey", label="naive (last value)")
    ax.set_xlabel("test window (time order)")
    ax.set_ylabel("value")
    ax.set_title("test: forecast vs actual")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


#: study plots: file name -> (optuna.visualization.matplotlib function, minimum complete trials, minimum
#: searched parameters). Importances need two parameters: the only one's fANOVA importance is 1 by
#: definition, and the random forest behind it (Optuna's default ``FanovaImportanceEvaluator``, 64 trees)
#: takes seconds to say so (2-7 s for 30 trials on 2 cores).
STUDY_PLOTS = {
    "optimization_history": ("plot_optimization_history", 1, 0),
    "param_importances": ("plot_param_importances", 2, 2),
    "parallel_coordinate": ("plot_parallel_coordinate", 1, 0),
    "intermediate_values": ("plot_intermediate_values", 1, 0),
}


def study_plots(study: Any, folder: Path) -> list[str]:
    """Write the PNG plots of :data:`STUDY_PLOTS` that the study has enough complete trials and searched
    parameters for; returns the names written.

    A plot Optuna cannot draw is skipped with a log line.
    """
    import logging
    import warnings

    plt = _pyplot()
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = {name for t in complete for name in t.distributions}
    written = []
    for name, (function, minimum, min_params) in STUDY_PLOTS.items():
        if len(complete) < minimum or len(searched) < min_params:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = getattr(ovm, function)(study)
            figure = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            figure.set_size_inches(9, 6)
            figure.tight_layout()
            figure.savefig(folder / f"{name}.png", dpi=90)
            written.append(name)
        except Exception as exc:  # noqa: BLE001 - a missing plot must not fail the study
            logging.getLogger(__name__).info("plot %s skipped: %s", name, exc)
        finally:
            plt.close("all")
    return written


class StudyPlots:
    """The :func:`study_plots` of one study summary, in a folder of their own (removed by :meth:`close`).

    Drawn in this process when :meth:`wait` is called, or with ``fork=True`` in a forked child from
    :meth:`start` on, while this process logs the rest of the summary and the best model (the plots take
    1-2 s: pyplot's import and three or four figures). The child draws an in-memory copy of the study's
    finished trials (it never touches the storage or MLflow), ignores Ctrl-C and SIGHUP (the parent
    decides) and ends with ``os._exit``. Linux only, and only while this process runs no other Python
    thread (a lock another thread holds would stay held in the child); elsewhere, or when the child
    fails, :meth:`wait` draws the plots here.
    """

    def __init__(self, study: Any) -> None:
        import tempfile

        self.study, self.pid = study, None
        self._tmp = tempfile.TemporaryDirectory(prefix="trainforge-plots-")
        self.folder = Path(self._tmp.name)

    @classmethod
    def start(cls, study: Any, fork: bool = False) -> StudyPlots:
        plots = cls(study)
        if fork:
            plots._fork()
        return plots

    def _fork(self) -> None:
        import os
        import signal
        import sys
        import threading

        import optuna
        from optuna.trial import TrialState

        if not sys.platform.startswith("linux") or threading.active_count() > 1:
            import logging

            logging.getLogger(__name__).debug("study plots drawn here: %d threads", threading.active_count())
            return
        copy = optuna.create_study(directions=self.study.directions)
        copy.add_trials(self.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)))
        signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        held = signal.pthread_sigmask(signal.SIG_BLOCK, signals)  # no signal before the child's handlers
        try:
            pid = os.fork()
            if pid == 0:  # the child: draw, say what was written, leave without atexit handlers or flushes
                code = 1
                try:
                    for number, handler in ((signal.SIGINT, signal.SIG_IGN), (signal.SIGHUP, signal.SIG_IGN),
                                            (signal.SIGTERM, signal.SIG_DFL)):
                        signal.signal(number, handler)
                    signal.pthread_sigmask(signal.SIG_SETMASK, held)
                    import json

                    (self.folder / ".written.json").write_text(json.dumps(study_plots(copy, self.folder)))
                    code = 0
                finally:
                    os._exit(code)
            self.pid = pid
            import logging

            logging.getLogger(__name__).debug("study plots drawn by process %d", pid)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def wait(self) -> list[str]:
        """The names of the PNG files written in :attr:`folder` (:func:`study_plots`)."""
        import json
        import logging
        import os

        if self.pid is not None:
            pid, self.pid = self.pid, None
            _, status = os.waitpid(pid, 0)
            written = self.folder / ".written.json"
            if os.waitstatus_to_exitcode(status) == 0 and written.exists():
                return json.loads(written.read_text())
            logging.getLogger(__name__).info("the plot process ended with status %s; drawing here", status)
        return study_plots(self.study, self.folder)

    def close(self) -> None:
        """End a child still drawing and remove the folder (idempotent)."""
        import contextlib
        import os
        import signal

        if self.pid is not None:
            with contextlib.suppress(OSError):
                os.kill(self.pid, signal.SIGTERM)
                os.waitpid(self.pid, 0)
            self.pid = None
        self._tmp.cleanup()


def plot_front(study: Any, points: list[Any], names: list[str], chosen: Any, path: Path) -> None:
    """Optuna's Pareto-front plot; in two dimensions front points carry their trial number, the chosen one
    a star, and an objective spanning more than 20x is drawn on a log axis. ``points``: the front, drawn labelled."""
    import warnings

    plt = _pyplot()
    from optuna.visualization.matplotlib import plot_pareto_front

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ax = plot_pareto_front(study, target_names=names)
        figure = ax.figure
        if len(names) == 2:
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
