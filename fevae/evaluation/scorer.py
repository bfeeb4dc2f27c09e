"""The evaluation LightningModule: one model pass per batch through ``Trainer.predict`` (any accelerator, DDP
included), every score of every scheme and detector, gathered across ranks by dataset index.

The math lives in :mod:`fevae.scoring.estimators`; the driver that runs it over a run's sets is
:mod:`fevae.evaluation.driver`.
"""

from __future__ import annotations

import logging
import warnings
from functools import partial
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch

from fevae.detectors.base import Detector
from fevae.detectors.fevae import FevaeTerms
from fevae.errors import FevaeError
from fevae.evaluation.settings import (
    OWN,
    SAMPLE_BATCH,
    SCHEMES,
    random_subset,
    samples_per_scheme,
    score_stream,
)
from fevae.features.density import TorchMixture
from fevae.metrics.ood import ESS_PREFIX, MCSE_PREFIX, parse_score_name
from fevae.scoring.estimators import channels_last_decode, sample_chunks
from fevae.utils.timing import Stopwatch

# the model pass keeps its results on the module (predict_step returns nothing on purpose)
warnings.filterwarnings("ignore", message=r".*predict returned None.*")

log = logging.getLogger(__name__)

def _flat(key: str) -> str:
    return key.replace("/", "__")


class Scorer(L.LightningModule):
    """The model-pass driver: wraps a trained VAE, Jigsaw and feature mixtures; ``predict_step`` scores a batch.

    Per image and scheme (PR: z ~ p(z); APO: z ~ q(z|x)), S Monte-Carlo samples are decoded
    ``chunk_size`` at a time (:func:`fevae.scoring.estimators.sample_chunks`) and reduced to the paper's scores
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
        #: decode of the model pass (``eval.channels_last``: :func:`fevae.scoring.estimators.channels_last_decode`)
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
        for det in self.detectors:
            cost = det.cost(sec, n, int(own.get(det.name, 0)))
            if cost is not None:
                for name in det.outputs():
                    scheme, sid = parse_score_name(name)  # jigsaw_loss_apo -> APO.jigsaw_loss, as in metrics.json
                    out.setdefault(scheme, {})[sid] = cost
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
