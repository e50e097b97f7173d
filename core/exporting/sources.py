"""Where ``predict`` finds its ONNX file: a path, a run (``runs:/RUN_ID``) or a registered model
(``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, ``models:/m-...``), checked against the SHA-256 the run
recorded when the file was logged (:data:`trainforge.exporting.exporter.SHA256_TAG`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trainforge.errors import TrainforgeError


def resolve_model(model: str, tracking_uri: str | None = None) -> str:
    """The local path of the ONNX file ``model`` names: a path, ``runs:/RUN_ID[/PATH]`` (default
    ``onnx/model.onnx``) or a ``models:/`` URI of a model trainforge logged (its pyfunc model's ONNX artifact,
    or the ``-onnx`` flavor's file).

    Raises :class:`TrainforgeError` when the file is missing or its SHA-256 differs from the one recorded at
    export (a damaged or replaced file can still pass ``onnx.checker`` and predict other labels).
    """
    if model.startswith(("runs:/", "models:/")):
        from trainforge.tracking import store as tracking

        tracking.setup_uri(tracking_uri)
        if model.startswith("models:/"):
            return _registered_onnx(model)
        run_id, _, sub = model[len("runs:/"):].partition("/")
        local = tracking.download(run_id, sub or "onnx/model.onnx")
        if sub in ("", "onnx/model.onnx"):
            check_sha256(run_id, local, f"runs:/{run_id}: onnx/model.onnx")
        return local
    if not Path(model).is_file():
        raise TrainforgeError(f"model file not found: {model}")
    return model


def check_sha256(run_id: str, path: str | Path, what: str) -> None:
    """Refuse ``path`` when its SHA-256 differs from run ``run_id``'s tag ``trainforge.onnx_sha256``. Runs
    logged before the tag existed are not checked."""
    from trainforge.exporting.exporter import SHA256_TAG, file_sha256
    from trainforge.tracking import store as tracking

    recorded = tracking.get_run(run_id).data.tags.get(SHA256_TAG)
    if recorded and file_sha256(path) != recorded:
        raise TrainforgeError(f"{what} does not match the SHA-256 recorded at export in run {run_id} "
                              f"({recorded[:12]}...); the file is damaged or was replaced: re-export the run")


def _registered_onnx(uri: str) -> str:
    """Download the MLflow model ``uri`` and return its ONNX file, checked against its source run's SHA-256."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.utils.models import get_model_name_and_version
    from mlflow.tracking import MlflowClient

    from trainforge.tracking import store as tracking

    client = MlflowClient()
    try:
        found = get_model_name_and_version(client, uri)  # (name, version) or (logged model id,)
        run_id = (client.get_model_version(*found).run_id if len(found) == 2
                  else client.get_logged_model(found[0]).source_run_id)
        with tracking.mlflow_environ(tracking.QUIET_DOWNLOAD):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    except MlflowException as exc:
        raise TrainforgeError(f"{uri}: {exc.message.splitlines()[0]}") from None
    try:
        flavors: dict[str, Any] = yaml.safe_load((local / "MLmodel").read_text())["flavors"]
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        raise TrainforgeError(f"{uri}: not an MLflow model (no readable MLmodel file)") from None
    onnx_artifact = (flavors.get("python_function", {}).get("artifacts") or {}).get("onnx", {}).get("path")
    relative = onnx_artifact or flavors.get("onnx", {}).get("data")
    if not relative or not run_id:
        raise TrainforgeError(f"{uri}: not a trainforge model (no ONNX file from a run; flavors: "
                              f"{', '.join(flavors)})")
    path = local / relative
    check_sha256(run_id, path, f"{uri}: {relative}")
    return str(path)
