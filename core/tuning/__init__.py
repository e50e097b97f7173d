"""Tuning wing: ``settings`` (TuneSettings), ``space``, ``study`` (Optuna), ``objective``, ``runner``, ``selection``,
``parent_run`` (MLflow), ``best_model`` and ``tune``. Imports everything below it; nothing imports it but the CLI."""
