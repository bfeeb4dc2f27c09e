"""Separation during training: how far apart in-distribution and OOD images score, epoch by epoch.

:class:`VaeSeparation` and :class:`JigsawSeparation` (built by :func:`separation_callbacks` from the
``separation`` block of ``conf/train.yaml``) score a fixed small subset of images every
``every_n_epochs`` epochs of their model's training (after epochs 1, 1 + k, 1 + 2k, ... and the last),
so that a researcher watches the separation of in-distribution and OOD images (or its inversion,
the Nalisnick effect: OOD images scoring *higher*) and its repair by the Jigsaw features appear
while the models train.

* **Images**: the first ``n_images`` of the **validation part** of each evaluation set
  (``FevaeDataModule.eval_val_sets``; never a test image): the in-distribution set
  (``eval_set_names[0]``) and the OOD sets (``sets``; null = every configured one). The same images
  at every evaluation.
* **Scores** (higher = more in-distribution, as in :mod:`fevae.metrics.ood`):

  - VAE: ``separation/apo_log_p_vae``, the APO log p_VAE of the evaluation (paper Eq. 2,
    :func:`fevae.scoring.estimators.sample_chunks`: ``log (1/S) sum_s p(x | z_s)``, ``z_s ~ q(z|x)``; with
    ``vae.scheme=PR``, ``separation/pr_log_p_vae`` with ``z_s ~ p(z)``, where V1's Nalisnick effect shows) with a small
    ``S = n_samples`` (not importance weighted: that is the ``iwae`` detector). Its noise is the evaluation's own (per image, from a private generator seeded
    by the run's seed, the set and the image's position: :func:`fevae.scoring.noise.per_sample_normal`),
    so the global RNG is never touched, and an image's value is the evaluation's estimate over its
    first ``S`` samples.
  - Jigsaw: ``separation/log_p_fe``, log p_FE(f_x) of the image's own layer-``fe.layer`` features
    under a small Gaussian mixture (``components`` components, ``fe.covariance_type``, ``fe.reg_covar``,
    ``random_state`` = the run's seed) refitted at each evaluation on the features of the first
    ``n_fit`` training images; densities in float64. This is the density family of the run's p_FE
    (fitted on ``fe.n`` images with ``fe.C`` components after training; the evaluation's p_FE then
    also needs the VAE's decodes, which this training does not have), so it shows whether the
    features p_FE will use already separate the sets; it costs one forward pass of the small MLP on
    ``n_fit + sets × n_images`` images and a fit of well under a second. The classifier's max-softmax
    would not: its classes are shuffled puzzles, and an unshuffled image is none of them.

* **Logged** (rank zero only, so DDP works): into the first TensorBoard logger's folder
  (``tensorboard/<model>/``) a run ``separation/<set>`` per set with one histogram per evaluation
  (tag as above, step = epochs completed), :data:`~fevae.outputs.dashboard.HIST_BINS` bins over a range
  shared by all sets at that epoch (:func:`fevae.outputs.dashboard.robust_range`); values outside it are left
  out and counted in the log line and the JSON file. The AUROC of each OOD set against the ID set
  (sklearn's ``roc_auc_score``, ID = positive class) as the scalar ``val/separation/auroc/<set>``
  through every logger of the training (TensorBoard, CSV, ...), at ``step = trainer.global_step``: a
  curve of the ``val`` group, next to the validation losses (a group of its own would sort before
  ``train`` and be a one-point chart in a one-epoch run). Without a TensorBoard logger only the
  scalars, the log lines and the JSON file are written.
* **Cost**: the callback times itself and the training (``on_train_start`` to ``on_train_end``). The
  first evaluation always runs; a later one runs only if, with the previous evaluation's duration
  as its estimate, the callback's total stays within ``max_cost_fraction`` of the training's
  elapsed time (otherwise it is skipped, logged once). At the end it logs one line (seconds,
  fraction, evaluations run and skipped) and writes ``<run>/separation_<model>.json`` (every
  evaluation's epoch, step, seconds, AUROCs, range and values left out). The models' weights, and
  the training's random draws, are exactly those of a run without it (the module is scored in
  eval mode under ``torch.no_grad()``, then each submodule's mode is restored; no DataLoader, no
  global RNG).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from fevae.errors import FevaeError, require
from fevae.evaluation.settings import score_stream
from fevae.metrics.ood import write_json_atomic
from fevae.outputs.dashboard import HIST_BINS, histogram_summary, set_dir
from fevae.outputs.dashboard import binned, robust_range
from fevae.scoring.estimators import log_mean_exp, sample_chunks

log = logging.getLogger("fevae.separation")

#: the ``separation`` block's keys and the keys of its per-model blocks
KEYS = {"enabled", "n_images", "max_cost_fraction", "sets", "vae", "jigsaw"}
MODEL_KEYS = {"vae": {"every_n_epochs", "n_samples", "scheme"}, "jigsaw": {"every_n_epochs", "n_fit", "components"}}
#: the VAE's score schemes (``separation.vae.scheme``): the evaluation's APO or PR log p_VAE
VAE_SCHEMES = ("APO", "PR")
#: the run (sub-folder of the model's TensorBoard folder) that holds one run per set
RUN = "separation"
#: the AUROC scalars' tag prefix (``val/separation/auroc/<set>``): in the ``val`` group of the training curves
AUROC_TAG = f"val/{RUN}/auroc"
#: images scored (decoded ``S`` times) at once
BATCH = 256


def _int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def validate_separation_config(node: Any) -> None:
    """Refuse invalid ``separation`` settings (``node``: the block as plain containers, or ``None``:
    an older config without it, which means off)."""
    if node is None:
        return
    fix = "see the separation block of conf/train.yaml (docs/usage.md: Separation during training)"
    require(isinstance(node, Mapping), f"separation={node!r} is not a group of settings", fix)
    unknown = sorted(set(node) - KEYS)
    require(not unknown, f"separation has unknown settings {unknown}", f"use only {', '.join(sorted(KEYS))}")
    require(isinstance(node.get("enabled"), bool), f"separation.enabled={node.get('enabled')!r} is invalid", "set it to true or false")
    require(_int(node.get("n_images"), 1), f"separation.n_images={node.get('n_images')!r} is invalid",
            "set it to an integer ≥ 1 (images of each set's validation part; default 256)")
    frac = node.get("max_cost_fraction")
    require(isinstance(frac, (int, float)) and not isinstance(frac, bool) and 0 < frac <= 1,
            f"separation.max_cost_fraction={frac!r} is invalid", "set it to a fraction in (0, 1] of the training time (default 0.05; 1 = no bound)")
    sets = node.get("sets")
    ok = sets is None or (isinstance(sets, Sequence) and not isinstance(sets, str) and len(sets) > 0
                          and all(isinstance(s, str) and s for s in sets) and len(set(sets)) == len(sets))
    require(ok, f"separation.sets={sets!r} is invalid", "set it to null (every OOD set) or a list of OOD set names, e.g. [mnist]")
    for model, keys in MODEL_KEYS.items():
        part = node.get(model)
        require(isinstance(part, Mapping), f"separation.{model} is missing or not a group of settings", fix)
        unknown = sorted(set(part) - keys)
        require(not unknown, f"separation.{model} has unknown settings {unknown}", f"use only {', '.join(sorted(keys))}")
        require(_int(part.get("every_n_epochs"), 0), f"separation.{model}.every_n_epochs={part.get('every_n_epochs')!r} is invalid",
                "set it to an integer ≥ 1 (0 switches this model's evaluations off)")
        for key in sorted(keys - {"every_n_epochs", "scheme"}):
            require(_int(part.get(key), 1), f"separation.{model}.{key}={part.get(key)!r} is invalid", "set it to an integer ≥ 1")
    scheme = node["vae"].get("scheme", "APO")
    require(scheme in VAE_SCHEMES, f"separation.vae.scheme={scheme!r} is invalid",
            "set it to APO (z ~ q(z|x), the default) or PR (z ~ p(z): where V1's Nalisnick effect shows)")
    jig = node["jigsaw"]
    require(jig["n_fit"] >= jig["components"], f"separation.jigsaw.n_fit={jig['n_fit']} is smaller than separation.jigsaw.components={jig['components']}",
            "fit the mixture on at least as many images as it has components")


def separation_callbacks(name: str, cfg: DictConfig, run_dir: str | Path) -> list[L.Callback]:
    """The separation callback of model ``name`` (``vae``, ``jigsaw``) as a list; empty when
    ``separation.enabled`` is false, the model's ``every_n_epochs`` is 0 or the config has no
    ``separation`` block (a run made before it existed)."""
    node = cfg.get("separation")
    settings = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    validate_separation_config(settings)
    if not settings or not settings["enabled"] or settings[name]["every_n_epochs"] == 0:
        return []
    common = dict(every_n_epochs=settings[name]["every_n_epochs"], n_images=settings["n_images"],
                  max_cost_fraction=float(settings["max_cost_fraction"]), sets=settings["sets"], seed=int(cfg.seed),
                  out_file=Path(run_dir) / f"separation_{name}.json")
    if name == "vae":
        return [VaeSeparation(n_samples=settings["vae"]["n_samples"], scheme=settings["vae"].get("scheme", "APO"), **common)]
    fe = cfg.fe
    return [JigsawSeparation(n_fit=settings["jigsaw"]["n_fit"], components=settings["jigsaw"]["components"], layer=int(fe.layer),
                             pre_activation=bool(fe.pre_activation), covariance_type=str(fe.covariance_type),
                             reg_covar=float(fe.reg_covar), **common)]


def auroc(in_dist: np.ndarray, ood: np.ndarray) -> float:
    """AUROC of ID (positive) vs OOD, higher score = more in-distribution; NaN when a score is not finite."""
    from sklearn.metrics import roc_auc_score

    if not (np.isfinite(in_dist).all() and np.isfinite(ood).all()):
        return float("nan")
    y = np.r_[np.ones(in_dist.size), np.zeros(ood.size)]
    return float(roc_auc_score(y, np.r_[in_dist, ood]))


class SeparationCallback(L.Callback):
    """Shared part of :class:`VaeSeparation` and :class:`JigsawSeparation` (module docstring);
    a subclass sets :attr:`model`, :attr:`score_name` and implements :meth:`score`."""

    model = "model"
    score_name = "score"
    #: what the score is, for the histograms' descriptions
    about = ""

    def __init__(self, every_n_epochs: int, n_images: int, max_cost_fraction: float, seed: int,
                 sets: Sequence[str] | None = None, out_file: str | Path | None = None):
        self.every_n_epochs, self.n_images, self.max_cost_fraction = int(every_n_epochs), int(n_images), float(max_cost_fraction)
        self.seed, self.sets = int(seed), (list(sets) if sets is not None else None)
        self.out_file = Path(out_file) if out_file is not None else None
        #: the callback's own wall time and the training's (s), once it has ended
        self.seconds = self.train_seconds = 0.0
        #: one record per evaluation (what the JSON file holds), the epochs skipped to stay within the bound
        self.evaluations: list[dict[str, Any]] = []
        self.skipped: list[int] = []
        self.in_distribution: str | None = None
        #: set -> (images [n, 1, 28, 28], positions in the whole eval set [n]); ID set first
        self.images: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._train_start: float | None = None
        self._writers: dict[str, Any] = {}

    @property
    def tag(self) -> str:
        return f"{RUN}/{self.score_name}"

    # ------------------------------------------------------------------ to implement
    def prepare(self, datamodule: Any) -> None:
        """Take what :meth:`score` needs from the data module besides the images (rank zero, once)."""

    def score(self, module: L.LightningModule) -> dict[str, np.ndarray]:
        """float64 scores of :attr:`images` per set, the module in eval mode under no_grad."""
        raise NotImplementedError

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero or self.images:
            return
        start = time.perf_counter()
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "eval_val_sets"):
            log.warning("separation (%s): the training has no fevae data module, so nothing is evaluated", self.model)
            return
        dm.setup()
        names = list(dm.eval_set_names)
        self.in_distribution, ood = names[0], names[1:]
        if self.sets is not None:
            missing = [s for s in self.sets if s not in ood]
            if missing:
                raise FevaeError(f"separation.sets names {missing}, which are not OOD sets of this run ({', '.join(ood) or 'none'})",
                                 "set separation.sets to null or to names of data.ood_sets")
            ood = [s for s in ood if s in self.sets]
        for name in [self.in_distribution, *ood]:
            part = dm.eval_val_sets.get(name)
            if part is None or len(part) == 0:
                log.warning("separation (%s): %s has no validation images (data.eval_split.val), so nothing is evaluated", self.model, name)
                self.images = {}
                return
            self.images[name] = (part.tensors[0][: self.n_images].clone(), part.tensors[2][: self.n_images].clone())
        if len(self.images) < 2:
            log.warning("separation (%s): no OOD set to compare with, so nothing is evaluated", self.model)
            self.images = {}
            return
        self.prepare(dm)
        self.seconds += time.perf_counter() - start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._train_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not self.images or self._train_start is None:
            return
        epoch = trainer.current_epoch + 1  # epochs completed: the step of the histograms and of the log lines
        last = trainer.max_epochs is not None and epoch == trainer.max_epochs
        if (epoch - 1) % self.every_n_epochs != 0 and not last:
            return
        if not self._within_budget():
            if not self.skipped:
                log.info("separation (%s): epoch %d skipped, and later ones while needed, to keep its cost ≤ %.3g%% of the training time",
                         self.model, epoch, 100 * self.max_cost_fraction)
            self.skipped.append(epoch)
            return
        start = time.perf_counter()
        modes = [(m, m.training) for m in pl_module.modules()]
        pl_module.eval()
        try:
            with torch.no_grad():
                scores = self.score(pl_module)
        except (ValueError, np.linalg.LinAlgError) as err:  # e.g. a mixture that cannot be fitted early in training
            log.warning("separation (%s): epoch %d not evaluated (%s)", self.model, epoch, str(err).splitlines()[0])
            scores = None
        finally:
            for m, training in modes:
                m.training = training
        if scores is not None:
            self._log(trainer, epoch, scores, start)
        self.seconds += time.perf_counter() - start

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self._train_start is None:
            return
        self.train_seconds = time.perf_counter() - self._train_start
        self._close()
        if not self.evaluations:
            return
        per = sum(e["seconds"] for e in self.evaluations) / len(self.evaluations)
        log.info("separation (%s): %.1f s of %.1f s training = %.2f%% (bound %.3g%%); %d evaluations of %.2f s each, %d skipped",
                 self.model, self.seconds, self.train_seconds, 100 * self.cost_fraction, 100 * self.max_cost_fraction,
                 len(self.evaluations), per, len(self.skipped))
        self._write_json()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._close()

    # ------------------------------------------------------------------ helpers
    @property
    def cost_fraction(self) -> float:
        """The callback's wall time over the training's (so far, or all of it once ended)."""
        elapsed = self.train_seconds or (time.perf_counter() - self._train_start if self._train_start is not None else 0.0)
        return self.seconds / elapsed if elapsed > 0 else 0.0

    def _within_budget(self) -> bool:
        if not self.evaluations:
            return True  # the first evaluation measures the cost
        estimate = self.evaluations[-1]["seconds"]
        elapsed = time.perf_counter() - self._train_start
        return self.seconds + estimate <= self.max_cost_fraction * (elapsed + estimate)

    def _log(self, trainer: L.Trainer, epoch: int, scores: Mapping[str, np.ndarray], start: float) -> None:

        lo, hi = robust_range(list(scores.values()))
        outside = {}
        tb_dirs = [Path(lg.log_dir) for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for name, values in scores.items():
            edges, counts, outside[name] = binned(values, lo, hi)
            if tb_dirs:
                self._write_histogram(tb_dirs[0], name, edges, counts, epoch)
        ood = [s for s in scores if s != self.in_distribution]
        aurocs = {s: auroc(scores[self.in_distribution], scores[s]) for s in ood}
        for logger in trainer.loggers:
            logger.log_metrics({f"{AUROC_TAG}/{s}": v for s, v in aurocs.items()}, step=trainer.global_step)
            logger.save()
        seconds = time.perf_counter() - start
        self.evaluations.append({"epoch": epoch, "global_step": int(trainer.global_step), "seconds": seconds,
                                 "auroc": {s: (v if math.isfinite(v) else None) for s, v in aurocs.items()},
                                 "range": [lo, hi], "outside": outside})
        log.info("separation (%s) epoch %d: AUROC %s (%.2f s%s)", self.model, epoch, ", ".join(f"{s} {v:.3f}" for s, v in aurocs.items()),
                 seconds, "; outside the histogram range: " + ", ".join(f"{s} {k}" for s, k in outside.items() if k)
                 if any(outside.values()) else "")
        self._write_json()

    def _write_histogram(self, tb_dir: Path, name: str, edges: np.ndarray, counts: np.ndarray, epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        writer = self._writers.get(name)
        if writer is None:
            writer = self._writers[name] = SummaryWriter(log_dir=str(tb_dir / RUN / set_dir(name)))
        role = "in-distribution" if name == self.in_distribution else "OOD"
        n = len(self.images[name][0])
        description = (f"{self.about} of the first {n} images of the validation part of `{name}` ({role}), step = epochs completed. "
                       f"{HIST_BINS} bins over a range shared by every set at that epoch (union of each set's 0.5–99.5 percentiles, "
                       f"≤3 IQR beyond its quartiles, widened 2%); values outside are left out (counted in train.log and "
                       f"separation_{self.model}.json). The AUROCs are the scalars {AUROC_TAG}/<set> of the {self.model} run.")
        writer.file_writer.add_summary(histogram_summary(self.tag, edges, counts, f"{self.tag} — {name} ({role}), step = epoch",
                                                          description), global_step=epoch)
        writer.flush()

    def _write_json(self) -> None:
        if self.out_file is None:
            return

        write_json_atomic(self.out_file, {
            "model": self.model, "tag": self.tag, "in_distribution": self.in_distribution,
            "sets": {name: {"n": len(x)} for name, (x, _) in self.images.items()},  # the first n of each validation part
            "every_n_epochs": self.every_n_epochs, "max_cost_fraction": self.max_cost_fraction,
            "seconds": self.seconds, "train_seconds": self.train_seconds or None,
            "cost_fraction": self.cost_fraction if self.train_seconds else None,
            "evaluations": self.evaluations, "skipped_epochs": self.skipped})

    def _close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


class VaeSeparation(SeparationCallback):
    """APO (or PR) log p_VAE with ``n_samples`` samples (module docstring)."""

    model, score_name = "vae", "apo_log_p_vae"

    def __init__(self, n_samples: int = 4, scheme: str = "APO", **kwargs: Any):
        super().__init__(**kwargs)
        self.n_samples, self.scheme = int(n_samples), scheme
        self.score_name = f"{scheme.lower()}_log_p_vae"
        prior = "q(z|x)" if scheme == "APO" else "p(z)"
        self.about = f"{scheme} log p_VAE (S={self.n_samples} samples of {prior}, the evaluation's noise)"

    def score(self, module: L.LightningModule) -> dict[str, np.ndarray]:

        out = {}
        for name, (x, index) in self.images.items():
            parts = []
            for lo in range(0, len(x), BATCH):
                chunks = sample_chunks(x[lo:lo + BATCH].to(module.device), index[lo:lo + BATCH], decode=module.decode,
                                       log_likelihood=module.log_likelihood, encode=module.encode, scheme=self.scheme,
                                       n_samples=self.n_samples, chunk_size=self.n_samples, seed=self.seed,
                                       stream=score_stream(name, self.scheme))
                parts.append(log_mean_exp(torch.cat([c["ll"] for c in chunks]), 0).cpu())
            out[name] = torch.cat(parts).numpy()
        return out


class JigsawSeparation(SeparationCallback):
    """log p_FE of the image's own features under a small mixture refitted at each evaluation (module docstring)."""

    model, score_name = "jigsaw", "log_p_fe"

    def __init__(self, n_fit: int = 1000, components: int = 5, layer: int = 1, pre_activation: bool = False,
                 covariance_type: str = "full", reg_covar: float = 1e-3, **kwargs: Any):
        super().__init__(**kwargs)
        self.n_fit, self.components, self.layer, self.pre_activation = int(n_fit), int(components), int(layer), bool(pre_activation)
        self.covariance_type, self.reg_covar = covariance_type, float(reg_covar)
        self.about = (f"log p_FE(f_x) under a {self.components}-component {covariance_type} Gaussian mixture of layer-{layer} "
                      f"features refitted on the first {n_fit} training images at each evaluation")
        self.fit_images: torch.Tensor | None = None

    def prepare(self, datamodule: Any) -> None:
        train = datamodule.train_set
        images = train.tensors[0] if hasattr(train, "tensors") else torch.stack([train[i][0] for i in range(min(self.n_fit, len(train)))])
        self.fit_images = images[: self.n_fit].clone()
        if len(self.fit_images) < self.components:
            raise FevaeError(f"separation.jigsaw.components={self.components} exceeds the {len(self.fit_images)} training images",
                             "lower separation.jigsaw.components")

    def _features(self, module: L.LightningModule, x: torch.Tensor) -> np.ndarray:
        return torch.cat([module.features(x[lo:lo + 2048].to(module.device), layer=self.layer, pre_activation=self.pre_activation)
                          .double().cpu() for lo in range(0, len(x), 2048)]).numpy()

    def score(self, module: L.LightningModule) -> dict[str, np.ndarray]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.mixture import GaussianMixture

        mixture = GaussianMixture(self.components, covariance_type=self.covariance_type, reg_covar=self.reg_covar,
                                  max_iter=200, random_state=self.seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(self._features(module, self.fit_images))
        return {name: mixture.score_samples(self._features(module, x)) for name, (x, _) in self.images.items()}
