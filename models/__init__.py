"""Recurrent model definitions, datasets, training loop, diagnostics and hyperparameter search."""
