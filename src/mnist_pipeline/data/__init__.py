"""MNIST: download and verify the IDX files (`download`, `idx`), serve in-memory batches
(`datamodule`)."""
