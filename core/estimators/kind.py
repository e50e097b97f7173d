"""scikit-learn estimators (``ModelSpec(fit="estimator")``): fitted once, tracked, exported, predicted.

The run looks like a one-epoch torch run in MLflow: the same params and tags (plus
``trainforge.fit=estimator``), ``train_*``/``val_*`` metrics at step 1 and ``test_*`` metrics computed by
the same :class:`~trainforge.contracts.Task` objects, ``config.yaml``, ``data_meta.json``, the task's plots
and the fitted estimator ``checkpoints/estimator.skops``, written with skops (``skops.io.dump``). Unlike a
pickle, loading it runs no code from the file: ``skops.io.load`` builds only the types skops trusts by
default (scikit-learn estimators, numpy, builtins) and those in :data:`TRUSTED_TYPES`; a file naming any
other type is refused. Runs written before (``checkpoints/estimator.pkl``, a pickle) are not loaded at
all (a crafted pickle runs code when loaded): re-exporting one asks to retrain it.

Export (skl2onnx): the estimator sees flattened raw rows, so the graph starts with ``Flatten`` behind an
input ``input`` ``(batch, *input_shape)`` float32, like every trainforge model. Outputs are renamed to
``label`` (int64 ``(N,)``, the ``ArgMax`` of the probabilities as every consumer computes it) and
``probabilities`` (float32 ``(N, K)``) for classifiers, ``prediction``
(float32 ``(N, T)``) for regressors, and the same ``trainforge.*`` metadata is embedded, so
``trainforge predict`` serves it unchanged. Parity with the estimator is checked on the sample rows; a
random forest classifier's graph computes in float64 (:func:`double_precision`).

A raw table (missing cells, categories, text) is fitted on its encoded features and exported with the same
preprocessing graph as torch models (:func:`trainforge.exporting.tabular.attach`) and the same raw-row gate.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.errors import ConfigError, ExportError, TrainforgeError
from trainforge.kinds import register_kind
from trainforge.tracking import tags as tag

log = logging.getLogger(__name__)
MODEL_FILE = "checkpoints/estimator.skops"
LEGACY_PICKLE = "checkpoints/estimator.pkl"  # before skops: never loaded
#: types outside skops' defaults that the built-in estimators hold (random forests and gradient boosting: the
#: tree; linear-svm: scikit-learn's calibration wrappers)
TRUSTED_TYPES = ("sklearn.tree._tree.Tree", "sklearn.calibration._CalibratedClassifier",
                 "sklearn.calibration._SigmoidCalibration")


def save_estimator(estimator: Any, path: Path) -> None:
    """Write a fitted estimator with ``skops.io.dump`` (no pickle)."""
    import skops.io

    skops.io.dump(estimator, path)


def load_estimator(path: str | Path) -> Any:
    """Read an estimator written by :func:`save_estimator`; no code from the file runs.

    Raises :class:`ExportError` when the file is unreadable or names a type that is neither trusted by
    skops by default nor listed in :data:`TRUSTED_TYPES`.
    """
    import skops.io

    try:
        untrusted = [t for t in skops.io.get_untrusted_types(file=path) if t not in TRUSTED_TYPES]
        if untrusted:
            raise ExportError(f"{Path(path).name} holds types trainforge does not trust: {', '.join(untrusted)}; "
                              "it was not loaded")
        return skops.io.load(path, trusted=list(TRUSTED_TYPES))
    except ExportError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file: one line
        raise ExportError(f"{Path(path).name}: not a readable estimator file ({type(exc).__name__}: {exc})") from None


def split_arrays(split: Any) -> tuple[np.ndarray, np.ndarray]:
    """A split as numpy: features ``(N, D)`` float32 (flattened, raw) and targets as stored."""
    from trainforge.training.data import TensorSplit, batches

    if isinstance(split, TensorSplit):
        x, y = split.x.cpu().numpy(), split.y.cpu().numpy()
    else:
        parts = [(bx.cpu().numpy(), by.cpu().numpy()) for bx, by in batches(split, 65536)]
        x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return x.reshape(len(x), -1).astype(np.float32), y


def outputs(estimator: Any, x: np.ndarray, meta: Any) -> np.ndarray:
    """Task outputs: log-probabilities ``(N, K)`` (logits whose softmax is ``predict_proba``) or ``(N, T)``."""
    if meta.task == "classification":
        return np.log(np.clip(estimator.predict_proba(x), 1e-7, 1.0)).astype(np.float32)
    return np.asarray(estimator.predict(x), dtype=np.float32).reshape(len(x), -1)


def evaluate(estimator: Any, task: Any, split: Any, meta: Any) -> dict[str, float]:
    """The task's metrics of ``estimator`` on a split (same formulas as for torch models)."""
    import torch

    x, y = split_arrays(split)
    out = torch.from_numpy(outputs(estimator, x, meta))
    state = task.new_state(meta.output_dim, torch.device("cpu"))
    task.update(state, out, torch.from_numpy(y), inputs=torch.from_numpy(x))
    return task.compute(state)


