"""Models: the VAE with pluggable pixel likelihoods and the Jigsaw feature extractor."""

from fevae.models.jigsaw import Jigsaw, make_permutations
from fevae.models.likelihoods import build_likelihood
from fevae.models.vae import VAE

__all__ = ["VAE", "Jigsaw", "build_likelihood", "make_permutations"]
