"""Reusing trained models, and the decoded samples scored with them, across runs and sweep jobs.

A trained model is stored under ``paths.cache_dir/<name>-<hash>/{best,last}.ckpt`` where the hash
covers exactly what determines its weights (:func:`model_key`): the model's own config, the
training data selection and preprocessing, its budget, the trainer settings that change the
optimisation, the seed, and the source of the modules that train it. Sweeping ``fe.*`` or ``eval.*`` therefore reuses both
models; sweeping the likelihood retrains only the VAE.

Parallel jobs (e.g. Hydra's joblib launcher) are safe: a per-entry file lock makes one job train
while the others wait and then reuse its result, and an entry appears only by an atomic rename of
a complete folder, so nobody reads a half-written checkpoint.

:class:`SamplesCache` does the same for the model pass of scoring (per-sample log p(x|phi(z)),
decoded-image Jigsaw features, IWAE weights, PNG code lengths, likelihood regret): keyed by the
*weights* of both models, the eval images and every setting that changes those numbers, so a
sweep over ``fe.n``/``fe.C`` decodes once and each job only fits and evaluates its mixtures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from fevae.utils.io import current_umask

log = logging.getLogger(__name__)

#: data settings that change the training images (not where they come from, nor the eval sets)
DATA_KEYS = ("preprocess", "val_size", "train_subset", "seed")
#: trainer settings that do not change the weights
TRAINER_IGNORED = ("enable_progress_bar", "enable_model_summary", "log_every_n_steps", "profiler", "detect_anomaly")
CHECKPOINTS = ("best.ckpt", "last.ckpt")


#: source files whose code determines the trained weights (a code change invalidates the cache)
CODE = ("data/datamodule.py", "data/transforms.py", "models/vae.py", "models/likelihoods.py", "models/jigsaw.py", "training.py")


def code_hash(files: tuple[str, ...] = CODE) -> str:
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for rel in files:
        h.update((root / rel).read_bytes())
    return h.hexdigest()[:16]


def model_key(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The part of ``cfg`` (and of the code) that determines the trained weights of ``name``."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    key = {
        "model": OmegaConf.to_container(cfg.model[name], resolve=True),
        "data": {k: data.get(k) for k in DATA_KEYS},
        "budget": OmegaConf.to_container(cfg.budget[name], resolve=True),
        "trainer": {k: v for k, v in trainer.items() if k not in TRAINER_IGNORED},
        "seed": cfg.seed,
        "code": code_hash(),
    }
    node = cfg.get("callbacks")
    callbacks = {k: v for k, v in (OmegaConf.to_container(node, resolve=True) if node else {}).items() if v is not None}
    if callbacks:  # a callback can change the weights (early stopping); absent when there are none, so older keys still match
        key["callbacks"] = callbacks
    return key


def model_hash(cfg: DictConfig, name: str) -> str:
    return digest(model_key(cfg, name))


def digest(obj: Any) -> str:
    """Short sha256 of a JSON-able key."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class CacheEntry:
    """A folder ``<cache_dir>/<name>-<hash>`` that appears complete or not at all (lock + rename)."""

    FILES: tuple[str, ...] = ()

    def __init__(self, cache_dir: str | Path, name: str, hash_: str):
        self.name, self.hash = name, hash_
        self.root = Path(cache_dir)
        self.entry = self.root / f"{name}-{self.hash}"

    def lock(self) -> FileLock:
        self.root.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.entry) + ".lock")

    def has(self) -> bool:
        return self.entry.is_dir() and all((self.entry / f).is_file() for f in self.FILES)

    def _store(self, write: Callable[[Path], None], key: Any) -> None:
        """``write(tmp_folder)`` then rename the folder into place (nothing if already there)."""
        if self.has():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.entry.name}.", dir=self.root))
        try:
            os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp's 0700 would hide the entry from the group
            write(tmp)
            (tmp / "key.json").write_text(json.dumps({"name": self.name, "hash": self.hash, "key": key}, indent=2, default=str))
            shutil.rmtree(self.entry, ignore_errors=True)  # an incomplete folder left by hand
            os.replace(tmp, self.entry)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


class ModelCache(CacheEntry):
    """The cache folder of one model config; see the module docstring."""

    FILES = CHECKPOINTS

    def __init__(self, cache_dir: str | Path, cfg: DictConfig, name: str):
        super().__init__(cache_dir, name, model_hash(cfg, name))

    def store(self, ckpt_dir: Path) -> None:
        """Copy a finished model's checkpoints into the cache (complete folder, then rename)."""

        def write(tmp: Path) -> None:
            for f in CHECKPOINTS:
                shutil.copy2(ckpt_dir / f, tmp / f)

        self._store(write, None)

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


#: source files whose code determines the scoring model pass
SCORING_CODE = ("scoring/estimators.py", "scoring/noise.py", "scoring/baselines.py", "models/stacked.py", "evaluation/scorer.py", "evaluation/driver.py", "evaluation/settings.py", "models/vae.py", "models/likelihoods.py", "models/jigsaw.py")


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


class SamplesCache(CacheEntry):
    """The stored model pass of one (weights, eval images, eval settings): ``<set>.npz`` arrays
    plus ``meta.json`` (timings). See the module docstring."""

    FILES = ("meta.json",)

    def __init__(self, cache_dir: str | Path, key: dict[str, Any]):
        self.key = {**key, "code": code_hash(SCORING_CODE)}
        super().__init__(cache_dir, "samples", digest(self.key))

    def store(self, samples: dict[str, dict[str, np.ndarray]], meta: dict[str, Any]) -> None:
        def write(tmp: Path) -> None:
            for set_name, arrays in samples.items():  # "val/<set>" lands in a val/ folder
                (tmp / f"{set_name}.npz").parent.mkdir(parents=True, exist_ok=True)
                np.savez(tmp / f"{set_name}.npz", **arrays)
            (tmp / "meta.json").write_text(json.dumps({**meta, "sets": list(samples)}, indent=2))

        self._store(write, self.key)

    def load(self) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
        meta = json.loads((self.entry / "meta.json").read_text())
        samples = {}
        for set_name in meta["sets"]:
            with np.load(self.entry / f"{set_name}.npz", allow_pickle=False) as npz:
                samples[set_name] = {k: npz[k] for k in npz.files}
        return samples, meta
