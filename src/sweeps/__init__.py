"""Hyper-parameter sweeps from W&B-format sweep files, run on W&B or as Optuna studies.

`spec` parses and validates the file against `ESDConfig`, `optuna_backend` and
`wandb_backend` run it, `results` writes the trial table, the best config and a plot.
The command line is `python -m scripts.train_sweeps`.
"""
