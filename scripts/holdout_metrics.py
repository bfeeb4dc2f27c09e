"""Score new OOD sets through finished runs, without re-scoring the runs: metrics.json per run for scripts/detector_table.py.

usage: python scripts/holdout_metrics.py OUT RUN [RUN ...] --sets DIR --names a,b,c [--val 297 --test 1500]
       python scripts/holdout_metrics.py OUT RUN [RUN ...] --saved

``--saved`` scores nothing: it re-computes the metrics of every set a run scored from the run's saved scores
(``scores/<set>.npz``, ``scores/val/<id>.npz``) with this version's code, the fitted detectors re-fitted as below
(e.g. to give runs made before 2026-12-07 the cross-conformal FPR); likelihood regret's columns are kept as saved.

For run i, writes OUT/i/metrics.json (``ood``: the test parts, with AUROC, FPR95, AUPR, their bootstrap intervals as
the run's ``eval.bootstrap`` and the conformal FPR/TPR at 5%) for the sets ``DIR/<name>.npy`` (uint8 [N, 28, 28], e.g. scripts/holdout_sets.py's),
each split as a run splits an evaluation set (``fevae.data.datamodule.split_eval_indices`` with the run's
``data.eval_split.seed``; ``--val`` images held back unread, ``--test`` images scored). What it reads of the run: the
in-distribution validation and test scores it already wrote (``scores/val/<id>.npz``, ``scores/<id>.npz``); the new
images are scored through the run as the API scores images (``fevae.pipeline.score.score_loaded``; likelihood regret
left out: it is subset-scored and no candidate of the rule). The fitted detectors are re-fitted on the validation
scores (the same state as the run's ``detectors.npz``: their in-distribution test columns are checked to match the run's)
and give cross-conformal p-values (``fevae.detectors.base.CrossFit``), as a run made with this version would.
Then: ``python scripts/detector_table.py OUT/0 OUT/1 OUT/2``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fevae.data.datamodule import split_eval_indices
from fevae.data.evalsets import id_set_name
from fevae.detectors import fit_detectors
from fevae.evaluation.settings import fitted_detectors
from fevae.metrics.bootstrap import Resampler
from fevae.metrics.ood import compute_metrics
from fevae.pipeline.runs import load_run, run_config
from fevae.pipeline.score import score_loaded
from fevae.utils.io import INDEX_PREFIX, load_scores, write_json_atomic

#: detectors whose columns are not re-made here (subset-scored, not a rule candidate)
LEFT_OUT = ("likelihood_regret",)


def model_columns(scores: dict[str, np.ndarray], fitted_outputs: set[str]) -> dict[str, np.ndarray]:
    """The model pass's columns of a set: no fitted detector's, no left-out detector's, no dataset index."""
    n = max(len(v) for v in scores.values())
    return {c: np.asarray(v) for c, v in scores.items() if c not in fitted_outputs and len(v) == n
            and not c.startswith(INDEX_PREFIX) and not any(c.startswith(d) for d in LEFT_OUT)}


def run_metrics(run_dir: Path, sets: dict[str, np.ndarray], val: int, test: int, saved_sets: bool = False) -> dict:
    """``sets`` scored through ``run_dir`` (their test parts), or with ``saved_sets`` (and no ``sets``) every set the run
    scored, read from its score files; then the fitted detectors are re-fitted and every metric computed."""
    if saved_sets and sets:
        raise ValueError("saved_sets re-computes the run's own sets: pass no new ones")
    run = None if saved_sets else load_run(run_dir, ["eval.regret.subset=0"])
    cfg = run_config(run_dir) if saved_sets else run.cfg
    id_name = id_set_name(cfg.data)
    fitted = fitted_detectors(cfg)
    outputs = {c for d in fitted for c in d.outputs()}

    def columns(s: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """saved_sets: every column as the run saved it, less the fitted detectors' (re-made below); else the model pass's."""
        return {c: v for c, v in s.items() if c not in outputs} if saved_sets else model_columns(s, outputs)

    saved = load_scores(run_dir / "scores" / f"{id_name}.npz")
    scores = {f"val/{id_name}": columns(load_scores(run_dir / "scores" / "val" / f"{id_name}.npz")), id_name: columns(saved)}
    if saved_sets:
        for path in sorted((run_dir / "scores").glob("*.npz")):
            if path.stem != id_name:
                scores[path.stem] = columns(load_scores(path))
    for name, images in sets.items():
        _, test_idx = split_eval_indices(len(images), val, test, int(cfg.data.eval_split.seed))
        scores[name] = model_columns(score_loaded(run, images[test_idx], stream_name=name), outputs)
    p_values: dict[str, dict[str, np.ndarray]] = {}
    scores = fit_detectors(fitted, scores, f"val/{id_name}", p_values=p_values)
    for c in outputs & set(saved):  # the refit is the run's fit: its in-distribution test columns are the run's
        np.testing.assert_allclose(scores[id_name][c], saved[c], rtol=1e-9, atol=1e-9, err_msg=f"{run_dir}: {c} differs from the run's")
    test_parts = {k: v for k, v in scores.items() if not k.startswith("val/")}
    boot = cfg.eval.get("bootstrap") or {}
    resampler = Resampler(int(boot.get("n_resamples", 0)), float(boot.get("level", 0.95)), int(cfg.seed))  # as the run's
    metrics = compute_metrics(test_parts, id_name, resampler, calibration=scores[f"val/{id_name}"], p_values=p_values)
    if saved_sets:
        return {**metrics, "source": {"run": str(run_dir), "sets": [k for k in test_parts if k != id_name], "saved": True}}
    return {**metrics, "source": {"run": str(run_dir), "sets": list(sets), "split": {"val": val, "test": test},
                                  "left_out": list(LEFT_OUT)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--sets", type=Path, help="folder of <name>.npy image sets")
    parser.add_argument("--names", help="comma-separated set names")
    parser.add_argument("--saved", action="store_true", help="no new sets: re-compute every set's metrics from the run's saved scores")
    parser.add_argument("--val", type=int, default=297, help="images per set held back as its (unread) validation part")
    parser.add_argument("--test", type=int, default=1500, help="images per set scored as its test part")
    args = parser.parse_args(argv)
    if args.saved == bool(args.sets or args.names) or bool(args.sets) != bool(args.names):
        parser.error("pass either --sets DIR --names a,b,c (new sets) or --saved (the runs' own sets)")
    sets = {}
    for name in (args.names.split(",") if args.names else []):
        path = args.sets / f"{name}.npy"
        if not path.is_file():
            parser.error(f"{path} does not exist: make it with python scripts/holdout_sets.py {args.sets} --batch N")
        sets[name] = np.load(path, allow_pickle=False)
    for i, run in enumerate(args.runs):
        write_json_atomic(args.out / str(i) / "metrics.json", run_metrics(run, sets, args.val, args.test, args.saved))
        print(f"{args.out / str(i) / 'metrics.json'}: {run}")


if __name__ == "__main__":
    main()
