"""``trainforge.data``: the data types a dataset plugin returns, at the import path plugins have used.

Kept so third-party plugins written as ``from trainforge.data import DataBundle`` keep working; the
types live in :mod:`trainforge.contracts` and the data path itself in :mod:`trainforge.training.data`.
:func:`csv_header` is the one check of a CSV file's header row, for every reader of user CSV files.

**Raw tables.** The column schema of a raw table: what each column is, and how a raw row becomes the ONNX graph's inputs.

A raw table (a CSV or Parquet file with empty cells, strings and free text; :attr:`ArrayData.table`) is
typed column by column on the **training split** (:func:`infer_columns`), overridable per column with
``-p 'dataset.columns={site: categorical, note: text, id: drop}'``:

- ``numeric``: numbers, missing as NaN. A value that does not parse (``'n/a'``, ``'?'``) counts as missing
  when at most :data:`JUNK_SHARE` of the column's non-empty cells are such values (counted, warned about);
  between that and :data:`TEXT_SHARE` the column is refused with one line naming it (declare its type);
  above it the column is read as strings.
- ``boolean``: ``true``/``false`` (any case) or a bool dtype; fed to the graph as float 1/0, missing NaN.
- ``categorical``: strings; missing is the empty string, its own level. Integers with few levels are
  categorical only when declared.
- ``text``: free text (strings averaging at least :data:`TEXT_MIN_WORDS` words), TF-IDF inside the graph.
- ``drop``: not used. Inferred for identifiers (every training value distinct: strings, or integers),
  empty columns (every training cell missing) and constant columns (one value, missing included), with a
  warning and the tag ``trainforge.dropped_columns``.
- Datetime columns are **refused** with one line (derive numeric parts, e.g. day of year, before
  training, or declare the column ``drop``): the graph cannot parse dates in every serving path alike.

:func:`raw_inputs` is the one mapping of raw rows to the graph's inputs (one ``(N, 1)`` input per used
column, named as the column: float32 for numeric/boolean, strings for categorical/text); ``strict=True``
(rows to predict) refuses a wrongly typed column with one line and counts the cells it reads as missing
(:func:`check_typed`). The training-side
preprocessing is fitted on exactly what it returns, so the two sides see the same values. It imports
numpy and pandas only; ``trainforge.exporting.serving`` and ``examples/predict_onnx.py`` repeat its few
lines because they must not import trainforge.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainforge.contracts import DataBundle, DataMeta, TensorSplit
from trainforge.errors import ConfigError, DataError

__all__ = ["Column", "DataBundle", "DataMeta", "TensorSplit", "check_typed", "csv_header", "infer_columns", "raw_inputs",
           "schema_line"]

log = logging.getLogger(__name__)


def csv_header(path: str | Path, delimiter: str = ",") -> list[str]:
    """The column names in the header row of the CSV file ``path`` (RFC 4180 quoting, Python's ``csv``);
    ``[]`` for an empty file.

    Raises :class:`DataError` naming the column when a name appears twice: pandas would read the second as
    ``a.1`` and pyarrow keep both, so a model would silently train on a column the user never named.
    """
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as fh:
        header = next(csv.reader(fh, delimiter=delimiter), [])
    twice = [name for name, n in Counter(header).items() if n > 1]
    if twice:
        columns = [i + 1 for i, name in enumerate(header) if name == twice[0]]
        raise DataError(f"{path}: line 1: column {twice[0]!r} appears {len(columns)} times (columns "
                        f"{', '.join(map(str, columns))}); give each column its own name")
    return header

TYPES = ("numeric", "boolean", "categorical", "text", "drop")
#: a numeric column may hold at most this share of non-empty cells that do not parse (they count as missing)
JUNK_SHARE = 0.05
#: a column with more than this share of non-numbers is read as strings (between: refused, declare its type)
TEXT_SHARE = 0.5
#: strings averaging at least this many words per cell are free text, fewer are categories
TEXT_MIN_WORDS = 3
#: an identifier needs this many training rows (on fewer, every value being distinct proves nothing)
ID_MIN_ROWS = 20
TRUE, FALSE = frozenset({"true", "yes"}), frozenset({"false", "no"})


@dataclass
class Column:
    """One raw column: its ``type`` (:data:`TYPES`), why (``reason``: ``declared``, ``inferred``,
    ``identifier``, ``constant``), and the training split's statistics the preprocessing fit adds: missing
    cells, junk values counted as missing, the fill value, kept ``levels`` (categorical) and the rare count."""

    name: str
    type: str
    reason: str = "inferred"
    missing: int = 0
    junk: int = 0
    fill: float | None = None
    levels: list[str] | None = None
    rare: list[str] = field(default_factory=list)
    vocabulary: int | None = None

    @property
    def dtype(self) -> str:
        """The ONNX input's element type: ``float32`` or ``string``."""
        return "float32" if self.type in ("numeric", "boolean") else "string"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [])}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Column:
        """A column from :meth:`to_dict` (e.g. the ONNX metadata ``trainforge.columns``)."""
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _strings(values: Any) -> Any:
    """Non-missing cells as stripped strings."""
    return values.dropna().astype(str).str.strip()


