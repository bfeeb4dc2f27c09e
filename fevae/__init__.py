"""fevae: self-supervised feature likelihoods (p_FEVAE) for VAE out-of-distribution detection.

The Python API (:mod:`fevae.api`) is imported on first use, so ``import fevae`` stays cheap (no
torch or Lightning): ``fevae.load_run(run_dir).score(images)``, ``fevae.train_run([...])``.
``fevae.train`` is the training module (``python -m fevae.train``), not a function.
"""

__version__ = "0.1.0"

#: names taken from :mod:`fevae.api` on first access
_API = ("Run", "load_run", "train_run")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from fevae import api

        return getattr(api, name)
    raise AttributeError(f"module 'fevae' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
