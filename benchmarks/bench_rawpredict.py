"""Raw-row predict throughput and the preprocessing's latency cost (issue 23).

The model is trainforge's ``mlp`` trained once on the messy breast_cancer table of
``tests/test_rawtables.py`` (``messy_frame()``: 2 % missing numeric cells, a 3-level ``site`` with missing
cells, a free-text ``note``, a constant and an identifier column, string labels), exported as one ONNX graph
that takes the raw columns. The rows to predict are that table resampled with replacement to ``rows`` rows
(default 100,000), with 1 % of the ``site`` cells set to a level never seen in training.

(a) Throughput, raw rows/s, trainforge against a baseline on the same rows, interleaved repeat by repeat:

- **frame**: ``trainforge.exporting.predictor.to_inputs`` (:func:`trainforge.data.raw_inputs`, what
  ``predict`` runs per chunk) then the merged raw-row graph in onnxruntime, chunk by chunk (16,384 rows);
- **CSV file (Python API)**: ``trainforge.predict(model, csv)``: read, convert, run, labels and
  probabilities as a DataFrame;
- **CSV file (CLI)**: ``trainforge predict MODEL --input CSV --output OUT --provider cpu`` as a subprocess
  (interpreter start-up and the output file included);
- **baseline**: the same fitted scikit-learn ``ColumnTransformer`` (trainforge's own, from the run's
  training rows) ``.transform(frame)`` plus the missing-indicator columns, then onnxruntime on the numeric
  model graph (the merged graph cut at ``tabular_features`` with ``onnx.utils.Extractor``: the same network
  without the preprocessing), chunk by chunk; on a CSV file it first reads it with ``pandas.read_csv``.
  Categorical/text missing cells become ``""`` first (``fillna``), the one step the transformer needs.

Ratio = trainforge rows/s / baseline rows/s, per repeat (paired); goal >= 1.0. The labels of both sides are
compared (they must agree on every row).

(b) Latency of one ``session.run`` at batch 1 and 1024: the merged raw-row graph (raw column feeds built
beforehand) against the numeric-only graph (encoded features built beforehand), both from
:func:`trainforge.exporting.sessions.open_session` with the same options; what the preprocessing adds
(ms and ratio).

    python benchmarks/bench_rawpredict.py [--repeats 5] [--rows 100000]   # prints the Markdown section
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import ROOT, Check, Section, Stats, interleave, log, num, paired_ratios

CHUNK = 16_384
FEATURES = "tabular_features"


def messy_rows(rows: int, seed: int = 0) -> tuple:
    """The messy training table, and ``rows`` rows resampled from it (target dropped, 1 % unseen sites)."""
    sys.path.insert(0, str(ROOT / "tests"))
    from test_rawtables import messy_frame

    table = messy_frame(seed)
    rng = np.random.default_rng(seed + 1)
    big = table.iloc[rng.integers(0, len(table), rows)].reset_index(drop=True)
    big.loc[rng.random(rows) < 0.01, "site"] = "west"
    return table, big


def train_model(csv: Path) -> tuple[str, object]:
    """Train the raw-table mlp on ``csv``; its ONNX path and its fitted preprocessing (``TablePrep``)."""
    import trainforge
    from trainforge.run.api import load_data

    result = trainforge.train(model__name="mlp", dataset__name="csv", dataset__path=str(csv), dataset__target="target",
                              trainer__epochs=20, trainer__device="cpu", experiment="bench-rawpredict", quiet=True)
    return str(result.onnx_path), load_data(result.config).meta.table


def numeric_graph(onnx_path: str, outputs: list[str]) -> bytes:
    """The merged graph cut at ``tabular_features``: the network alone, encoded float32 ``(N, D)`` in."""
    import onnx
    from onnx.utils import Extractor

    model = onnx.load(onnx_path)
    return Extractor(model).extract_model([FEATURES], outputs).SerializeToString()


class Sides:
    """The two predict paths on one model: trainforge's raw-row graph and the scikit-learn + numeric baseline."""

    def __init__(self, onnx_path: str, prep: object) -> None:
        from trainforge.exporting import metadata
        from trainforge.exporting.sessions import open_session

        self.session, _ = open_session(onnx_path, "cpu")
        self.meta = metadata.from_session(self.session)
        self.outputs = list(self.meta["outputs"])
        self.numeric, _ = open_session(numeric_graph(onnx_path, self.outputs), "cpu")
        self.prep = prep
        self.strings = [c.name for c in prep.used if c.dtype != "float32"]
        self.classes = np.asarray(self.meta["class_names"], dtype=object)

    def trainforge_frame(self, frame: object) -> np.ndarray:
        from trainforge.exporting.predictor import _run, to_inputs

        labels = []
        for start in range(0, len(frame), CHUNK):
            feeds, _ = to_inputs(frame.iloc[start:start + CHUNK], self.meta, None, Path("rows.csv"), start)
            probs = dict(zip(self.outputs, _run(self.session, self.outputs, feeds), strict=True))["probabilities"]
            labels.append(self.classes[probs.argmax(1)])
        return np.concatenate(labels)

    def features(self, frame: object) -> np.ndarray:
        """The baseline's encoded features: ``ColumnTransformer.transform`` plus the missing indicators."""
        frame = frame.assign(**{c: frame[c].fillna("") for c in self.strings})
        out = np.asarray(self.prep.transformer.transform(frame), dtype=np.float32)
        flags = [frame[c.name].isna().to_numpy(dtype=np.float32)[:, None] for c in self.prep.indicators]
        return np.concatenate([out, *flags], axis=1) if flags else out

    def baseline_frame(self, frame: object) -> np.ndarray:
        from trainforge.exporting.predictor import _run

        labels = []
        for start in range(0, len(frame), CHUNK):
            x = self.features(frame.iloc[start:start + CHUNK])
            probs = dict(zip(self.outputs, _run(self.numeric, self.outputs, {FEATURES: x}), strict=True))
            labels.append(self.classes[probs["probabilities"].argmax(1)])
        return np.concatenate(labels)

    def baseline_csv(self, csv: Path) -> np.ndarray:
        import pandas as pd

        return np.concatenate([self.baseline_frame(chunk) for chunk in pd.read_csv(csv, chunksize=CHUNK)])


