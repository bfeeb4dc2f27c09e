"""``make bench``'s ``training`` section: what training the run's models costs, and what side by side saves.

Three measurements, each repeated in interleaved rounds (the order flips each round), reported as the
median with its min-max and every ratio as the median of the per-round ratios with their min-max:

1. images/s of one training step loop per model (the VAE, whose architecture the likelihood ratio's
   background VAE shares, and the Jigsaw) on the run's batches and optimiser: plain memory layout vs
   channels-last (``model.vae.channels_last``), on this process's torch threads;
2. the run in miniature: VAE, background VAE and Jigsaw trained one after another on all cores (the
   code before issue #28) vs side by side (:mod:`fevae.side_by_side`, the cores divided among them),
   in the proportion a default run trains them (the Jigsaw takes 12.5 steps per VAE step: 100 epochs vs
   8 of the same 430 batches); ratio = one after another / side by side;
3. the peak memory (proportional set size of this process and its children, sampled every 0.1 s) of
   each of the two.

The step loops are the modules' own losses and optimisers without Lightning's loop (whose per-step
overhead, ~2.8 ms here, comes on top in a real run and favours side by side: it is single-threaded).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fevae.models.jigsaw import shuffle_tiles
from fevae.side_by_side import TrainJob, plan, train_jobs
from fevae.utils.parallel import usable_cores
from fevae.validation import build

#: Jigsaw steps per VAE step in a default run: 100 epochs vs 8, of the same number of batches
JIGSAW_STEPS_PER_VAE_STEP = 12.5


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux ``/proc``)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def tree_pss_kb(root: int) -> int:
    """Proportional set size (kB) of ``root`` and all its descendants: shared pages split among sharers."""
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
        todo += children(pid)
    return total


class PeakMemory:
    """``with PeakMemory(pid) as m: ...`` samples :func:`tree_pss_kb` every ``every_s``; ``m.peak_mb`` after."""

    def __init__(self, pid: int, every_s: float = 0.1):
        self.pid, self.every_s, self.peak_kb = pid, every_s, 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kb = max(self.peak_kb, tree_pss_kb(self.pid))
            self._stop.wait(self.every_s)

    def __enter__(self) -> "PeakMemory":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def step_loop(cfg: DictConfig, name: str, x: torch.Tensor, channels_last: bool | None = None,
              compiled: bool = False) -> Callable[[int], None]:
    """``run(n)``: ``n`` training steps of ``model.<name>`` (fresh from the config, seeded) on batch ``x``; with
    ``compiled`` its loss (forward) goes through ``torch.compile`` (compiled by the warm-up step, here)."""
    node = OmegaConf.to_container(cfg.model[name if name != "background" else "vae"], resolve=True)
    if channels_last is not None:
        node["channels_last"] = channels_last
    torch.manual_seed(0)
    module = build(f"model.{'jigsaw' if name == 'jigsaw' else 'vae'}", node).train()
    optimizer = module.configure_optimizers()
    if name == "jigsaw":
        def loss() -> torch.Tensor:
            labels = torch.randint(len(module.permutations), (x.shape[0],))
            tiles = module.tiler.tiles(x, jitter=True)
            return torch.nn.functional.cross_entropy(module(shuffle_tiles(tiles, module.permutations[labels])), labels)
    else:
        if node.get("channels_last", False):
            module.to(memory_format=torch.channels_last)
        xx = x.contiguous(memory_format=torch.channels_last) if node.get("channels_last", False) else x

        def loss() -> torch.Tensor:
            return -module.elbo(xx)["elbo"].mean()

    forward = torch.compile(loss) if compiled else loss

    def run(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad()
            forward().backward()
            optimizer.step()

    run(1)  # warm-up: oneDNN's kernels are chosen on the first call
    return run


def interleaved(loops: dict[str, Callable[[int], None]], steps: dict[str, int], rounds: int) -> dict[str, list[float]]:
    """Seconds of ``loops[k](steps[k])`` per round, the loops run in turn (their order flips each round)."""
    seconds: dict[str, list[float]] = {k: [] for k in loops}
    for r in range(rounds):
        for key in (list(loops) if r % 2 == 0 else list(reversed(loops))):
            start = time.perf_counter()
            loops[key](steps[key])
            seconds[key].append(time.perf_counter() - start)
    return seconds


def _spread(values: list[float]) -> dict[str, Any]:
    return {"median": float(np.median(values)), "range": [float(min(values)), float(max(values))], "values": values}


def _ratio(num: list[float], den: list[float]) -> dict[str, Any]:
    r = [a / b for a, b in zip(num, den)]
    return {"ratio": float(np.median(r)), "ratio_range": [float(min(r)), float(max(r))], "values": r}


def training_section(cfg: DictConfig, x_vae: torch.Tensor, x_jigsaw: torch.Tensor, vae_steps: int, rounds: int,
                     row: Callable[..., dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The section's numbers and table rows (``row`` builds one, as in :mod:`benchmarks.run`)."""
    jigsaw_steps = int(round(JIGSAW_STEPS_PER_VAE_STEP * vae_steps))
    threads = torch.get_num_threads()
    # 1. per model: plain vs channels-last (VAE), images/s on this process's threads
    loops = {"vae plain": step_loop(cfg, "vae", x_vae, False), "vae channels-last": step_loop(cfg, "vae", x_vae, True),
             "jigsaw": step_loop(cfg, "jigsaw", x_jigsaw)}
    steps = {"vae plain": vae_steps, "vae channels-last": vae_steps, "jigsaw": jigsaw_steps}
    batch = {"vae plain": len(x_vae), "vae channels-last": len(x_vae), "jigsaw": len(x_jigsaw)}
    seconds = interleaved(loops, steps, rounds)
    per_model = {k: {"images_per_s": _spread([steps[k] * batch[k] / s for s in v]), "seconds": _spread(v)} for k, v in seconds.items()}
    layout = _ratio(seconds["vae plain"], seconds["vae channels-last"])

    # 2. + 3. the three models one after another (all threads) vs side by side (the planned threads each)
    names = ("vae", "background", "jigsaw")
    side, per_model_threads = plan(cfg.get("training"), OmegaConf.create({"accelerator": "cpu", "devices": 1}), len(names))
    per_model_threads = per_model_threads or 1
    miniature = {n: step_loop(cfg, n, x_jigsaw if n == "jigsaw" else x_vae) for n in names}
    n_steps = {"vae": vae_steps, "background": vae_steps, "jigsaw": jigsaw_steps}
    jobs = [TrainJob(n, (lambda n=n: miniature[n](n_steps[n]) or {})) for n in names]
    wall: dict[str, list[float]] = {"one after another": [], "side by side": []}
    peak: dict[str, list[float]] = {"one after another": [], "side by side": []}
    for r in range(rounds):
        order = ["one after another", "side by side"] if r % 2 == 0 else ["side by side", "one after another"]
        for key in order:
            start = time.perf_counter()
            with PeakMemory(os.getpid()) as memory:
                if key == "side by side":
                    train_jobs(jobs, True, per_model_threads)
                else:
                    train_jobs(jobs, False, threads)
            wall[key].append(time.perf_counter() - start)
            peak[key].append(memory.peak_mb)
    speedup = _ratio(wall["one after another"], wall["side by side"])
    result = {
        "threads": threads, "cores": usable_cores(), "side_by_side_threads_per_model": per_model_threads,
        "default_plan_side_by_side": side, "vae_steps": vae_steps, "jigsaw_steps": jigsaw_steps, "rounds": rounds,
        "vae_batch": len(x_vae), "jigsaw_batch": len(x_jigsaw),
        "per_model": per_model, "channels_last_speedup": layout,
        "wall_seconds": {k: _spread(v) for k, v in wall.items()}, "side_by_side_speedup": speedup,
        "peak_memory_mb": {k: _spread(v) for k, v in peak.items()},
    }
    rows = [row("training", f"{k} images/s", v["images_per_s"]["median"], "img/s", None, "",
                f"{steps[k]} steps of {batch[k]} on {threads} threads; range {v['images_per_s']['range'][0]:.0f}-{v['images_per_s']['range'][1]:.0f}")
            for k, v in per_model.items()]
    rows.append(row("training", "VAE step: plain / channels-last", layout["ratio"], "", layout["ratio"], "> 1",
                    f"median of {rounds} rounds", tuple(layout["ratio_range"])))
    for key in wall:
        rows.append(row("training", f"3 models {key}", float(np.median(wall[key])), "s", None, "",
                        f"peak memory {np.median(peak[key]):.0f} MB (PSS, process + children)"
                        + (f"; {per_model_threads} thread(s) each" if key == "side by side" else f"; {threads} threads")))
    rows.append(row("training", "3 models: one after another / side by side", speedup["ratio"], "", speedup["ratio"], "> 1",
                    f"VAE + background VAE {vae_steps} steps each, Jigsaw {jigsaw_steps}", tuple(speedup["ratio_range"])))
    return result, rows


