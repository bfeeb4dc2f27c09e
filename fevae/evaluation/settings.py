"""The evaluation settings (``eval``): schemes, noise streams, random subsets, and the checks of ``eval`` and ``optimized_metric``."""

from __future__ import annotations

import logging
import zlib
from typing import Any, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from fevae.data.datamodule import split_part
from fevae.data.evalsets import ood_set_names
from fevae.detectors.registry import build_detectors
from fevae.errors import FevaeError
from fevae.metrics.bootstrap import METRICS, stream_rng
from fevae.metrics.ood import parse_score_name

log = logging.getLogger(__name__)

SCHEMES = ("PR", "APO")
#: the values of ``eval.figures``: every figure, the paper's figures (and the detector AUROCs), none
FIGURES = ("all", "paper", "none")
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

    per_scheme = samples_per_scheme(ev["n_samples"], [s for s in ev["schemes"] if s in SCHEMES])
    for scheme, s in per_scheme.items():
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise FevaeError(f"eval.n_samples={ev['n_samples']!r} is not a positive integer for {scheme}", "set eval.n_samples to an integer ≥ 1 (or {PR: S, APO: S})")
    if not isinstance(ev.get("channels_last", False), bool):
        raise FevaeError(f"eval.channels_last={ev.get('channels_last')!r} is not true or false", "set eval.channels_last=true or false")
    if ev.get("figures", "all") not in FIGURES:
        raise FevaeError(f"eval.figures={ev.get('figures')!r} is invalid", f"choose one of {list(FIGURES)} (all: every figure; paper: Fig. 1-2 and the detector AUROCs)")
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


def score_names(cfg: DictConfig) -> list[str]:
    """Every score a run with ``cfg`` writes per image (``log_p_<id>_<scheme>`` of the schemes, then each
    detector's outputs), before any data is read: the score files' and the score CLI's columns."""
    fe = cfg.fe
    ids = ["vae", "fe", "fevae", *(f"fevae_l{k}" for k in (fe.get("extra_layers") or []) if int(k) != int(fe.layer))]
    names = [f"log_p_{i}_{s.lower()}" for s in cfg.eval.schemes for i in ids]
    passed, fitted = build_detectors(cfg)
    return names + [name for det in [*passed, *fitted] for name in det.outputs()]


def selectable_metrics(cfg: DictConfig) -> list[str]:
    """Every flattened validation metric (``ood_val/<set>/<scheme>/<score>/<metric>``) a run with ``cfg``
    writes; ``<set>`` runs over the run's OOD sets (``data.ood_sets``)."""

    blocks = [parse_score_name(name) for name in score_names(cfg)]
    sets = ood_set_names(cfg.get("data"))
    return [f"{VAL_METRICS_KEY}/{s}/{sch}/{i}/{m}" for s in sets for sch, i in blocks for m in METRICS]


def fitted_detectors(cfg: DictConfig) -> list[Any]:
    """The run's :class:`~fevae.detectors.FittedDetector` detectors (of ``eval.detectors``)."""

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
                         f"use e.g. {close[0] if close else known[0]} (keys: ood_val/<set>/<PR|APO|other>/<score>/<{'|'.join(METRICS)}>)")
    in_sample = {parse_score_name(name) for det in fitted_detectors(cfg) for name in det.outputs()}
    parts = str(key).split("/")
    if len(parts) == 5 and (parts[2], parts[3]) in in_sample:
        raise FevaeError(f"optimized_metric={key} is a fitted detector's validation number, which is in-sample "
                         "(the detector is fitted on the same in-distribution validation images, so it looks better there "
                         "than on new images) and cannot select",
                         f"select on a score that is not fitted, e.g. optimized_metric={VAL_METRICS_KEY}/{parts[1]}/APO/fevae/{parts[4]}")


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