def cli(model: str, csv: Path, out: Path) -> None:
    exe = Path(sys.executable).parent / "trainforge"
    proc = subprocess.run([str(exe), "predict", model, "--input", str(csv), "--output", str(out), "--provider", "cpu"],
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"trainforge predict failed ({proc.returncode}): {proc.stderr[-2000:]}")


def throughput(sides: Sides, model: str, big: object, csv: Path, out: Path, repeats: int) -> dict[str, list[float]]:
    import trainforge

    n = len(big)
    contenders = {
        "trainforge frame": lambda: sides.trainforge_frame(big),
        "baseline frame": lambda: sides.baseline_frame(big),
        "trainforge.predict CSV": lambda: trainforge.predict(model, csv),
        "trainforge predict CLI": lambda: cli(model, csv, out),
        "baseline CSV": lambda: sides.baseline_csv(csv),
    }
    seconds = interleave(contenders, repeats, warmup=1)
    return {name: [n / s for s in values] for name, values in seconds.items()}


def latency(sides: Sides, big: object, repeats: int, batches: tuple[int, ...] = (1, 1024)) -> dict:
    """Per batch size: milliseconds per ``session.run`` (median of many calls per repeat), raw vs numeric."""
    from trainforge.data import raw_inputs

    out = {}
    for batch in batches:
        rows = big.iloc[:batch]
        raw = raw_inputs(rows, sides.prep.columns, "rows", strict=True)
        x = sides.features(rows)
        calls = 2000 if batch == 1 else 40

        def timed(session: object, feeds: dict, calls: int = calls) -> float:
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                session.run(sides.outputs, feeds)
                times.append(time.perf_counter() - started)
            return float(np.median(times)) * 1e3

        res = interleave({"raw": lambda raw=raw: timed(sides.session, raw),
                          "numeric": lambda x=x: timed(sides.numeric, {FEATURES: x})},
                         repeats, warmup=1, measure=lambda value, _s: value)
        out[batch] = res
    return out