def infer_column(name: str, values: Any, declared: str | None = None) -> Column:
    """The type of column ``name`` from its training values (a pandas Series); ``declared`` wins.

    Raises :class:`DataError` naming the column for a datetime column or one with between
    :data:`JUNK_SHARE` and :data:`TEXT_SHARE` non-numbers, :class:`ConfigError` for an unknown type.
    """
    import pandas as pd

    if declared is not None:
        if declared not in TYPES:
            raise ConfigError(f"dataset.columns: column {name!r}: unknown type {declared!r}; choose one of "
                              f"{', '.join(TYPES)}")
        return Column(name, declared, "declared")
    if len(_strings(values).replace("", np.nan).dropna()) == 0:
        return Column(name, "drop", "empty")
    if values.nunique(dropna=False) <= 1:
        return Column(name, "drop", "constant")
    if pd.api.types.is_bool_dtype(values):
        return Column(name, "boolean")
    cells = _strings(values)
    if cells.str.lower().isin(TRUE | FALSE).all():
        return Column(name, "boolean")
    numbers = pd.to_numeric(cells, errors="coerce")
    bad = float(numbers.isna().mean()) if len(cells) else 0.0
    if bad <= JUNK_SHARE:
        integral = numbers.dropna()
        if len(integral) >= ID_MIN_ROWS and integral.is_unique and (integral == integral.round()).all():
            return Column(name, "drop", "identifier")
        return Column(name, "numeric")
    if bad <= TEXT_SHARE:
        raise DataError(f"column {name!r}: {bad:.0%} of its values are not numbers (e.g. "
                        f"{cells[numbers.isna()].iloc[0]!r}); declare it: -p 'dataset.columns={{{name}: numeric}}' "
                        "(those values become missing) or categorical")
    if _looks_like_dates(cells):
        raise DataError(f"column {name!r} holds dates, which trainforge does not encode; derive numeric parts "
                        f"(e.g. day of year) before training or drop it: -p 'dataset.columns={{{name}: drop}}'")
    if cells.str.split().str.len().mean() >= TEXT_MIN_WORDS:
        return Column(name, "text")
    if len(cells) >= ID_MIN_ROWS and cells.is_unique:
        return Column(name, "drop", "identifier")
    return Column(name, "categorical")


def _looks_like_dates(cells: Any) -> bool:
    import warnings

    import pandas as pd

    sample = cells.head(200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(len(sample)) and float(parsed.notna().mean()) > 0.9


def infer_columns(frame: Any, declared: dict[str, str] | None = None) -> list[Column]:
    """Type every column of the training rows ``frame`` (see the module docstring). ``declared`` maps
    column names to types; a declared name that is not a column is a :class:`ConfigError`."""
    declared = dict(declared or {})
    unknown = [c for c in declared if c not in frame.columns]
    if unknown:
        raise ConfigError(f"dataset.columns names {', '.join(map(repr, unknown))}, not a feature column; "
                          f"columns: {', '.join(map(str, frame.columns))}")
    columns = [infer_column(str(c), frame[c], declared.get(str(c))) for c in frame.columns]
    if all(c.type == "drop" for c in columns):
        raise DataError("every feature column is dropped (identifiers or constants); nothing to learn")
    return columns


def raw_inputs(frame: Any, columns: list[Column], where: str = "input", *, strict: bool = False) -> dict[str, np.ndarray]:
    """Raw rows (a pandas DataFrame) as the graph's inputs: one ``(N, 1)`` array per used column.

    Numeric and boolean columns become float32 with NaN for missing, junk and (boolean) unrecognised
    values; categorical and text columns become strings with ``""`` for missing. Extra columns are
    ignored. Raises :class:`DataError` naming the first used column that ``frame`` lacks, and with
    ``strict`` (rows to predict) one that :func:`check_typed` refuses.
    """
    import pandas as pd

    used = [c for c in columns if c.type != "drop"]
    names = [str(c) for c in frame.columns]
    lacking = [c.name for c in used if c.name not in names]
    if lacking:
        raise DataError(f"{where}: no column {lacking[0]!r} (the model takes {', '.join(c.name for c in used)})")
    frame = frame.set_axis(names, axis=1)
    feeds: dict[str, np.ndarray] = {}
    for col in used:
        values = frame[col.name]
        if col.type == "numeric":
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float32)
        elif col.type == "boolean":
            text = values.astype(str).str.strip().str.lower()
            x = np.where(text.isin(TRUE | {"1", "1.0"}), 1.0, np.where(text.isin(FALSE | {"0", "0.0"}), 0.0, np.nan))
            x = x.astype(np.float32)
        if strict and col.dtype == "float32":
            check_typed(col, values, x, where)
        if col.dtype != "float32":
            x = as_strings(values)
            if strict and col.type == "categorical":
                count_unseen(col, x, where)
        feeds[col.name] = x.reshape(-1, 1)
    return feeds


