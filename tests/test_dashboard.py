"""What TensorBoard shows of a run: its event files read back as TensorBoard reads them, and (where
Debian's ``chromium`` is installed) the dashboards loaded in a headless browser."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fevae.outputs.dashboard import (
    EVAL_RUN,
    HIST_BINS,
    HPARAMS_PREFIX,
    RANGE_PAD,
    SUMMARY_RUN,
    TEXT_OVERVIEW,
    TEXT_RANGES,
    binned,
    histogram_tag,
    robust_range,
    session_hparams,
)

ROOT = Path(__file__).resolve().parents[1]
SETS = ["fashionmnist", "mnist", "mnist_saltpepper"]
IDS = ("vae", "fe", "fevae", "fevae_l2", "fevae_l3", "fevae_l4")
HIST_TAGS = {f"{scheme}/log_p_{sid}" for scheme in ("PR", "APO") for sid in (*IDS, "standardised_fevae", "standardised_fevae_two_sided")} | {
    f"other/{d}" for d in ("iwae", "input_complexity", "likelihood_regret", "likelihood_ratio", "jigsaw_loss", "dose", "fused")}


def accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"histograms": 0, "scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def histogram_tags(acc) -> dict[str, str]:
    """Tag -> chart title of the histograms of one run."""
    return {tag: acc.SummaryMetadata(tag).display_name for tag in acc.PluginTagToContent("histograms")}


def buckets(event) -> np.ndarray:
    from tensorboard.util import tensor_util

    return tensor_util.make_ndarray(event.tensor_proto)


# ----------------------------------------------------------------------------------- unit tests
def test_histogram_tags_name_scheme_and_score():
    assert histogram_tag("log_p_fevae_apo") == "APO/log_p_fevae"
    assert histogram_tag("log_p_fevae_l2_pr") == "PR/log_p_fevae_l2"
    assert histogram_tag("iwae") == "other/iwae"


def test_robust_range_is_shared_keeps_every_set_and_counts_what_it_leaves_out():
    rng = np.random.default_rng(0)
    in_dist = np.concatenate([rng.normal(0.0, 1.0, 990), np.full(10, -5000.0)])  # heavy tail: 1% at -5,000
    ood = rng.normal(-40.0, 1.0, 500)  # a whole set far from the ID mass is never cut away
    lo, hi = robust_range([in_dist, ood])
    assert -50 < lo < -40 and 0 < hi < 10  # the tail at -5,000 does not stretch the axis
    from fevae.outputs.plots import _clip_range

    raw_lo, raw_hi = _clip_range([in_dist, ood])
    assert lo == pytest.approx(raw_lo - RANGE_PAD * (raw_hi - raw_lo)) and hi == pytest.approx(raw_hi + RANGE_PAD * (raw_hi - raw_lo))
    edges, counts, outside = binned(in_dist, lo, hi)
    assert len(edges) == HIST_BINS + 1 and edges[0] == lo and edges[-1] == hi
    assert outside == 10 + int(((in_dist[:990] < lo) | (in_dist[:990] > hi)).sum()) and counts.sum() == 1000 - outside
    _, counts, outside = binned(np.array([np.nan, np.inf, 0.0]), -1.0, 1.0)
    assert outside == 2 and counts.sum() == 1
    assert robust_range([np.array([np.nan])]) == (-0.5, 0.5)
    lo, hi = robust_range([np.full(5, 3.0)])  # constant scores: a non-empty range around them
    assert lo < 3.0 < hi


def test_session_hparams_list_the_overrides():
    info = {"experiment": "v2_gaussian", "seed": 3, "fe": {"C": 10, "n": 500, "feature_batch_size": 64},
            "overrides": ["+experiment=v2_gaussian", "fe.C=10", "data.eval_split.val=50", "seed=3"]}
    hp = session_hparams(info)
    assert hp["overrides"] == "+experiment=v2_gaussian fe.C=10 data.eval_split.val=50 seed=3"
    assert hp["fe.C"] == 10 and hp["seed"] == 3 and hp["data.eval_split.val"] == "50" and "fe.feature_batch_size" not in hp
    assert all(isinstance(v, (int, float, str, bool)) for v in hp.values())


# ----------------------------------------------------------------------------------- a tiny run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    from helpers import make_data_dir
    from pipeline import save_run_config, train_cfg

    from fevae.pipeline.train import train

    root = tmp_path_factory.mktemp("dashboard")
    run_dir = root / "run"
    cfg = train_cfg(run_dir, make_data_dir(root / "data"), "v2_gaussian", ["seed=7", "eval.figures=paper"])
    save_run_config(cfg, run_dir)
    train(cfg)
    return run_dir


@pytest.mark.slow
def test_event_files_show_what_the_dashboards_promise(tiny_run):
    tb = tiny_run / "tensorboard"
    # histograms: one run with every set as a step of each tag (one chart per tag), one run per set, same bins.
    # They are written as the histogram plugin's [k, 3] tensors (left edge, right edge, count), which keep
    # empty end buckets (TensorBoard trims those of a legacy histogram, per set): the accumulator lists
    # them under the histogram plugin's tags and returns them as tensors.
    overlay = accumulator(tb / EVAL_RUN)
    assert set(histogram_tags(overlay)) == HIST_TAGS
    assert overlay.Tags()["scalars"] == [] and overlay.Tags()["images"] == []
    for tag in HIST_TAGS:
        assert [e.step for e in overlay.Tensors(tag)] == [0, 1, 2]  # step k = k-th set, the ID set first
    title = histogram_tags(overlay)["APO/log_p_fevae"]
    assert "step 0 fashionmnist (ID) · 1 mnist · 2 mnist_saltpepper" in title
    steps = {e.step: buckets(e) for e in overlay.Tensors("APO/log_p_fevae")}
    per_set = {s: accumulator(tb / EVAL_RUN / s) for s in SETS}
    for step, s in enumerate(SETS):
        acc = per_set[s]
        assert set(histogram_tags(acc)) == HIST_TAGS and acc.Tags()["scalars"] == []
        assert s in histogram_tags(acc)["APO/log_p_fevae"]
        (event,) = acc.Tensors("APO/log_p_fevae")
        b = buckets(event)
        np.testing.assert_array_equal(b, steps[step])  # the same set in both runs, the same bins
        assert b.shape == (HIST_BINS, 3) and 0 < b[:, 2].sum() <= 20  # TINY: the 20 test images of each set
    edges = [buckets(per_set[s].Tensors(tag)[0])[:, :2] for s in SETS for tag in ("APO/log_p_fevae",)]
    assert all(np.array_equal(edges[0], e) for e in edges)  # every set of a tag: identical bins
    # only the training curves are scalar charts; metrics are in HParams (sorting last) and the text summary
    for model in ("vae", "jigsaw"):
        tags = accumulator(tb / model).Tags()["scalars"]
        assert {"train/loss", "val/loss"} <= set(tags), model
        assert all(len(accumulator(tb / model).Scalars(t)) >= 1 for t in tags)
    summary = accumulator(tb / SUMMARY_RUN)
    scalars = summary.Tags()["scalars"]
    assert scalars and all(t.startswith(f"{HPARAMS_PREFIX}/ood") and t.endswith("/auroc") for t in scalars)
    assert sorted([HPARAMS_PREFIX, "train", "val", "epoch"])[-1] == HPARAMS_PREFIX  # after the curves' groups
    assert {f"{HPARAMS_PREFIX}/ood/mnist/APO/fevae/auroc", f"{HPARAMS_PREFIX}/ood_val/mnist/APO/fevae/auroc",
            f"{HPARAMS_PREFIX}/ood_val/mnist_saltpepper/other/iwae/auroc"} <= set(scalars)
    # the figures as images, the text summary, the HParams session with the run's overrides
    images = set(summary.Tags()["images"])
    assert {"figures/fig1a_log_p_vae", "figures/fig1b_log_p_fevae", "figures/fig2_saltpepper", "figures/detectors_auroc"} <= images
    (fig1b,) = summary.Images("figures/fig1b_log_p_fevae")
    assert fig1b.width > 300 and fig1b.height > 200
    tensors = summary.Tags()["tensors"]
    assert f"{TEXT_OVERVIEW}/text_summary" in tensors and f"{TEXT_RANGES}/text_summary" in tensors
    text = summary.Tensors(f"{TEXT_OVERVIEW}/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| mnist | APO |" in text and "cost per image" in text and "mnist val | mnist test" in text
    from tensorboard.plugins.hparams import metadata as hp_metadata

    hp_tags = summary.PluginTagToContent(hp_metadata.PLUGIN_NAME)
    hparams = hp_metadata.parse_session_start_info_plugin_data(hp_tags[hp_metadata.SESSION_START_INFO_TAG]).hparams
    assert hparams["seed"].number_value == 7 and "seed=7" in hparams["overrides"].string_value
    assert hparams["experiment"].string_value == "v2_gaussian"
    assert hp_metadata.EXPERIMENT_TAG not in hp_tags  # columns come from every session of the logdir (sweeps)


@pytest.mark.slow
def test_writing_again_replaces_the_dashboards(tiny_run, tmp_path):
    """A resumed run or a second evaluation into the same folder shows one copy, not two."""
    import json

    from fevae.outputs.dashboard import write_dashboard
    from fevae.metrics.ood import load_scores

    out = tmp_path / "again"
    shutil.copytree(tiny_run / "tensorboard", out / "tensorboard")
    scores = {s: load_scores(tiny_run / "scores" / f"{s}.npz") for s in SETS}
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    write_dashboard(out, scores, metrics, {"experiment": "v2_gaussian", "overrides": ["seed=1"]})
    assert len(list((out / "tensorboard" / EVAL_RUN).glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in accumulator(out / "tensorboard" / EVAL_RUN).Tensors("PR/log_p_vae")] == [0, 1, 2]
    assert list((out / "tensorboard" / "vae").glob("events.out.tfevents.*"))  # the trainings' runs are kept


# ----------------------------------------------------------------------------------- in a browser
def check_in_browser(folder: Path, out: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "tensorboard_check.py"), str(folder), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pages = args[args.index("--pages") + 1].split(",") if "--pages" in args else ("histograms", "images", "scalars", "hparams")
    for page in pages:
        assert (out / f"{page}.png").stat().st_size > 10_000, page
    return proc.stdout


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_tensorboard_in_a_headless_browser(tiny_run, tmp_path):
    """The run as a user opens it: APO/log_p_fevae with every set in one chart on the Histograms page,
    Fig. 1(b) on the Images page, Scalars opening on the training curves (scripts/tensorboard_check.py)."""
    stdout = check_in_browser(tiny_run, tmp_path / "run")
    assert "all checks passed" in stdout


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_a_sweeps_hparams_table_lists_every_job(tiny_run, tmp_path):
    """A sweep folder's HParams table: one row per job with its overrides and its validation and test AUROCs."""
    import json

    from fevae.outputs.dashboard import write_dashboard
    from fevae.metrics.ood import load_scores

    sweep = tmp_path / "multirun"
    scores = {s: load_scores(tiny_run / "scores" / f"{s}.npz") for s in SETS}
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    for job, seed in ((0, 1), (1, 2)):
        shutil.copytree(tiny_run / "tensorboard", sweep / str(job) / "tensorboard")
        write_dashboard(sweep / str(job), scores, metrics, {"experiment": "v2_gaussian", "seed": seed,
                                                            "overrides": ["+experiment=v2_gaussian", f"seed={seed}"]},
                        sorted((tiny_run / "figures").glob("*.png")))
    stdout = check_in_browser(sweep, tmp_path / "sweep", "--sessions", "2", "--pages", "hparams")
    assert "+experiment=v2_gaussian seed=1" in stdout and "+experiment=v2_gaussian seed=2" in stdout
