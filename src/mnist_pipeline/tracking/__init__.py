"""Experiment tracking with MLflow: the Lightning logger of a training, and sweep parent runs.

Only this package imports mlflow, and only inside functions or a background thread: importing
it costs 1-2 s, which `logger=none` runs, the data stage and most tests should not pay.
"""
