"""The Python API: ``fevae.load_run(dir).score(images)`` against the score CLI, and ``fevae.train_run``."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fevae
from fevae.api import compose_config
from fevae.errors import FevaeError
from fevae.pipeline.score import score_images
from helpers import make_data_dir
from pipeline import TINY

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> Path:
    """One tiny V3 (continuous Bernoulli) run trained through the train API, shared by this module."""
    root = tmp_path_factory.mktemp("api")
    data_dir = make_data_dir(root / "data")
    run_dir = fevae.train_run(["+experiment=v3_continuous_bernoulli", f"paths.data_dir={data_dir}", *TINY,
                               f"hydra.run.dir={root / 'run'}"], quiet=True)
    return run_dir


@pytest.fixture(scope="module")
def loaded(api_run) -> fevae.Run:
    return fevae.load_run(api_run)


def some_images(n: int = 10) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def test_train_api_gives_a_cli_run_folder(api_run, tmp_path):
    assert api_run.is_absolute() and api_run.name == "run"
    for name in (".hydra/config.yaml", ".hydra/overrides.yaml", ".hydra/hydra.yaml", "train.log", "metrics.json", "mixture.npz",
                 "checkpoints/vae/best.ckpt", "checkpoints/jigsaw/best.ckpt", ".fevae/config.yaml", "report.md"):
        assert (api_run / name).is_file(), name
    assert "+experiment=v3_continuous_bernoulli" in (api_run / ".hydra" / "overrides.yaml").read_text()
    # a user error of the CLI child is its FevaeError; a bad override is refused before any child starts
    again = [l for l in (api_run / ".hydra" / "overrides.yaml").read_text().splitlines() if l.startswith("- ")]
    with pytest.raises(FevaeError, match="already holds a run"):
        fevae.train_run([l[2:] for l in again] + [f"hydra.run.dir={api_run}"], quiet=True)
    with pytest.raises(FevaeError, match="no_such_key"):
        fevae.train_run(["no_such_key=1", f"hydra.run.dir={tmp_path / 'x'}"])
    with pytest.raises(FevaeError, match="command-line flags"):
        fevae.train_run(["-m", "seed=1,2"])
    assert not (tmp_path / "x").exists()


def test_score_equals_the_score_clis_csv(api_run, loaded, tmp_path):
    images = some_images()
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "scores.csv"
    result = subprocess.run([sys.executable, "-m", "fevae.score", f"run_dir={api_run}", f"input={tmp_path / 'x.npy'}", f"output={out}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    with out.open() as handle:
        header, *rows = list(csv.reader(handle))
    frame = loaded.score(images)
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == header and len(frame) == len(rows) == len(images)
    assert "log_p_fevae_l2_apo" in header and header[-9:] == ["likelihood_regret", "likelihood_ratio", "jigsaw_loss", "dose", "fused",
                                                        "standardised_fevae_apo", "standardised_fevae_pr",
                                                        "standardised_fevae_two_sided_apo", "standardised_fevae_two_sided_pr"]
    for j, column in enumerate(header):
        csv_values = np.array([float(r[j]) if r[j] != "" else math.nan for r in rows])
        got = frame[column].to_numpy()
        assert got.dtype == np.float64
        np.testing.assert_array_equal(got, csv_values, err_msg=column)  # exact; NaN where the CSV cell is empty
    assert frame["likelihood_regret"].isna().sum() == len(images) - loaded.config.eval.regret.subset > 0
    assert loaded.score(images).equals(frame)  # the same numbers on every call
    # pytorch-ood's convention: higher = more OOD, the same frame negated (NaN stays NaN)
    outlier = loaded.outlier_score(images)
    assert list(outlier.columns) == header and outlier.equals(-frame)
    assert (outlier["log_p_fevae_apo"] > outlier["log_p_fevae_apo"].median()).equals(frame["log_p_fevae_apo"] < frame["log_p_fevae_apo"].median())


def test_uint8_float_torch_and_channel_inputs_agree(loaded):
    images = some_images(6)
    state = torch.get_rng_state(), np.random.get_state()[1].copy()
    reference = loaded.score(images)
    assert torch.equal(torch.get_rng_state(), state[0]) and np.array_equal(np.random.get_state()[1], state[1])  # RNGs untouched
    for other in (images.astype(np.float32) / 255, torch.from_numpy(images), torch.from_numpy(images).float() / 255,
                  images[:, None], images[::-1][::-1]):
        pd.testing.assert_frame_equal(loaded.score(other), reference, check_exact=True)


@pytest.mark.parametrize(
    "array",
    [
        np.zeros((3, 28, 27), np.uint8),
        np.zeros((0, 28, 28), np.uint8),
        np.zeros((2, 28, 28), np.int64),
        np.full((2, 28, 28), 255.0, np.float32),
        np.full((2, 28, 28), np.nan, np.float32),
        np.full((2, 28, 28), -0.5, np.float64),
    ],
)
def test_bad_images_raise_the_clis_error(api_run, loaded, tmp_path, array):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(FevaeError) as cli_err:
        score_images(api_run, tmp_path / "bad.npy")
    with pytest.raises(FevaeError) as api_err:
        loaded.score(array)
    assert api_err.value.what == cli_err.value.what.replace(str(tmp_path / "bad.npy"), "images")
    assert api_err.value.fix == cli_err.value.fix
    with pytest.raises(FevaeError, match="not a numpy array or torch tensor"):
        loaded.score(array.tolist())


def test_metrics_config_and_scoring_overrides(api_run, loaded, tmp_path):
    assert loaded.metrics == json.loads((api_run / "metrics.json").read_text())
    assert loaded.run_dir == api_run and loaded.config.model.vae.likelihood.name == "continuous_bernoulli"
    images = some_images(4)
    np.save(tmp_path / "x.npy", images)
    overrides = ["eval.n_samples=2"]
    frame = loaded.score(images, overrides=overrides)
    cli = score_images(api_run, tmp_path / "x.npy", overrides, composed=compose_config("score", overrides))
    for column in frame.columns:
        np.testing.assert_array_equal(frame[column].to_numpy()[: len(cli[column])], cli[column])
    assert not frame.equals(loaded.score(images))
    with pytest.raises(FevaeError, match="load_run"):  # the loaded models were made with these
        loaded.score(images, overrides=["+model.vae.latent_dim=3"])
    with pytest.raises(FevaeError, match="Hydra"):
        loaded.score(images, overrides=["hydra.run.dir=x"])


def test_bench_api_section_times_calls_on_a_real_run(api_run):
    """``make bench``'s api section (benchmarks/api.py): load_run once, then interleaved 4- and 64-image calls."""
    root = Path(__file__).resolve().parents[1]
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks.api import api_section
    from benchmarks.run import paired_ratio, row, spread

    result, rows = api_section(api_run, 2, row, spread, paired_ratio)
    assert result["load_run_s"] > 0 and result["first_score_s"] > 0 and result["repeats"] == 2
    few, many = result["score_4_s"], result["score_64_s"]
    assert few["n"] == many["n"] == 2
    assert result["ratio_64_to_4"]["values"] == pytest.approx([m / f for m, f in zip(many["values"], few["values"])])
    assert result["score_4_without_regret_s"]["n"] == 2
    assert [r["section"] for r in rows] == ["api"] * 6 and rows[2]["target"] == rows[3]["target"] == "< 0.5 s"
    assert "likelihood_regret" in rows[3]["name"]
    stacked, vmap = result["regret_4_stacked_s"], result["regret_4_vmap_s"]
    assert stacked["n"] == vmap["n"] == 2
    assert result["ratio_regret_stacked_to_vmap"]["values"] == pytest.approx([a / b for a, b in zip(stacked["values"], vmap["values"])])



