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
from joblib import Parallel, delayed
from omegaconf import DictConfig, OmegaConf

from fevae.bootstrap import METRICS, stream_rng
from fevae.cache import SamplesCache, weights_hash
from fevae.utils.parallel import pool_args, usable_cores
from fevae.detectors.base import Detector
from fevae.detectors.fevae import FevaeTerms
from fevae.dashboard import hparams_of  # noqa: F401  (re-exported: the HParams view's settings)
from fevae.data.datamodule import split_part
from fevae.errors import FevaeError
from fevae.metrics import ESS_PREFIX, IN_DISTRIBUTION, MCSE_PREFIX, parse_score_name
from fevae.mixture import TorchMixture
from fevae.scoring import channels_last_decode, sample_chunks
from fevae.training import cache_enabled, progress_settings
from fevae.utils.log import stage
from fevae.utils.timing import Stopwatch

# the model pass keeps its results on the module (predict_step returns nothing on purpose)
warnings.filterwarnings("ignore", message=r".*predict returned None.*")

log = logging.getLogger(__name__)

SCHEMES = ("PR", "APO")
#: images whose model-pass outputs are turned into scores at once when reading stored samples
SAMPLE_BATCH = 512
#: sample-key prefix of a detector's own values (``own/<detector>/<key>``) in kept model-pass outputs
OWN = "own"


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


def validate_eval_config(ev: Mapping[str, Any], cfg: DictConfig | None = None) -> None:
    """Check ``eval.*`` and every selected detector's settings (``cfg``: the whole config, whose ``detector``
    node holds them; without it the shipped conf/detector/ files)."""
    from fevae.detectors.registry import build_detectors

    per_scheme = samples_per_scheme(ev["n_samples"], [s for s in ev["schemes"] if s in SCHEMES])
    for scheme, s in per_scheme.items():
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise FevaeError(f"eval.n_samples={ev['n_samples']!r} is not a positive integer for {scheme}", "set eval.n_samples to an integer ≥ 1 (or {PR: S, APO: S})")
    if not isinstance(ev.get("channels_last", False), bool):
        raise FevaeError(f"eval.channels_last={ev.get('channels_last')!r} is not true or false", "set eval.channels_last=true or false")
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
    build_detectors(OmegaConf.create({"eval": dict(ev)}) if cfg is None else cfg)  # an unknown name or a bad setting: one error


VAL_METRICS_KEY = "ood_val"
#: seed of the random image subsets of detectors scored on a subset (:meth:`Scorer.subset_images`)
SUBSET_SEED = 0


def selectable_metrics(cfg: DictConfig) -> list[str]:
    """Every flattened validation metric (``ood_val/<set>/<scheme>/<score>/<metric>``) a run with ``cfg``
    writes; ``<set>`` runs over the run's OOD sets (``data.ood_sets``)."""
    from fevae.data.evalsets import ood_set_names
    from fevae.detectors.registry import build_detectors

    fe = cfg.fe
    ids = ["vae", "fe", "fevae", *(f"fevae_l{k}" for k in (fe.get("extra_layers") or []) if int(k) != int(fe.layer))]
    blocks = [(s, i) for s in cfg.eval.schemes for i in ids]
    passed, fitted = build_detectors(cfg)
    blocks += [parse_score_name(name) for det in [*passed, *fitted] for name in det.outputs()]
    sets = ood_set_names(cfg.get("data"))
    return [f"{VAL_METRICS_KEY}/{s}/{sch}/{i}/{m}" for s in sets for sch, i in blocks for m in METRICS]


