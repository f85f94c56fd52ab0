"""Send what runs kept while their MLflow store was out of reach: `python src/sync.py [RUN_DIR]`.

Without a run directory, every run under outputs/ that keeps records (`mlflow-unsent/`).
"""

from mnist_pipeline.stages import user_errors_exit_2
from mnist_pipeline.tracking.outbox import main

if __name__ == "__main__":
    user_errors_exit_2(main)()
