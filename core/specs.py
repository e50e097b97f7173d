"""The spec classes plugins register.

A spec is a named recipe: a builder plus documented default hyperparameters, a one-line description and
an optional Optuna search space (``trial -> dict`` of hyperparameters, used by ``trainforge tune``).
Specs import nothing heavy, so ``trainforge plugins`` can list them without importing torch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # pragma: no cover - types only
    import numpy as np
    import optuna
    import torch

    from trainforge.contracts import Callback, DataMeta, Task, TrainContext

SearchSpace = Callable[["optuna.Trial"], dict[str, Any]]
TASKS = ("classification", "regression")


@dataclass(frozen=True)
class _Spec:
    name: str
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    #: ``trial -> {hyperparameter: value}``; names must be keys of ``defaults``.
    search_space: SearchSpace | None = None
    #: one-line documentation per hyperparameter, shown by ``trainforge plugins --details``.
    param_help: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise TypeError(f"{type(self).__name__} needs a non-empty name")
        if ":" in self.name:  # ':' separates the distribution in a qualified name (trainforge:mlp)
            raise TypeError(f"{type(self).__name__} {self.name!r}: a name cannot contain ':'")


@dataclass(frozen=True)
class ModelSpec(_Spec):
    """A model: ``build(input_shape, output_dim, **hparams) -> torch.nn.Module``.

    ``input_shape`` is the per-sample shape without the batch axis, e.g. ``(64,)`` for a vector or
    ``(1, 8, 8)`` for a ``(C, H, W)`` image; ``output_dim`` is the number of classes for classification
    (the module returns logits of shape ``(N, output_dim)``) or the number of targets for regression.
    ``input`` says what the module consumes: ``"vector"`` models get images flattened automatically,
    ``"image"`` models need a ``(C, H, W)`` input, ``"sequence"`` models get ``(N, T, F)`` (a
    ``(C, H, W)`` image becomes ``H`` steps of ``C*W`` features, a vector ``(D,)`` becomes ``D`` steps
    of 1 feature), ``"any"`` takes the data as it is.

    ``fit="estimator"``: ``build`` returns a scikit-learn estimator instead (``fit(X, y)`` once on the
    flattened training rows, no epochs); it is tracked, exported (skl2onnx) and predicted like the rest.
    The module may also own its training step (see ``docs/plugins.md``, "Models that own their step").
    """

    build: Callable[..., torch.nn.Module] | None = None
    tasks: frozenset[str] = frozenset(TASKS)
    input: Literal["vector", "image", "sequence", "any"] = "any"
    fit: Literal["epochs", "estimator"] = "epochs"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.build is None:
            raise TypeError(f"ModelSpec {self.name!r} needs a build function")
        object.__setattr__(self, "tasks", frozenset(self.tasks))


@dataclass(frozen=True)
class OptimizerSpec(_Spec):
    """An optimizer: ``build(params, **hparams) -> torch.optim.Optimizer``; ``defaults`` must hold ``lr``."""

    build: Callable[..., torch.optim.Optimizer] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.build is None:
            raise TypeError(f"OptimizerSpec {self.name!r} needs a build function")
        if "lr" not in self.defaults:
            raise TypeError(f"OptimizerSpec {self.name!r}: defaults must include the learning rate 'lr'")


@dataclass(frozen=True)
class DatasetSpec(_Spec):
    """A dataset: ``load(**params) -> ArrayData``.

    ``load`` may raise :class:`trainforge.DataError` naming the file, row and column of bad input.
    Core splits ``ArrayData`` into train/val/test (stratified for classification, seeded).
    """

    load: Callable[..., ArrayData] | None = None
    tasks: frozenset[str] = frozenset(TASKS)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.load is None:
            raise TypeError(f"DatasetSpec {self.name!r} needs a load function")
        object.__setattr__(self, "tasks", frozenset(self.tasks))


@dataclass(frozen=True)
class TaskSpec(_Spec):
    """A task: ``build(meta: DataMeta) -> Task`` (loss, metrics, output head, ONNX output names).

    ``target`` says how the data path builds the training targets from a dataset's rows:
    ``"label"`` int64 class indices ``(N,)`` (stratified split), ``"value"`` float32 ``(N, T)``
    standardized with train statistics, ``"input"`` the features themselves (reconstruction),
    ``"none"`` an empty ``(N, 0)`` float32 array (generation).
    """

    build: Callable[[DataMeta], Task] | None = None
    target: Literal["label", "value", "input", "none"] = "value"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.build is None:
            raise TypeError(f"TaskSpec {self.name!r} needs a build function")
        if self.target not in ("label", "value", "input", "none"):
            raise TypeError(f"TaskSpec {self.name!r}: target must be label, value, input or none")


@dataclass(frozen=True)
class SchedulerSpec(_Spec):
    """A learning-rate scheduler: ``build(optimizer, epochs, **hparams)``, stepped once per epoch.

    With ``needs_metric=True`` the trainer passes the monitored validation metric to ``step`` (as
    ``torch.optim.lr_scheduler.ReduceLROnPlateau`` expects), and ``build`` also receives ``mode``
    (``"min"`` or ``"max"``: the direction in which that metric improves).
    """

    build: Callable[..., Any] | None = None
    needs_metric: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.build is None:
            raise TypeError(f"SchedulerSpec {self.name!r} needs a build function")


@dataclass(frozen=True)
class CallbackSpec(_Spec):
    """A trainer callback: ``build(context: TrainContext) -> Callback | None``.

    Built for every fit; returning ``None`` opts out (e.g. the MLflow logger when tracking is off).
    Callbacks run in ascending ``order``.
    """

    build: Callable[[TrainContext], Callback | None] | None = None
    order: int = 100

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.build is None:
            raise TypeError(f"CallbackSpec {self.name!r} needs a build function")


@dataclass
class ArrayData:
    """In-memory data a dataset plugin returns before core splits it.

    - ``features``: float array ``(N, *input_shape)``, e.g. ``(N, 13)`` or ``(N, 1, 8, 8)``.
    - ``target``: ``(N,)`` int class indices for classification, float ``(N,)`` or ``(N, T)`` for regression
      and forecasting (``T`` = horizon); ignored by tasks whose target is the input or nothing.
    - ``task``: the data's own task, a registered task name (``"classification"``, ``"regression"``,
      ``"forecasting"``, ...); a model may pick another task the dataset declares (e.g. reconstruction).
    - ``class_names``: label of each class index (classification only).
    - ``feature_names``: names of the flattened feature columns, used by ``predict`` on CSV input.
    - ``ordered``: rows are in time order: the split is chronological (train, then val, then test),
      never shuffled, with ``gap`` rows dropped between consecutive splits (no target overlap).
    - ``layout``: ``"sequence"`` for ``(N, T, F)`` windows (standardized per feature over all steps);
      ``"auto"`` standardizes vectors per feature and ``(N, C, ...)`` arrays per channel.
    - ``table``: instead of ``features``, a raw pandas DataFrame of the feature columns (empty cells,
      strings, free text): core types its columns on the training split, cleans and encodes them
      (:mod:`trainforge.data`, :mod:`trainforge.training.tabular`) and exports that preprocessing inside
      the ONNX graph. ``columns`` declares column types (``{"site": "categorical", "id": "drop"}``),
      ``impute`` the fill of missing numbers (median, mean or constant 0), ``drop_duplicates`` drops exact
      duplicate rows (features and target) before the split.
    """

    features: np.ndarray
    target: np.ndarray
    task: str
    class_names: list[str] | None = None
    feature_names: list[str] | None = None
    source: str = ""
    ordered: bool = False
    gap: int = 0
    layout: Literal["auto", "sequence"] = "auto"
    table: Any = None
    columns: dict[str, str] | None = None
    impute: str = "median"
    drop_duplicates: bool = True


#: a table file larger than this streams when its dataset's ``streaming`` setting is ``"auto"`` (bytes: 1 GiB)
STREAMING_AUTO_BYTES = 1 << 30


@dataclass(frozen=True)
class TableFile:
    """A CSV or Parquet file a dataset plugin hands to core to stream instead of loading it in memory.

    Core reads it through pyarrow in record batches (Parquet row groups, CSV blocks) and splits rows by a
    stable hash of their index (see :mod:`trainforge.training.streaming`), so memory stays bounded by one
    batch plus the shuffle buffer whatever the file size. A ``load`` function that returns one must accept
    ``split`` (it is then called with the split settings).

    - ``path``: the file; ``format``: ``"csv"`` or ``"parquet"``.
    - ``target``: the target column (``None``: the last column); ``features``: the feature columns
      (``None``: every other column).
    - ``task``: ``"auto"`` (integral targets with at most 50 values are class labels), ``"classification"``
      or ``"regression"``.
    - ``delimiter``: the CSV field delimiter.
    - ``columns``: declared column types, as :attr:`ArrayData.columns`; with them, or features that are not
      all numbers or have empty cells, the file streams as a raw table (typed, cleaned and encoded in one
      pass, :mod:`trainforge.training.streaming_tabular`); ``impute``: as :attr:`ArrayData.impute`.
    """

    path: str
    format: Literal["csv", "parquet"]
    target: str | None = None
    features: list[str] | None = None
    task: str = "auto"
    delimiter: str = ","
    columns: dict[str, str] | None = None
    impute: str = "median"
