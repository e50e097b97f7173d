"""``trainforge.data``: the data types a dataset plugin returns, at the import path plugins have used.

Kept so third-party plugins written as ``from trainforge.data import DataBundle`` keep working; the
types live in :mod:`trainforge.contracts` and the data path itself in :mod:`trainforge.training.data`.
:func:`csv_header` is the one check of a CSV file's header row, for every reader of user CSV files.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from trainforge.contracts import DataBundle, DataMeta, TensorSplit
from trainforge.errors import DataError

__all__ = ["DataBundle", "DataMeta", "TensorSplit", "csv_header"]


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
