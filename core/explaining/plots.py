"""The explanation's PNGs (matplotlib, Agg backend): importance bars, a SHAP beeswarm, per-class image grids
(input, IG, occlusion) and attributions over time steps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainforge.plots import _pyplot

#: features drawn in the bar and beeswarm plots
TOP = 15


def importance_bars(importance: dict[str, np.ndarray], names: list[str], path: Path, spread: dict[str, np.ndarray]
                    | None = None) -> Path:
    """Horizontal bars of each method's global importance over the top :data:`TOP` features (ranked by the
    mean of the methods' importances, each scaled to a maximum of 1), error bars for a method's spread."""
    plt = _pyplot()
    scaled = {k: v / (np.abs(v).max() or 1.0) for k, v in importance.items()}
    order = np.argsort(-np.mean(list(scaled.values()), axis=0))[:TOP][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * len(order)))
    height = 0.8 / len(scaled)
    for i, (method, values) in enumerate(scaled.items()):
        err = None
        if spread and method in spread and spread[method] is not None:
            err = spread[method][order] / (np.abs(importance[method]).max() or 1.0)
        ax.barh(np.arange(len(order)) + (i - (len(scaled) - 1) / 2) * height, values[order], height=height,
                xerr=err, label=method, capsize=2)
    ax.set_yticks(np.arange(len(order)), [names[j] for j in order])
    ax.set_xlabel("global importance (scaled to the method's largest)")
    ax.set_title("Feature importance by method")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def beeswarm(values: np.ndarray, x: np.ndarray, names: list[str], path: Path, title: str = "SHAP values") -> Path:
    """Per-row SHAP values ``(N, D)`` of the top :data:`TOP` features (by mean |value|), one row of dots per
    feature, coloured by the feature's value (low blue, high red; scaled per feature)."""
    plt = _pyplot()
    order = np.argsort(-np.abs(values).mean(0))[:TOP][::-1]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.38 * len(order)))
    rng = np.random.default_rng(0)
    for pos, j in enumerate(order):
        feature = x[:, j]
        span = np.ptp(feature) or 1.0
        colour = (feature - feature.min()) / span
        jitter = rng.uniform(-0.3, 0.3, len(feature))
        points = ax.scatter(values[:, j], pos + jitter, c=colour, cmap="coolwarm", s=8, vmin=0, vmax=1, alpha=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(np.arange(len(order)), [names[j] for j in order])
    ax.set_xlabel("SHAP value (toward the row's predicted class, or the prediction)")
    ax.set_title(title)
    bar = fig.colorbar(points, ax=ax, ticks=[0, 1], fraction=0.04)
    bar.ax.set_yticklabels(["low", "high"])
    bar.set_label("feature value")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(images: np.ndarray, maps: dict[str, np.ndarray], labels: list[str], path: Path) -> Path:
    """One row per image ``(N, C, H, W)``: the input, then each method's map ``(N, C, H, W)`` (summed over
    channels) over the input in grey; red raises the explained class, blue lowers it (symmetric scale per
    map). ``labels``: one title per row (e.g. its class)."""
    plt = _pyplot()
    cols = 1 + len(maps)
    fig, axes = plt.subplots(len(images), cols, figsize=(1.9 * cols, 1.75 * len(images)), squeeze=False)
    for i, image in enumerate(images):
        grey = image.mean(0)
        axes[i, 0].imshow(grey, cmap="gray_r")
        axes[i, 0].set_ylabel(labels[i], fontsize=9)
        for k, (method, values) in enumerate(maps.items(), start=1):
            heat = values[i].sum(0)
            limit = np.abs(heat).max() or 1.0
            axes[i, k].imshow(grey, cmap="gray_r", alpha=0.35)
            axes[i, k].imshow(heat, cmap="bwr", vmin=-limit, vmax=limit, alpha=0.75)
            if i == 0:
                axes[i, k].set_title(method, fontsize=9)
        if i == 0:
            axes[i, 0].set_title("input", fontsize=9)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Attributions for each row's class (red: for it, blue: against it)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def over_time(values: dict[str, np.ndarray], input_shape: tuple[int, ...], path: Path) -> Path:
    """Mean |attribution| per time step (axis 0 of ``input_shape``, summed over the other axes) for each
    method's ``(N, D)`` values, each scaled to a maximum of 1."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 3.5))
    for method, v in values.items():
        steps = np.abs(v.reshape(len(v), input_shape[0], -1)).sum(2).mean(0)
        ax.plot(np.arange(1, len(steps) + 1), steps / (steps.max() or 1.0), marker="o", ms=3, label=method)
    ax.set_xlabel("time step (1 = oldest)")
    ax.set_ylabel("mean |attribution| (scaled)")
    ax.set_title("Attributions over time steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
