"""Preprocessing of raw tables, fitted on the training split only: imputation, categorical encoding, TF-IDF.

One scikit-learn ``ColumnTransformer`` (the training-side pipeline; ``trainforge.exporting.tabular`` turns
the same fitted object into the ONNX graph's first part with skl2onnx):

- numeric and boolean columns: ``SimpleImputer`` (``strategy`` median by default, mean or constant 0), and a
  0/1 missing-indicator feature (after the transformer's output) for each column that had missing cells on
  the training split;
- categorical columns: ``OneHotEncoder`` over the training levels seen at least :data:`RARE_MIN_COUNT`
  times (at most :data:`MAX_LEVELS` per column, the most frequent); rarer levels and levels never seen in
  training encode as all zeros (the shared ``rare``/``unknown`` level), never an error. A missing cell is
  the empty string, a level of its own;
- text columns: ``TfidfVectorizer`` over words (scikit-learn's default ``token_pattern``, lowercased),
  vocabulary fitted on train, capped at :data:`TEXT_VOCABULARY` terms.

The output is dense float32 ``(N, D)``; the torch model then standardizes it inside its own graph.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainforge.data import Column, infer_columns, raw_inputs, schema_line
from trainforge.errors import ConfigError

log = logging.getLogger(__name__)

#: a categorical level needs this many training rows, else it joins the rare level
RARE_MIN_COUNT = 5
#: levels kept per categorical column (the most frequent; the rest join the rare level)
MAX_LEVELS = 100
#: TF-IDF terms kept per text column (the most frequent over the training split)
TEXT_VOCABULARY = 200
#: words: runs of ASCII letters, digits and underscores, the same regular expression on both sides (skl2onnx's
#: ONNX ``Tokenizer`` cannot run scikit-learn's ``\\b\\w\\w+\\b``; non-ASCII letters split words on both sides)
TOKEN_PATTERN = r"[a-zA-Z0-9_]+"
IMPUTE = ("median", "mean", "constant")


@dataclass
class TablePrep:
    """A fitted preprocessing: the ``columns`` schema (with training statistics), the fitted
    ``transformer`` and the names of its ``D`` output features."""

    columns: list[Column]
    transformer: Any
    feature_names: list[str]
    #: the raw held-out (test) rows as the user gave them: the export gate's raw parity rows
    heldout: Any = None
    #: the raw validation rows, in the validation split's order (a study times and scores files on them)
    validation: Any = None

    @property
    def used(self) -> list[Column]:
        return [c for c in self.columns if c.type != "drop"]

    @property
    def indicators(self) -> list[Column]:
        """Numeric/boolean columns that had missing cells on the training split: each gets a 0/1 feature."""
        return [c for c in self.used if c.dtype == "float32" and c.missing + c.junk > 0]

    def transform(self, frame: Any, where: str = "input") -> np.ndarray:
        """Raw rows (pandas DataFrame) -> float32 ``(N, D)`` through :func:`trainforge.data.raw_inputs`."""
        return self.transform_inputs(raw_inputs(frame, self.columns, where))

    def transform_inputs(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The graph's raw inputs (``{column: (N, 1)}``) -> float32 ``(N, D)``, as the ONNX graph computes."""
        out = self.transformer.transform(inputs_frame(feeds, self.used))
        out = np.asarray(out.toarray() if hasattr(out, "toarray") else out, dtype=np.float32)
        flags = [np.isnan(feeds[c.name]).astype(np.float32) for c in self.indicators]
        return np.concatenate([out, *flags], axis=1) if flags else out

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns], "features": len(self.feature_names)}


def inputs_frame(feeds: dict[str, np.ndarray], used: list[Column]) -> Any:
    """The inputs as the DataFrame the transformer is fitted on (float32 and object columns)."""
    import pandas as pd

    return pd.DataFrame({c.name: feeds[c.name][:, 0] for c in used})


@dataclass
class ColumnCounts:
    """One column's exact statistics over every training row of a streamed table (one pass, see
    :mod:`trainforge.training.streaming_tabular`): ``missing`` and ``junk`` cells, and for a categorical column
    the training ``levels`` and their counts (at most ``TRACKED_LEVELS`` of them, Misra-Gries beyond)."""

    missing: int = 0
    junk: int = 0
    levels: dict[str, int] | None = None