def fit_and_log(cfg: dict[str, Any], bundle: Any, run_id: str, experiment_id: str, workdir: Path, *,
                export: bool = True) -> Any:
    """Fit the configured estimator on the training split, log it like a training run, export it.

    Returns a :class:`~trainforge.contracts.TrainResult` (``best_epoch = epochs_run = 1``; ``seconds`` is the fit
    time). Raises :class:`ConfigError` for bad hyperparameters, :class:`ExportError` from the ONNX gate.
    """
    import mlflow
    import yaml
    from mlflow.tracking import MlflowClient

    from trainforge import manager
    from trainforge.contracts import TrainResult
    from trainforge.exporting.logged import log_onnx
    from trainforge.training.tasks import get_task

    meta, tcfg = bundle.meta, cfg["trainer"]
    spec = manager.get("model", cfg["model"]["name"])
    params = {k: v for k, v in cfg["model"].items() if k != "name"}
    try:
        estimator = spec.build(input_shape=(math.prod(meta.input_shape),), output_dim=meta.output_dim,
                               task=meta.task, seed=int(tcfg["seed"]), **params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model {spec.name!r} could not be built with {params}: {exc}") from exc
    MlflowClient().set_tag(run_id, tag.FIT, "estimator")
    x, y = split_arrays(bundle.train)
    started = time.perf_counter()
    estimator.fit(x, y.ravel() if y.ndim == 1 or y.shape[1] == 1 else y)
    seconds = time.perf_counter() - started
    if meta.task == "classification" and list(estimator.classes_) != list(range(meta.output_dim)):
        missing = [meta.class_names[i] if meta.class_names else str(i) for i in range(meta.output_dim)
                   if i not in set(int(c) for c in estimator.classes_)]
        raise ConfigError(f"the training split lacks class(es) {', '.join(map(repr, missing))}; lower "
                          "trainer.test_fraction / val_fraction")

    task = get_task(meta.task, meta=meta)
    history = {f"{split}_{k}": v for split in ("train", "val")
               for k, v in evaluate(estimator, task, getattr(bundle, split), meta).items()}
    mlflow.log_metrics(history, step=1, run_id=run_id)
    test = {f"test_{k}": v for k, v in evaluate(estimator, task, bundle.test, meta).items()}
    mlflow.log_metrics({**test, "best_epoch": 1, "epochs_run": 1, "train_seconds": seconds}, run_id=run_id)

    (workdir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_estimator(estimator, workdir / MODEL_FILE)
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (workdir / "data_meta.json").write_text(json.dumps(meta.to_dict(), indent=1))
    if meta.report:  # a raw table: rows read, duplicates, test rows in train, per-column types and statistics
        (workdir / "data_report.json").write_text(json.dumps(meta.report, indent=1))
    for name in ("config.yaml", "data_meta.json", *(["data_report.json"] if meta.report else [])):
        mlflow.log_artifact(str(workdir / name), run_id=run_id)
    mlflow.log_artifact(str(workdir / MODEL_FILE), artifact_path="checkpoints", run_id=run_id)
    plot_dir = workdir / "plots"
    plot_dir.mkdir(exist_ok=True)
    tx, ty = split_arrays(bundle.test)
    task.plots(plot_dir, tx.reshape(len(tx), *meta.input_shape), ty, outputs(estimator, tx, meta), meta)
    if any(plot_dir.iterdir()):
        mlflow.log_artifacts(str(plot_dir), artifact_path="plots", run_id=run_id)

    result = TrainResult(run_id, experiment_id, test, 1, 1, seconds, cfg, history=[history], model=estimator)
    if export:
        sample = tx[:256].reshape(-1, *meta.input_shape)
        report = export_estimator(estimator, meta, sample, workdir / "model.onnx", run_id=run_id, config=cfg)
        log_onnx(result, report, sample)
    return result


def _rename(graph: Any, old: str, new: str) -> None:
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for value in (*graph.input, *graph.output):
        if value.name == old:
            value.name = new


def double_precision(estimator: Any) -> bool:
    """Whether the estimator's ONNX graph runs in float64 (the float32 ``input`` cast to double in the graph).

    A random forest classifier averages its trees' votes: 10 of 20 trees for each class is an exact tie
    (probabilities 0.5, 0.5), which scikit-learn's ``argmax`` gives to the first class. onnxruntime's float32
    ``TreeEnsembleClassifier`` adds the 1/20 leaf weights in float32 and returns 0.49999994 against
    0.50000006, so the argmax and the estimator disagree on that row (the defect of issue 23: 1 of 500
    held-out rows of a 1,500-row, 8-feature table, in 4 seeds of 6). In float64 the sums stay within a
    float32 half-ulp of 0.5, so the float32 probabilities are an exact tie again and the graph's ``label``
    (``ArgMax``, first index on ties, as numpy) agrees. skl2onnx's documented caveat, float32 thresholds,
    was not the cause: the estimator is fitted on float32 rows (:func:`split_arrays`), the values the graph
    sees. Other estimators stay float32: onnxruntime cannot load the double gradient-boosting classifier
    and ``TreeEnsembleRegressor`` graphs skl2onnx writes (ai.onnx.ml opset 3), and their outputs are not
    sums of equal weights."""
    from sklearn.ensemble import RandomForestClassifier

    final = estimator.steps[-1][1] if hasattr(estimator, "steps") else estimator
    return isinstance(final, RandomForestClassifier)


def _graph(estimator: Any, meta: Any, flat: np.ndarray, names: list[str]) -> Any:
    """skl2onnx's graph of ``estimator`` behind ``input`` -> ``Flatten`` (-> ``Cast`` to double, see
    :func:`double_precision`), outputs renamed to ``names`` and float32."""
    import onnx
    from onnx import TensorProto, helper
    from skl2onnx import to_onnx

    from trainforge.exporting.exporter import INPUT_NAME

    double = double_precision(estimator)
    options = {id(estimator): {"zipmap": False}} if meta.task == "classification" else None
    try:
        proto = to_onnx(estimator, flat[:1].astype(np.float64 if double else np.float32), options=options)
        graph = proto.graph
        old_input = graph.input[0].name
        for out, name in zip(list(graph.output), names, strict=True):
            _rename(graph, out.name, name)
            if out.type.tensor_type.elem_type == TensorProto.DOUBLE:
                _rename(graph, name, f"{name}_double")
                graph.node.append(helper.make_node("Cast", [f"{name}_double"], [name], to=TensorProto.FLOAT))
                out.name, out.type.tensor_type.elem_type = name, TensorProto.FLOAT
        if meta.task == "classification":  # the label every consumer computes: argmax of the float32 probabilities
            _rename(graph, "label", "estimator_label")
            graph.output[0].name = "label"
            graph.node.append(helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0,
                                               name="trainforge_label"))
        _rename(graph, old_input, "estimator_input")
        del graph.input[:]
        graph.input.append(helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT,
                                                         ["batch", *(int(d) for d in meta.input_shape)]))
        front = [helper.make_node("Flatten", [INPUT_NAME], ["flat_input" if double else "estimator_input"], axis=1,
                                  name="trainforge_flatten")]
        if double:
            front.append(helper.make_node("Cast", ["flat_input"], ["estimator_input"], to=TensorProto.DOUBLE,
                                          name="trainforge_double"))
        for node in reversed(front):
            graph.node.insert(0, node)
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportError(f"skl2onnx could not export {type(estimator).__name__}: {exc}") from exc
    return proto


