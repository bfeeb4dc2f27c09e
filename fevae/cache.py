"""Reusing trained models across runs and sweep jobs.

A trained model is stored under ``paths.cache_dir/<name>-<hash>/{best,last}.ckpt`` where the hash
covers exactly what determines its weights (:func:`model_key`): the model's own config, the
training data selection and preprocessing, its budget, the trainer settings that change the
optimisation, the seed, and the source of the modules that train it. Sweeping ``fe.*`` or ``eval.*`` therefore reuses both
models; sweeping the likelihood retrains only the VAE.

Parallel jobs (e.g. Hydra's joblib launcher) are safe: a per-entry file lock makes one job train
while the others wait and then reuse its result, and an entry appears only by an atomic rename of
a complete folder, so nobody reads a half-written checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: data settings that change the training images (not where they come from, nor the eval sets)
DATA_KEYS = ("preprocess", "val_size", "train_subset", "seed")
#: trainer settings that do not change the weights
TRAINER_IGNORED = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps", "profiler", "detect_anomaly")
CHECKPOINTS = ("best.ckpt", "last.ckpt")


#: source files whose code determines the trained weights (a code change invalidates the cache)
CODE = ("data/datamodule.py", "data/transforms.py", "models/vae.py", "models/likelihoods.py", "models/jigsaw.py", "training.py")


def code_hash() -> str:
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for rel in CODE:
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()[:16]


def model_key(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The part of ``cfg`` (and of the code) that determines the trained weights of ``name``."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    return {
        "model": OmegaConf.to_container(cfg.model[name], resolve=True),
        "data": {k: data.get(k) for k in DATA_KEYS},
        "budget": OmegaConf.to_container(cfg.budget[name], resolve=True),
        "trainer": {k: v for k, v in trainer.items() if k not in TRAINER_IGNORED},
        "seed": cfg.seed,
        "code": code_hash(),
    }


def model_hash(cfg: DictConfig, name: str) -> str:
    text = json.dumps(model_key(cfg, name), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class ModelCache:
    """The cache folder of one model config; see the module docstring."""

    def __init__(self, cache_dir: str | Path, cfg: DictConfig, name: str):
        self.name = name
        self.hash = model_hash(cfg, name)
        self.root = Path(cache_dir)
        self.entry = self.root / f"{name}-{self.hash}"

    def lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.entry) + ".lock")

    def has(self) -> bool:
        return all((self.entry / f).is_file() for f in CHECKPOINTS)

    def store(self, ckpt_dir: Path) -> None:
        """Copy a finished model's checkpoints into the cache (complete folder, then rename)."""
        if self.has():
            return
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.entry.name}.", dir=self.root))
        try:
            for f in CHECKPOINTS:
                shutil.copy2(ckpt_dir / f, tmp / f)
            (tmp / "key.json").write_text(json.dumps({"name": self.name, "hash": self.hash}, indent=2))
            os.replace(tmp, self.entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def restore(self, ckpt_dir: Path) -> None:
        """Put the cached checkpoints into a run's ``checkpoints/<name>/`` (hard links when possible)."""
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for f in CHECKPOINTS:
            target = ckpt_dir / f
            target.unlink(missing_ok=True)
            try:
                os.link(self.entry / f, target)
            except OSError:
                shutil.copy2(self.entry / f, target)
