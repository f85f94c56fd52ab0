"""Send what runs kept while their MLflow store was out of reach: `python src/sync.py [RUN_DIR]`.

Without a run directory, every run under outputs/ that keeps records (`mlflow-unsent/`).
"""

from mnist_pipeline.stages import one_line_errors
from mnist_pipeline.tracking.outbox import main

if __name__ == "__main__":
    one_line_errors(main)()
