"""Scoring a trained run: the evaluation LightningModule and the run's result files.

The math lives in :mod:`fevae.scoring`; this module batches it through ``Trainer.predict``
(any accelerator, DDP included), gathers the per-sample scores of every rank by dataset index,
and writes ``scores/<set>.npz``, ``metrics.json``, ``figures/``, the TensorBoard dashboards
(:mod:`fevae.dashboard`) and ``report.md``.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fevae.baselines import compressed_bits, input_complexity_from_bits, likelihood_regret_score, to_uint8
from fevae.bootstrap import METRICS
from fevae.cache import SamplesCache, weights_hash
from fevae.dashboard import hparams_of  # noqa: F401  (re-exported: the HParams view's settings)
from fevae.data.datamodule import split_part
from fevae.errors import FevaeError
from fevae.metrics import IN_DISTRIBUTION, MCSE_PREFIX, parse_score_name
from fevae.mixture import TorchMixture
from fevae.scoring import ScoreAccumulator, sample_chunks
from fevae.training import cache_enabled, progress_settings
from fevae.utils.log import stage
from fevae.utils.timing import Stopwatch

# the model pass keeps its results on the module (predict_step returns nothing on purpose)
warnings.filterwarnings("ignore", message=r".*predict returned None.*")

log = logging.getLogger(__name__)

SCHEMES = ("PR", "APO")
#: detectors scored next to vae/fe/fevae (``eval.detectors``), all in metrics.json ``other``
DETECTORS = ("iwae", "input_complexity", "likelihood_regret")
#: images whose model-pass outputs are turned into scores at once when reading stored samples
SAMPLE_BATCH = 512


def score_stream(set_name: str, scheme: str) -> int:
    """Noise-stream id of a (set, scheme): stable across runs, set orders and process counts.

    The validation part ``"val/<set>"`` of a set uses the set's own stream, so an image's noise
    depends on (seed, set, scheme, its position in the whole set) only, not on the split.
    """
    return (zlib.crc32(split_part(set_name)[0].encode()) % 65_536) * 2 + SCHEMES.index(scheme)


def samples_per_scheme(n_samples: int | Mapping[str, int], schemes: Sequence[str] = SCHEMES) -> dict[str, int]:
    """``eval.n_samples`` as ``{scheme: S}``: one int for every scheme, or a mapping ``{PR: .., APO: ..}``."""
    if isinstance(n_samples, Mapping):
        missing = [s for s in schemes if s not in n_samples]
        if missing:
            raise FevaeError(f"eval.n_samples={dict(n_samples)} has no S for {missing}", "give every scheme of eval.schemes an S, e.g. eval.n_samples={PR:100,APO:20}")
        return {s: n_samples[s] for s in schemes}
    return {s: n_samples for s in schemes}


def validate_eval_config(ev: Mapping[str, Any]) -> None:
    per_scheme = samples_per_scheme(ev["n_samples"], [s for s in ev["schemes"] if s in SCHEMES])
    for scheme, s in per_scheme.items():
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise FevaeError(f"eval.n_samples={ev['n_samples']!r} is not a positive integer for {scheme}", "set eval.n_samples to an integer ≥ 1 (or {PR: S, APO: S})")
    for key in ("chunk_size", "batch_size"):
        if not isinstance(ev[key], int) or ev[key] < 1:
            raise FevaeError(f"eval.{key}={ev[key]!r} is not a positive integer", f"set eval.{key} to an integer ≥ 1")
    boot = ev.get("bootstrap") or {}
    if boot:
        ok = isinstance(boot.get("n_resamples"), int) and not isinstance(boot.get("n_resamples"), bool) and boot["n_resamples"] >= 0
        if not ok:
            raise FevaeError(f"eval.bootstrap.n_resamples={boot.get('n_resamples')!r} is invalid", "set it to an integer ≥ 0 (0 = no intervals; ≥ 1000 recommended)")
        level = boot.get("level")
        if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
            raise FevaeError(f"eval.bootstrap.level={level!r} is invalid", "set it to a probability in (0, 1), e.g. 0.95")
    bad = [s for s in ev["schemes"] if s not in SCHEMES]
    if bad or not ev["schemes"]:
        raise FevaeError(f"eval.schemes={list(ev['schemes'])} is not a non-empty subset of {list(SCHEMES)}", "use e.g. eval.schemes=[PR,APO]")
    detectors = list(ev.get("detectors") or [])
    from fevae.detectors import build_fitted

    build_fitted(ev.get("fitted_detectors"), ev["schemes"], detectors)  # unknown names: one error
    unknown = [d for d in detectors if d not in DETECTORS]
    if unknown:
        raise FevaeError(f"eval.detectors has unknown detectors {unknown}", f"choose from {list(DETECTORS)} (or [] for none)")
    if {"iwae", "input_complexity"} & set(detectors) and "APO" not in ev["schemes"]:
        raise FevaeError("iwae and input_complexity reuse the APO draws, but APO is not in eval.schemes", "add APO to eval.schemes or drop them from eval.detectors")
    if "likelihood_regret" in detectors:
        r = ev.get("regret") or {}
        for key, low in (("subset", 0), ("steps", 0), ("n_samples", 1), ("batch_size", 1)):
            if isinstance(r.get(key), bool) or not isinstance(r.get(key), int) or r[key] < low:
                raise FevaeError(f"eval.regret.{key}={r.get(key)!r} is invalid", f"set eval.regret.{key} to an integer ≥ {low}")
        if not isinstance(r.get("lr"), (int, float)) or not r["lr"] > 0:
            raise FevaeError(f"eval.regret.lr={r.get('lr')!r} is invalid", "set eval.regret.lr to a number > 0 (e.g. 1e-4)")


VAL_METRICS_KEY = "ood_val"


def selectable_metrics(cfg: DictConfig) -> list[str]:
    """Every flattened validation metric (``ood_val/<set>/<scheme>/<score>/<metric>``) a run with ``cfg``
    writes; ``<set>`` runs over the run's OOD sets (``data.ood_sets``)."""
    from fevae.data.evalsets import ood_set_names

    fe = cfg.fe
    ids = ["vae", "fe", "fevae", *(f"fevae_l{k}" for k in (fe.get("extra_layers") or []) if int(k) != int(fe.layer))]
    blocks = [(s, i) for s in cfg.eval.schemes for i in ids]
    blocks += [("other", d) for d in (cfg.eval.get("detectors") or [])]
    blocks += [parse_score_name(name) for det in fitted_detectors(cfg) for name in det.outputs()]
    sets = ood_set_names(cfg.get("data"))
    return [f"{VAL_METRICS_KEY}/{s}/{sch}/{i}/{m}" for s in sets for sch, i in blocks for m in METRICS]


