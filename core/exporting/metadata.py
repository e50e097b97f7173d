"""The ``trainforge.*`` metadata of an ONNX file: built, written and read here only.

Every trainforge ONNX file (the torch export gate, the scikit-learn estimator export, int8 quantization)
carries the same keys in its ``metadata_props``, all strings (lists, dicts and null as JSON):

``trainforge.task``, ``.input_name``, ``.input_shape`` (``"batch"`` first), ``.input_dtype``, ``.outputs``,
``.class_names``, ``.feature_names`` (null for a generator, whose input is a latent code),
``.normalization`` (mean/std and whether they are applied inside the graph), ``.version``,
``.mlflow_run_id``, ``.model``, ``.dataset``, ``.opset``, ``.parity_max_abs_diff`` (onnxruntime's CPU
provider vs the source model, per batch size), ``.parity_cuda_max_abs_diff`` (its CUDA provider; null
where CUDA cannot run or for an estimator), ``.part`` (empty for the whole model, e.g. ``encoder``),
``.estimator`` (the scikit-learn class name, empty for a torch model), ``.columns`` (a raw table's
column schema with its training statistics, :class:`trainforge.data.Column` dicts; null otherwise),
``.raw_parity`` (that table's raw-row gate figures: rows, max_abs_diff, argmax_agreement; null otherwise)
and, on an int8 file only, ``.quantization``.

Self-contained at import (standard library only), so :mod:`trainforge.exporting.logged` ships a copy
with the MLflow serving model (``code_paths``), which reads the metadata with :func:`from_session`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from trainforge.errors import ExportError
except ImportError:  # the copy shipped with an MLflow serving model: trainforge is not installed there
    ExportError = ValueError  # type: ignore[assignment,misc]

PREFIX = "trainforge."
INPUT_NAME = "input"
#: the keys :func:`build` writes, in order (``quantization`` is added by int8 quantization only)
KEYS = ("task", "input_name", "input_shape", "input_dtype", "outputs", "class_names", "feature_names",
        "normalization", "version", "mlflow_run_id", "model", "dataset", "opset", "parity_max_abs_diff",
        "parity_cuda_max_abs_diff", "part", "estimator", "columns", "raw_parity")


def _diffs(diffs: dict[int, float] | None) -> str:
    return json.dumps({str(k): v for k, v in diffs.items()} if diffs else None)


@dataclass(frozen=True)
class Gate:
    """What an export gate measured, as :func:`build` records it.

    ``opset``: the graph's default-domain opset. ``parity``/``cuda_parity``: the largest absolute output
    difference per batch size on onnxruntime's CPU and CUDA providers (``cuda_parity`` None where it was
    not measured). ``raw_parity``: a raw table's raw-row gate figures (rows, max_abs_diff,
    argmax_agreement), None for a numeric input.
    """

    opset: int
    parity: dict[int, float]
    cuda_parity: dict[int, float] | None = None
    raw_parity: dict[str, float] | None = None


def build(meta: Any, outputs: list[str], gate: Gate, *, run_id: str | None = None,
          config: dict[str, Any] | None = None, part: str = "", estimator: Any = None,
          input_shape: tuple[int, ...] | None = None, table: Any = None) -> dict[str, str]:
    """The metadata entries (key without the ``trainforge.`` prefix -> string) of an exported model.

    - ``meta``: the run's :class:`~trainforge.contracts.DataMeta` (task, class and feature names,
      normalization, dataset); ``outputs``: the graph's output names; ``gate``: the opset and parity
      figures (:class:`Gate`).
    - ``estimator``: the fitted scikit-learn estimator (its normalization is not in the graph), else None
      for a torch model (standardization is inside the graph).
    - ``input_shape``: the graph's input shape without the batch axis when it is not the data's (a
      generator's latent code; ``feature_names`` is then null), else ``meta.input_shape``.
    - ``table``: a raw table's fitted preprocessing (:class:`trainforge.training.tabular` table; its
      ``columns`` are written), None for a numeric input.
    """
    from trainforge import __version__

    in_graph = estimator is None
    normalization = {"mean": _list(meta.mean) if in_graph else None, "std": _list(meta.std) if in_graph else None,
                     "applied_in_graph": in_graph}
    shape = meta.input_shape if input_shape is None else input_shape
    return {
        "task": meta.task,
        "input_name": INPUT_NAME,
        "input_shape": json.dumps(["batch", *(int(d) for d in shape)]),
        "input_dtype": "float32",
        "outputs": json.dumps(list(outputs)),
        "class_names": json.dumps(meta.class_names),
        "feature_names": json.dumps(meta.feature_names if input_shape is None else None),
        "normalization": json.dumps(normalization),
        "version": __version__,
        "mlflow_run_id": run_id or "",
        "model": (config or {}).get("model", {}).get("name", ""),
        "dataset": meta.dataset,
        "opset": str(gate.opset),
        "parity_max_abs_diff": _diffs(gate.parity),
        "parity_cuda_max_abs_diff": _diffs(gate.cuda_parity),
        "part": part or "",
        "estimator": type(estimator).__name__ if estimator is not None else "",
        "columns": json.dumps([c.to_dict() for c in table.columns] if table is not None else None),
        "raw_parity": json.dumps(gate.raw_parity or None),
    }


def _list(values: Any) -> list[float]:
    import numpy as np

    return np.asarray(values).tolist()


def write(proto: Any, entries: dict[str, str], producer_version: str | None = None) -> None:
    """Replace ``proto``'s ``metadata_props`` with ``entries`` (keys without the prefix) and set its producer.

    Raises :class:`ExportError` when a classifier's ``class_names`` does not name every class of its
    ``probabilities``/``logits`` output (the file would predict wrong or missing labels).
    """
    _check_classes(proto, entries)
    del proto.metadata_props[:]
    for key, value in entries.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = PREFIX + key, str(value)
    if producer_version is None:
        from trainforge import __version__ as producer_version
    proto.producer_name, proto.producer_version = "trainforge", producer_version


def _check_classes(proto: Any, entries: dict[str, str]) -> None:
    if entries.get("task") != "classification":
        return
    names = json.loads(entries.get("class_names") or "null")
    for output in proto.graph.output:
        if output.name in ("probabilities", "logits"):
            dims = output.type.tensor_type.shape.dim
            if len(dims) >= 2 and dims[-1].HasField("dim_value"):
                class_names({"class_names": names}, dims[-1].dim_value, output.name)


def class_names(meta: dict[str, Any], width: int, output: str = "probabilities") -> list[Any]:
    """A classifier's ``class_names`` after checking that they name each of the ``width`` columns of its
    ``output``; raises :class:`ExportError` naming both counts otherwise (labels would be wrong or missing)."""
    names = meta.get("class_names")
    if not isinstance(names, list) or len(names) != width:
        shown = ", ".join(map(str, names[:5])) + (", ..." if len(names) > 5 else "") if isinstance(names, list) else ""
        raise ExportError(f"class_names mismatch: the model's {output!r} output has {width} classes but the metadata "
                          f"names {len(names) if isinstance(names, list) else 'none'}" + (f" ({shown})" if shown else ""))
    return names


def raw(proto: Any) -> dict[str, str]:
    """The ``trainforge.*`` entries of a ``ModelProto`` as stored (key without the prefix -> string)."""
    return {p.key[len(PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(PREFIX)}


def decode(custom: dict[str, str]) -> dict[str, Any]:
    """``trainforge.*`` entries of a metadata map (e.g. onnxruntime's ``custom_metadata_map``), prefix
    removed and JSON values decoded (a value that is not JSON stays a string)."""
    out: dict[str, Any] = {}
    for key, value in custom.items():
        if key.startswith(PREFIX):
            try:
                out[key[len(PREFIX):]] = json.loads(value)
            except ValueError:
                out[key[len(PREFIX):]] = value
    return out


def from_session(session: Any) -> dict[str, Any]:
    """The decoded metadata of the model an onnxruntime session runs (see :func:`decode`)."""
    return decode(session.get_modelmeta().custom_metadata_map)


def read(path: str | Path) -> dict[str, Any]:
    """The decoded ``trainforge.*`` metadata of an ONNX file. Raises :class:`ExportError` if unreadable."""
    from trainforge.errors import TrainforgeError
    from trainforge.exporting.sessions import open_session

    try:
        session, _ = open_session(path, "cpu", threads=1)
    except TrainforgeError as exc:
        raise ExportError(str(exc)) from None
    return from_session(session)
