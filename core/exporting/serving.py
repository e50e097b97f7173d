"""The MLflow pyfunc model of a trainforge ONNX file: what ``mlflow models serve`` and
``mlflow.pyfunc.load_model(...).predict`` run.

MLflow "models from code": :mod:`trainforge.exporting.logged` logs *this file* as the model's code and the
``.onnx`` file as its artifact ``onnx``; MLflow executes the file (``set_model`` at the bottom) to load the
model. So it is self-contained: it imports numpy, pandas, onnxruntime and mlflow, and the copies of
:mod:`trainforge.exporting.sessions` and :mod:`trainforge.exporting.metadata` logged with it (``code_paths``;
both need only the standard library at import), never torch or trainforge; the model's recorded
requirements are numpy, pandas and onnxruntime.

Input: a pandas DataFrame with the training feature names (any order, extra columns ignored; the
trainforge ONNX metadata ``trainforge.feature_names`` gives the order), or with exactly as many columns as
features (taken in order), or an array ``(N, *input_shape)`` / ``(N, features)`` of numbers; for a raw
table's model (metadata ``trainforge.columns``) a DataFrame of the raw columns (nulls, unseen strings). Output: a
DataFrame like ``trainforge predict``'s: ``prediction`` (the class name for classification, the value for
regression, ``prediction_<i>`` for several targets) and, for classification, ``prob_<class>`` per class.
"""

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import set_model

try:  # the copies logged beside this file (code_paths): trainforge need not be installed where it serves
    from metadata import class_names, from_session
    from sessions import open_session
except ImportError:  # run from the trainforge package (e.g. while MLflow logs the model)
    from trainforge.exporting.metadata import class_names, from_session
    from trainforge.exporting.sessions import open_session


def features(data: Any, meta: dict[str, Any]) -> np.ndarray:
    """``data`` as float32 ``(N, *input_shape)``; raises ValueError naming what is wrong."""
    shape = [int(d) for d in meta["input_shape"][1:]]
    width = int(np.prod(shape))
    if isinstance(data, pd.DataFrame):
        names = meta.get("feature_names") or []
        columns = [str(c) for c in data.columns]
        if names and set(names) <= set(columns):
            data = data.set_axis(columns, axis=1)[names]  # by name, in the training order
        elif data.shape[1] != width:
            missing = [n for n in names if n not in columns][:5]
            raise ValueError(f"expected the {width} feature columns {names[:5]}...; missing {missing}"
                             if names else f"expected {width} feature columns, got {data.shape[1]}")
        x = data.to_numpy(dtype=np.float32)
    else:
        x = np.asarray(data, dtype=np.float32)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if int(np.prod(x.shape[1:])) != width:
        raise ValueError(f"each row needs {width} features (input shape {shape}), got shape {list(x.shape)}")
    return np.ascontiguousarray(x.reshape(len(x), *shape))


MISSING_MARKERS = {"na", "n/a", "nan", "null", "none", "?", "-"}  # trainforge.data.MISSING_MARKERS


def raw_inputs(data: Any, columns: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """A raw table's model (metadata ``trainforge.columns``): one ``(N, 1)`` input per used column, float32
    with NaN (numeric, boolean) or strings with ``""`` (categorical, text) for missing; the same mapping as
    ``trainforge.data.raw_inputs``, repeated here because this file imports no trainforge module."""
    if not isinstance(data, pd.DataFrame):
        raise ValueError("this model takes named raw columns: send a DataFrame (dataframe_split or records)")
    data = data.set_axis([str(c) for c in data.columns], axis=1)
    feeds = {}
    for col in (c for c in columns if c["type"] != "drop"):
        if col["name"] not in data.columns:
            raise ValueError(f"no column {col['name']!r}")
        values = data[col["name"]]
        if col["type"] == "numeric":
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float32)
        elif col["type"] == "boolean":
            text = values.astype(str).str.strip().str.lower()
            x = np.where(text.isin({"true", "yes", "1", "1.0"}), 1.0,
                         np.where(text.isin({"false", "no", "0", "0.0"}), 0.0, np.nan)).astype(np.float32)
        if col["type"] in ("numeric", "boolean"):  # trainforge.data.check_typed: a wrong-typed column is refused
            unread = values.notna().to_numpy() & np.isnan(x)  # only these cells can be blank, markers or junk
            text = values[unread].astype(str).str.strip()
            present = int(values.notna().sum()) - int((text == "").sum())
            junk = np.zeros(len(x), dtype=bool)
            junk[unread] = ((text != "") & ~text.str.lower().isin(MISSING_MARKERS)).to_numpy()
            if junk.any() and junk.sum() > 0.05 * present:
                raise ValueError(f"column {col['name']!r}: {int(junk.sum())} of {present} value(s) are "
                                 f"not {col['type']} (e.g. {values[junk].iloc[0]!r})")
        else:
            if pd.api.types.is_float_dtype(values):
                values = values.map(lambda v: str(int(v)) if v == v and float(v).is_integer() else v)
            x = values.astype(object).where(values.notna(), "").astype(str).to_numpy(dtype=object)
        feeds[col["name"]] = x.reshape(-1, 1)
    return feeds


def to_frame(result: dict[str, np.ndarray], meta: dict[str, Any]) -> pd.DataFrame:
    """The named ONNX outputs as ``trainforge predict``'s columns (see the module docstring)."""
    if meta["task"] == "classification":
        probs = result["probabilities"]
        classes = class_names(meta, probs.shape[1])
        frame = pd.DataFrame({"prediction": np.asarray(classes, dtype=object)[probs.argmax(1)].astype(str)})
        for i, name in enumerate(classes):
            frame[f"prob_{name}"] = probs[:, i]
        return frame
    pred = result["prediction"] if "prediction" in result else result[meta["outputs"][0]]
    pred = pred.reshape(len(pred), -1)
    cols = ["prediction"] if pred.shape[1] == 1 else [f"prediction_{i}" for i in range(pred.shape[1])]
    return pd.DataFrame(pred, columns=cols)


class OnnxModel(mlflow.pyfunc.PythonModel):
    """onnxruntime (CPU execution provider) on the artifact ``onnx``, labels and probabilities out."""

    def load_context(self, context: Any) -> None:
        self.session, _ = open_session(context.artifacts["onnx"], "cpu")
        self.meta = from_session(self.session)

    # pd.DataFrame is a hint MLflow 3 infers no schema from (the logged signature is the schema);
    # an array arrives as is when the data has no feature names (tensor signature)
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if self.meta.get("columns"):  # a raw table's model: the raw columns in, preprocessing in the graph
            feeds = raw_inputs(model_input, self.meta["columns"])
        else:
            feeds = {self.meta["input_name"]: features(model_input, self.meta)}
        outputs = list(self.meta["outputs"])
        result = dict(zip(outputs, self.session.run(outputs, feeds), strict=True))
        return to_frame(result, self.meta)


set_model(OnnxModel())