def reference(estimator: Any, task: str) -> Any:
    """The estimator's side of the gate: float32 features ``(N, D)`` -> ``[labels (N,), probabilities (N, K)]``
    for a classifier, ``[predictions (N, T)]`` for a regressor (the graph's outputs, in order)."""
    def run(features: np.ndarray) -> list[np.ndarray]:
        if task == "classification":
            return [estimator.predict(features), estimator.predict_proba(features)]
        return [np.asarray(estimator.predict(features)).reshape(len(features), -1)]

    return run


def _sample_parity(estimator: Any, session: Any, meta: Any, flat: np.ndarray, names: list[str]) -> dict[int, float]:
    """Largest |difference| of probabilities (or predictions) at batch 1 and N; labels must be identical.

    Raises :class:`ExportError` naming how many labels differ and by how much (the largest probability
    difference on those rows, and the estimator's gap between its two most probable classes there)."""
    from trainforge.exporting.exporter import INPUT_NAME

    run, rows, diffs = reference(estimator, meta.task), flat.reshape(len(flat), *meta.input_shape), {}
    for n in sorted({1, len(rows)}):
        got, expected = session.run(names, {INPUT_NAME: rows[:n]}), run(flat[:n])
        if meta.task == "classification":
            differ = np.flatnonzero(got[0] != expected[0])
            if len(differ):
                probs = np.sort(expected[1][differ], axis=1)
                raise ExportError(
                    f"ONNX labels differ from the estimator's on {len(differ)} of {n} rows (max |Δ probability| "
                    f"{np.abs(got[1][differ] - expected[1][differ]).max():.3g} there, the estimator's top-two gap "
                    f"{(probs[:, -1] - probs[:, -2]).min():.3g}); the file was not written")
        diffs[n] = float(np.max(np.abs(got[-1] - expected[-1])))
    return diffs