def as_strings(values: Any) -> np.ndarray:
    """A categorical or text column's cells (a pandas Series) as the graph's strings, object ``(N,)``:
    ``""`` for missing; a float ``3.0`` (an integer column read next to an empty cell) is the level ``"3"``."""
    import pandas as pd

    if pd.api.types.is_float_dtype(values):
        values = values.map(lambda v: str(int(v)) if v == v and float(v).is_integer() else v)
    return values.astype(object).where(values.notna(), "").astype(str).to_numpy(dtype=object)


#: cell values read as missing in a numeric or boolean column to predict, whatever their share (lowercased)
MISSING_MARKERS = frozenset({"na", "n/a", "nan", "null", "none", "?", "-"})


def check_typed(col: Column, values: Any, fed: np.ndarray, where: str = "input") -> None:
    """Rows to predict: a numeric or boolean column where more than :data:`JUNK_SHARE` of the non-empty cells
    are neither numbers (true/false values) nor a :data:`MISSING_MARKERS` value, e.g. words or a shifted
    column, is refused with a :class:`DataError` naming it (the training rule: a wrong-typed column is not
    predicted as all missing). Fewer such cells, and the markers, count as missing with a warning giving
    their count; an empty column (every cell missing) is warned about and gets the training fill value."""
    # only the cells given but not read (NaN in ``fed``) can be empty text, markers or junk: converting just
    # those to text keeps a clean float column free of a per-cell str() (pandas 3's arrow strings: 30x slower)
    given = values.notna().to_numpy().copy()
    unread = given & np.isnan(fed)
    if unread.any():  # a float column's NaN cells are not given: nothing to look at (the common case)
        _check_unread(col, values, given, unread, where)
    if len(values) and not given.any():
        log.warning("%s: column %r is empty in every row: filled with the training value %.6g", where, col.name,
                    float("nan") if col.fill is None else col.fill)


def _check_unread(col: Column, values: Any, given: np.ndarray, unread: np.ndarray, where: str) -> None:
    """:func:`check_typed` on the cells given but not read: blanks become not given (in place), markers and
    a few junk values count as missing (warned), more junk than :data:`JUNK_SHARE` raises."""
    text = values[unread].astype(str).str.strip()
    empty = (text == "").to_numpy()
    blank = np.flatnonzero(unread)[empty]  # empty or blank text: missing, like a NaN
    given[blank] = unread[blank] = False
    junk = np.zeros_like(unread)
    junk[unread] = ~text[~empty].str.lower().isin(MISSING_MARKERS).to_numpy()
    kind = "numbers" if col.type == "numeric" else "true/false values"
    if junk.any() and junk.sum() > JUNK_SHARE * given.sum():
        raise DataError(f"{where}: column {col.name!r}: {int(junk.sum())} of {int(given.sum())} value(s) are not "
                        f"{kind} (e.g. {values[junk].iloc[0]!r}); the model was trained on {col.type} values there")
    if unread.any():
        log.warning("%s: column %r: %d value(s) that are not %s (e.g. %r) count as missing", where, col.name,
                    int(unread.sum()), kind, values[unread].iloc[0])


def count_unseen(col: Column, fed: np.ndarray, where: str = "input") -> None:
    """Rows to predict: warn with the count of a categorical column's levels never seen in training (they
    take the shared rare/unknown encoding, never an error)."""
    seen = {"", *(col.levels or []), *(col.rare or [])}
    unseen = ~np.isin(fed, list(seen))
    if unseen.any():
        log.warning("%s: column %r: %d value(s) never seen in training (e.g. %r) take the unknown level", where,
                    col.name, int(unseen.sum()), fed[unseen][0])


def schema_line(columns: list[Column]) -> str:
    """One short line: counts per type, categorical/text names, dropped columns and why."""
    parts = []
    for kind in ("numeric", "boolean", "categorical", "text"):
        names = [c.name for c in columns if c.type == kind]
        if names:
            listed = "" if kind == "numeric" else f" ({', '.join(names[:6])}{' ...' if len(names) > 6 else ''})"
            parts.append(f"{len(names)} {kind}{listed}")
    dropped = [f"{c.name}: {c.reason}" for c in columns if c.type == "drop"]
    if dropped:
        parts.append(f"{len(dropped)} dropped ({', '.join(dropped[:6])}{' ...' if len(dropped) > 6 else ''})")
    return "columns: " + ", ".join(parts)
