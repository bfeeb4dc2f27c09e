"""Scoring a finished run: the score CLI (inputs, errors, CSV) and evaluate-only re-scoring."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fevae.data.idx import read_idx, write_idx
from fevae.errors import FevaeError
from fevae.pipeline.evaluate import evaluate
from fevae.metrics.ood import load_scores
from fevae.pipeline.score import COLUMNS, OTHER_COLUMNS, score_images, write_csv_atomic
from fevae.pipeline.train import train
from helpers import make_data_dir
from pipeline import save_run_config, train_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny finished V1 run (binarised preprocessing) shared by the tests of this module."""
    root = tmp_path_factory.mktemp("scored")
    data_dir = make_data_dir(root / "data")
    run_dir = root / "run"
    cfg = train_cfg(run_dir, data_dir, "v1_bernoulli")
    save_run_config(cfg, run_dir)
    train(cfg)
    return run_dir, data_dir


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fevae.score", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_scores_of_the_cli_equal_the_runs_own_scores(trained_run, tmp_path):
    run_dir, data_dir = trained_run
    images = read_idx(data_dir / "mnist" / "t10k-images-idx3-ubyte.gz")
    np.save(tmp_path / "mnist.npy", images)
    out = tmp_path / "scores.csv"
    result = cli(f"run_dir={run_dir}", f"input={tmp_path / 'mnist.npy'}", f"output={out}", "stream_name=mnist")
    assert result.returncode == 0, result.stderr
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    extra = [f"log_p_fevae_l{k}_{s}" for s in ("apo", "pr") for k in (2, 3, 4)]
    fitted = ["dose", "fused", "standardised_fevae_apo", "standardised_fevae_pr", "standardised_fevae_two_sided_apo",
              "standardised_fevae_two_sided_pr"]  # eval.fitted_detectors, applied from detectors.npz
    assert list(rows[0]) == COLUMNS + sorted(extra) + OTHER_COLUMNS + fitted and len(rows) == len(images)
    # same images, same seed, same index -> the same numbers as the run's own scores/mnist.npz,
    # whose rows are the test part: the images at the positions eval_split.json lists
    own = load_scores(run_dir / "scores" / "mnist.npz")
    positions = json.loads((run_dir / "eval_split.json").read_text())["test"]["mnist"]
    run_regret = own.pop("index__likelihood_regret").astype(np.int64)  # the images of the run's random regret subset
    assert sorted(own) == sorted(rows[0]) and len(own["iwae"]) == len(positions) < len(rows)
    cli_regret = [i for i, r in enumerate(rows) if r["likelihood_regret"] != ""]  # the CLI's own random subset of its rows
    assert len(cli_regret) == len(own["likelihood_regret"]) == len(run_regret)
    for column, values in own.items():
        if column == "likelihood_regret":  # batched with other images in the run: rounding only
            both = [(i, p) for i, p in enumerate(run_regret) if p in set(cli_regret)]
            assert both
            np.testing.assert_allclose([float(rows[p][column]) for _, p in both], values[[i for i, _ in both]], atol=1e-3)
        else:
            np.testing.assert_allclose([float(rows[p][column]) for p in positions], values, rtol=1e-12)


def test_every_input_format_gives_the_same_scores(trained_run, tmp_path):
    from PIL import Image

    run_dir, _ = trained_run
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", images)
    np.save(tmp_path / "f32.npy", images.astype(np.float32) / 255)
    write_idx(tmp_path / "imgs-idx3-ubyte", images)
    (tmp_path / "png").mkdir()
    for i, img in enumerate(images):
        Image.fromarray(img, mode="L").save(tmp_path / "png" / f"{i:03d}.png")
    results = [score_images(run_dir, tmp_path / name) for name in ("u8.npy", "f32.npy", "imgs-idx3-ubyte", "png")]
    for other in results[1:]:
        for column in COLUMNS:
            np.testing.assert_array_equal(other[column], results[0][column])


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((3, 28, 27), np.uint8), "not [N,28,28]"),
        (np.zeros((0, 28, 28), np.uint8), "holds no images"),
        (np.zeros((2, 28, 28), np.int64), "dtype int64"),
        (np.full((2, 28, 28), 255.0, np.float32), "outside [0,1]"),
        (np.full((2, 28, 28), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_inputs_are_refused_with_one_line(trained_run, tmp_path, array, message):
    run_dir, _ = trained_run
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(FevaeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        score_images(run_dir, tmp_path / "bad.npy")


def test_cli_error_is_one_line_exit_2_and_no_output(trained_run, tmp_path):
    run_dir, _ = trained_run
    np.save(tmp_path / "bad.npy", np.zeros((2, 28, 28), np.int64))
    out = tmp_path / "out.csv"
    result = cli(f"run_dir={run_dir}", f"input={tmp_path / 'bad.npy'}", f"output={out}")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and result.stderr.startswith("error: ")
    assert not out.exists() and not list(tmp_path.glob(".out.csv*"))


def test_missing_and_unfinished_runs_are_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    np.save(tmp_path / "ok.npy", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(FevaeError, match="does not exist"):
        score_images(tmp_path / "nope", tmp_path / "ok.npy")
    unfinished = tmp_path / "unfinished"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_text((run_dir / ".hydra" / "config.yaml").read_text())
    with pytest.raises(FevaeError, match="did not finish training"):
        score_images(unfinished, tmp_path / "ok.npy")
    with pytest.raises(FevaeError, match="does not exist"):
        score_images(run_dir, tmp_path / "missing.npy")


def test_csv_is_written_atomically(tmp_path):
    class Boom:  # the writing fails after a few rows
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return 5

        def __getitem__(self, i):
            if i >= self.n:
                raise RuntimeError("interrupted")
            return 0.0

    with pytest.raises(RuntimeError):
        write_csv_atomic(tmp_path / "x.csv", {c: Boom(3) for c in COLUMNS})
    assert list(tmp_path.iterdir()) == []


def test_evaluate_rescores_with_other_settings_without_touching_the_run(trained_run, tmp_path):
    run_dir, _ = trained_run
    before = (run_dir / "metrics.json").read_text()
    result = evaluate(run_dir, ["eval.n_samples=2", "fe.C=3"], tmp_path / "eval")
    assert (tmp_path / "eval" / "mixture.npz").exists() and (tmp_path / "eval" / "report.md").exists()
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics == result["metrics"] and set(metrics["ood"]) == {"mnist", "mnist_saltpepper"}
    assert (run_dir / "metrics.json").read_text() == before
    # same settings as the run -> the same scores as the run
    evaluate(run_dir, [], tmp_path / "same")
    for name in ("fashionmnist", "mnist"):
        a, b = np.load(run_dir / "scores" / f"{name}.npz"), np.load(tmp_path / "same" / "scores" / f"{name}.npz")
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
