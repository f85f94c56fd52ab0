"""Training machinery shared by every network: the LightningModule, checkpoints, the curve."""