def fit_table(train: Any, declared: dict[str, str] | None = None, impute: str = "median", *,
              columns: list[Column] | None = None, counts: dict[str, ColumnCounts] | None = None) -> TablePrep:
    """Type the columns of the training rows ``train`` (pandas DataFrame) and fit the preprocessing on them.

    A streamed table passes its ``columns`` (typed on the head of the file) and the ``counts`` of its one pass
    over every training row; ``train`` is then a uniform sample of them: missing and junk counts, and the kept
    and rare levels, come from ``counts`` (exact), the fill values and the TF-IDF vocabulary from the sample.

    Logs the schema line (:func:`trainforge.data.schema_line`) as a warning, so it reaches stderr, and
    warns about dropped columns and junk values counted as missing. Raises :class:`ConfigError` for an
    unknown ``impute`` strategy, :class:`DataError` for columns that cannot be typed.
    """
    if impute not in IMPUTE:
        raise ConfigError(f"dataset.impute must be one of {', '.join(IMPUTE)}, got {impute!r}")
    columns = infer_columns(train, declared) if columns is None else columns
    feeds = raw_inputs(train, columns, "training split")
    used = [c for c in columns if c.type != "drop"]
    for col in used:
        if counts is None:
            _column_stats(col, train[col.name], feeds[col.name][:, 0])
        else:
            col.missing, col.junk = counts[col.name].missing, counts[col.name].junk
        if col.type == "categorical":
            if counts is None:
                levels(col, feeds[col.name][:, 0])
            else:
                levels_from(col, counts[col.name].levels or {})
    transformer = _build(used, impute)
    transformer.fit(inputs_frame(feeds, used))
    _record_fit(transformer, used)
    names = [str(n) for n in transformer.get_feature_names_out()]
    names += [f"missing__{c.name}" for c in used if c.dtype == "float32" and c.missing + c.junk > 0]
    dropped = [f"{c.name} ({c.reason})" for c in columns if c.type == "drop" and c.reason != "declared"]
    if dropped:
        log.warning("dropped column(s) %s: they carry no information to learn from", ", ".join(dropped))
    for col in used:
        if col.junk:
            log.warning("column %r: %d value(s) that are not numbers (e.g. %r) count as missing", col.name,
                        col.junk, _first_junk(train[col.name]) or "?")
    log.warning("%s -> %d features", schema_line(columns), len(names))
    return TablePrep(columns, transformer, names)


def _first_junk(values: Any) -> Any:
    import pandas as pd

    bad = values.notna() & pd.to_numeric(values, errors="coerce").isna()
    return values[bad].iloc[0] if bad.any() else None


def _column_stats(col: Column, raw: Any, fed: np.ndarray) -> None:
    """Missing cells and (numeric) junk values of one training column, into ``col``."""
    col.missing, col.junk = column_counts(col, raw, fed)


def column_counts(col: Column, raw: Any, fed: np.ndarray) -> tuple[int, int]:
    """``(missing, junk)`` of one column's training cells: ``raw`` (pandas Series) as read, ``fed`` the same
    cells as :func:`trainforge.data.raw_inputs` feeds them; junk are numeric/boolean cells that do not parse."""
    import pandas as pd

    blank = 0 if pd.api.types.is_numeric_dtype(raw) else int((raw.astype(str).str.strip() == "").sum())
    missing = int(raw.isna().sum()) + blank  # strings (object or pandas' str dtype): "" is missing too
    junk = int(np.isnan(fed).sum()) - int(raw.isna().sum()) if col.dtype == "float32" else 0
    return missing, junk


def _build(used: list[Column], impute: str) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    parts: list[tuple[str, Any, Any]] = []
    numeric = [c.name for c in used if c.dtype == "float32"]
    if numeric:
        parts.append(("numeric", SimpleImputer(strategy=impute, fill_value=0.0, keep_empty_features=True),
                      numeric))
    for col in used:
        if col.type == "categorical":
            parts.append((f"categorical_{col.name}", _encoder(col, OneHotEncoder), [col.name]))
        elif col.type == "text":
            parts.append((f"text_{col.name}", TfidfVectorizer(max_features=TEXT_VOCABULARY, dtype=np.float32,
                                                                  token_pattern=TOKEN_PATTERN),
                          col.name))
    return ColumnTransformer(parts, sparse_threshold=0.0, verbose_feature_names_out=True)


def _encoder(col: Column, encoder_class: Any) -> Any:
    """A one-hot encoder over the kept levels of ``col`` (set by :func:`_levels` before the fit)."""
    return encoder_class(categories=[col.levels], handle_unknown="ignore", dtype=np.float32)


def _record_fit(transformer: Any, used: list[Column]) -> None:
    """Fill values and TF-IDF vocabulary sizes from the fitted transformer into the schema."""
    fitted = dict(transformer.named_transformers_)
    if "numeric" in fitted:
        numeric = [c for c in used if c.dtype == "float32"]
        for col, fill in zip(numeric, fitted["numeric"].statistics_, strict=True):
            col.fill = float(fill)
    for col in used:
        if col.type == "text":
            col.vocabulary = len(fitted[f"text_{col.name}"].vocabulary_)


def levels(col: Column, values: np.ndarray) -> None:
    """Kept and rare levels of a categorical column from its training strings (``""`` is missing)."""
    import pandas as pd

    levels_from(col, pd.Series(values).value_counts())


#: rare levels listed in the schema (a streamed column may have many; the rest are unknown to ``count_unseen``)
RARE_LISTED = 1000


def levels_from(col: Column, counts: Any) -> None:
    """Kept and rare levels of a categorical column from its training level counts (``{level: rows}`` or a
    pandas Series; ``""`` is missing): levels seen at least :data:`RARE_MIN_COUNT` times, at most
    :data:`MAX_LEVELS` (the most frequent); at most :data:`RARE_LISTED` rare levels are listed."""
    import pandas as pd

    counts = pd.Series(counts, dtype="int64").sort_values(ascending=False, kind="stable")
    kept = counts[counts >= RARE_MIN_COUNT].index[:MAX_LEVELS]
    if len(kept) == 0:  # every level is rare: keep the most frequent, so the column still encodes something
        kept = counts.index[:1]
    col.levels = sorted(str(v) for v in kept)
    col.rare = sorted(str(v) for v in counts.index if v not in set(col.levels))[:RARE_LISTED]
