"""int8 quantization of an exported trainforge ONNX model with ``onnxruntime.quantization``.

- Graphs without convolutions (MLP, RNN/LSTM/GRU): **dynamic** quantization (``quantize_dynamic``):
  int8 weights, activations quantized per batch at run time; no calibration data.
- Graphs with ``Conv``: **static** quantization in QDQ format (``quantize_static``): activation ranges
  calibrated (MinMax) on rows of the run's training split through a ``CalibrationDataReader``.

Both use per-channel weights and ``reduce_range`` (7-bit weights): onnxruntime's x86 int8 kernels
multiply u8 activations by s8 weights with 16-bit intermediate sums, which can saturate on CPUs without
VNNI; the reduced range avoids it (onnxruntime quantization docs, "When and why do I need to try U8U8
or reduce_range"). The model is first run through ``quant_pre_process`` (shape inference and graph
optimisation), as those docs recommend.

The quantized file keeps every ``trainforge.*`` metadata entry of the source and adds
``trainforge.quantization`` (JSON: method, types, calibration rows, and the test-split metrics of
both models), so ``trainforge predict`` runs it like any other trainforge model.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.errors import ConfigError, ExportError, TrainforgeError

log = logging.getLogger(__name__)

METHODS = ("auto", "dynamic", "static")
CONV_OPS = frozenset({"Conv", "ConvTranspose"})
#: training rows used to calibrate activation ranges for static quantization
CALIBRATION_ROWS = 512


@dataclass
class QuantizeReport:
    """What was quantized and what it cost.

    ``metrics``: on the test split, ``fp32_accuracy``/``int8_accuracy``/``accuracy_change_points``
    (classification) and ``mean_abs_output_diff`` (first output, any task); empty without test data.
    """

    path: Path
    source: Path
    method: str
    calibration_rows: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    bytes_fp32: int = 0
    bytes_int8: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "source": str(self.source), "method": self.method,
                "calibration_rows": self.calibration_rows, "metrics": self.metrics,
                "bytes_fp32": self.bytes_fp32, "bytes_int8": self.bytes_int8, "seconds": round(self.seconds, 3)}


def choose_method(proto: Any) -> str:
    """``"static"`` when the graph has a convolution, else ``"dynamic"``."""
    return "static" if any(node.op_type in CONV_OPS for node in proto.graph.node) else "dynamic"


def default_output(source: str | Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx`` (next to the source)."""
    source = Path(source)
    return source.with_name(f"{source.stem}.int8.onnx")


