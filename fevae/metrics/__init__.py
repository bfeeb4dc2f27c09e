"""OOD metrics (AUROC, AUPRC, FPR95) with bootstrap intervals, and the score-file naming they read."""
