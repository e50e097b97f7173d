"""The raw-row part of the ONNX graph: a raw table's fitted preprocessing in front of the model's graph.

Why skl2onnx plus ``onnx.compose.merge_models`` rather than the same operations in the torch module: the
training side stays scikit-learn's tested ``SimpleImputer``/``OneHotEncoder``/``TfidfVectorizer``, and
skl2onnx's converters of exactly those fitted objects give the graph; the gate below then checks the two
on raw rows. Missing-value indicators (which skl2onnx's ``SimpleImputer`` converter leaves out) are
written here as ``Concat`` of those columns -> ``IsNaN`` -> ``Cast`` (3 nodes however many columns: a node per column
made the batch-1 call 1.3x slower, benchmarks/RESULTS_rawtables.md), concatenated after the transformer's output, as
:meth:`~trainforge.training.tabular.TablePrep.transform_inputs` does.

The merged graph takes one ``(N, 1)`` input per used column, named as the column: float32 (NaN for
missing) for numeric and boolean columns, strings (``""`` for missing) for categorical and text columns
(:func:`trainforge.data.raw_inputs` builds them from a DataFrame).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from trainforge.data import raw_inputs
from trainforge.errors import ExportError

log = logging.getLogger(__name__)

FEATURES = "tabular_features"
#: classification: largest |difference| of probabilities, training-side pipeline vs onnxruntime on raw rows
PROBABILITY_TOLERANCE = 1e-5
#: regression: largest difference relative to max(1, |value|)
RELATIVE_TOLERANCE = 1e-4


def _convert(prep: Any, opset: int) -> Any:
    """skl2onnx's graph of ``prep.transformer``: raw column inputs -> ``transformed_column`` float32."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.feature_extraction.text import TfidfVectorizer

    from trainforge.training.tabular import TOKEN_PATTERN

    types = [(c.name, FloatTensorType([None, 1]) if c.dtype == "float32" else StringTensorType([None, 1]))
             for c in prep.used]
    options = {TfidfVectorizer: {"locale": "C", "tokenexp": TOKEN_PATTERN}}  # "C" exists everywhere
    proto = convert_sklearn(prep.transformer, initial_types=types, target_opset={"": min(opset, 21), "ai.onnx.ml": 3},
                            options=options)
    for inp, (name, _) in zip(proto.graph.input, types, strict=True):  # skl2onnx renames e.g. "mean radius"
        if inp.name != name:
            old, inp.name = inp.name, name
            for node in proto.graph.node:
                node.input[:] = [name if x == old else x for x in node.input]
    return proto


