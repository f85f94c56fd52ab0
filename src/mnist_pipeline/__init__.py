"""mnist-pipeline: the lecture's MNIST MLP trained, tracked and reproduced."""

from pathlib import Path

# The repository root (this file is src/mnist_pipeline/__init__.py): where relative paths in the
# configs point, and where the default MLflow store lives.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