def fitted_detectors(cfg: DictConfig) -> list[Any]:
    """The run's :class:`~fevae.detectors.FittedDetector` detectors (of ``eval.detectors``)."""
    from fevae.detectors.registry import build_detectors

    return build_detectors(cfg)[1]


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
    in_sample = {parse_score_name(name) for det in fitted_detectors(cfg) for name in det.outputs()}
    parts = str(key).split("/")
    if len(parts) == 5 and (parts[2], parts[3]) in in_sample:
        raise FevaeError(f"optimized_metric={key} is a fitted detector's validation number, which is in-sample "
                         "(the detector is fitted on the same in-distribution validation images, so it looks better there "
                         "than on new images) and cannot select",
                         f"select on a score that is not fitted, e.g. optimized_metric={VAL_METRICS_KEY}/{parts[1]}/APO/fevae/{parts[4]}")


def _flat(key: str) -> str:
    return key.replace("/", "__")


class Scorer(L.LightningModule):
    """The model-pass driver: wraps a trained VAE, Jigsaw and feature mixtures; ``predict_step`` scores a batch.

    Per image and scheme (PR: z ~ p(z); APO: z ~ q(z|x)), S Monte-Carlo samples are decoded
    ``chunk_size`` at a time (:func:`fevae.scoring.sample_chunks`) and reduced to the paper's scores
    (:class:`fevae.detectors.fevae.FevaeTerms`: ``log_p_{vae,fe,fevae}_<scheme>``, ``log_p_fevae_l<k>_<scheme>``
    per extra layer, each with its Monte-Carlo standard error ``mcse__<name>``). Every other detector
    is a :class:`fevae.detectors.Detector` of ``detectors``: the driver computes the APO importance
    weights when one reads them, runs each one's :meth:`~fevae.detectors.Detector.batch` on the rows it
    selects (timed: its own cost), gathers its values by dataset index and lets it turn them into its
    columns at the end. ``models`` are the extra trained models detectors need (``{"background": VAE}``).
    The noise of image i depends only on (seed, set, scheme, i), so the scores do not depend on batch
    size or on the number of processes. ``n_samples`` is one S or ``{scheme: S}``.

    With ``keep_samples`` the step keeps the model-pass outputs instead (per-sample log-likelihoods,
    decoded features, importance weights, each detector's own values) and :meth:`scores_from_samples`
    turns them into the same scores later (bit for bit), against any mixtures: what
    :class:`fevae.cache.SamplesCache` stores.
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
        detectors: Sequence[Detector] = (),
        keep_samples: bool = False,
        set_indices: Mapping[str, np.ndarray] | None = None,
        models: Mapping[str, torch.nn.Module] | None = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self.vae, self.jigsaw = vae, jigsaw
        #: decode of the model pass (``eval.channels_last``: :func:`fevae.scoring.channels_last_decode`)
        self.channels_last = bool(channels_last)
        self.decode = channels_last_decode(vae) if channels_last else vae.decode
        if isinstance(mixtures, TorchMixture):
            mixtures = {layer: mixtures}
        self.mixtures = torch.nn.ModuleDict({f"l{k}": m for k, m in mixtures.items()})
        self.models = torch.nn.ModuleDict(dict(models or {}))
        self.set_names = list(set_names)
        self.layer, self.pre_activation = layer, pre_activation
        self.schemes, self.chunk_size, self.seed = list(schemes), chunk_size, seed
        #: scheme -> S
        self.n_samples = samples_per_scheme(n_samples, self.schemes)
        self.terms = FevaeTerms(self.mixtures, layer, self.schemes, self.n_samples)
        self.detectors = list(detectors)
        missing = sorted({m for d in self.detectors for m in d.models} - set(self.models))
        if missing:
            raise FevaeError(f"the detectors {[d.name for d in self.detectors if set(d.models) & set(missing)]} need the trained models "
                             f"{missing}, which were not given", "train the run with them (python -m fevae.train), or drop those detectors")
        for det in self.detectors:
            det.bind(self)
        #: set name -> its dataset indices, ascending (:func:`set_indices`; for :meth:`subset_images`)
        self.set_indices = {k: np.sort(np.asarray(v)) for k, v in (set_indices or {}).items()}
        self.keep_samples = keep_samples
        self.stopwatch = Stopwatch()
        self.n_images = 0
        #: detector name -> images it computed its own values for
        self.n_own: dict[str, int] = {d.name: 0 for d in self.detectors}
        self._outputs: dict[int, list[dict[str, torch.Tensor]]] = {}
        self._own: dict[tuple[str, int], list[dict[str, torch.Tensor]]] = {}
        #: set name -> score name (or sample key with keep_samples) -> array in dataset order
        self.results: dict[str, dict[str, np.ndarray]] = {}

    # ------------------------------------------------------------------ pieces
    def features(self, images: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        return self.jigsaw.features(images, layer=self.layer if layer is None else layer, pre_activation=self.pre_activation)

    def feature_fns(self) -> dict[str, Any]:
        return {name: partial(self.features, layer=int(name[1:])) for name in self.mixtures}

    @property
    def log_weights(self) -> bool:
        return any(d.uses_log_weights for d in self.detectors)

    @staticmethod
    def stream(set_name: str, scheme: str) -> int:
        return score_stream(set_name, scheme)

    def subset_images(self, set_name: str, k: int) -> np.ndarray | None:
        """The dataset indices (ascending) of a seeded random sample of ``k`` of set ``set_name``'s images — all
        of them when it holds at most ``k`` —, or None when its indices are unknown. The sample depends only on
        the set (part) name and its indices (:data:`SUBSET_SEED`), never on the run's seed: every seed scores
        the same images, and a detector scored on a subset is compared on a random, not a first-k, sample."""
        index = self.set_indices.get(set_name)
        return None if index is None else random_subset(index, k, set_name)

    def chunks(self, x: torch.Tensor, index: torch.Tensor, set_name: str, scheme: str):
        return sample_chunks(
            x, index, decode=self.decode, log_likelihood=self.vae.log_likelihood, phi=self.vae.phi,
            features=self.feature_fns(), encode=self.vae.encode, scheme=scheme, n_samples=self.n_samples[scheme],
            chunk_size=self.chunk_size, seed=self.seed, stream=score_stream(set_name, scheme),
            log_weights=self.log_weights, stopwatch=self.stopwatch,
        )

    def finish(self, shared: Mapping[str, np.ndarray], own: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """A set's columns: the paper's scores and each detector's, from the shared ones and its own values."""
        out = {k: v for k, v in shared.items() if k.startswith(("log_p_", MCSE_PREFIX + "log_p_", MCSE_PREFIX + ESS_PREFIX + "log_p_"))}
        for det in self.detectors:
            out.update(det.scores(shared, own.get(det.name, {})))
        return out

    # ------------------------------------------------------------------ predict
    def on_predict_epoch_start(self) -> None:
        self._outputs, self._own, self.results = {}, {}, {}

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, _, index = batch
        set_name = self.set_names[dataloader_idx]
        self.n_images += len(x)
        with torch.no_grad():
            f_x = {name: fn(x) for name, fn in self.feature_fns().items()}
            row: dict[str, torch.Tensor] = {"index": index}
            if self.keep_samples:
                for scheme in self.schemes:
                    parts = list(self.chunks(x, index, set_name, scheme))
                    for key in parts[0]:
                        row[_flat(f"{scheme}/{key}")] = torch.cat([p[key] for p in parts]).transpose(0, 1)  # [B, S, ...]
                row.update({_flat(f"f_x/{name}"): f for name, f in f_x.items()})
            else:
                row.update(self.terms.scores(f_x, lambda scheme: self.chunks(x, index, set_name, scheme), self.stopwatch))
        self._outputs.setdefault(dataloader_idx, []).append(row)
        for det in self.detectors:
            mask = det.rows(index, set_name)
            xs, ids = (x, index) if mask is None else (x[mask], index[mask])
            if not len(ids):
                continue
            with self.stopwatch(f"detector/{det.name}"):
                values = det.batch(xs, ids, set_name)
            if values:
                self.n_own[det.name] += len(ids)
                self._own.setdefault((det.name, dataloader_idx), []).append({"index": ids, **{k: v.to(ids.device) for k, v in values.items()}})

    def on_predict_epoch_end(self) -> None:
        for i, name in enumerate(self.set_names):
            gathered = gather_by_index(self, _concat(self._outputs.get(i, [])))
            own = {det.name: gather_by_index(self, _concat(self._own.get((det.name, i), []))) for det in self.detectors}
            if self.keep_samples:
                gathered.update({_flat(f"{OWN}/{det}/{k}"): v for det, values in own.items() for k, v in values.items()})
                self.results[name] = gathered
            else:
                self.results[name] = self.finish(gathered, own)
        self._outputs, self._own = {}, {}

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

                parts.append(self.terms.scores(f_x, chunks_of, self.stopwatch))
            shared = {k: torch.cat([p[k] for p in parts]).double().cpu().numpy() for k in parts[0]}
            own: dict[str, dict[str, np.ndarray]] = {}
            for key, value in arrays.items():
                head, _, rest = key.partition(_flat("/"))
                if head == OWN:
                    det, _, sub = rest.partition(_flat("/"))
                    own.setdefault(det, {})[sub] = np.asarray(value)
            results[set_name] = self.finish(shared, own)
        return results

    def _chunk_keys(self, scheme: str) -> list[str]:
        keys = ["ll", *(f"f_phi/{name}" for name in self.mixtures)]
        return keys + (["log_w"] if scheme == "APO" and self.log_weights else [])

    def costs(self, seconds: Mapping[str, float] | None = None, n_images: int | None = None,
              n_own: Mapping[str, int] | None = None) -> dict[str, Any]:
        """Seconds per image of every score, laid out like metrics.json's ``ood.<set>`` blocks."""
        sec = dict(self.stopwatch.seconds if seconds is None else seconds)
        n = max(self.n_images if n_images is None else n_images, 1)
        own = dict(self.n_own if n_own is None else n_own)
        out: dict[str, Any] = self.terms.cost(sec, n)
        other = {}
        for det in self.detectors:
            cost = det.cost(sec, n, int(own.get(det.name, 0)))
            if cost is not None:
                for name in det.outputs():
                    other[name] = cost
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
        # a rank may hold none of a detector's rows (likelihood regret's first images): agree on the keys first
        layouts: list[Any] = [None] * world
        torch.distributed.all_gather_object(layouts, {k: (v.dtype, tuple(v.shape[1:])) for k, v in local.items()})
        for layout in layouts:
            for key, (dtype, shape) in layout.items():
                if key not in local:
                    local[key] = torch.empty((0, *shape), dtype=dtype, device=module.device)
        if not local:
            return {}
        n_local = torch.tensor([len(local.get("index", []))], device=module.device)
        n_max = int(module.all_gather(n_local).max())
        padded = {}
        for key, value in sorted(local.items()):  # the same order on every rank
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


