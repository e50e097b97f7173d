#!/usr/bin/env python3
"""Predict with a trainforge ONNX model using nothing but numpy and onnxruntime.

Everything the script needs comes from the model's ``metadata_props`` (written by ``trainforge train`` /
``trainforge export``): the task, the input name and shape, the output names, the class labels and the
feature names. Standardization is inside the graph, so raw feature values go in. A model trained on a raw
table (``trainforge.columns`` in its metadata: missing cells, categories, text) takes the CSV's raw columns;
its imputation, encoding and TF-IDF are inside the graph too (that path also needs pandas).

    python examples/predict_onnx.py model.onnx rows.csv            # CSV with a header row
    python examples/predict_onnx.py model.onnx rows.npy --provider cpu
    python examples/predict_onnx.py model.onnx test.csv --target target   # also prints the accuracy
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys

import numpy as np
import onnxruntime as ort


def read_metadata(session: ort.InferenceSession) -> dict:
    raw = session.get_modelmeta().custom_metadata_map
    meta = {}
    for key, value in raw.items():
        if key.startswith("trainforge."):
            try:
                meta[key[len("trainforge."):]] = json.loads(value)
            except ValueError:
                meta[key[len("trainforge."):]] = value
    return meta


def providers(choice: str) -> list[str]:
    """CUDA only when onnxruntime has it and the NVIDIA driver loads; otherwise CPU."""
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        has_cuda = False
    if choice == "cuda" and not has_cuda:
        sys.exit("error: the CUDA execution provider cannot run on this machine")
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if has_cuda else ["CPUExecutionProvider"]


def read_rows(path: str, meta: dict, target: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows as float32 ``(N, *input_shape)``; CSV columns are matched by the model's feature names."""
    y = None
    if path.endswith(".npy"):
        x = np.load(path).astype(np.float32)
    else:
        with open(path) as fh:
            header = fh.readline().strip().split(",")
        data = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=str, ndmin=2)
        if target:
            y = data[:, header.index(target)]
        names = meta.get("feature_names") or [h for h in header if h != target]
        x = data[:, [header.index(n) for n in names]].astype(np.float32)
    shape = meta["input_shape"][1:]
    if x.reshape(len(x), -1).shape[1] != int(np.prod(shape)):
        sys.exit(f"error: {path}: {x.reshape(len(x), -1).shape[1]} feature columns, the model expects {np.prod(shape)}")
    return x.reshape(len(x), *shape), y


def read_raw(path: str, meta: dict, target: str | None) -> tuple[dict, np.ndarray | None]:
    """A raw table's model (metadata ``trainforge.columns``): one ``(N, 1)`` input per column, float32 with
    NaN for numbers and booleans, strings with "" for missing categories and text (needs pandas)."""
    import pandas as pd

    data = pd.read_csv(path) if not path.endswith((".parquet", ".pq")) else pd.read_parquet(path)
    y = data[target].astype(str).to_numpy() if target else None
    feeds = {}
    for col in (c for c in meta["columns"] if c["type"] != "drop"):
        if col["name"] not in data.columns:
            sys.exit(f"error: {path}: no column {col['name']!r}")
        values = data[col["name"]]
        if col["type"] == "numeric":
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float32)
        elif col["type"] == "boolean":
            text = values.astype(str).str.strip().str.lower()
            x = np.where(text.isin({"true", "yes", "1", "1.0"}), 1.0,
                         np.where(text.isin({"false", "no", "0", "0.0"}), 0.0, np.nan)).astype(np.float32)
        else:
            if pd.api.types.is_float_dtype(values):  # 3.0 next to an empty cell is the level "3"
                values = values.map(lambda v: str(int(v)) if v == v and float(v).is_integer() else v)
            x = values.astype(object).where(values.notna(), "").astype(str).to_numpy(dtype=object)
        feeds[col["name"]] = x.reshape(-1, 1)
    return feeds, y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model")
    parser.add_argument("input", help=".csv with a header row, or .npy")
    parser.add_argument("--target", help="CSV column with true labels/values: print accuracy or MSE")
    parser.add_argument("--provider", choices=["auto", "cuda", "cpu"], default="auto")
    args = parser.parse_args()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(args.model, options, providers=providers(args.provider))
    meta = read_metadata(session)
    if meta.get("columns"):  # raw rows: the preprocessing is inside the graph
        feeds, y = read_raw(args.input, meta, args.target)
    else:
        x, y = read_rows(args.input, meta, args.target)
        feeds = {meta["input_name"]: x}
    outputs = dict(zip(meta["outputs"], session.run(meta["outputs"], feeds), strict=True))
    n = len(next(iter(outputs.values())))
    print(f"# {n} rows on {session.get_providers()[0]}, task {meta['task']}", file=sys.stderr)
    if meta["task"] == "classification":
        labels = np.asarray(meta["class_names"])[outputs["probabilities"].argmax(1)]
        print("prediction," + ",".join(f"prob_{c}" for c in meta["class_names"]))
        for label, probs in zip(labels, outputs["probabilities"], strict=True):
            print(label + "," + ",".join(f"{p:.6f}" for p in probs))
        if y is not None:
            print(f"# accuracy: {np.mean(labels == y):.4f}", file=sys.stderr)
    else:
        pred = outputs["prediction"]
        for row in pred:
            print(",".join(f"{v:.6g}" for v in row))
        if y is not None:
            print(f"# mse: {np.mean((pred[:, 0] - y.astype(np.float64)) ** 2):.6g}", file=sys.stderr)


if __name__ == "__main__":
    main()