def test_a_run_reads_its_folder_and_composes_overrides_once_and_later_calls_give_the_same_scores(api_run, monkeypatch):
    """score() keeps what it read from the folder besides the models (detectors.npz, the background VAE) per eval
    settings, and the config composed from a call's overrides per distinct list; the numbers do not change."""
    import fevae.api as api

    parts, composed = [], []
    real_parts, real_compose = api.scoring_parts, api.compose_config
    monkeypatch.setattr(api, "scoring_parts", lambda trained: parts.append(tuple(trained.cfg.eval.detectors)) or real_parts(trained))
    monkeypatch.setattr(api, "compose_config", lambda *a, **k: composed.append(a) or real_compose(*a, **k))
    run = fevae.load_run(api_run)
    composed.clear()
    x = some_images(4)
    first = run.score(x)
    pd.testing.assert_frame_equal(run.score(x), first)
    assert len(parts) == 1 and composed == []
    fewer = ["eval.detectors=[iwae]"]
    only = run.score(x, fewer)
    run.score(x, fewer)
    assert len(parts) == 2 and parts[1] == ("iwae",) and len(composed) == 1  # composed and loaded once for that list
    np.testing.assert_array_equal(only["iwae"].to_numpy(), first["iwae"].to_numpy())
    assert "likelihood_ratio" not in only.columns and "likelihood_ratio" in first.columns
    pd.testing.assert_frame_equal(run.score(x), first)  # back to the load's settings: nothing reloaded
    assert len(parts) == 2


