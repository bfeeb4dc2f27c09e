"""The library behind ``python -m fevae.convergence`` (:mod:`fevae.convergence`: its command line, whose docstring
says what it reads and writes)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from omegaconf import DictConfig, open_dict

from fevae.data.datamodule import split_part
from fevae.errors import FevaeError
from fevae.evaluation.driver import Scoring, make_scorer, predict_trainer
from fevae.evaluation.settings import SCHEMES
from fevae.features.density import TorchMixture
from fevae.metrics.bootstrap import Resampler
from fevae.metrics.ood import compute_split_metrics, parse_score_name, write_json_atomic
from fevae.pipeline.runs import load_run
from fevae.pipeline.stages import make_datamodule
from fevae.utils.io import atomic_open

log = logging.getLogger("fevae.convergence")

#: the score and OOD set whose validation AUROC picks S
RULE_SET, RULE_SCORE = "mnist", "fevae"


def s_curve(cfg: DictConfig, vae, jigsaw, mixtures: dict[int, TorchMixture], loaders: dict[str, Any], grid: list[int]) -> tuple[list[dict], dict]:
    """Rows of the S curve and the per-S scores' metrics (see the module doc)."""
    top = max(grid)
    module = make_scorer(cfg, vae, jigsaw, mixtures, loaders, keep_samples=True, n_samples=top)
    trainer = predict_trainer(cfg)
    trainer.predict(module, dataloaders=list(loaders.values()), return_predictions=False)
    samples, device = module.results, trainer.strategy.root_device  # the mixture densities run there too
    boot = cfg.eval.get("bootstrap") or {}
    resampler = Resampler(boot.get("n_resamples", 1000), boot.get("level", 0.95), cfg.seed)
    rows = []
    for s in grid:
        scorer = make_scorer(cfg, vae, jigsaw, mixtures, loaders, n_samples=s).to(device)
        scored = Scoring(scorer.scores_from_samples(samples))  # moves the mcse__ outputs to .mc_se
        errors = scored.mc_se
        parts: dict[str, dict] = {"test": {}, "val": {}}
        for key, arrays in scored.scores.items():
            name, part = split_part(key)
            parts[part][name] = arrays
        metrics = compute_split_metrics(parts["test"], parts["val"], resampler=resampler)
        for part, block in (("test", metrics["ood"]), ("val", metrics.get("ood_val", {}))):
            for ood_set, per in block.items():
                for scheme, scores_of in per.items():
                    for sid, m in scores_of.items():
                        key = next(k for k in parts[part][metrics["in_distribution"]] if parse_score_name(k) == (scheme, sid))
                        se_key = ood_set if part == "test" else f"val/{ood_set}"
                        rows.append({"S": s, "part": part, "ood_set": ood_set, "scheme": scheme, "score": sid,
                                     "auroc": m["auroc"], "auroc_lo": m["auroc_ci"][0], "auroc_hi": m["auroc_ci"][1],
                                     "median_mcse_ood": float(np.median(errors[se_key][key])) if key in errors.get(se_key, {}) else float("nan")})
    return rows, {"grid": grid}


def choose_s(rows: list[dict], tolerance: float) -> dict[str, Any]:
    """Per scheme, the smallest S whose validation AUROC (RULE_SET, RULE_SCORE) is within ``tolerance`` of the largest S's."""
    chosen = {}
    for scheme in SCHEMES:
        curve = {r["S"]: r["auroc"] for r in rows
                 if r["part"] == "val" and r["scheme"] == scheme and r["ood_set"] == RULE_SET and r["score"] == RULE_SCORE}
        if not curve:
            continue
        top = curve[max(curve)]
        chosen[scheme] = {"S": min(s for s, a in curve.items() if a >= top - tolerance),
                          "val_auroc_at_max_S": top, "val_auroc": curve}
    return {"rule": f"smallest S whose validation AUROC of log p_{RULE_SCORE.upper()} on {RULE_SET} is within "
                    f"{tolerance} of its value at the largest S", "tolerance": tolerance, "chosen": chosen}


def plot_s_curve(rows: list[dict], path_stem: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame(rows)
    frame = frame[frame["score"].isin(["vae", "fe", "fevae"])]
    grid = sns.relplot(data=frame, x="S", y="auroc", hue="score", style="part", col="scheme", row="ood_set",
                       kind="line", markers=True, height=3.2, aspect=1.25, facet_kws={"sharey": False})
    for ax in grid.axes.flat:
        ax.set_xscale("log")
        ax.set_xticks(sorted(frame["S"].unique()))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    grid.set_axis_labels("S (samples per estimate)", "AUROC")
    grid.figure.suptitle("AUROC vs S on one trained model (validation and test parts)", y=1.02)
    paths = []
    for suffix in (".png", ".pdf"):
        path = path_stem.with_suffix(suffix)
        grid.figure.savefig(path, dpi=120, bbox_inches="tight")
        paths.append(path)
    plt.close(grid.figure)
    return paths


def convergence(run_dir: str | Path, overrides: list[str], out_dir: Path, grid: list[int], tolerance: float,
                composed: DictConfig | None = None) -> dict[str, Any]:
    if not grid or any(not isinstance(s, int) or isinstance(s, bool) or s < 2 for s in grid):
        raise FevaeError(f"s_grid={grid} is invalid", "give integers ≥ 2, e.g. s_grid=[10,20,50,100,200]")
    grid = sorted(set(grid))
    run = load_run(run_dir, overrides, composed)
    cfg = run.cfg
    with open_dict(cfg):
        cfg.eval.detectors = []
        cfg.eval.n_samples = max(grid)
    L.seed_everything(cfg.seed, workers=True)
    data = make_datamodule(cfg, cfg.budget.jigsaw.batch_size)
    mixtures = {int(cfg.fe.layer): TorchMixture(run.mixture)}
    rows, _ = s_curve(cfg, run.vae, run.jigsaw, mixtures, data.eval_loaders(), grid)
    choice = choose_s(rows, tolerance)
    out_dir.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    with atomic_open(out_dir / "s_curve.csv", "w", newline="") as handle:
        pd.DataFrame(rows).to_csv(handle, index=False)
    write_json_atomic(out_dir / "s_curve.json", {**choice, "source_run": str(run_dir), "grid": grid})
    plot_s_curve(rows, out_dir / "s_curve")
    for scheme, c in choice["chosen"].items():
        log.info("%s: S=%d (validation AUROC %.4f; %.4f at S=%d)", scheme, c["S"], c["val_auroc"][c["S"]], c["val_auroc_at_max_S"], max(grid))
    log.info("S curve written to %s", out_dir)
    return choice


