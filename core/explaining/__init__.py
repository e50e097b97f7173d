"""Attributions: model-agnostic methods on the shipped ONNX session, Integrated Gradients on the torch model,
and the checks that they mean something. Imports estimators, exporting, tracking, training and the floor.

This module stays light (no shap, captum, torch or MLflow at import): the CLI reads :data:`METHODS` at start-up
and ``train --explain`` / ``tune --explain`` call :func:`require_extra` before any run opens."""

#: the methods ``trainforge explain --method`` takes (see :mod:`trainforge.explaining.methods`)
METHODS = ("permutation", "shap", "kernel-shap", "integrated-gradients", "occlusion")


def require_extra(command: str = "trainforge explain") -> None:
    """Raise :class:`~trainforge.errors.ConfigError` (one line naming the ``explain`` extra) when ``shap`` or
    ``captum`` is not installed; ``command`` is what needs them (``"train --explain"``)."""
    import importlib.util

    missing = [name for name in ("shap", "captum") if importlib.util.find_spec(name) is None]
    if missing:
        from trainforge.errors import ConfigError

        raise ConfigError(f"{command} needs {' and '.join(missing)}: pip install 'trainforge[explain]'")