def _reader(input_name: str, rows: np.ndarray, batch_size: int = 64) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Rows(CalibrationDataReader):
        """Feeds the calibration rows in batches of ``batch_size``."""

        def __init__(self) -> None:
            self.batches: Iterator[dict[str, np.ndarray]] = iter(
                {input_name: rows[i:i + batch_size]} for i in range(0, len(rows), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    return Rows()


def _run_all(model: bytes | str, input_name: str, x: np.ndarray, batch_size: int = 1024) -> list[np.ndarray]:
    from trainforge.exporting.sessions import open_session

    session, _ = open_session(model, "cpu")
    parts = [session.run(None, {input_name: x[i:i + batch_size]}) for i in range(0, len(x), batch_size)]
    return [np.concatenate([p[j] for p in parts]) for j in range(len(parts[0]))]


def compare(fp32: bytes | str, int8: bytes | str, meta: dict[str, Any], x: np.ndarray,
            y: np.ndarray | None) -> dict[str, float]:
    """Test-split metrics of both models: accuracy (classification, in points) and output drift."""
    name = meta.get("input_name", "input")
    a, b = _run_all(fp32, name, x), _run_all(int8, name, x)
    metrics = {"mean_abs_output_diff": float(np.mean(np.abs(a[0] - b[0]))), "rows": float(len(x))}
    if meta.get("task") == "classification" and y is not None and a[0].ndim == 2:
        acc_a, acc_b = float(np.mean(a[0].argmax(1) == y)), float(np.mean(b[0].argmax(1) == y))
        metrics.update(fp32_accuracy=acc_a, int8_accuracy=acc_b, accuracy_change_points=100.0 * (acc_b - acc_a),
                       prediction_agreement=float(np.mean(a[0].argmax(1) == b[0].argmax(1))))
    return metrics


def quantize_model(
    source: str | Path,
    output: str | Path | None = None,
    *,
    method: str = "auto",
    calibration: np.ndarray | None = None,
    test_x: np.ndarray | None = None,
    test_y: np.ndarray | None = None,
) -> QuantizeReport:
    """Quantize the trainforge ONNX file ``source`` to int8 and write it to ``output``.

    - ``method``: ``auto`` (static for graphs with convolutions, else dynamic), ``dynamic`` or ``static``.
    - ``calibration``: float32 rows ``(N, *input_shape)`` from the training split (static only; the first
      :data:`CALIBRATION_ROWS` are used).
    - ``test_x``/``test_y``: the test split, to report the metrics of both models (``QuantizeReport.metrics``).

    Raises :class:`ConfigError` for a bad method or missing calibration data, :class:`ExportError` when
    onnxruntime cannot quantize the graph.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from trainforge.exporting import metadata

    started = time.perf_counter()
    source = Path(source)
    output = Path(output) if output else default_output(source)
    if method not in METHODS:
        raise ConfigError(f"unknown quantization method {method!r}; use {', '.join(METHODS)}")
    proto = onnx.load(str(source))
    props = metadata.raw(proto)
    meta = metadata.decode({metadata.PREFIX + k: v for k, v in props.items()})
    if "task" not in meta:
        raise TrainforgeError(f"{source}: not a trainforge model (no trainforge.* metadata)")
    method = choose_method(proto) if method == "auto" else method
    input_name = str(meta.get("input_name", "input"))
    rows = 0
    if method == "static":
        if calibration is None or len(calibration) == 0:
            raise ConfigError("static quantization needs calibration rows from the training split")
        calibration = np.ascontiguousarray(calibration[:CALIBRATION_ROWS], dtype=np.float32)
        rows = len(calibration)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="trainforge-quant-") as tmp:
        pre, raw = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(source), str(pre))
            if method == "dynamic":
                quantize_dynamic(str(pre), str(raw), weight_type=QuantType.QInt8, per_channel=True,
                                 reduce_range=True)
            else:
                quantize_static(str(pre), str(raw), _reader(input_name, calibration), quant_format=QuantFormat.QDQ,
                                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                per_channel=True, reduce_range=True)
            quantized = onnx.load(str(raw))
        except Exception as exc:
            raise ExportError(f"{source}: onnxruntime could not quantize the model ({exc})") from exc
    metrics: dict[str, float] = {}
    if test_x is not None and len(test_x):
        test_x = np.ascontiguousarray(test_x, dtype=np.float32)
        metrics = compare(str(source), quantized.SerializeToString(), meta, test_x, test_y)
    info = {"method": "dynamic" if method == "dynamic" else "static-qdq", "weight_type": "int8",
            "activation_type": "uint8", "per_channel": True, "reduce_range": True,
            "calibration": {"split": "train", "rows": rows, "method": "minmax"} if rows else None,
            "source": source.name, "test_metrics": metrics}
    metadata.write(quantized, {**props, "quantization": json.dumps(info)}, proto.producer_version)
    onnx.save(quantized, str(output))
    report = QuantizeReport(output, source, info["method"], rows, metrics, source.stat().st_size,
                            output.stat().st_size, time.perf_counter() - started)
    if "accuracy_change_points" in metrics:
        log.info("int8 (%s): test accuracy %.4f -> %.4f (%+.2f points)", info["method"],
                 metrics["fp32_accuracy"], metrics["int8_accuracy"], metrics["accuracy_change_points"])
    return report


def run_data(run_id: str, tracking_uri: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The run's training rows (calibration) and test rows and targets, re-created from its checkpoint."""
    from trainforge.contracts import DataMeta
    from trainforge.tracking import checkpoints
    from trainforge.tracking import store as tracking
    from trainforge.training import data as data_mod

    tracking.setup_uri(tracking_uri)
    checkpoint = checkpoints.fetch(run_id)
    config, meta = checkpoint["config"], DataMeta.from_dict(checkpoint["meta"])
    bundle = data_mod.load(config["dataset"], config["trainer"], task=meta.task)
    train = data_mod.sample_rows(bundle.train, CALIBRATION_ROWS)
    test_x, test_y = [], []
    for x, y in data_mod.batches(bundle.test, 1024):
        test_x.append(x.detach().cpu().numpy())
        test_y.append(y.detach().cpu().numpy())
    return train, np.concatenate(test_x), np.concatenate(test_y)


def quantize_run(run_id: str, source: str | Path, output: str | Path | None = None, *,
                 tracking_uri: str | None = None, method: str = "auto") -> QuantizeReport:
    """Quantize ``source`` (the run's exported model), calibrated on and evaluated with the run's splits."""
    train, test_x, test_y = run_data(run_id, tracking_uri)
    return quantize_model(source, output, method=method, calibration=train, test_x=test_x, test_y=test_y)
