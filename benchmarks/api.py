"""``make bench``'s ``api`` section: what ``fevae.load_run(run).score(images)`` costs per call (issue #26).

``load_run`` once (timed), the first ``score`` call (timed: it builds what later calls reuse), then rounds
of ``score`` on 4 images and on 64 images, interleaved (the order flips each round): the 4-image call's
median with its min-max is the per-call cost a user scoring a few images at a time pays (target < 0.5 s),
and the per-round ratio 64-image / 4-image time says how much of it is fixed (a ratio near 1: almost all).
Every detector of the run's ``eval.detectors`` is scored, likelihood regret included: its ``eval.regret.steps``
sequential Adam steps on the encoder copies are most of a small call's cost (they are the detector's own work,
the same number of steps for 1 image as for 4), so a third call per round scores the 4 images with every
detector but ``likelihood_regret`` (``score(x, ["eval.detectors=[...]"])``): what the rest of the call costs; and
likelihood regret alone on the 4 images by its two paths (stacked encoder copies, the default, and ``vmap``).
Needs a trained run (``--run`` or the newest default run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: images per call: a user's few images, and a larger call to separate fixed from per-image cost
FEW, MANY = 4, 64
#: the detector whose sequential encoder steps dominate a small call
REGRET = "likelihood_regret"


def api_section(run_dir: Path | None, repeats: int, row: Callable[..., dict[str, Any]], spread: Callable, paired_ratio: Callable,
                seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    if run_dir is None:
        return {"available": False, "reason": "no trained run"}, [row("api", "(no trained run: pass --run)", None, "")]
    import fevae

    start = time.perf_counter()
    run = fevae.load_run(run_dir)
    load_s = time.perf_counter() - start
    images = _images(run, seed)
    start = time.perf_counter()
    run.score(images[:FEW])
    first_s = time.perf_counter() - start
    no_regret = [f"eval.detectors=[{','.join(d for d in run.config.eval.detectors if d != REGRET)}]"]
    calls: dict[Any, Callable[[], Any]] = {key: (lambda n=n, o=o: run.score(images[:n], o))
                                           for key, (n, o) in {FEW: (FEW, []), MANY: (MANY, []), "no_regret": (FEW, no_regret)}.items()}
    calls.update(_regret_calls(run, images[:FEW]))
    run.score(images[:FEW], no_regret)  # its first call composes the overridden config once
    times: dict[Any, list[float]] = {key: [] for key in calls}
    for k in range(repeats):
        for key in (list(calls) if k % 2 == 0 else list(calls)[::-1]):
            start = time.perf_counter()
            calls[key]()
            times[key].append(time.perf_counter() - start)
    few, many, ratio = spread(times[FEW]), spread(times[MANY]), paired_ratio(times[MANY], times[FEW])
    rest = spread(times["no_regret"])
    paths = paired_ratio(times["regret_stacked"], times["regret_vmap"])
    result = {"load_run_s": load_s, "first_score_s": first_s, f"score_{FEW}_s": few, f"score_{MANY}_s": many,
              f"score_{FEW}_without_regret_s": rest, f"ratio_{MANY}_to_{FEW}": ratio, "repeats": repeats,
              f"regret_{FEW}_stacked_s": spread(times["regret_stacked"]), f"regret_{FEW}_vmap_s": spread(times["regret_vmap"]),
              "ratio_regret_stacked_to_vmap": paths}
    rows = [row("api", "load_run", load_s, "s"),
            row("api", f"first score() of {FEW} images", first_s, "s"),
            row("api", f"score() of {FEW} images, later calls", few["median"], "s", None, "< 0.5 s",
                f"min-max {few['min']:.3f}-{few['max']:.3f} s over {repeats} rounds"),
            row("api", f"score() of {FEW} images, every detector but {REGRET}", rest["median"], "s", None, "< 0.5 s",
                f"min-max {rest['min']:.3f}-{rest['max']:.3f} s over {repeats} rounds"),
            row("api", f"score() of {MANY} images / of {FEW}", many["median"], "s", ratio["median"], "",
                "fixed cost share: a ratio near 1 means the call is mostly fixed cost", (ratio["min"], ratio["max"])),
            row("api", f"{REGRET} of {FEW} images: stacked copies / vmap", result[f"regret_{FEW}_stacked_s"]["median"], "s",
                paths["median"], "", "likelihood_regret_score(stacked=True) over stacked=False, the run's eval.regret settings",
                (paths["min"], paths["max"]))]
    return result, rows


def _regret_calls(run: Any, images: np.ndarray) -> dict[str, Callable[[], Any]]:
    """Likelihood regret alone on ``images`` by its two paths (:func:`fevae.scoring.baselines.likelihood_regret_score`'s
    ``stacked``), with the run's ``eval.regret`` steps, learning rate and samples."""
    import torch

    from fevae.inputs import to_model_input
    from fevae.scoring.baselines import likelihood_regret_score

    x = to_model_input(images, run.config.data.preprocess)  # as score() gives the model the images
    settings = run.config.eval.regret
    index = torch.arange(len(images))

    def call(stacked: bool) -> Callable[[], Any]:
        return lambda: likelihood_regret_score(x, index, vae=run.trained.vae, steps=int(settings.steps), lr=float(settings.lr),
                                               n_samples=int(settings.n_samples), stacked=stacked)

    return {"regret_stacked": call(True), "regret_vmap": call(False)}


def _images(run: Any, seed: int) -> np.ndarray:
    """``MANY`` random images of the run's shape (uint8, [N,H,W] or [N,H,W,C])."""
    from fevae.inputs import image_shape_of

    c, h, w = image_shape_of(run.config.data)
    shape = (MANY, h, w) if c == 1 else (MANY, h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