def run(repeats: int = 5, rows: int = 100_000) -> Section:
    import logging
    import os

    section = Section(f"Raw-row predict: throughput against scikit-learn + onnxruntime, {rows:,} rows")
    with tempfile.TemporaryDirectory(prefix="trainforge-bench-rawpredict-") as tmp:
        tmp_path = Path(tmp)
        cwd = Path.cwd()
        os.chdir(tmp_path)
        try:
            table, big = messy_rows(rows)
            train_csv, csv = tmp_path / "messy.csv", tmp_path / f"messy_{rows}.csv"
            table.to_csv(train_csv, index=False)
            big.to_csv(csv, index=False)
            log(f"[rawpredict] training the raw-table mlp on {len(table)} rows; predicting {rows:,} rows")
            model, prep = train_model(train_csv)
            sides = Sides(model, prep)
            logging.getLogger("trainforge").setLevel(logging.ERROR)  # the unseen-site warning, once per chunk
            agree = float((sides.trainforge_frame(big) == sides.baseline_frame(big)).mean())
            log(f"[rawpredict] labels agree on {agree:.4%} of rows; {repeats} interleaved repeats")
            rates = throughput(sides, model, big, csv, tmp_path / "out.csv", repeats)
            lat = latency(sides, big, repeats)
        finally:
            os.chdir(cwd)
            logging.getLogger("trainforge").setLevel(logging.NOTSET)
    _render(section, rates, lat, agree, repeats, len(prep.feature_names))
    return section


def _render(section: Section, rates: dict, lat: dict, agree: float, repeats: int, features: int) -> None:
    section.add(f"mlp on the messy breast_cancer table (30 numeric columns with missing cells, `site`, `note`; "
                f"{features} encoded features); {repeats} interleaved repeats after one warm-up, median (min–max). "
                f"Labels of trainforge and the baseline agree on **{agree:.2%}** of the rows.", "")
    pairs = [("trainforge frame", "baseline frame"), ("trainforge.predict CSV", "baseline CSV"),
             ("trainforge predict CLI", "baseline CSV")]
    rows = []
    for ours, base in pairs:
        ratio = paired_ratios(rates[ours], rates[base])
        rows.append([ours, Stats.of(rates[ours]).fmt(), base, Stats.of(rates[base]).fmt(), ratio.fmt()])
    section.table(["trainforge path", "rows/s", "baseline", "rows/s", "ratio (paired)"], rows)
    ratio = paired_ratios(rates["trainforge frame"], rates["baseline frame"])
    section.checks.append(Check("raw-row predict rows/s vs scikit-learn + onnxruntime (frame)", ratio.median, 1.0,
                                op=">=", note=f"min {ratio.min:.3f}, max {ratio.max:.3f}"))
    ratio = paired_ratios(rates["trainforge.predict CSV"], rates["baseline CSV"])
    section.checks.append(Check("raw-row predict rows/s vs scikit-learn + onnxruntime (CSV, Python API)",
                                ratio.median, 1.0, op=">=", note=f"min {ratio.min:.3f}, max {ratio.max:.3f}"))
    rows = []
    for batch, res in lat.items():
        added = [a - b for a, b in zip(res["raw"], res["numeric"], strict=True)]
        rows.append([batch, Stats.of(res["numeric"]).fmt(), Stats.of(res["raw"]).fmt(),
                     f"{num(Stats.of(added).median)} ms", paired_ratios(res["raw"], res["numeric"]).fmt()])
    section.add("Latency of one `session.run` on the CPU execution provider (ms; per repeat the median of 2000 calls "
                "at batch 1, 40 at batch 1024; inputs built beforehand):", "")
    section.table(["batch", "numeric-only graph ms", "raw-row graph ms", "preprocessing adds", "ratio raw / numeric"],
                  rows)


if __name__ == "__main__":
    import argparse
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the runs go to the temporary directory's ./mlruns
    print(run(repeats=args.repeats, rows=args.rows).markdown())
