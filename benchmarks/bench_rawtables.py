"""Raw tables against a plain scikit-learn pipeline on a real messy table (issue 23).

The table is ``penguins-raw.csv`` as the ``palmerpenguins`` package ships it (344 rows, 17 columns: empty
cells, constant columns, a date, categories, a Yes/No column, free-text comments; nothing downloaded at
run time). The target is ``Island`` (3 classes; the species and measurements tell it only in part).

trainforge's ``mlp`` and ``logistic-regression`` train on it as it is (``-p 'dataset.columns={Date Egg:
drop}'``, the one declaration the dates need). The plain pipeline is a scikit-learn ``ColumnTransformer``
with the same imputation and encoding (median + missing indicators for numbers, one-hot of levels seen at
least 5 times for categories and the Yes/No column, TF-IDF over words for text) on the column types
trainforge inferred, then scikit-learn's own ``LogisticRegression``, fitted on the same training rows
(the split trainforge draws: duplicates dropped, seeded and stratified) and scored on the same test rows.

    python benchmarks/bench_rawtables.py [--seeds 0 1 2]   # prints a Markdown table; writes no store here
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np

TARGET = "Island"


def table_path() -> Path:
    import palmerpenguins

    return Path(palmerpenguins.__file__).parent / "data" / "penguins-raw.csv"


def split(seed: int, config: dict) -> tuple:
    """The raw rows and labels of trainforge's train and test rows (as ``training.data.encode_table`` draws them)."""
    from trainforge import manager
    from trainforge.training.data import split_indices

    params = {k: v for k, v in config["dataset"].items() if k != "name"}
    data = manager.get("dataset", "csv").load(**params)
    table, target = data.table.reset_index(drop=True), np.asarray(data.target)
    keep = ~table.assign(__target__=target).duplicated().to_numpy()
    table, target = table[keep].reset_index(drop=True), target[keep]
    train, _, test = split_indices("csv", len(table), target, True, config["trainer"])
    return table.iloc[train], target[train], table.iloc[test], target[test], data.class_names


def plain_pipeline(columns: list) -> object:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c.name for c in columns if c.type == "numeric"]
    levels = [c.name for c in columns if c.type in ("categorical", "boolean")]
    parts = [("numeric", make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler()),
              numeric),
             ("levels", make_pipeline(SimpleImputer(strategy="constant", fill_value=""),
                                      OneHotEncoder(min_frequency=5, handle_unknown="ignore")), levels)]
    parts += [(f"text_{c.name}", TfidfVectorizer(max_features=200), c.name) for c in columns if c.type == "text"]
    prep = ColumnTransformer(parts, sparse_threshold=0.0)
    return make_pipeline(prep, LogisticRegression(max_iter=1000))


def one_seed(seed: int, csv: Path) -> dict[str, float]:
    import trainforge
    from trainforge.run.api import load_data

    scores = {}
    runs = {"mlp": {}, "mlp (lr 0.003, patience 30)": {"optimizer__lr": 0.003, "trainer__patience": 30},
            "logistic-regression": {}}
    for label, extra in runs.items():
        result = trainforge.train(model__name=label.split()[0], dataset__name="csv", dataset__path=str(csv),
                                  dataset__target=TARGET, dataset__columns={"Date Egg": "drop"}, trainer__seed=seed,
                                  trainer__epochs=200, trainer__device="cpu", quiet=True, **extra)
        scores[label] = result.metrics["test_accuracy"]
    columns = load_data(result.config).meta.table.columns
    x_train, y_train, x_test, y_test, _ = split(seed, result.config)
    for frame in (x_train, x_test):
        for c in columns:
            if c.type in ("categorical", "boolean", "text"):
                frame[c.name] = frame[c.name].astype(object).where(frame[c.name].notna(), "").astype(str)
    pipeline = plain_pipeline(columns).fit(x_train, y_train)
    scores["scikit-learn pipeline + LogisticRegression"] = float((pipeline.predict(x_test) == y_test).mean())
    scores["test rows"] = len(y_test)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        csv = Path(tmp) / "penguins-raw.csv"
        csv.write_bytes(table_path().read_bytes())
        rows = {seed: one_seed(seed, csv) for seed in args.seeds}
    names = [k for k in next(iter(rows.values())) if k != "test rows"]
    print(f"| test accuracy, target {TARGET} | " + " | ".join(f"seed {s}" for s in rows) + " | mean |")
    print("|---|" + "---|" * (len(rows) + 1))
    for name in names:
        values = [rows[s][name] for s in rows]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + f" | {np.mean(values):.3f} |")
    print(f"\ntest rows per seed: {[rows[s]['test rows'] for s in rows]}")


if __name__ == "__main__":
    main()
