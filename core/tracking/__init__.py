"""Tracking wing: the MLflow store and run lifecycle, what a run logs (params, metrics, checkpoints,
plots) and the storage locks. Imports the training wing and the floor."""