def fitted_detectors(cfg: DictConfig) -> list[Any]:
    """The run's :func:`fevae.detectors.build_fitted` detectors (``eval.fitted_detectors``; none in a config without it)."""
    from fevae.detectors import build_fitted

    ev = cfg.eval
    return build_fitted(list(ev.get("fitted_detectors") or []), list(ev.schemes), list(ev.get("detectors") or []))


def check_optimized_metric(cfg: DictConfig) -> None:
    """``optimized_metric`` selects, so it must name a validation metric this run will write (checked before training)."""
    key = cfg.get("optimized_metric")
    if key is None:
        return
    known = selectable_metrics(cfg)
    if str(key).startswith("ood/"):
        raise FevaeError(f"optimized_metric={key} reads the test images; anything that selects must read validation",
                         f"use optimized_metric={VAL_METRICS_KEY}/{str(key)[4:]}")
    split = cfg.data.get("eval_split") or {}
    if not split.get("val"):
        raise FevaeError(f"optimized_metric={key} needs validation images but data.eval_split.val is {split.get('val')!r}",
                         "set data.eval_split.val to a positive number (e.g. 1000), or optimized_metric=null")
    if key not in known:
        import difflib

        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
        raise FevaeError(f"optimized_metric={key} is not a metric this run writes",
                         f"use e.g. {close[0] if close else known[0]} (keys: ood_val/<set>/<PR|APO|other>/<score>/<auroc|auprc|fpr95>)")


def _flat(key: str) -> str:
    return key.replace("/", "__")


