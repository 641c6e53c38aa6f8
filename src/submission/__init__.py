"""Refit and submit: a cross-validated model trained on every labelled tile, its Kaggle files."""