def compile_section(cfg: DictConfig, x_vae: torch.Tensor, vae_steps: int, rounds: int,
                    row: Callable[..., dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``--sections compile`` (not in the default ``make bench``: compiling takes ~20 s): issue #28's question
    whether ``torch.compile`` speeds up the VAE's training step on this CPU. The channels-last step loop eager vs
    with its loss compiled (inductor; the backward is compiled with it), interleaved rounds; the compile time is the
    compiled loop's first step. A ratio eager / compiled near 1 means compiling buys nothing here."""
    start = time.perf_counter()
    loops = {"compiled": step_loop(cfg, "vae", x_vae, True, compiled=True)}
    compile_s = time.perf_counter() - start
    loops = {"eager": step_loop(cfg, "vae", x_vae, True), **loops}
    seconds = interleaved(loops, {k: vae_steps for k in loops}, rounds)
    ratio = _ratio(seconds["eager"], seconds["compiled"])
    images = {k: _spread([vae_steps * len(x_vae) / t for t in v]) for k, v in seconds.items()}
    result = {"compile_seconds": compile_s, "vae_steps": vae_steps, "rounds": rounds, "threads": torch.get_num_threads(),
              "images_per_s": images, "eager_over_compiled": ratio}
    rows = [row("compile", "VAE step compiled: compile time (first step)", compile_s, "s")]
    rows += [row("compile", f"VAE step {k} images/s", v["median"], "img/s", None, "", f"range {v['range'][0]:.0f}-{v['range'][1]:.0f}")
             for k, v in images.items()]
    rows.append(row("compile", "VAE step: eager / compiled", ratio["ratio"], "", ratio["ratio"], "> 1",
                    f"median of {rounds} rounds of {vae_steps} steps", tuple(ratio["ratio_range"])))
    return result, rows