def table_graph(prep: Any, opset: int, ir_version: int) -> Any:
    """The preprocessing as an ONNX model whose one output ``tabular_features`` is float32 ``(N, D)``."""
    import onnx
    from onnx import TensorProto, helper

    proto = _convert(prep, opset)
    graph = proto.graph
    out = graph.output[0].name
    parts = [out]
    if prep.indicators:  # one IsNaN and one Cast over the (N, k) indicator columns: 2 nodes, not 2 per column
        names = [col.name for col in prep.indicators]
        graph.node.extend([helper.make_node("Concat", names, ["indicator_inputs"], axis=1),
                           helper.make_node("IsNaN", ["indicator_inputs"], ["indicator_isnan"]),
                           helper.make_node("Cast", ["indicator_isnan"], ["indicators"], to=TensorProto.FLOAT)])
        parts.append("indicators")
    graph.node.append(helper.make_node("Concat", parts, [FEATURES], axis=1))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, [None, len(prep.feature_names)]))
    default = next(o for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if default.version != opset:
        proto = onnx.version_converter.convert_version(proto, opset)
    proto.ir_version = ir_version
    return proto


def attach(model_proto: Any, prep: Any, input_name: str) -> Any:
    """``model_proto`` (whose input ``input_name`` takes the encoded features) with the preprocessing in front."""
    import onnx

    opset = next(o.version for o in model_proto.opset_import if o.domain in ("", "ai.onnx"))
    try:
        front = table_graph(prep, opset, model_proto.ir_version)
        front = onnx.compose.add_prefix(front, "prep_", rename_inputs=False, rename_outputs=False)
        merged = onnx.compose.merge_models(front, model_proto, io_map=[(FEATURES, input_name)])
        onnx.checker.check_model(merged, full_check=True)
    except Exception as exc:
        raise ExportError(f"the table preprocessing cannot be exported to ONNX: {exc}") from exc
    return merged


def edge_rows(prep: Any, n: int = 8) -> Any:
    """Generated raw rows the gate checks besides the held-out split: every used column missing in turn,
    unseen categories, rare levels and empty text, built from the first held-out rows."""
    import pandas as pd

    base = prep.heldout.head(1)
    rows = []
    for i, col in enumerate(prep.used):
        row = base.copy()
        row[col.name] = None if i % 2 == 0 or col.dtype == "float32" else ""
        rows.append(row)
        if col.type == "categorical":
            for value in ["never-seen-in-training", *col.rare[:2]]:
                rows.append(base.assign(**{col.name: value}))
        elif col.type == "text":
            rows.append(base.assign(**{col.name: "words never seen before"}))
    return pd.concat(rows[: max(n, len(rows))], ignore_index=True)


def torch_reference(wrapped: Any) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The training side of a torch model for :func:`raw_parity`: encoded float32 ``(N, D)`` -> its outputs."""
    import torch

    def run(features: np.ndarray) -> list[np.ndarray]:
        with torch.inference_mode():
            return [t.numpy() for t in wrapped(torch.from_numpy(features))]

    return run


def raw_parity(merged: Any, prep: Any, reference: Callable[[np.ndarray], Sequence[np.ndarray]], outputs: list[str],
               task: str, tolerance: float = PROBABILITY_TOLERANCE) -> dict[str, float]:
    """Compare the training-side pipeline (raw frame -> ``prep`` -> ``reference``, the model on encoded
    float32 ``(N, D)`` features returning one array per name in ``outputs``: :func:`torch_reference` or a
    scikit-learn estimator's outputs) with onnxruntime on the held-out raw rows plus :func:`edge_rows`.

    Returns ``rows``, ``max_abs_diff`` (probabilities or values) and, for classification,
    ``argmax_agreement``; raises :class:`ExportError` on a breach of ``tolerance`` (probabilities; default
    :data:`PROBABILITY_TOLERANCE`, 1e-4 for tree ensembles) / 100 % agreement or :data:`RELATIVE_TOLERANCE`.
    """
    import pandas as pd

    from trainforge.exporting.sessions import open_session

    rows = pd.concat([prep.heldout, edge_rows(prep)], ignore_index=True)
    feeds = raw_inputs(rows, prep.columns, "held-out rows")
    expected = [np.asarray(a) for a in reference(prep.transform_inputs(feeds))]
    session, _ = open_session(merged.SerializeToString(), "cpu")
    got = session.run(outputs, feeds)
    result = dict(zip(outputs, zip(expected, got, strict=True), strict=True))
    if task == "classification" and "probabilities" in result:
        e, g = result["probabilities"]
        diff = np.abs(e - g).max(axis=1)
        differ = int((e.argmax(1) != g.argmax(1)).sum())
        figures = {"rows": len(rows), "max_abs_diff": float(diff.max()), "argmax_agreement": 1 - differ / len(rows)}
        bad = differ > 0 or figures["max_abs_diff"] > tolerance
        what = f"{differ} of {len(rows)} labels differ, max |Δ probability| {figures['max_abs_diff']:.3g}"
    else:
        e, g = result[outputs[0]]
        rel = np.abs(e - g) / np.maximum(1.0, np.abs(e))
        figures = {"rows": len(rows), "max_abs_diff": float(np.abs(e - g).max()), "max_rel_diff": float(rel.max())}
        bad = figures["max_rel_diff"] > RELATIVE_TOLERANCE
        what = (f"{int((rel.reshape(len(rows), -1).max(1) > RELATIVE_TOLERANCE).sum())} of {len(rows)} rows beyond "
                f"{RELATIVE_TOLERANCE:g} relative, max {figures['max_rel_diff']:.3g}")
    if bad:
        raise ExportError(f"raw-row parity failed (training-side preprocessing + model vs onnxruntime): {what}; "
                          "the file was not kept")
    log.info("raw-row parity on %d rows: %s", len(rows), figures)
    return figures


def split_feeds(bundle: Any, which: str, n: int | None = None) -> dict[str, np.ndarray]:
    """The exported graph's inputs for the first ``n`` rows (None: all) of split ``which`` (``"val"`` or
    ``"test"``), in the split's row order: a raw table's one ``(n, 1)`` array per used column, built by
    :func:`trainforge.data.raw_inputs` from the raw rows the fitted preprocessing keeps (``validation``,
    ``heldout``); otherwise ``{"input": float32 (n, *input_shape)}`` (:func:`trainforge.training.data.sample_rows`).

    Raises :class:`~trainforge.errors.DataError` when the split is empty.
    """
    from trainforge.exporting.metadata import INPUT_NAME
    from trainforge.training.data import sample_rows

    table = getattr(bundle.meta, "table", None)
    if table is None:
        split = getattr(bundle, which)
        return {INPUT_NAME: sample_rows(split, n if n is not None else len(split))}
    rows = {"val": table.validation, "test": table.heldout}[which]
    return raw_inputs(rows if n is None else rows.head(n), table.columns, f"the {which} split's raw rows")
