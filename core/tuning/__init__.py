"""Tuning wing: the Optuna study (the MLflow parent run), objective, search space, workers, study-wide
trial targets and the study report. Imports everything below it; nothing imports it but the CLI."""
