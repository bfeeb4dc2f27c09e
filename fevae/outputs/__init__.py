"""A run's result files: scores, metrics.json, figures, TensorBoard dashboards, report.md (with the paper's claims) and the sweep summary."""
