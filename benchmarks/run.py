"""``make bench`` / ``python -m benchmarks.run``: what scoring costs, as a table and a JSON file.

Every comparison is a ratio of two measurements taken in the same process, on the same images,
interleaved and repeated: every time is the median of the rounds with its min-max, every ratio the
median of the per-round ratios with their min-max, and a superset of work measured faster than its
subset beyond that spread is flagged ``IMPOSSIBLE (noise)`` (:func:`superset_check`), not reported:

1. ``throughput``: images/s of p_VAE alone vs p_FEVAE (APO, S=100, chunk 10); target ratio <= 1.25.
2. ``mixture``: :class:`fevae.features.density.TorchMixture` vs sklearn ``score_samples`` on the same
   20k features: time ratio, largest difference, ``predict`` agreement.
3. ``baselines``: cost per image of each baseline score relative to p_FEVAE (APO, S=20).
   ``detectors``: cost per image of every configured detector (``eval.detectors``) by the mechanism a run
   uses (the Scorer's stopwatch, :func:`fevae.detectors.base.fitted_costs`), median and range of 5 repeats.
4. ``peak_memory``: peak memory of scoring 20k images at several S (chunk 10), one fresh process
   per S (:mod:`benchmarks.memory`); the ratio peak(S_max) / peak(S_min) should stay ~1.
5. ``training``: images/s of each model's training steps, plain vs channels-last, and the run's three
   models one after another vs side by side, with peak memory (:mod:`benchmarks.training`).
6. ``stages``: wall time of each stage of the run (its ``timings.json``).

Models: ``--run DIR``, else the newest finished ``outputs/train/v2_gaussian/<time>/``, else freshly
initialised (untrained) models from ``conf/`` with ``+experiment=v2_gaussian``: the costs do not
depend on the weights. ``--quick`` shrinks every size (about half a minute on one thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script (`python benchmarks/run.py`): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    DEFAULT_EXPERIMENT,
    REPO_ROOT,
    Models,
    eval_images,
    extract_features,
    find_default_run,
    fit_bench_mixture,
    has_trained_models,
    load_models,
    machine_info,
    make_data,
    resolve_device,
    sample_features,
    stage_times,
    timed,
    train_images,
)
from benchmarks.memory import MARKER
from benchmarks.api import api_section
from benchmarks.training import compile_section, training_section
from fevae.detectors.jigsaw_loss import puzzle_log_probs
from fevae.scoring.baselines import compressed_bits, input_complexity_score, iwae_score, likelihood_regret_score, to_uint8
from fevae.errors import FevaeError
from fevae.metrics.ood import write_json_atomic
from fevae.features.mixture import MixtureArrays
from fevae.features.bgm import fit_mixtures
from fevae.features.density import TorchMixture
from fevae.scoring.estimators import channels_last_decode, sample_chunks, score_batch
from fevae.utils.timing import Stopwatch

DEFAULT_OUT = Path("outputs/bench/bench.json")
THROUGHPUT_TARGET = 1.25  # p_FEVAE time / p_VAE time
AGREEMENT_TARGET = 0.99  # TorchMixture.predict == sklearn predict
MEMORY_TARGET = 1.10  # peak(S_max) / peak(S_min): flat in S
#: the sections, in the order they run (``--sections`` picks some)
SECTIONS = ("throughput", "mixture", "fits", "baselines", "detectors", "peak_memory", "training", "api", "stages")
#: sections measured only when named in ``--sections`` (compile: ~20 s of compiling)
OPTIONAL_SECTIONS = ("compile",)


@dataclass(frozen=True)
class Sizes:
    """How much work each measurement does (full ``make bench`` vs ``--quick``)."""

    scheme: str = "APO"
    repeats: int = 5  # interleaved repeats of every timed variant: medians and min-max spreads are reported
    throughput_images: int = 512
    throughput_batch: int = 256
    throughput_samples: int = 100
    chunk_size: int = 10
    mixture_features: int = 20_000
    mixture_repeats: int = 3
    baseline_images: int = 256
    baseline_samples: int = 20
    regret_images: int = 64
    regret_steps: int = 50
    regret_samples: int = 4
    detector_repeats: int = 5  # repeats of the detectors section (median and min-max reported)
    fit_n: int = 2000  # training images of the mixtures the bench fits (layers 2-4; layer 1 if untrained)
    fit_max_iter: int = 500
    fits_n: int = 2000  # training images of the "fits" section (every layer's mixture, the run's fe settings)
    fits_repeats: int = 5
    memory_images: int = 20_000
    memory_samples: tuple[int, ...] = (10, 30)
    memory_chunk: int = 10
    memory_batch: int = 256
    memory_parallel: bool = False  # run the per-S worker processes at once (quick: only the memory counts)
    training_vae_steps: int = 16  # VAE steps per model per round of the training section (the Jigsaw: 12.5x as many)


FULL = Sizes()
QUICK = Sizes(repeats=2, throughput_images=64, throughput_batch=32, throughput_samples=20, mixture_features=2000,
              mixture_repeats=1, baseline_images=32, regret_images=4, detector_repeats=2, fit_n=200, fit_max_iter=100,
              fits_n=300, fits_repeats=2,
              memory_images=512, memory_samples=(2, 6), memory_chunk=2, memory_batch=64, memory_parallel=True,
              training_vae_steps=2)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def row(section: str, name: str, value: float | None, unit: str, ratio: float | None = None,
        target: str = "", note: str = "", ratio_range: tuple[float, float] | None = None) -> dict[str, Any]:
    return {"section": section, "name": name, "value": value, "unit": unit, "ratio": ratio, "ratio_range": ratio_range,
            "target": target, "note": note}


def spread(values: list[float] | np.ndarray) -> dict[str, Any]:
    """Median and min-max of repeated measurements (the spread every reported number comes with)."""
    v = np.asarray(values, dtype=float)
    return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()), "n": int(v.size), "values": v.tolist()}


def paired_ratio(numerator: list[float], denominator: list[float]) -> dict[str, Any]:
    """Per-round ratios of two interleaved measurements (round k of one / round k of the other): their spread."""
    return spread([a / b for a, b in zip(numerator, denominator)])


IMPOSSIBLE = "IMPOSSIBLE (noise)"


def superset_check(ratio: dict[str, Any]) -> dict[str, Any]:
    """A superset of work (p_FEVAE vs p_VAE alone) cannot be faster than its subset: a ratio whose whole
    spread lies below 1 is flagged as noise, not reported as a finding; one straddling 1 is "within noise"."""
    if ratio["max"] < 1.0:
        return {"impossible": True, "verdict": IMPOSSIBLE}
    if ratio["min"] < 1.0:
        return {"impossible": False, "verdict": "within noise of 1"}
    return {"impossible": False, "verdict": ""}


def best_of(variants: dict[str, Callable[[], Any]], repeats: int, device: torch.device) -> dict[str, list[float]]:
    """Time every variant ``repeats`` times, interleaved (the order flips each round); every round's time is kept."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(timed(variants[name], device))
    return times


