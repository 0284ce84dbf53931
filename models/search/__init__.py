"""Hyperparameter search on Optuna: search spaces (``space``), folds for cross-validation
(``folds``), the trial objective fed by the training loop's per-epoch callback (``objective``),
samplers and pruners (``sampling``), studies in SQLite or PostgreSQL (``study``), the ranked table
and plots (``report``)."""
