"""Hyperparameter search with Optuna: a durable study, pruning, trials in parallel.

The Hydra sweeper that drives it is `hydra_plugins.mnist_search` (Hydra only loads plugins from
that package); what it does is here: the search space from Hydra's override syntax
(`space.py`), the study and its trials (`study.py`), and the training's side of a trial,
reporting and pruning (`trial.py`).
"""

# The MLflow tags of a search: a study's parent run has the study's name and storage, each
# trial's run the study's name, its number and how it ended (COMPLETE or PRUNED).
STUDY_TAG, STORAGE_TAG = "optuna.study", "optuna.storage"
TRIAL_TAG, STATE_TAG = "optuna.trial", "optuna.state"