def export_estimator(estimator: Any, meta: Any, sample: np.ndarray, path: str | Path, *, run_id: str | None = None,
                     config: dict[str, Any] | None = None, tolerance: float = 1e-4) -> Any:
    """Convert with skl2onnx, wrap the input and outputs (see the module docstring), verify, embed metadata.

    ``sample``: rows ``(N, *input_shape)`` as the estimator sees them (a raw table's encoded features);
    parity: max abs difference of probabilities (or predictions) at batch 1 and N, and identical labels.
    A raw table (``meta.table`` set) gets its preprocessing in front
    (:func:`trainforge.exporting.tabular.attach`) and the raw-row gate
    (:func:`~trainforge.exporting.tabular.raw_parity`: probabilities within 1e-4 for tree ensembles,
    1e-5 otherwise). Raises :class:`ExportError`; a file that fails is not written.
    """
    from trainforge.atomic import atomic_output
    from trainforge.exporting import metadata
    from trainforge.exporting.exporter import INPUT_NAME, ExportReport
    from trainforge.exporting.sessions import open_session

    started, path = time.perf_counter(), Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["label", "probabilities"] if meta.task == "classification" else ["prediction"]
    flat = np.ascontiguousarray(sample[:256], dtype=np.float32).reshape(len(sample[:256]), -1)
    proto = _graph(estimator, meta, flat, names)
    session, _ = open_session(proto.SerializeToString(), "cpu")
    diffs = _sample_parity(estimator, session, meta, flat, names)
    if not max(diffs.values()) <= tolerance:
        raise ExportError(f"ONNX parity check failed: max abs difference {max(diffs.values()):.3g} > {tolerance:g}")
    table, raw_figures = getattr(meta, "table", None), {}
    if table is not None:  # a raw table: the fitted preprocessing in front, the whole graph checked on raw rows
        from trainforge.exporting.tabular import PROBABILITY_TOLERANCE, attach, raw_parity

        proto = attach(proto, table, INPUT_NAME)
        trees = hasattr(getattr(estimator, "steps", [[None, estimator]])[-1][1], "estimators_")
        raw_figures = raw_parity(proto, table, reference(estimator, meta.task), names, meta.task,
                                 tolerance=1e-4 if trees else PROBABILITY_TOLERANCE)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    entries = metadata.build(meta, names, metadata.Gate(opset, diffs, None, raw_figures or None), run_id=run_id,
                             config=config, estimator=estimator, table=table)
    metadata.write(proto, entries)
    with atomic_output(path) as tmp:  # an existing file is replaced only by a complete one
        import onnx

        onnx.save(proto, str(tmp))
    return ExportReport(path, opset, diffs, time.perf_counter() - started, entries, {}, raw_figures,
                        None if table is None else table.heldout.head(5))