def _samples_key(cfg: DictConfig, vae: torch.nn.Module, jigsaw: torch.nn.Module, loaders: Mapping[str, Any], layers: Sequence[int],
                 models: Mapping[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """What determines the model pass: the models' weights, the eval images, the eval and detector settings."""
    from fevae.detectors.registry import detector_config, selected_names

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
        "eval": {k: ev.get(k) for k in ("n_samples", "chunk_size", "schemes", "detectors", "regret", "channels_last")},
        "detectors": {name: detector_config(cfg, name) for name in selected_names(cfg)},
        "models": {name: weights_hash(m) for name, m in sorted((models or {}).items())},
        "format": 2,  # each detector's own values under own/<detector>/ (fevae/detectors)
        "layers": sorted(layers),
        "pre_activation": cfg.fe.pre_activation,
        "seed": cfg.seed,
        "dtype": str(next(vae.parameters()).dtype),
    }


def _samples_bytes(cfg: DictConfig, loaders: Mapping[str, Any], jigsaw: torch.nn.Module, layers: Sequence[int]) -> int:
    per_sample = 8 + 8 + 4 * sum(jigsaw.feature_dim(k) for k in layers)
    total_s = sum(samples_per_scheme(cfg.eval.n_samples, list(cfg.eval.schemes)).values())
    return sum(len(loader.dataset) for loader in loaders.values()) * total_s * per_sample


def random_subset(index: np.ndarray, k: int, set_name: str) -> np.ndarray:
    """A seeded random sample of ``k`` of the dataset indices ``index`` (ascending; all of them when there are at
    most ``k``), seeded by :data:`SUBSET_SEED` and ``set_name`` only (see :meth:`Scorer.subset_images`)."""
    index = np.sort(np.asarray(index))
    if k >= len(index):
        return index
    rng = stream_rng(SUBSET_SEED, "subset", set_name)
    return np.sort(rng.choice(index, size=int(k), replace=False))


def set_indices(loaders: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per loader over a :class:`~torch.utils.data.TensorDataset` of ``(x, y, index)``, its dataset indices."""
    out = {}
    for name, loader in loaders.items():
        tensors = getattr(loader.dataset, "tensors", None)
        if tensors is not None:
            out[name] = tensors[-1].numpy()
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
                loaders: Mapping[str, Any], keep_samples: bool = False, n_samples: int | Mapping[str, int] | None = None,
                models: Mapping[str, torch.nn.Module] | None = None) -> Scorer:
    """A :class:`Scorer` with the run's eval settings and model-pass detectors (``n_samples`` overrides ``eval.n_samples``)."""
    from fevae.detectors.registry import build_detectors

    return Scorer(
        vae.eval(), jigsaw.eval(), mixtures, list(loaders), layer=cfg.fe.layer, pre_activation=cfg.fe.pre_activation,
        n_samples=cfg.eval.n_samples if n_samples is None else n_samples, chunk_size=cfg.eval.chunk_size,
        schemes=list(cfg.eval.schemes), seed=cfg.seed, detectors=build_detectors(cfg)[0], keep_samples=keep_samples,
        set_indices=set_indices(loaders), models={k: m.eval() for k, m in (models or {}).items()},
        channels_last=bool(cfg.eval.get("channels_last", False)),
    )


def run_scoring(
    cfg: DictConfig,
    vae: torch.nn.Module,
    jigsaw: torch.nn.Module,
    mixtures: TorchMixture | Mapping[int, TorchMixture],
    loaders: Mapping[str, Any],
    models: Mapping[str, torch.nn.Module] | None = None,
) -> Scoring:
    """Score every loader (items ``(x, y, index)``) with the trainer config.

    ``models``: the extra trained models the run's detectors need (:func:`fevae.detectors.registry.needed_models`).

    ``mixtures`` maps Jigsaw layer -> mixture (``cfg.fe.layer`` gives fe/fevae, the others
    ``fevae_l<k>``). With ``cache.enabled`` (auto: in multirun) and one process, the model pass is
    read from / stored in :class:`fevae.cache.SamplesCache`, so only the mixture part is computed
    when the models and eval settings are unchanged.
    """
    validate_eval_config(cfg.eval, cfg)
    if isinstance(mixtures, TorchMixture):
        mixtures = {int(cfg.fe.layer): mixtures}
    trainer = predict_trainer(cfg, list(loaders))
    cache = None
    if cache_enabled(cfg) and trainer.world_size == 1:
        size = _samples_bytes(cfg, loaders, jigsaw, list(mixtures))
        limit = float(cfg.cache.get("max_samples_gb", 4)) * 2**30
        if size <= limit:
            cache = SamplesCache(cfg.paths.cache_dir, _samples_key(cfg, vae, jigsaw, loaders, list(mixtures), models))
        else:
            log.info("scoring: not caching the model pass (%.1f GB > cache.max_samples_gb)", size / 2**30)

    def scorer(keep: bool) -> Scorer:
        return make_scorer(cfg, vae, jigsaw, mixtures, loaders, keep, models=models)

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
                meta = {"seconds": dict(module.stopwatch.seconds), "n_images": module.n_images, "n_own": module.n_own}
                cache.store(samples, meta)
        mixture_clock = scorer(keep=False)  # times the mixture part of this job
        mixture_clock.to(trainer.strategy.root_device)
        scores = mixture_clock.scores_from_samples(samples)
        seconds = {**meta["seconds"], **{k: v for k, v in mixture_clock.stopwatch.seconds.items() if "/mixture/" in k}}
        result = Scoring(scores, mixture_clock.costs(seconds, meta["n_images"], meta["n_own"]), reused_samples=True)
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
    from fevae.metrics import check_split_scores, compute_split_metrics, save_scores, write_json_atomic
    from fevae.plots import plot_all, plot_detector_aurocs
    from fevae.report import write_report

    from fevae.data.datamodule import part_name
    from fevae.detectors import fit_detectors, save_fitted
    from fevae.detectors.base import STATE_FILE, fitted_costs

    if fitted:
        with stage(f"in-distribution-fitted detectors {[d.name for d in fitted]}", logger=log):
            fit_seconds: dict[str, float] = {}
            scores = fit_detectors(fitted, scores, part_name(in_distribution, "val"), fit_seconds)
        if costs and fit_seconds:  # (none when the run has no validation part to fit on)
            n_images = sum(max(len(v) for v in cols.values()) for cols in scores.values() if cols)
            extra = fitted_costs(fitted, fit_seconds, n_images, costs)
            costs = {k: {**dict(costs.get(k, {})), **extra.get(k, {})} for k in [*costs, *[k for k in extra if k not in costs]]}
    parts: dict[str, dict[str, dict[str, np.ndarray]]] = {"test": {}, "val": {}}
    for key, set_scores in scores.items():
        name, part = split_part(key)
        parts[part][name] = set_scores
    boot = dict(bootstrap or {})
    resampler = Resampler(boot.get("n_resamples", 0), boot.get("level", 0.95), int(info.get("seed") or 0))
    check_split_scores(parts["test"], parts["val"], in_distribution)  # every error the metrics would raise, before any file is written
    # The figures are drawn in a worker process (joblib's loky, the one the mixture fits started and left
    # running) while the metrics run here: matplotlib holds the GIL, so a thread would stall the metrics.
    # (`joblib.parallel_config(backend=...)` moves it: the backend is joblib's default, not fixed here.)
    drawing = Parallel(n_jobs=min(2, usable_cores()), return_as="generator", **pool_args())(  # (its worker dies with this process)
        [delayed(plot_all)(parts["test"], out_dir / "figures", run_label=info.get("experiment", ""), examples=examples,
                           in_distribution=in_distribution)])
    try:
        with stage(f"metrics with {resampler.n_resamples} bootstrap resamples", logger=log):
            metrics = compute_split_metrics(parts["test"], parts["val"], in_distribution=in_distribution, resampler=resampler)
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
        with stage("figures (drawn beside the metrics)", logger=log):
            figures = next(drawing)
            figures += plot_detector_aurocs(metrics, out_dir / "figures" / "detectors_auroc", run_label=info.get("experiment", ""))
    finally:
        for _ in drawing:  # (on an error above: wait for the drawing, never leave it writing behind us)
            pass
    with stage("TensorBoard dashboards", logger=log):
        write_dashboard(out_dir, scores, metrics, info, figures)
    info = {**info, "figures": [str(Path(p).relative_to(out_dir)) for p in figures if str(p).endswith(".png")]}
    test_se = {k: v for k, v in (mc_se or {}).items() if split_part(k)[1] == "test"}
    write_report(out_dir, metrics, scores, info, mc_se=test_se)
    return metrics
