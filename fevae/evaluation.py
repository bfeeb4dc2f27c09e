"""Scoring a trained run: the evaluation LightningModule and the run's result files.

The math lives in :mod:`fevae.scoring`; this module batches it through ``Trainer.predict``
(any accelerator, DDP included), gathers the per-sample scores of every rank by dataset index,
and writes ``scores/<set>.npz``, ``metrics.json``, ``figures/``, TensorBoard histograms and
``report.md``.
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from fevae.errors import FevaeError
from fevae.mixture import TorchMixture
from fevae.scoring import score_batch

log = logging.getLogger(__name__)

SCHEMES = ("PR", "APO")


def score_stream(set_name: str, scheme: str) -> int:
    """Noise-stream id of a (set, scheme): stable across runs, set orders and process counts."""
    return (zlib.crc32(set_name.encode()) % 65_536) * 2 + SCHEMES.index(scheme)


def validate_eval_config(ev: Mapping[str, Any]) -> None:
    for key in ("n_samples", "chunk_size", "batch_size"):
        if not isinstance(ev[key], int) or ev[key] < 1:
            raise FevaeError(f"eval.{key}={ev[key]!r} is not a positive integer", f"set eval.{key} to an integer ≥ 1")
    bad = [s for s in ev["schemes"] if s not in SCHEMES]
    if bad or not ev["schemes"]:
        raise FevaeError(f"eval.schemes={list(ev['schemes'])} is not a non-empty subset of {list(SCHEMES)}", "use e.g. eval.schemes=[PR,APO]")


class Scorer(L.LightningModule):
    """Wraps a trained VAE, Jigsaw and feature mixture; ``predict_step`` scores a batch.

    Per image and scheme (PR: z ~ p(z); APO: z ~ q(z|x)), with S Monte-Carlo samples decoded
    ``chunk_size`` at a time: ``log_p_vae``, ``log_p_fe`` and ``log_p_fevae`` (Eq. 4 inside the
    MC average). The noise of image i depends only on (seed, set, scheme, i), so the scores do
    not depend on batch size or on the number of processes.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        jigsaw: torch.nn.Module,
        mixture: TorchMixture,
        set_names: Sequence[str],
        layer: int = 1,
        pre_activation: bool = False,
        n_samples: int = 20,
        chunk_size: int = 10,
        schemes: Sequence[str] = SCHEMES,
        seed: int = 0,
    ):
        super().__init__()
        self.vae, self.jigsaw, self.mixture = vae, jigsaw, mixture
        self.set_names = list(set_names)
        self.layer, self.pre_activation = layer, pre_activation
        self.n_samples, self.chunk_size, self.schemes, self.seed = n_samples, chunk_size, list(schemes), seed
        self._outputs: dict[int, list[dict[str, torch.Tensor]]] = {}
        #: set name -> score name -> float64 array in dataset order (filled after predict)
        self.results: dict[str, dict[str, np.ndarray]] = {}

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.jigsaw.features(images, layer=self.layer, pre_activation=self.pre_activation)

    def score(self, x: torch.Tensor, index: torch.Tensor, set_name: str) -> dict[str, torch.Tensor]:
        """All scores of one batch: ``log_p_<vae|fe|fevae>_<pr|apo>`` -> float64 [B]."""
        out: dict[str, torch.Tensor] = {}
        for scheme in self.schemes:
            scores = score_batch(
                x,
                index,
                decode=self.vae.decode,
                log_likelihood=self.vae.log_likelihood,
                phi=self.vae.phi,
                features=self.features,
                mixture=self.mixture,
                encode=self.vae.encode,
                scheme=scheme,
                n_samples=self.n_samples,
                chunk_size=self.chunk_size,
                seed=self.seed,
                stream=score_stream(set_name, scheme),
            )
            out.update({f"log_p_{name}_{scheme.lower()}": value for name, value in scores.items()})
        return out

    def on_predict_epoch_start(self) -> None:
        self._outputs = {}
        self.results = {}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        x, _, index = batch
        out = {"index": index, **self.score(x, index, self.set_names[dataloader_idx])}
        self._outputs.setdefault(dataloader_idx, []).append(out)
        return out

    def on_predict_epoch_end(self) -> None:
        for i, name in enumerate(self.set_names):
            parts = self._outputs.get(i, [])
            local = {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}
            self.results[name] = gather_by_index(self, local)
        self._outputs = {}