def export_run(run_id: str, output: str | Path | None = None, *, part: str | None = None,
               log_to_run: bool = False) -> Any:
    """Re-export the estimator of run ``run_id`` (see :func:`trainforge.exporting.exporter.export`).

    Raises :class:`ExportError` for a run that stored its estimator as a pickle (written before skops):
    it is not loaded, the message says to retrain."""
    import yaml

    from trainforge.contracts import DataMeta
    from trainforge.tracking import store as tracking
    from trainforge.training import data as data_mod

    if part:
        raise ExportError(f"run {run_id} is a scikit-learn estimator: it has no part {part!r} to export")
    try:
        local = tracking.download(run_id, MODEL_FILE)
    except TrainforgeError:
        if not _has_artifact(run_id, LEGACY_PICKLE):
            raise
        raise ExportError(f"run {run_id} stored its estimator as a pickle ({LEGACY_PICKLE}), which trainforge no "
                          "longer loads (a pickle can run code when loaded); retrain it with trainforge train "
                          "to get a re-exportable run") from None
    estimator = load_estimator(local)
    with open(tracking.download(run_id, "config.yaml")) as fh:
        config = yaml.safe_load(fh)
    with open(tracking.download(run_id, "data_meta.json")) as fh:
        meta = DataMeta.from_dict(json.load(fh))
    bundle = data_mod.load(config["dataset"], config["trainer"], task=meta.task)
    meta.table = bundle.meta.table  # a raw table's preprocessing, re-fitted on the same training rows
    sample = data_mod.sample_rows(bundle.test)
    report = export_estimator(estimator, meta, sample, Path(output) if output else Path(f"{run_id}.onnx"),
                              run_id=run_id, config=config)
    if log_to_run:
        from trainforge.exporting.exporter import log_onnx_artifact

        log_onnx_artifact(report.path, run_id)
    return report


def _has_artifact(run_id: str, path: str) -> bool:
    from mlflow.tracking import MlflowClient

    folder, _, _name = path.rpartition("/")
    try:
        return any(a.path == path for a in MlflowClient().list_artifacts(run_id, folder))
    except Exception:  # noqa: BLE001 - unreadable store: treat as absent
        return False


class EstimatorKind:
    """The ``"estimator"`` model kind (:class:`trainforge.kinds.ModelKind`): this module's functions."""

    name = "estimator"

    def fit_and_log(self, cfg: dict[str, Any], bundle: Any, run_id: str, experiment_id: str, workdir: Path, *,
                    export: bool = True) -> Any:
        return fit_and_log(cfg, bundle, run_id, experiment_id, workdir, export=export)

    def export_run(self, run_id: str, output: str | Path | None = None, *, part: str | None = None,
                   log_to_run: bool = False) -> Any:
        return export_run(run_id, output, part=part, log_to_run=log_to_run)


register_kind(EstimatorKind())
