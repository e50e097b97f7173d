"""The names of every ``trainforge.*`` MLflow tag (and Optuna user attribute) trainforge writes or reads.

One home: code elsewhere imports these constants instead of spelling the strings. Values are what the
MLflow UI shows and what scripts filter on (``tags."trainforge.role" = 'study'``), so they never change
without a migration note. :func:`set_tags` writes tags to a run several processes share.
"""

from __future__ import annotations

from typing import Any

PREFIX = "trainforge."

# -- every run
VERSION = "trainforge.version"  # the trainforge version that wrote the run
TASK = "trainforge.task"  # classification, regression, ...
COMMAND = "trainforge.command"  # train or tune
ERROR = "trainforge.error"  # one line: why the run ended FAILED or KILLED
HOST = "trainforge.host"  # machine that runs the run (also an Optuna trial user attribute)
PID = "trainforge.pid"  # process id on HOST (also an Optuna trial user attribute)
PID_START = "trainforge.pid_start"  # process start time, guards against a reused pid
WORLD_SIZE = "trainforge.world_size"  # processes of a distributed run
DISTRIBUTED = "trainforge.distributed"  # backend and process count
CONSTANT_FEATURES = "trainforge.constant_features"  # input columns with one value on the training split
DROPPED_COLUMNS = "trainforge.dropped_columns"  # a raw table's columns dropped as identifiers or constants
PLOT_ROWS = "trainforge.plot_rows"  # the sample a streamed run's plots were drawn from
MODEL_URI = "trainforge.model_uri"  # the served MLflow model (pyfunc with labels)
ONNX_MODEL_URI = "trainforge.onnx_model_uri"  # the plain ONNX-flavor MLflow model
ONNX_SHA256 = "trainforge.onnx_sha256"  # SHA-256 of onnx/model.onnx as logged

# -- studies (parent run), trials (child runs) and refits
FIT = "trainforge.fit"  # a run's model kind when it is not the epoch loop (e.g. estimator: scikit-learn)
ROLE = "trainforge.role"  # study | refit | cv | fold | compare
STUDY = "trainforge.study"
DATASET = "trainforge.dataset"
TRIAL = "trainforge.trial"  # STUDY#NUMBER on a trial run; the trial number on a model version
TRIAL_NUMBER = "trainforge.trial_number"
TRIAL_STATE = "trainforge.trial_state"  # COMPLETE | PRUNED | FAIL
PRUNED_EPOCH = "trainforge.pruned_epoch"
FAIL_REASON = "trainforge.fail_reason"
WORKER = "trainforge.worker"  # index of the --n-jobs worker that ran a trial
QUANTIZE = "trainforge.quantize"
BEST_TRIAL = "trainforge.best_trial"
BEST_RUN_ID = "trainforge.best_run_id"
REFIT_OF_TRIAL = "trainforge.refit_of_trial"
MODEL_VERSION = "trainforge.model_version"
SOURCE_RUN_ID = "trainforge.source_run_id"
PARENT_RUN_ID = "trainforge.parent_run_id"
SELECTED_TRIAL = "trainforge.selected_trial"  # Optuna study user attribute
SETTINGS = "trainforge.settings"  # Optuna study user attribute: the study's TuneSettings as JSON
DEFAULTS = "trainforge.defaults"  # Optuna trial user attribute: the enqueued trial of the defaults

# -- cross-validation (trainforge.cv): a cv parent run, its fold child runs and its refit child run
FOLD = "trainforge.fold"  # the fold index on a fold run
CV_FOLDS = "trainforge.cv_folds"  # K on the cv parent run
CV_KIND = "trainforge.cv_kind"  # stratified | group | forward | kfold
REFIT_RUN_ID = "trainforge.refit_run_id"  # on a cv parent: the run of the model refit on all non-test rows
CV_MODE = "trainforge.cv_mode"  # on a cv trial: lockstep | sequential


def named(*parts: str) -> str:
    """A dynamic tag name under the prefix, e.g. ``named("plugin", "model")`` -> ``trainforge.plugin.model``."""
    return PREFIX + ".".join(parts)


def set_tags(run_id: str, tags: dict[str, str], client: Any = None) -> None:
    """Set ``tags`` (key -> value, values cut to MLflow's 5000 characters) on run ``run_id`` in one write.

    Use it for a run that several processes write at once (a study's parent run, shared by its workers):
    ``MlflowClient.set_tag`` is a select-then-insert, so two processes inserting the same new key race and
    the loser gets ``IntegrityError: UNIQUE constraint failed: tags.key, tags.run_uuid``; ``log_batch`` goes
    through the SQL store's ``_set_tags``, which rolls back and retries that conflict (MLflow
    ``store/tracking/sqlalchemy_store.py``).
    """
    if not tags:
        return
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    (client or MlflowClient()).log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
