"""Hyperparameter search with Optuna: a durable study, pruning, trials in parallel.

The Hydra sweeper that drives it is `hydra_plugins.mnist_search` (Hydra only loads plugins from
that package); what it does is here: the search space from Hydra's override syntax
(`space.py`), the study and its trials (`study.py`), and the training's side of a trial,
reporting and pruning (`trial.py`).
"""
