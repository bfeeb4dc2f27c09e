"""Monte-Carlo estimators of log p_VAE / p_FE / p_FEVAE (PR and APO), the per-image noise, and the baseline scores (IWAE, input complexity, likelihood regret)."""
