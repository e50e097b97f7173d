"""Dataset plugin: ``example-moons``, scikit-learn's two interleaving half circles (generated)."""

from __future__ import annotations

import trainforge


def load_moons(n_samples=600, noise=0.2, seed=0):
    """``sklearn.datasets.make_moons``: ``(n_samples, 2)`` float32 points, labels 0/1 ("upper", "lower").

    Raises :class:`trainforge.DataError` for fewer than 20 samples or a negative noise.
    """
    import numpy as np
    from sklearn.datasets import make_moons

    if int(n_samples) < 20 or float(noise) < 0:
        raise trainforge.DataError(f"example-moons needs n_samples >= 20 and noise >= 0, got {n_samples}, {noise}")
    x, y = make_moons(n_samples=int(n_samples), noise=float(noise), random_state=int(seed))
    return trainforge.ArrayData(features=x.astype(np.float32), target=y, task="classification",
                                class_names=["upper", "lower"], feature_names=["x", "y"],
                                source=f"sklearn.datasets.make_moons(n_samples={n_samples}, noise={noise})")


@trainforge.hookimpl
def register_datasets(register):
    register(trainforge.DatasetSpec(
        name="example-moons",
        description="Two interleaving half circles (scikit-learn make_moons), 2 features, 2 classes",
        load=load_moons,
        tasks={"classification"},
        defaults={"n_samples": 600, "noise": 0.2, "seed": 0},
        param_help={"n_samples": "points generated", "noise": "std of Gaussian noise added",
                    "seed": "generator seed"},
    ))
