"""``trainforge.data``: the data types a dataset plugin returns, at the import path plugins have used.

Kept so third-party plugins written as ``from trainforge.data import DataBundle`` keep working; the
types live in :mod:`trainforge.contracts` and the data path itself in :mod:`trainforge.training.data`.
"""

from trainforge.contracts import DataBundle, DataMeta, TensorSplit

__all__ = ["DataBundle", "DataMeta", "TensorSplit"]
