"""fevae: self-supervised feature likelihoods (p_FEVAE) for VAE out-of-distribution detection."""

__version__ = "0.1.0"
