"""Peak memory of scoring a set of images with p_FEVAE at one S, in a fresh process.

``python -m benchmarks.memory --images X.npy --mixture M.npz --n-samples S [...]`` loads the models
(a run's, or freshly initialised ones), the images (``.npy`` float32 ``[N, 1, 28, 28]``) and the
mixture (``.npz`` of :class:`fevae.features.mixture.MixtureArrays`), then scores every image with
:func:`fevae.scoring.estimators.score_batch` (vae, fe, fevae) and prints one JSON line:

* CPU: peak resident memory above the resident memory after loading (``VmHWM`` reset through
  ``/proc/self/clear_refs`` after loading and ``malloc_trim``; if the reset is refused, the peak
  above the loading peak, a lower bound);
* CUDA: ``torch.cuda.max_memory_allocated`` above what was allocated after loading (plus the host
  figure).

Run by :mod:`benchmarks.run` once per S, so no peak of one S (or of the benchmark itself) hides
another's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script (`python benchmarks/run.py`): make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (
    DEFAULT_EXPERIMENT,
    load_models,
    peak_rss_mb,
    release_free_memory,
    reset_peak_rss,
    resolve_device,
    rss_mb,
    sync,
)
from fevae.errors import FevaeError
from fevae.features.mixture import MixtureArrays
from fevae.features.density import TorchMixture
from fevae.scoring.estimators import score_batch

MARKER = "BENCH_MEMORY "


def measure(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    models = load_models(Path(args.run) if args.run else None, experiment=args.experiment,
                         overrides=args.override, seed=args.seed).to(device)
    mixture = TorchMixture(MixtureArrays.load(args.mixture)).to(device)
    features = models.features_fn()
    images = torch.from_numpy(np.load(args.images, allow_pickle=False))
    index = torch.arange(len(images))
    kwargs = dict(decode=models.vae.decode, log_likelihood=models.vae.log_likelihood, phi=models.vae.phi,
                  encode=models.vae.encode, features=features, mixture=mixture, scheme=args.scheme,
                  n_samples=args.n_samples, chunk_size=args.chunk_size, seed=args.seed)

    release_free_memory()
    base_rss = rss_mb()
    reset = reset_peak_rss()
    base_peak = peak_rss_mb()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    finite = 0
    for lo in range(0, len(images), args.batch_size):
        out = score_batch(images[lo : lo + args.batch_size].to(device), index[lo : lo + args.batch_size], **kwargs)
        finite += int(torch.isfinite(out["fevae"]).sum())
    sync(device)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    result = {
        "n_samples": args.n_samples,
        "n_images": len(images),
        "seconds": seconds,
        "images_per_s": len(images) / seconds,
        "finite_fraction": finite / len(images),
        "host_baseline_mb": base_rss,
        "host_peak_mb": peak,
        "host_peak_above_baseline_mb": (peak - base_rss) if reset else max(peak - base_peak, 0.0),
        "host_method": "VmHWM reset after loading" if reset else "ru_maxrss above the loading peak (lower bound)",
    }
    if device.type == "cuda":
        result["device_peak_above_baseline_mb"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / (1024.0 * 1024.0)
        result["device_baseline_mb"] = base_cuda / (1024.0 * 1024.0)
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.splitlines()[0])
    p.add_argument("--images", required=True, help=".npy float32 [N, 1, 28, 28]")
    p.add_argument("--mixture", required=True, help=".npz written by MixtureArrays.save")
    p.add_argument("--run", default=None, help="trained run folder (default: freshly initialised models)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--n-samples", type=int, required=True)
    p.add_argument("--chunk-size", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--scheme", default="APO", choices=["PR", "APO"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = measure(args)
    except FevaeError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(FevaeError.exit_code)
    print(MARKER + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
