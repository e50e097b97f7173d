"""Artifacts in a local store appear whole or not at all, folders included.

MLflow's ``LocalArtifactRepository`` (3.17) writes one file (``log_artifact``) to a hidden staging file beside
its destination and renames it, removing the staging file on failure; but a folder (``log_artifacts``: the
run's ``checkpoints/``, ``plots/``, a logged model's files) is copied file by file straight onto the
destinations (``shutil.copy2``), so a full disk or a signal in the middle leaves a truncated ``best.pt`` or
``model.onnx`` in the store, which later fails to load. :class:`AtomicLocalArtifactRepository` copies a
folder through the single-file path, each file staged and renamed. :func:`install` registers it for local
artifact URIs (schemes ``""`` and ``file``) in MLflow's artifact repository registry, once per process.
"""

from __future__ import annotations

import os

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

_installed: list[bool] = []
_STAGING = ".artifact.uploading."  # MLflow's staging files (mlflow.store.artifact.local_artifact_repo)


class AtomicLocalArtifactRepository(LocalArtifactRepository):
    """``LocalArtifactRepository`` whose ``log_artifacts`` stages and renames each file (``log_artifact``), and
    whose write errors name the destination (MLflow's staging write raises e.g. ``ENOSPC`` without a path)."""

    def log_artifact(self, local_file: str, artifact_path: str | None = None) -> None:
        try:
            super().log_artifact(local_file, artifact_path)
        except OSError as exc:
            staged = exc.filename is None or os.path.basename(str(exc.filename)).startswith(_STAGING)
            if not staged or exc.errno is None:  # a path already named (e.g. the source)
                raise
            _, destination = self._get_destination_artifact_path(local_file, artifact_path)
            raise OSError(exc.errno, exc.strerror, destination) from exc

    def log_artifacts(self, local_dir: str, artifact_path: str | None = None) -> None:
        self._get_or_create_artifact_dir(artifact_path)
        for folder, _dirs, files in os.walk(local_dir):
            relative = os.path.relpath(folder, local_dir)
            parts = [p for p in (artifact_path, None if relative == "." else relative) if p]
            target = "/".join(p.replace(os.sep, "/") for p in parts) or None
            self._get_or_create_artifact_dir(target)
            for name in sorted(files):
                self.log_artifact(os.path.join(folder, name), target)


def install() -> None:
    """Use :class:`AtomicLocalArtifactRepository` for local artifact URIs in this process (idempotent)."""
    if _installed:
        return
    from mlflow.store.artifact.artifact_repository_registry import _artifact_repository_registry as registry

    for scheme in ("", "file"):
        registry.register(scheme, AtomicLocalArtifactRepository)
    _installed.append(True)