class Bench:
    """The loaded models, data and layer-1 mixture; one method per section."""

    def __init__(self, models: Models, dm, arrays: MixtureArrays, sizes: Sizes, device: torch.device, seed: int):
        self.models, self.dm, self.arrays, self.sizes, self.device, self.seed = models, dm, arrays, sizes, device, seed
        self.mixture = TorchMixture(arrays).to(device)
        self.features = models.features_fn()
        vae = models.vae
        self.model_kwargs = dict(decode=vae.decode, log_likelihood=vae.log_likelihood, phi=vae.phi, encode=vae.encode)
        self.layer_mixture_info: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- helpers
    def _score(self, x: torch.Tensor, batch_size: int, **kwargs: Any) -> None:
        """score_batch over ``x`` in batches (indices 0..N-1)."""
        for lo in range(0, len(x), batch_size):
            xb = x[lo : lo + batch_size].to(self.device)
            idx = torch.arange(lo, lo + len(xb))
            score_batch(xb, idx, seed=self.seed, **{**self.model_kwargs, **kwargs})

    def _fe(self) -> dict[str, Any]:
        return {"features": self.features, "mixture": self.mixture}

    # ---------------------------------------------------------------- 1. throughput
    def throughput(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        s = self.sizes
        x, what = eval_images(self.dm, s.throughput_images)
        common = dict(scheme=s.scheme, chunk_size=s.chunk_size)
        # fevae_cl: the decoder in channels-last memory format (eval.channels_last, the default of runs)
        variants = {"vae": {}, "fevae": self._fe(), "fevae_cl": {**self._fe(), "decode": channels_last_decode(self.models.vae)}}
        for kw in variants.values():  # warm-up: one chunk of one batch
            self._score(x[: s.throughput_batch], s.throughput_batch, n_samples=s.chunk_size, **common, **kw)
        times = best_of({name: (lambda kw=kw: self._score(x, s.throughput_batch, n_samples=s.throughput_samples, **common, **kw))
                         for name, kw in variants.items()}, s.repeats, self.device)
        med = {name: spread(t) for name, t in times.items()}
        ratio = paired_ratio(times["fevae"], times["vae"])  # p_FEVAE does strictly more work than p_VAE alone
        check = superset_check(ratio)
        result = {
            "images": what, "n_images": len(x), "batch_size": s.throughput_batch, "scheme": s.scheme,
            "n_samples": s.throughput_samples, "chunk_size": s.chunk_size, "repeats": s.repeats,
            **{name: {"seconds": med[name]["median"], "seconds_spread": med[name], "images_per_s": len(x) / med[name]["median"],
                      "images_per_s_range": [len(x) / med[name]["max"], len(x) / med[name]["min"]],
                      "decoded_images_per_s": len(x) * s.throughput_samples / med[name]["median"]} for name in variants},
            "ratio_fevae_to_vae": ratio["median"], "ratio_spread": ratio, **check,
            "target_ratio": THROUGHPUT_TARGET, "meets_target": ratio["median"] <= THROUGHPUT_TARGET,
            "speedup_channels_last": paired_ratio(times["fevae"], times["fevae_cl"]),
        }
        tag = f"({s.scheme}, S={s.throughput_samples})"
        verdict = check["verdict"] or f"<= {THROUGHPUT_TARGET}x {'ok' if result['meets_target'] else 'MISSED'}"
        rows = [
            row("throughput", f"p_VAE alone {tag}", result["vae"]["images_per_s"], "img/s", None, "",
                _range_note(result["vae"]["images_per_s_range"], s.repeats)),
            row("throughput", f"p_FEVAE {tag}", result["fevae"]["images_per_s"], "img/s", ratio["median"], verdict,
                f"ratio = time / p_VAE time, per round; {_range_note(result['fevae']['images_per_s_range'], s.repeats)}",
                (ratio["min"], ratio["max"])),
            row("throughput", f"p_FEVAE, channels-last decoder {tag}", result["fevae_cl"]["images_per_s"], "img/s",
                result["speedup_channels_last"]["median"], "",
                f"ratio = speedup over p_FEVAE (eval.channels_last, the runs' default), per round; "
                f"{_range_note(result['fevae_cl']['images_per_s_range'], s.repeats)}",
                (result["speedup_channels_last"]["min"], result["speedup_channels_last"]["max"])),
        ]
        return result, rows

    # ---------------------------------------------------------------- 2. mixture
    def mixture_vs_sklearn(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        s = self.sizes
        pool = len(self.dm.eval_sets["fashionmnist"]) + len(self.dm.eval_sets["mnist"])
        n_real = min(s.mixture_features, pool)
        images, what = eval_images(self.dm, n_real)
        feats = extract_features(self.features, images, self.device)
        if n_real < s.mixture_features:
            feats = np.concatenate([feats, sample_features(self.arrays, s.mixture_features - n_real, self.seed)])
            what = f"features of {what} + {s.mixture_features - n_real} draws from the mixture"
        else:
            what = f"features of {what}"
        sk = self.arrays.to_sklearn()
        ft = torch.from_numpy(feats).to(self.device)
        self.mixture.score_samples(ft[:100])
        sk.score_samples(feats[:100])
        times = best_of({"torch": lambda: self.mixture.score_samples(ft), "sklearn": lambda: sk.score_samples(feats)},
                        s.mixture_repeats, self.device)
        med = {name: spread(t) for name, t in times.items()}
        best = {name: m["median"] for name, m in med.items()}
        ratio_spread = paired_ratio(times["torch"], times["sklearn"])
        a = self.mixture.score_samples(ft).cpu().numpy()
        b = sk.score_samples(feats)
        diff = np.abs(a - b)
        agree = float(np.mean(self.mixture.predict(ft).cpu().numpy() == sk.predict(feats)))
        ratio = ratio_spread["median"]
        result = {
            "features": what, "n_features": int(feats.shape[0]), "d": int(feats.shape[1]), "C": self.arrays.n_components,
            "covariance_type": self.arrays.covariance_type, "device": str(self.device), "repeats": s.mixture_repeats,
            "torch_seconds": best["torch"], "sklearn_seconds": best["sklearn"],
            "torch_seconds_spread": med["torch"], "sklearn_seconds_spread": med["sklearn"], "ratio_spread": ratio_spread,
            "ratio_torch_to_sklearn": ratio, "speedup_torch_vs_sklearn": 1.0 / ratio,
            "max_abs_diff": float(diff.max()), "max_rel_diff": float(np.max(diff / np.maximum(np.abs(b), 1.0))),
            "predict_agreement": agree, "target_agreement": AGREEMENT_TARGET, "meets_target": agree >= AGREEMENT_TARGET,
        }
        n = f"{feats.shape[0]}x{feats.shape[1]}"
        rows = [
            row("mixture", f"sklearn score_samples ({n})", best["sklearn"], "s", None, "",
                _range_note((med["sklearn"]["min"], med["sklearn"]["max"]), s.mixture_repeats)),
            row("mixture", f"TorchMixture score_samples ({self.device.type})", best["torch"], "s", ratio, "",
                f"ratio = time / sklearn time, per round; {_range_note((med['torch']['min'], med['torch']['max']), s.mixture_repeats)}",
                (ratio_spread["min"], ratio_spread["max"])),
            row("mixture", "max |torch - sklearn| log-density", result["max_abs_diff"], "nats"),
            row("mixture", "predict agreement", agree, "fraction", None,
                f">= {AGREEMENT_TARGET} {'ok' if result['meets_target'] else 'MISSED'}"),
        ]
        return result, rows

    # ---------------------------------------------------------------- 2b. fitting the layers' mixtures
    def fits(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Fitting a mixture on every Jigsaw hidden layer (the default ``fe.layer`` + ``fe.extra_layers``,
        whatever the run's; its C and settings) on the features of ``fits_n`` training images, three ways, interleaved: sklearn as it comes (BLAS on
        every core, one layer after another: the code before), :func:`fevae.features.bgm.fit_mixtures` one
        after another (one BLAS thread each), and side by side in one process per core (``fe.n_jobs=-1``)."""
        from sklearn.mixture import BayesianGaussianMixture

        from fevae.features.fitting import fit_workers

        s, fe = self.sizes, self.models.cfg.fe
        x = train_images(self.dm, s.fits_n, self.seed)
        layers = range(1, len(self.models.cfg.model.jigsaw.hidden) + 1)
        feats = {layer: extract_features(self.models.features_fn(layer), x, self.device) for layer in layers}
        kwargs = {"n_components": min(int(fe["C"]), s.fits_n), "covariance_type": str(fe["covariance_type"]),
                  "max_iter": int(fe["max_iter"]), "reg_covar": float(fe["reg_covar"]), "n_init": int(fe["n_init"]),
                  "random_state": self.seed}
        workers = fit_workers(-1, len(feats))
        fitted: dict[str, Any] = {}

        def sklearn_as_is() -> None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                for f in feats.values():
                    BayesianGaussianMixture(**kwargs).fit(f)

        def ours(n_jobs: int) -> None:
            fitted[n_jobs] = fit_mixtures(feats, n_jobs, **kwargs)

        ours(workers)  # warm-up: starts the worker processes (kept for the next fits, as in a sweep)
        times = best_of({"sklearn": sklearn_as_is, "sequential": lambda: ours(1), "parallel": lambda: ours(workers)},
                        s.fits_repeats, self.device)
        identical = all(np.array_equal(a, b) for k in feats
                        for a, b in zip(fitted[1][k][0].to_dict().values(), fitted[workers][k][0].to_dict().values()))
        med = {name: spread(t) for name, t in times.items()}
        result = {"n": s.fits_n, "layers": {k: f.shape[1] for k, f in feats.items()}, "fe": kwargs, "workers": workers,
                  "repeats": s.fits_repeats, **{name: {"seconds": m["median"], "seconds_spread": m} for name, m in med.items()},
                  "speedup_parallel": paired_ratio(times["sklearn"], times["parallel"]),
                  "speedup_one_thread": paired_ratio(times["sklearn"], times["sequential"]),
                  "identical_parallel_sequential": identical}
        tag = f"({len(feats)} layers, n={s.fits_n}, C={kwargs['n_components']})"
        rows = [
            row("fits", f"sklearn as it comes, one layer after another {tag}", med["sklearn"]["median"], "s", None, "",
                _range_note((med["sklearn"]["min"], med["sklearn"]["max"]), s.fits_repeats)),
            row("fits", "one BLAS thread per fit, one after another", med["sequential"]["median"], "s",
                result["speedup_one_thread"]["median"], "",
                f"ratio = speedup over sklearn as it comes, per round; {_range_note((med['sequential']['min'], med['sequential']['max']), s.fits_repeats)}",
                (result["speedup_one_thread"]["min"], result["speedup_one_thread"]["max"])),
            row("fits", f"side by side, {workers} processes (fe.n_jobs=-1)", med["parallel"]["median"], "s",
                result["speedup_parallel"]["median"], "same bits as one after another" if identical else "DIFFERENT BITS",
                f"ratio = speedup over sklearn as it comes, per round; {_range_note((med['parallel']['min'], med['parallel']['max']), s.fits_repeats)}",
                (result["speedup_parallel"]["min"], result["speedup_parallel"]["max"])),
        ]
        return result, rows

    # ---------------------------------------------------------------- 3. baselines
    def layer_mixtures(self) -> dict[int, TorchMixture]:
        """Mixtures of the other Jigsaw layers: the run's own where it has them, else fitted here
        on the features of ``fit_n`` training images (only their evaluation cost is measured)."""
        s = self.sizes
        x = train_images(self.dm, s.fit_n, self.seed)
        out = {}
        for layer in range(1, len(self.models.cfg.model.jigsaw.hidden) + 1):
            if layer == self.models.layer:
                continue
            arrays = self.models.layer_mixtures.get(layer)
            if arrays is not None:
                info: dict[str, Any] = {"source": "run"}
            else:
                feats = extract_features(self.models.features_fn(layer), x, self.device)
                start = time.perf_counter()
                arrays = fit_bench_mixture(feats, self.models.cfg.fe, self.seed, s.fit_max_iter)
                info = {"source": f"fitted here on {len(feats)} training images", "max_iter": s.fit_max_iter,
                        "fit_seconds": time.perf_counter() - start}
            self.layer_mixture_info[f"layer{layer}"] = {**info, "C": arrays.n_components, "d": arrays.n_features}
            out[layer] = TorchMixture(arrays).to(self.device)
        return out

    def baselines(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        s = self.sizes
        x, what = eval_images(self.dm, s.baseline_images)
        xr = x[: s.regret_images]
        xd, xrd = x.to(self.device), xr.to(self.device)
        idx, idxr = torch.arange(len(x)), torch.arange(len(xr))
        common = dict(scheme=s.scheme, n_samples=s.baseline_samples, chunk_size=s.chunk_size)
        vae = self.models.vae
        layers = self.layer_mixtures()
        extra = {f"fevae_l{k}": (self.models.features_fn(k), m) for k, m in layers.items()}

        def iwae() -> torch.Tensor:
            return iwae_score(xd, idx, vae=vae, n_samples=s.baseline_samples, chunk_size=s.chunk_size, seed=self.seed)

        variants: dict[str, Callable[[], Any]] = {
            "fevae": lambda: self._score(x, len(x), **common, **self._fe()),
            "fevae+iwae": lambda: self._score(x, len(x), **common, **self._fe(), iwae=True),
            "iwae": iwae,
            "input_complexity": lambda: input_complexity_score(iwae(), to_uint8(xd)),
            "png_code_length": lambda: compressed_bits(to_uint8(xd)),
            "jigsaw_loss": lambda: puzzle_log_probs(self.models.jigsaw, xd),
            "likelihood_regret": lambda: likelihood_regret_score(xrd, idxr, vae=vae, steps=s.regret_steps, lr=1e-4,
                                                                 n_samples=s.regret_samples, seed=self.seed),
            "likelihood_regret_vmap": lambda: likelihood_regret_score(xrd, idxr, vae=vae, steps=s.regret_steps, lr=1e-4,
                                                                      n_samples=s.regret_samples, seed=self.seed, stacked=False),
            **{name: (lambda fn=fn, m=m: self._score(x, len(x), **common, features=fn, mixture=m))
               for name, (fn, m) in extra.items()},
            "fevae+layers": lambda: self._score(x, len(x), **common, **self._fe(), extra=extra),
        }
        log_w_key = f"{s.scheme}/log_w"

        def log_w_section() -> float:
            """The extra work of ``iwae=True`` (the log-weights of the shared draws), timed by its own
            stopwatch section inside the pass: a difference of two whole-pass times cannot resolve it."""
            watch = Stopwatch()
            for _ in sample_chunks(xd, idx, decode=vae.decode, log_likelihood=vae.log_likelihood, encode=vae.encode,
                                   seed=self.seed, log_weights=True, stopwatch=watch, **common):
                pass
            return watch.seconds.get(log_w_key, 0.0)

        n_of = {name: (len(xr) if name.startswith("likelihood_regret") else len(x)) for name in variants}
        for name, fn in variants.items():  # warm-up: each once, so no variant pays first-call costs
            if not name.startswith("likelihood_regret"):
                fn()
        for stacked in (True, False):
            likelihood_regret_score(xrd[:2], idxr[:2], vae=vae, steps=2, lr=1e-4, n_samples=s.regret_samples, seed=self.seed,
                                    stacked=stacked)
        times = best_of(variants, s.repeats, self.device)
        log_w = [log_w_section() / len(x) for _ in range(s.repeats)]  # seconds per image, per round
        per_round = {name: [t / n_of[name] for t in ts] for name, ts in times.items()}  # seconds per image, per round
        per_image = {name: float(np.median(v)) for name, v in per_round.items()}
        ref = per_image["fevae"]
        entries: dict[str, dict[str, Any]] = {}
        for name in variants:
            r = paired_ratio(per_round[name], per_round["fevae"])
            entries[name] = {"n_images": n_of[name], "seconds_spread": spread(times[name]), "seconds_per_image": per_image[name],
                             "ratio_to_fevae": r["median"], "ratio_spread": r}
        # supersets of work: a score computed alongside p_FEVAE costs at least p_FEVAE; input complexity at least IWAE
        marginal = {"iwae_alongside": ("fevae+iwae", "fevae", "iwae computed with p_FEVAE (iwae=True, same draws)"),
                    "layers_alongside": ("fevae+layers", "fevae", f"{', '.join(extra)} computed with p_FEVAE (extra=)"),
                    "png_over_iwae": ("input_complexity", "iwae", "input complexity over IWAE alone (the PNG code length)")}
        for name, (combined, subset, note) in marginal.items():
            diffs = spread([a - b for a, b in zip(per_round[combined], per_round[subset])])
            ratio = paired_ratio(per_round[combined], per_round[subset])
            entry = {"whole_pass_difference": diffs, "whole_pass_ratio": ratio, "what": note}
            if name == "iwae_alongside":  # below the noise of two whole passes: its own section's time instead
                diffs = spread(log_w)
                ratio = paired_ratio([f + w for f, w in zip(per_round[subset], log_w)], per_round[subset])
                entry["what"] = f"{note}; marginal = its own stopwatch section ({log_w_key}) inside the pass"
            entries[name] = {**entry, "marginal_seconds_per_image": diffs["median"], "marginal_spread": diffs,
                             "ratio_to_fevae": diffs["median"] / ref, "superset_ratio": ratio, **superset_check(ratio)}
        result = {
            "images": what, "scheme": s.scheme, "n_samples": s.baseline_samples, "chunk_size": s.chunk_size,
            "repeats": s.repeats, "regret": {"steps": s.regret_steps, "lr": 1e-4, "n_samples": s.regret_samples},
            "layer_mixtures": dict(self.layer_mixture_info),
            "reference": "fevae", "scores": entries,
        }
        notes = {"fevae": "reference: vae + fe + fevae", "input_complexity": "iwae + PNG code length",
                 "png_code_length": "part of input_complexity", "iwae": "standalone",
                 "jigsaw_loss": "the Jigsaw's puzzles of the image (no decoding)",
                 "likelihood_regret": f"{s.regret_steps} Adam steps, {s.regret_samples} eval samples",
                 "likelihood_regret_vmap": "the same with stacked=False: vmap over functional_call (the path for encoders "
                                           "fevae.models.stacked cannot run)"}
        rows = [row("baselines", f"p_FEVAE ({s.scheme}, S={s.baseline_samples}) per image", ref * 1e3, "ms/img", 1.0, "",
                    notes["fevae"])]
        order = ["iwae", "iwae_alongside", "input_complexity", "png_over_iwae", "png_code_length", "jigsaw_loss", "likelihood_regret",
                 "likelihood_regret_vmap", *extra,
                 "layers_alongside"]
        for name in order:
            e = entries[name]
            if "seconds_per_image" in e:
                r = e["ratio_spread"]
                rows.append(row("baselines", name, e["seconds_per_image"] * 1e3, "ms/img", e["ratio_to_fevae"], "",
                                notes.get(name, "standalone"), (r["min"], r["max"])))
            else:  # the extra cost of a superset over its subset, per round: never below 0 beyond the spread
                d = e["marginal_spread"]
                rows.append(row("baselines", f"{name} (marginal)", e["marginal_seconds_per_image"] * 1e3, "ms/img",
                                e["superset_ratio"]["median"], e["verdict"],
                                f"{e['what']}; ratio = superset / subset time; marginal range {d['min'] * 1e3:.3g} to {d['max'] * 1e3:.3g} ms"
                                + ("" if e["whole_pass_difference"] is d else
                                   f"; whole-pass difference {e['whole_pass_difference']['median'] * 1e3:.3g} ms "
                                   f"[{e['whole_pass_difference']['min'] * 1e3:.3g} to {e['whole_pass_difference']['max'] * 1e3:.3g}]"),
                                (e["superset_ratio"]["min"], e["superset_ratio"]["max"])))
        return result, rows

    # ---------------------------------------------------------------- 3b. every configured detector
    def detectors(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Cost per image of every detector of the config's ``eval.detectors``, by the mechanism a run uses:
        the real :class:`fevae.evaluation.scorer.Scorer` (each model-pass detector's own stopwatch section plus the
        shared pass it reads) and :func:`fevae.detectors.base.fitted_costs` (fitted detectors: their scoring
        time plus the columns they read). PR and APO at S=``baseline_samples``; likelihood regret on the first
        ``regret_images``. ``detector_repeats`` interleaved repeats: median and min-max of each cost."""
        from fevae.detectors.base import fit_detectors, fitted_costs
        from fevae.detectors.registry import build_detectors, needed_models
        from fevae.evaluation.scorer import Scorer
        from fevae.pipeline.stages import detector_models

        s = self.sizes
        cfg = self.models.cfg
        x, what = eval_images(self.dm, s.baseline_images)
        index = torch.arange(len(x))
        if self.models.run_dir is not None and all((self.models.run_dir / "checkpoints" / m).is_dir() for m in needed_models(cfg)):
            models, model_source = detector_models(cfg, self.models.run_dir), "the run's"
        else:  # the costs do not depend on the weights
            from fevae.validation import build

            models, model_source = {name: build(f"model.{name}", node).eval() for name, node in needed_models(cfg).items()}, "untrained"
        samples = {"PR": s.baseline_samples, "APO": s.baseline_samples}
        mixtures = {self.models.layer: self.mixture}

        def once() -> dict[str, float]:
            passed, fitted = build_detectors(cfg)
            for det in passed:
                if hasattr(det, "subset"):
                    det.subset, det.steps = s.regret_images, s.regret_steps
            scorer = Scorer(self.models.vae, self.models.jigsaw, mixtures, ["bench"], layer=self.models.layer,
                            pre_activation=self.models.pre_activation, n_samples=samples, chunk_size=s.chunk_size,
                            seed=self.seed, detectors=passed, models={k: m.to(self.device) for k, m in models.items()}).to(self.device)
            scorer.on_predict_epoch_start()
            for i, lo in enumerate(range(0, len(x), s.throughput_batch)):
                sl = slice(lo, lo + s.throughput_batch)
                scorer.predict_step((x[sl].to(self.device), None, index[sl].to(self.device)), i)
            scorer.on_predict_epoch_end()
            costs = scorer.costs()
            seconds: dict[str, float] = {}
            scores = scorer.results["bench"]
            fit_detectors(fitted, {"val/bench": scores, "bench": scores}, "val/bench", seconds)
            for scheme, block in fitted_costs(fitted, seconds, 2 * len(x), costs).items():
                costs.setdefault(scheme, {}).update(block)
            return {f"{scheme}/{sid}": c for scheme, block in costs.items() for sid, c in block.items()}

        once()  # warm-up
        runs = [once() for _ in range(s.detector_repeats)]
        names = list(runs[0])
        per = {n: np.array([r[n] for r in runs]) for n in names}
        ref = per["APO/fevae"]
        entries = {n: {"median_s_per_image": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
                       "ratio_to_fevae_apo_median": float(np.median(v / ref)),
                       "ratio_to_fevae_apo_range": [float((v / ref).min()), float((v / ref).max())]} for n, v in per.items()}
        result = {"images": what, "n_images": len(x), "n_samples": samples, "chunk_size": s.chunk_size,
                  "regret_images": s.regret_images, "regret_steps": s.regret_steps, "repeats": s.detector_repeats,
                  "extra_models": model_source, "reference": "APO/fevae", "detectors": entries}
        rows = []
        for n, e in entries.items():
            lo, hi = e["ratio_to_fevae_apo_range"]
            rows.append(row("detectors", n, e["median_s_per_image"] * 1e3, "ms/img", e["ratio_to_fevae_apo_median"], "",
                            f"ratio = cost / APO p_FEVAE's, per repeat; median of {s.detector_repeats}; range "
                            f"{e['min'] * 1e3:.3g}-{e['max'] * 1e3:.3g} ms", (lo, hi)))
        return result, rows

    # ---------------------------------------------------------------- 4. peak memory
    @staticmethod
    def _worker_result(n_samples: int, proc: subprocess.Popen, cmd: list[str]) -> dict[str, Any]:
        stdout, stderr = proc.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith(MARKER)]
        if proc.returncode != 0 or not lines:
            tail = (stderr.strip().splitlines() or ["(no output)"])[-1]
            raise FevaeError(f"the peak-memory worker failed at S={n_samples} (exit {proc.returncode}): {tail}",
                             f"run it alone to see why: {' '.join(cmd)}")
        return json.loads(lines[-1][len(MARKER):])

    def peak_memory(self, worker_args: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        s = self.sizes
        x, what = eval_images(self.dm, s.memory_images)
        per_s: dict[str, dict[str, Any]] = {}
        with tempfile.TemporaryDirectory(prefix="fevae-bench-") as tmp:
            np.save(Path(tmp) / "images.npy", x.numpy(), allow_pickle=False)
            self.arrays.save(Path(tmp) / "mixture.npz")
            commands = {n_samples: [
                sys.executable, "-m", "benchmarks.memory", "--images", str(Path(tmp) / "images.npy"),
                "--mixture", str(Path(tmp) / "mixture.npz"), "--n-samples", str(n_samples),
                "--chunk-size", str(s.memory_chunk), "--batch-size", str(s.memory_batch), "--scheme", s.scheme,
                "--seed", str(self.seed), "--device", self.device.type, "--threads", str(torch.get_num_threads()),
                *worker_args] for n_samples in s.memory_samples}
            running: dict[int, subprocess.Popen] = {}
            try:
                for n_samples, cmd in commands.items():
                    log(f"peak memory: scoring {len(x)} images at S={n_samples} in a fresh process")
                    running[n_samples] = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                                          stderr=subprocess.PIPE, text=True)
                    if not s.memory_parallel:
                        per_s[str(n_samples)] = self._worker_result(n_samples, running[n_samples], cmd)
                for n_samples, proc in running.items():
                    if str(n_samples) not in per_s:
                        per_s[str(n_samples)] = self._worker_result(n_samples, proc, commands[n_samples])
            finally:  # a failed or interrupted measurement leaves no worker behind
                for proc in running.values():
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            per_s = {str(n): per_s[str(n)] for n in s.memory_samples}
        key = "device_peak_above_baseline_mb" if self.device.type == "cuda" else "host_peak_above_baseline_mb"
        lo, hi = str(min(s.memory_samples)), str(max(s.memory_samples))
        ratio = per_s[hi][key] / per_s[lo][key] if per_s[lo][key] > 0 else None
        result = {
            "images": what, "n_images": len(x), "scheme": s.scheme, "chunk_size": s.memory_chunk,
            "batch_size": s.memory_batch, "workers_in_parallel": s.memory_parallel, "measure": key,
            "method": per_s[lo].get("host_method"), "per_S": per_s,
            "ratio_peak_max_to_min_S": ratio, "S_ratio": int(hi) / int(lo), "target_ratio": MEMORY_TARGET,
            "meets_target": ratio is not None and ratio <= MEMORY_TARGET,
        }
        rows = []
        for n_samples, m in per_s.items():
            rows.append(row("peak_memory", f"score {len(x)} img, S={n_samples}, chunk {s.memory_chunk}", m[key], "MB",
                            m[key] / per_s[lo][key] if per_s[lo][key] > 0 else None,
                            f"<= {MEMORY_TARGET}x {'ok' if result['meets_target'] else 'MISSED'}" if n_samples == hi else "",
                            f"{m['seconds']:.1f} s, {m['images_per_s']:.0f} img/s; above the loaded baseline"))
        return result, rows


# ---------------------------------------------------------------------------- stages
def stages_section(path: Path | None, explicit: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Stage wall times from ``path`` (``--timings``, or the run's own ``timings.json`` if it has one)."""
    if path is None or (not explicit and not path.is_file()):
        reason = f"{path} does not exist" if path else "no trained run and no --timings"
        return ({"available": False, "reason": f"{reason}: stage times come from a finished run's timings.json"},
                [row("stages", "(no timings.json: pass --run or --timings)", None, "")])
    if not path.is_file():
        raise FevaeError(f"{path} does not exist", "pass --timings PATH of a finished run's timings.json")
    try:
        timings = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise FevaeError(f"cannot read {path}: {err}", "pass a timings.json written by `python -m fevae.train`") from err
    result = {"available": True, **stage_times(timings, str(path))}
    rows = [row("stages", name, sec, "s", None, "", f"{100 * result['fraction'][name]:.1f}% of the run")
            for name, sec in result["seconds"].items()]
    rows.append(row("stages", "total", result["total_seconds"], "s", None, "", result["format"]))
    return result, rows


# ---------------------------------------------------------------------------- table
def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0 or not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


def _fmt_ratio(r: dict[str, Any]) -> str:
    if r["ratio"] is None:
        return "-"
    spread_ = r.get("ratio_range")
    return f"{r['ratio']:.3f}x" + (f" [{spread_[0]:.3f}-{spread_[1]:.3f}]" if spread_ else "")


def _range_note(bounds: tuple[float, float] | list[float], repeats: int) -> str:
    return f"median of {repeats}; range {_fmt(float(bounds[0]))}-{_fmt(float(bounds[1]))}"


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("section", "measurement", "value", "unit", "ratio", "target", "note")
    body = [(r["section"], r["name"], _fmt(r["value"]), r["unit"], _fmt_ratio(r),
             r["target"] or "-", r["note"]) for r in rows]
    widths = [max(len(str(line[i])) for line in [header, *body]) for i in range(len(header))]
    align = ["<", "<", ">", "<", ">", "<", "<"]
    fmt = lambda line: "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(line, align, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, body)])


# ---------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--run", type=Path, default=None,
                   help="trained run folder (default: newest finished outputs/train/<experiment>/<time>/, else untrained models)")
    p.add_argument("--untrained", action="store_true", help="use freshly initialised models even if a trained run exists")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="experiment for the untrained models and the run search")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                   help="config override (Hydra syntax; repeatable), e.g. --override data.val_size=16")
    p.add_argument("--timings", type=Path, default=None, help="timings.json for the stage times (default: the run's)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="tiny sizes: the whole bench in well under a minute")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, i.e. OMP_NUM_THREADS or all cores)")
    p.add_argument("--seed", type=int, default=None, help="noise/fit seed (default: the config's seed)")
    p.add_argument("--memory-samples", type=int, nargs="+", default=None, metavar="S",
                   help=f"S values of the peak-memory measurement (default {FULL.memory_samples}, quick {QUICK.memory_samples})")
    p.add_argument("--memory-images", type=int, default=None, help=f"images scored per S (default {FULL.memory_images})")
    p.add_argument("--sections", nargs="+", choices=SECTIONS + OPTIONAL_SECTIONS, default=list(SECTIONS), metavar="NAME",
                   help=f"measure only these sections (default: all of {', '.join(SECTIONS)}; also {', '.join(OPTIONAL_SECTIONS)})")
    return p.parse_args(argv)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    sizes = QUICK if args.quick else FULL
    if args.memory_samples:
        if len(set(args.memory_samples)) < 2 or min(args.memory_samples) < 1:
            raise FevaeError(f"--memory-samples {args.memory_samples} needs two or more distinct S >= 1",
                             "e.g. --memory-samples 10 30")
        sizes = dataclasses.replace(sizes, memory_samples=tuple(sorted(set(args.memory_samples))))
    if args.memory_images:
        sizes = dataclasses.replace(sizes, memory_images=args.memory_images)
    machine = machine_info(device)

    run_dir = None
    if args.run is not None and not args.untrained:
        if not has_trained_models(args.run):
            raise FevaeError(f"--run {args.run} is not a finished run "
                             "(needs .hydra/config.yaml, checkpoints/{vae,jigsaw}, mixture.npz)",
                             "pass a folder written by `python -m fevae.train`, or --untrained")
        run_dir = args.run
    elif not args.untrained:
        run_dir = find_default_run(args.experiment)
    log(f"models: {run_dir or f'untrained (+experiment={args.experiment})'}; device {device}, {torch.get_num_threads()} threads")
    models = load_models(run_dir, experiment=args.experiment, overrides=args.override, seed=args.seed).to(device)
    seed = int(models.cfg.seed if args.seed is None else args.seed)
    dm = make_data(models.cfg)

    sections: dict[str, Any] = {}
    section_seconds: dict[str, float] = {}
    if models.mixture is not None:
        arrays = models.mixture
        mixture_info = {"source": "the run's mixture.npz", **arrays.summary()}
    else:
        log(f"fitting the layer-{models.layer} mixture on {sizes.fit_n} training images (untrained Jigsaw)")
        start = time.perf_counter()
        feats = extract_features(models.features_fn(), train_images(dm, sizes.fit_n, seed), device)
        arrays = fit_bench_mixture(feats, models.cfg.fe, seed, sizes.fit_max_iter)
        mixture_info = {"source": f"fitted here on {len(feats)} training images", "fit_seconds": time.perf_counter() - start,
                        **arrays.summary()}
    b = Bench(models, dm, arrays, sizes, device, seed)
    worker_args = ["--run", str(run_dir)] if run_dir else ["--experiment", args.experiment]
    for override in args.override:
        worker_args += ["--override", override]

    rows: list[dict[str, Any]] = []
    steps: list[tuple[str, Callable[[], tuple[dict[str, Any], list[dict[str, Any]]]]]] = [
        ("throughput", b.throughput),
        ("mixture", b.mixture_vs_sklearn),
        ("fits", b.fits),
        ("baselines", b.baselines),
        ("detectors", b.detectors),
        ("peak_memory", lambda: b.peak_memory(worker_args)),
        ("training", lambda: training_section(models.cfg, train_images(dm, int(models.cfg.budget.vae.batch_size), seed),
                                              train_images(dm, int(models.cfg.budget.jigsaw.batch_size), seed),
                                              sizes.training_vae_steps, sizes.repeats, row)),
        ("compile", lambda: compile_section(models.cfg, train_images(dm, int(models.cfg.budget.vae.batch_size), seed),
                                            sizes.training_vae_steps, sizes.repeats, row)),
        ("api", lambda: api_section(run_dir, sizes.repeats, row, spread, paired_ratio, seed)),
        ("stages", lambda: stages_section(args.timings or (run_dir / "timings.json" if run_dir else None), args.timings is not None)),
    ]
    for name, step in steps:
        if name not in args.sections:
            continue
        log(f"{name} ...")
        start = time.perf_counter()
        sections[name], section_rows = step()
        section_seconds[name] = time.perf_counter() - start
        rows += section_rows
        log(f"{name}: {section_seconds[name]:.1f} s")

    machine["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "machine": machine,
        "models": {"source": models.source, "run_dir": str(run_dir) if run_dir else None, "experiment": models.cfg.experiment_name,
                   "likelihood": models.cfg.model.vae.likelihood.name, "fe_layer": models.layer,
                   "fe_pre_activation": models.pre_activation, "mixture": mixture_info, "overrides": args.override},
        "settings": {"quick": args.quick, "seed": seed, **dataclasses.asdict(sizes)},
        **sections,
        "rows": rows,
        "section_seconds": section_seconds,
        "wall_seconds": time.perf_counter() - started,
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        result = bench(args)
        write_json_atomic(args.out, result)
    except FevaeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(FevaeError.exit_code)
    m = result["machine"]
    print(f"fevae bench: {m['cpu']} ({m['cpu_cores']} cores, {m['torch_threads']} torch threads), device {m['device']}, "
          f"torch {m['torch']}, {m['date']}; models: {result['models']['source']}"
          + (f" ({result['models']['run_dir']})" if result["models"]["run_dir"] else "")
          + (" [quick]" if args.quick else ""))
    print(format_table(result["rows"]))
    print(f"wall time {result['wall_seconds']:.1f} s; written to {args.out}")


if __name__ == "__main__":
    main()
