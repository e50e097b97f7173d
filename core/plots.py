"""PNG plots logged as run artifacts (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(history: list[dict[str, float]], path: Path, task: str) -> Path:
    """Loss and the task's main metric (accuracy or R²) per epoch, train vs validation."""
    plt = _pyplot()
    main = "accuracy" if task == "classification" else "r2"
    epochs = np.arange(1, len(history) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("loss", main)):
        for split in ("train", "val"):
            key = f"{split}_{metric}"
            if history and key in history[0]:
                ax.plot(epochs, [h[key] for h in history], label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], path: Path) -> Path:
    """Test-split confusion matrix (rows: true class, columns: predicted), via scikit-learn."""
    plt = _pyplot()
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(labels) + 2),) * 2)
    ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(labels))), display_labels=labels, ax=ax, colorbar=False
    )
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