def test_the_docs_example_scores_a_folder_of_pngs_and_plots_the_histogram(api_run, tmp_path):
    """docs/api.md's notebook-style example, run as written but for its two paths (RUN, FOLDER)."""
    from PIL import Image

    text = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text()
    block = text.split("<!-- example: score a folder of PNGs -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(some_images(5)):
        Image.fromarray(image).save(folder / f"img{i}.png")
    code, n = re.subn(r'^RUN = ".*"$', f"RUN = {str(api_run)!r}", block, flags=re.M)
    code, m = re.subn(r'^FOLDER = ".*"$', f"FOLDER = {str(folder)!r}", code, flags=re.M)
    assert n == m == 1
    (tmp_path / "example.py").write_text(code)
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "MPLBACKEND": "Agg"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(f"img{i}.png" in result.stdout for i in range(5)) and "log_p_fevae_apo" in result.stdout
    assert (tmp_path / "histogram.png").stat().st_size > 5_000


def _holdout_metrics():
    import importlib.util

    spec = importlib.util.spec_from_file_location("holdout_metrics", Path(__file__).resolve().parents[1] / "scripts" / "holdout_metrics.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_holdout_metrics_scores_new_sets_through_a_finished_run_without_rescoring_it(api_run, tmp_path):
    """scripts/holdout_metrics.py: new sets scored as the API scores images; the fitted detectors' refit equals the
    run's (checked inside), their conformal flags are cross-conformal, and detector_table.py reads the result."""
    mod = _holdout_metrics()
    sets = {"noise": some_images(30), "dark": (some_images(30) // 8).astype(np.uint8)}
    metrics = mod.run_metrics(api_run, sets, val=6, test=20)
    id_name = metrics["in_distribution"]
    assert set(metrics["ood"]) == {"noise", "dark"} and metrics["n"]["noise"] == 20
    run_metrics = json.loads((api_run / "metrics.json").read_text())
    fused = metrics["ood"]["noise"]["other"]["fused"]
    assert {"auroc", "conformal_fpr", "conformal_tpr"} <= set(fused)
    assert not any(c.startswith("likelihood_regret") for c in metrics["ood"]["noise"]["other"])
    # an unfitted column's AUROC against the same in-distribution test scores: as a run scores it (its own stream of draws)
    assert metrics["n"][id_name] == run_metrics["n"][id_name]
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text(json.dumps(metrics))
    out = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[1] / "scripts" / "detector_table.py"), str(tmp_path / "0")],
                         capture_output=True, text=True, check=True).stdout
    assert "| fused (GMM) |" in out and "noise" in out


def test_holdout_metrics_saved_re_makes_a_runs_own_metrics_from_its_score_files(api_run, tmp_path):
    """--saved scores nothing: from the run's score files (fitted detectors re-fitted) it gives every set's test
    metrics exactly as the run wrote them, likelihood regret included; it refuses a mix with new sets."""
    mod = _holdout_metrics()
    metrics = mod.run_metrics(api_run, {}, val=0, test=0, saved_sets=True)
    run_metrics = json.loads((api_run / "metrics.json").read_text())
    assert metrics["ood"] == run_metrics["ood"] and metrics["n"] == run_metrics["n"]
    assert any(c.startswith("likelihood_regret") for s in metrics["ood"].values() for c in s["other"])
    assert metrics["source"]["saved"] and set(metrics["source"]["sets"]) == set(run_metrics["ood"])
    with pytest.raises(ValueError, match="no new ones"):
        mod.run_metrics(api_run, {"noise": some_images(30)}, val=6, test=20, saved_sets=True)
    with pytest.raises(SystemExit):
        mod.main([str(tmp_path), str(api_run), "--saved", "--names", "x"])