class Scorer(L.LightningModule):
    """Wraps a trained VAE, Jigsaw and feature mixtures; ``predict_step`` scores a batch.

    Per image and scheme (PR: z ~ p(z); APO: z ~ q(z|x)), with S Monte-Carlo samples decoded
    ``chunk_size`` at a time: ``log_p_vae``, ``log_p_fe`` and ``log_p_fevae`` (Eq. 4 inside the
    MC average), ``log_p_fevae_l<k>`` for each extra mixture layer, and the ``detectors``:
    ``iwae`` (importance weighted, the APO draws), ``input_complexity`` (iwae + PNG bits · ln 2)
    and ``likelihood_regret`` (the first ``regret["subset"]`` images of each loader only: index
    below ``regret_limits[set]``). Every log-mean-exp score ``name`` also gets its per-image
    Monte-Carlo standard error ``mcse__<name>`` (:func:`fevae.scoring.log_mean_exp_se`). The
    noise of image i depends only on (seed, set, scheme, i), so the scores do not depend on batch
    size or on the number of processes. ``n_samples`` is one S or ``{scheme: S}``.

    With ``keep_samples`` the step keeps the model-pass outputs instead (per-sample
    log-likelihoods, decoded features, IWAE weights, code lengths, regrets) and
    :meth:`scores_from_samples` turns them into the same scores later (bit for bit), against
    any mixtures: what :class:`fevae.cache.SamplesCache` stores.
    """

    def __init__(
        self,
        vae: torch.nn.Module,
        jigsaw: torch.nn.Module,
        mixtures: TorchMixture | Mapping[int, TorchMixture],
        set_names: Sequence[str],
        layer: int = 1,
        pre_activation: bool = False,
        n_samples: int | Mapping[str, int] = 20,
        chunk_size: int = 10,
        schemes: Sequence[str] = SCHEMES,
        seed: int = 0,
        detectors: Sequence[str] = (),
        regret: Mapping[str, Any] | None = None,
        keep_samples: bool = False,
        regret_limits: Mapping[str, int] | None = None,
    ):
        super().__init__()
        self.vae, self.jigsaw = vae, jigsaw
        if isinstance(mixtures, TorchMixture):
            mixtures = {layer: mixtures}
        self.mixtures = torch.nn.ModuleDict({f"l{k}": m for k, m in mixtures.items()})
        self.fe_names = {f"l{layer}": "fe"}
        self.fevae_names = {f"l{k}": "fevae" if k == layer else f"fevae_l{k}" for k in mixtures}
        self.set_names = list(set_names)
        self.layer, self.pre_activation = layer, pre_activation
        self.schemes, self.chunk_size, self.seed = list(schemes), chunk_size, seed
        #: scheme -> S
        self.n_samples = samples_per_scheme(n_samples, self.schemes)
        self.detectors = list(detectors)
        self.regret = dict(regret or {}) if "likelihood_regret" in self.detectors else {}
        #: set name -> likelihood regret scores the images with index below it (default: ``regret["subset"]``)
        self.regret_limits = dict(regret_limits or {})
        self.keep_samples = keep_samples
        self.stopwatch = Stopwatch()
        self.n_images = self.n_regret = 0
        self._outputs: dict[int, list[dict[str, torch.Tensor]]] = {}
        self._regrets: dict[int, list[dict[str, torch.Tensor]]] = {}
        #: set name -> score name (or sample key with keep_samples) -> array in dataset order
        self.results: dict[str, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ pieces
    def features(self, images: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.jigsaw.features(images, layer=self.layer if layer is None else layer, pre_activation=self.pre_activation)

    def feature_fns(self) -> dict[str, Any]:
        return {name: partial(self.features, layer=int(name[1:])) for name in self.mixtures}

    @property
    def log_weights(self) -> bool:
        return bool({"iwae", "input_complexity"} & set(self.detectors))

    def chunks(self, x: torch.Tensor, index: torch.Tensor, set_name: str, scheme: str):
        return sample_chunks(
            x, index, decode=self.vae.decode, log_likelihood=self.vae.log_likelihood, phi=self.vae.phi,
            features=self.feature_fns(), encode=self.vae.encode, scheme=scheme, n_samples=self.n_samples[scheme],
            chunk_size=self.chunk_size, seed=self.seed, stream=score_stream(set_name, scheme),
            log_weights=self.log_weights, stopwatch=self.stopwatch,
        )

    def scores_of(self, f_x: Mapping[str, torch.Tensor], chunks_of, bits: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Named scores of a batch from its features ``f_x`` and ``chunks_of(scheme)`` (model-pass chunks)."""
        out: dict[str, torch.Tensor] = {}
        for scheme in self.schemes:
            lp_x = {name: self.mixtures[name].component_log_prob(f) for name, f in f_x.items()}
            acc = ScoreAccumulator(self.mixtures, lp_x, self.fe_names, self.fevae_names, stopwatch=self.stopwatch, prefix=f"{scheme}/")
            for chunk in chunks_of(scheme):
                acc.update(chunk)
            errors = acc.compute_se() if self.n_samples[scheme] > 1 else {}  # one sample has no error estimate
            for key, value in acc.compute().items():
                name = key if key == "iwae" else f"log_p_{key}_{scheme.lower()}"
                out[name] = value
                if key in errors:
                    out[MCSE_PREFIX + name] = errors[key]
        if "input_complexity" in self.detectors:
            out["input_complexity"] = input_complexity_from_bits(out["iwae"], bits)
            if MCSE_PREFIX + "iwae" in out:
                out[MCSE_PREFIX + "input_complexity"] = out[MCSE_PREFIX + "iwae"]  # the code length is exact
        if "iwae" not in self.detectors:
            out.pop("iwae", None)
            out.pop(MCSE_PREFIX + "iwae", None)
        return out

    # ------------------------------------------------------------------ predict
    def on_predict_epoch_start(self) -> None:
        self._outputs, self._regrets, self.results = {}, {}, {}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, _, index = batch
        set_name = self.set_names[dataloader_idx]
        self.n_images += len(x)
        with torch.no_grad():
            f_x = {name: fn(x) for name, fn in self.feature_fns().items()}
            bits = None
            if "input_complexity" in self.detectors:
                with self.stopwatch("png"):
                    bits = torch.from_numpy(compressed_bits(to_uint8(x))).to(x.device)
            row: dict[str, torch.Tensor] = {"index": index}
            if self.keep_samples:
                for scheme in self.schemes:
                    parts = list(self.chunks(x, index, set_name, scheme))
                    for key in parts[0]:
                        row[_flat(f"{scheme}/{key}")] = torch.cat([p[key] for p in parts]).transpose(0, 1)  # [B, S, ...]
                row.update({_flat(f"f_x/{name}"): f for name, f in f_x.items()})
                if bits is not None:
                    row["png_bits"] = bits
            else:
                row.update(self.scores_of(f_x, lambda scheme: self.chunks(x, index, set_name, scheme), bits))
        self._outputs.setdefault(dataloader_idx, []).append(row)
        mask = index < (self.regret_limits.get(set_name, self.regret.get("subset", 0)) if self.regret else 0)
        if bool(mask.any()):
            xs, ids, step = x[mask], index[mask], self.regret["batch_size"]
            with self.stopwatch("regret"), stage(f"likelihood regret of {len(xs)} {set_name} images ({self.regret['steps']} encoder steps each)",
                                                 logger=log):
                values = [
                    likelihood_regret_score(
                        xs[i : i + step], ids[i : i + step], vae=self.vae, steps=self.regret["steps"], lr=float(self.regret["lr"]),
                        n_samples=self.regret["n_samples"], seed=self.seed, stream=score_stream(set_name, "APO"),
                    )
                    for i in range(0, len(xs), step)
                ]
            self.n_regret += len(xs)
            self._regrets.setdefault(dataloader_idx, []).append({"index": ids, "likelihood_regret": torch.cat(values)})

    def on_predict_epoch_end(self) -> None:
        for i, name in enumerate(self.set_names):
            self.results[name] = gather_by_index(self, _concat(self._outputs.get(i, [])))
            if self.regret:
                self.results[name].update(gather_by_index(self, _concat(self._regrets.get(i, []))))
        self._outputs, self._regrets = {}, {}

    # ------------------------------------------------------------------ stored samples
    def scores_from_samples(self, samples: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
        """The scores :meth:`predict_step` would give, from kept model-pass outputs (any mixtures)."""
        results: dict[str, dict[str, np.ndarray]] = {}
        device = self.mixtures[next(iter(self.mixtures))].means.device if len(self.mixtures) else torch.device("cpu")
        for set_name, arrays in samples.items():
            n = len(arrays[_flat(f"{self.schemes[0]}/ll")])
            parts = []
            for lo in range(0, n, SAMPLE_BATCH):
                sl = slice(lo, lo + SAMPLE_BATCH)
                get = lambda key: torch.from_numpy(np.asarray(arrays[key][sl])).to(device)  # noqa: E731
                f_x = {name: get(_flat(f"f_x/{name}")) for name in self.mixtures}

                def chunks_of(scheme: str, get=get):
                    stored = {key: get(_flat(f"{scheme}/{key}")).transpose(0, 1)[: self.n_samples[scheme]] for key in self._chunk_keys(scheme)}
                    for s in range(0, self.n_samples[scheme], self.chunk_size):
                        yield {key: value[s : s + self.chunk_size].contiguous() for key, value in stored.items()}

                bits = get("png_bits") if "input_complexity" in self.detectors else None
                parts.append(self.scores_of(f_x, chunks_of, bits))
            results[set_name] = {k: torch.cat([p[k] for p in parts]).double().cpu().numpy() for k in parts[0]}
            if "likelihood_regret" in arrays:
                results[set_name]["likelihood_regret"] = np.asarray(arrays["likelihood_regret"], dtype=np.float64)
        return results

    def _chunk_keys(self, scheme: str) -> list[str]:
        keys = ["ll", *(f"f_phi/{name}" for name in self.mixtures)]
        return keys + (["log_w"] if scheme == "APO" and self.log_weights else [])

    def costs(self, seconds: Mapping[str, float] | None = None, n_images: int | None = None, n_regret: int | None = None) -> dict[str, Any]:
        """Seconds per image of every score, laid out like metrics.json's ``ood.<set>`` blocks."""
        sec = dict(self.stopwatch.seconds if seconds is None else seconds)
        n = max(self.n_images if n_images is None else n_images, 1)
        out: dict[str, Any] = {}
        for scheme in self.schemes:
            decode = sec.get(f"{scheme}/decode", 0.0)
            block = {"vae": decode / n}
            for name, score in self.fevae_names.items():
                cost = (decode + sec.get(f"{scheme}/features/{name}", 0.0) + sec.get(f"{scheme}/mixture/{name}", 0.0)) / n
                block[score] = cost
                if name in self.fe_names:
                    block[self.fe_names[name]] = cost
            out[scheme] = block
        other = {}
        iwae = (sec.get("APO/decode", 0.0) + sec.get("APO/log_w", 0.0)) / n
        if "iwae" in self.detectors:
            other["iwae"] = iwae
        if "input_complexity" in self.detectors:
            other["input_complexity"] = iwae + sec.get("png", 0.0) / n
        regrets = self.n_regret if n_regret is None else n_regret
        if self.regret and regrets:
            other["likelihood_regret"] = sec.get("regret", 0.0) / regrets
        if other:
            out["other"] = other
        return out


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]} if parts else {}


def gather_by_index(module: L.LightningModule, local: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Gather per-sample tensors (batch dim first) of all ranks, drop duplicates (padded samplers)
    and sort by index (eval loaders yield ascending indices, so this is their order). Floating arrays come back float64 unless they are float32 features."""
    world = module.trainer.world_size if module._trainer is not None else 1
    if world > 1:
        n_local = torch.tensor([len(local.get("index", []))], device=module.device)
        n_max = int(module.all_gather(n_local).max())
        padded = {}
        for key, value in local.items():
            fill = -1 if key == "index" else float("nan")
            pad = torch.full((n_max - len(value), *value.shape[1:]), fill, dtype=value.dtype, device=module.device)
            padded[key] = torch.cat([value.to(module.device), pad])
        gathered = {k: module.all_gather(v).reshape(-1, *v.shape[1:]) for k, v in padded.items()}
        keep = gathered["index"] >= 0
        local = {k: v[keep] for k, v in gathered.items()}
    if not local:
        return {}
    index = local["index"].cpu().numpy()
    unique, first = np.unique(index, return_index=True)  # ascending index = the loader's order
    out = {}
    for k, v in local.items():
        if k == "index":
            continue
        v = v.detach().cpu()
        out[k] = (v if v.dtype == torch.float32 and v.ndim > 1 else v.double()).numpy()[first]
    return out


@dataclass
class Scoring:
    """What :func:`run_scoring` returns."""

    #: set -> score name -> float64 array in dataset order
    scores: dict[str, dict[str, np.ndarray]]
    #: seconds per image of each score (:meth:`Scorer.costs`)
    costs: dict[str, Any] = field(default_factory=dict)
    #: whether the model pass came from :class:`fevae.cache.SamplesCache`
    reused_samples: bool = False
    #: set -> score name -> per-image Monte-Carlo standard error (nats) of the log-mean-exp scores
    mc_se: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for set_name, arrays in self.scores.items():  # the Scorer's mcse__<score> outputs move to mc_se
            for key in [k for k in arrays if k.startswith(MCSE_PREFIX)]:
                self.mc_se.setdefault(set_name, {})[key[len(MCSE_PREFIX):]] = arrays.pop(key)


def _samples_key(cfg: DictConfig, vae: torch.nn.Module, jigsaw: torch.nn.Module, loaders: Mapping[str, Any], layers: Sequence[int]) -> dict[str, Any]:
    """What determines the model pass: both models' weights, the eval images, the eval settings."""
    images = {}
    for name, loader in loaders.items():
        h = hashlib.sha256()
        for x, _, index in loader:
            h.update(x.numpy().tobytes())
            h.update(index.numpy().tobytes())
        images[name] = h.hexdigest()[:16]
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    return {
        "vae": weights_hash(vae),
        "jigsaw": weights_hash(jigsaw),
        "images": images,
        "eval": {k: ev.get(k) for k in ("n_samples", "chunk_size", "schemes", "detectors", "regret")},
        "layers": sorted(layers),
        "pre_activation": cfg.fe.pre_activation,
        "seed": cfg.seed,
        "dtype": str(next(vae.parameters()).dtype),
    }


def _samples_bytes(cfg: DictConfig, loaders: Mapping[str, Any], jigsaw: torch.nn.Module, layers: Sequence[int]) -> int:
    per_sample = 8 + 8 + 4 * sum(jigsaw.feature_dim(k) for k in layers)
    total_s = sum(samples_per_scheme(cfg.eval.n_samples, list(cfg.eval.schemes)).values())
    return sum(len(loader.dataset) for loader in loaders.values()) * total_s * per_sample


def regret_limits(loaders: Mapping[str, Any], subset: int) -> dict[str, int]:
    """Per loader, the index below which likelihood regret scores: its first ``subset`` images
    (loaders over a :class:`~torch.utils.data.TensorDataset` of ``(x, y, index)``; else ``subset``)."""
    out = {}
    for name, loader in loaders.items():
        tensors = getattr(loader.dataset, "tensors", None)
        if not subset or tensors is None:
            out[name] = int(subset)
            continue
        index = np.sort(tensors[-1].numpy())
        out[name] = int(index[min(subset, len(index)) - 1]) + 1 if len(index) else 0
    return out


def predict_trainer(cfg: DictConfig, sets: Sequence[str] = ()) -> L.Trainer:
    """The Lightning Trainer that runs the model pass: the run's trainer settings, no experiment logger or
    checkpoints; a progress bar on a terminal, else plain progress lines per set (``sets``: loader names)."""
    from fevae.callbacks.progress import ProgressLog
    from fevae.validation import check_trainer_config

    check_trainer_config(cfg.trainer)  # Lightning's Trainer and plain values only: never another _target_
    bar, plain = progress_settings(cfg.trainer)
    progress = ProgressLog("scoring", plain=plain, every_s=float(cfg.get("progress_every_s", 30)), sets=sets)
    return instantiate(cfg.trainer, logger=False, callbacks=[progress], enable_checkpointing=False, enable_model_summary=False,
                       enable_progress_bar=bar, inference_mode=False)


def make_scorer(cfg: DictConfig, vae: torch.nn.Module, jigsaw: torch.nn.Module, mixtures: Mapping[int, TorchMixture],
                loaders: Mapping[str, Any], keep_samples: bool = False, n_samples: int | Mapping[str, int] | None = None) -> Scorer:
    """A :class:`Scorer` with the run's eval settings (``n_samples`` overrides ``eval.n_samples``)."""
    return Scorer(
        vae.eval(), jigsaw.eval(), mixtures, list(loaders), layer=cfg.fe.layer, pre_activation=cfg.fe.pre_activation,
        n_samples=cfg.eval.n_samples if n_samples is None else n_samples, chunk_size=cfg.eval.chunk_size,
        schemes=list(cfg.eval.schemes), seed=cfg.seed, detectors=list(cfg.eval.get("detectors") or []),
        regret=cfg.eval.get("regret"), keep_samples=keep_samples,
        regret_limits=regret_limits(loaders, int((cfg.eval.get("regret") or {}).get("subset", 0) or 0)),
    )


def run_scoring(
    cfg: DictConfig,
    vae: torch.nn.Module,
    jigsaw: torch.nn.Module,
    mixtures: TorchMixture | Mapping[int, TorchMixture],
    loaders: Mapping[str, Any],
) -> Scoring:
    """Score every loader (items ``(x, y, index)``) with the trainer config.

    ``mixtures`` maps Jigsaw layer -> mixture (``cfg.fe.layer`` gives fe/fevae, the others
    ``fevae_l<k>``). With ``cache.enabled`` (auto: in multirun) and one process, the model pass is
    read from / stored in :class:`fevae.cache.SamplesCache`, so only the mixture part is computed
    when the models and eval settings are unchanged.
    """
    validate_eval_config(cfg.eval)
    if isinstance(mixtures, TorchMixture):
        mixtures = {int(cfg.fe.layer): mixtures}
    trainer = predict_trainer(cfg, list(loaders))
    cache = None
    if cache_enabled(cfg) and trainer.world_size == 1:
        size = _samples_bytes(cfg, loaders, jigsaw, list(mixtures))
        limit = float(cfg.cache.get("max_samples_gb", 4)) * 2**30
        if size <= limit:
            cache = SamplesCache(cfg.paths.cache_dir, _samples_key(cfg, vae, jigsaw, loaders, list(mixtures)))
        else:
            log.info("scoring: not caching the model pass (%.1f GB > cache.max_samples_gb)", size / 2**30)

    def scorer(keep: bool) -> Scorer:
        return make_scorer(cfg, vae, jigsaw, mixtures, loaders, keep)

    if cache is None:
        module = scorer(keep=False)
        trainer.predict(module, dataloaders=list(loaders.values()), return_predictions=False)
        result = Scoring(module.results, module.costs())
    else:
        with cache.lock():
            module = scorer(keep=True)
            if cache.has():
                samples, meta = cache.load()
                log.info("scoring: reused the model pass %s (hash %s)", cache.entry, cache.hash)
            else:
                log.info("scoring: decoding (hash %s; cached as %s)", cache.hash, cache.entry)
                trainer.predict(module, dataloaders=list(loaders.values()), return_predictions=False)
                samples = module.results
                meta = {"seconds": dict(module.stopwatch.seconds), "n_images": module.n_images, "n_regret": module.n_regret}
                cache.store(samples, meta)
        mixture_clock = scorer(keep=False)  # times the mixture part of this job
        mixture_clock.to(trainer.strategy.root_device)
        scores = mixture_clock.scores_from_samples(samples)
        seconds = {**meta["seconds"], **{k: v for k, v in mixture_clock.stopwatch.seconds.items() if "/mixture/" in k}}
        result = Scoring(scores, mixture_clock.costs(seconds, meta["n_images"], meta["n_regret"]), reused_samples=True)
    for set_name, scores in result.scores.items():
        for score_name, values in scores.items():
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise FevaeError(
                    f"{bad} of {values.size} {score_name} scores on {set_name} are not finite",
                    "the model or mixture is degenerate: check training (TensorBoard), raise fe.reg_covar or retrain",
                )
    return result


def example_images(datamodule: Any, name: str | None = None, k: int = 8) -> np.ndarray | None:
    """The first ``k`` preprocessed images ``[k, H, W]`` (one channel) or ``[k, C, H, W]`` of eval set
    ``name`` (default: Fig. 2's set, :func:`fevae.plots.figure_sets`), or None when the run has no
    such set (``data.ood_sets`` without it: Fig. 2 is then not drawn)."""
    from fevae.plots import figure_sets

    sets = getattr(datamodule, "eval_sets", {})
    if name is None:
        name = figure_sets(list(sets), getattr(datamodule, "id_name", IN_DISTRIBUTION))[1]
    if name not in sets:
        return None
    dataset = sets[name]
    x = torch.stack([dataset[i][0] for i in range(min(k, len(dataset)))])
    return (x[:, 0] if x.shape[1] == 1 else x).numpy()


def write_outputs(
    out_dir: Path,
    scores: dict[str, dict[str, np.ndarray]],
    info: dict[str, Any],
    examples: np.ndarray | None = None,
    costs: Mapping[str, Any] | None = None,
    mc_se: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    bootstrap: Mapping[str, Any] | None = None,
    split: Mapping[str, Any] | None = None,
    in_distribution: str = IN_DISTRIBUTION,
    fitted: Sequence[Any] = (),
) -> dict[str, Any]:
    """Write ``scores/<set>.npz`` (test parts) and ``scores/val/<set>.npz`` (validation parts), each
    with the scores' Monte-Carlo standard errors, ``metrics.json`` (with bootstrap intervals per
    ``bootstrap`` = ``eval.bootstrap``), ``eval_split.json`` (``split``: which image of each set is
    in which part, :meth:`~fevae.data.datamodule.FevaeDataModule.split_record`), ``figures/``,
    the TensorBoard dashboards (:func:`fevae.dashboard.write_dashboard`: histograms of the test parts,
    every set in one chart; the figures, a text summary and the HParams session), ``report.md``.

    ``scores`` is keyed by loader name (``"mnist"``, ``"val/mnist"``; :func:`fevae.data.datamodule.part_name`);
    ``in_distribution`` names the in-distribution set (the data module's ``id_name``). ``fitted``
    (:func:`fevae.detectors.build_fitted`) are fitted on the in-distribution set's validation part,
    add their columns to every part of every set, and store their state in ``detectors.npz``.
    Returns the metrics dict (the ``metrics.json`` contract).
    """
    from fevae.bootstrap import Resampler
    from fevae.dashboard import write_dashboard
    from fevae.metrics import compute_split_metrics, save_scores, write_json_atomic
    from fevae.plots import plot_all, plot_detector_aurocs
    from fevae.report import write_report

    from fevae.data.datamodule import part_name
    from fevae.detectors import fit_detectors, save_fitted
    from fevae.detectors.base import STATE_FILE

    if fitted:
        with stage(f"in-distribution-fitted detectors {[d.name for d in fitted]}", logger=log):
            scores = fit_detectors(fitted, scores, part_name(in_distribution, "val"))
    parts: dict[str, dict[str, dict[str, np.ndarray]]] = {"test": {}, "val": {}}
    for key, set_scores in scores.items():
        name, part = split_part(key)
        parts[part][name] = set_scores
    boot = dict(bootstrap or {})
    resampler = Resampler(boot.get("n_resamples", 0), boot.get("level", 0.95), int(info.get("seed") or 0))
    with stage(f"metrics with {resampler.n_resamples} bootstrap resamples", logger=log):
        metrics = compute_split_metrics(parts["test"], parts["val"], in_distribution=in_distribution, resampler=resampler)  # validates finiteness before anything is written
    if costs:
        metrics["cost_s_per_image"] = dict(costs)
    for key, set_scores in scores.items():
        save_scores(out_dir / "scores" / f"{key}.npz", set_scores, (mc_se or {}).get(key))
    write_json_atomic(out_dir / "metrics.json", metrics)
    if fitted and part_name(in_distribution, "val") in scores:
        save_fitted(out_dir / STATE_FILE, fitted)
    if split:
        write_json_atomic(out_dir / "eval_split.json", split)
    scores = parts["test"]  # figures and the report show the test parts; metrics.json has both
    with stage("figures", logger=log):
        figures = plot_all(scores, out_dir / "figures", run_label=info.get("experiment", ""), examples=examples,
                           in_distribution=in_distribution)
        figures += plot_detector_aurocs(metrics, out_dir / "figures" / "detectors_auroc", run_label=info.get("experiment", ""))
    with stage("TensorBoard dashboards", logger=log):
        write_dashboard(out_dir, scores, metrics, info, figures)
    info = {**info, "figures": [str(Path(p).relative_to(out_dir)) for p in figures if str(p).endswith(".png")]}
    test_se = {k: v for k, v in (mc_se or {}).items() if split_part(k)[1] == "test"}
    write_report(out_dir, metrics, scores, info, mc_se=test_se)
    return metrics
