"""The global term p_FE's features: Jigsaw feature extraction, the Bayesian Gaussian mixture (fit, stored arrays, torch density)."""
