"""The stages a run is made of and the library behind every entry point (train, evaluate, score, convergence): config checks, run folders, loading runs."""