def gather_by_index(module: L.LightningModule, local: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Gather per-sample tensors of all ranks, drop duplicates (padded samplers) and sort by index."""
    world = module.trainer.world_size if module._trainer is not None else 1
    if world > 1:
        n_local = torch.tensor([len(local.get("index", []))], device=module.device)
        n_max = int(module.all_gather(n_local).max())
        padded = {}
        for key, value in local.items():
            pad = torch.full((n_max - len(value),), -1 if key == "index" else float("nan"), dtype=value.dtype, device=module.device)
            padded[key] = torch.cat([value.to(module.device), pad])
        gathered = {k: module.all_gather(v).reshape(-1) for k, v in padded.items()}
        keep = gathered["index"] >= 0
        local = {k: v[keep] for k, v in gathered.items()}
    if not local:
        return {}
    index = local["index"].cpu().numpy()
    unique, first = np.unique(index, return_index=True)
    if unique.size and not np.array_equal(unique, np.arange(unique.size)):
        log.warning("scored indices are not 0..N-1 (%d unique of max %d)", unique.size, unique.max())
    return {k: v.detach().cpu().double().numpy()[first] for k, v in local.items() if k != "index"}


def run_scoring(
    cfg: DictConfig, vae: torch.nn.Module, jigsaw: torch.nn.Module, mixture: TorchMixture, loaders: Mapping[str, Any]
) -> dict[str, dict[str, np.ndarray]]:
    """Score every loader (items ``(x, y, index)``) with the trainer config: set -> score -> array."""
    validate_eval_config(cfg.eval)
    scorer = Scorer(
        vae.eval(),
        jigsaw.eval(),
        mixture,
        list(loaders),
        layer=cfg.fe.layer,
        pre_activation=cfg.fe.pre_activation,
        n_samples=cfg.eval.n_samples,
        chunk_size=cfg.eval.chunk_size,
        schemes=list(cfg.eval.schemes),
        seed=cfg.seed,
    )
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, enable_model_summary=False)
    trainer.predict(scorer, dataloaders=list(loaders.values()), return_predictions=False)
    for set_name, scores in scorer.results.items():
        for score_name, values in scores.items():
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise FevaeError(
                    f"{bad} of {values.size} {score_name} scores on {set_name} are not finite",
                    "the model or mixture is degenerate: check training (TensorBoard), raise fe.reg_covar or retrain",
                )
    return scorer.results


def example_images(datamodule: Any, name: str = "mnist_saltpepper", k: int = 8) -> np.ndarray | None:
    """The first ``k`` preprocessed images [k,28,28] of eval set ``name`` (for Fig. 2), if present."""
    if name not in getattr(datamodule, "eval_sets", {}):
        return None
    dataset = datamodule.eval_sets[name]
    return torch.stack([dataset[i][0][0] for i in range(min(k, len(dataset)))]).numpy()


def hparams_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """The settings shown in TensorBoard's HParams view (scalars and strings only)."""
    hp = {k: info.get(k) for k in ("experiment", "likelihood", "preprocess", "n_samples", "eval_subset", "profile", "seed")}
    hp.update({f"fe.{k}": v for k, v in dict(info.get("fe") or {}).items() if k != "feature_batch_size"})
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hp.items()}


def write_outputs(
    out_dir: Path, scores: dict[str, dict[str, np.ndarray]], info: dict[str, Any], examples: np.ndarray | None = None
) -> dict[str, Any]:
    """Write ``scores/<set>.npz``, ``metrics.json``, ``figures/``, TensorBoard histograms, ``report.md``.

    Returns the metrics dict (the ``metrics.json`` contract).
    """
    from torch.utils.tensorboard import SummaryWriter

    from fevae.metrics import compute_metrics, save_scores, write_json_atomic
    from fevae.plots import plot_all
    from fevae.report import write_report

    metrics = compute_metrics(scores)  # validates finiteness before anything is written
    for set_name, set_scores in scores.items():
        save_scores(out_dir / "scores" / f"{set_name}.npz", set_scores)
    write_json_atomic(out_dir / "metrics.json", metrics)
    figures = plot_all(scores, out_dir / "figures", run_label=info.get("experiment", ""), examples=examples)
    writer = SummaryWriter(log_dir=str(out_dir / "tensorboard" / "eval"))
    try:
        for set_name, set_scores in scores.items():
            for score_name, values in set_scores.items():
                writer.add_histogram(f"{set_name}/{score_name}", values, global_step=0)
        from fevae.metrics import flatten_metrics

        flat = flatten_metrics(metrics)
        for key, value in flat.items():
            writer.add_scalar(key, value, global_step=0)
        # the HParams view: one row per run/sweep job, its settings next to its AUROCs
        writer.add_hparams(hparams_of(info), {f"hparams/{k}": v for k, v in flat.items() if k.endswith("/auroc")}, run_name=".")
    finally:
        writer.close()
    info = {**info, "figures": [str(Path(p).relative_to(out_dir)) for p in figures if str(p).endswith(".png")]}
    write_report(out_dir, metrics, scores, info)
    return metrics
