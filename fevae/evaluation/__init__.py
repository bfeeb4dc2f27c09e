"""Scoring a trained run: the evaluation settings, the LightningModule that runs the model pass, and the driver over a run's sets."""
