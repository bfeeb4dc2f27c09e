"""What a run tells its log, and the callbacks/logger config groups (issue #14, items 3 and 4)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from fevae.cache import model_hash, model_key
from fevae.errors import FevaeError
from fevae.pipeline.runs import run_config
from fevae.training import progress_settings, user_callbacks, user_loggers
from fevae.utils.log import config_tree, stage
from fevae.pipeline.checks import validate_config
from pipeline import TINY, train_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_log_tells_the_story_and_extra_callbacks_and_loggers_are_built(tmp_path: Path, synthetic_data_dir: Path) -> None:
    """A CLI run whose output is not a terminal: train.log holds the config, Lightning's messages,
    each epoch's losses and each stage's duration; `logger=many` and an added callback are used."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "fevae.train", "+experiment=v2_gaussian", f"paths.data_dir={synthetic_data_dir}", *TINY,
           "trainer.enable_progress_bar=true", "logger=many", "callbacks=early_stopping",
           "+callbacks.lr_monitor._target_=lightning.pytorch.callbacks.LearningRateMonitor",
           "eval.detectors=[iwae]", "fe.extra_layers=[]", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (run_dir / "train.log").read_text()
    first = text.splitlines()[0]
    assert "composed config" in first  # the config is the first thing in the log
    for expected in ("├── model", "Seed set to 12345", "GPU available", "train VAE: done in", "vae epoch 1/1: val/",
                     "val/loss", "jigsaw epoch 1/1: val/", "feature mixture (layer 1) fitted in", "scoring mnist: done in",
                     "scoring val/fashionmnist: done in", "figures (drawn beside the metrics): done in", "run folder:"):
        assert expected in text, expected
    assert (run_dir / "config_tree.log").read_text().startswith("config\n")
    # Lightning's own console handlers are gone: each of its messages is printed once, in fevae's format
    console = result.stdout + result.stderr
    assert console.count("GPU available: False") == 3  # VAE, Jigsaw, scoring trainers
    assert "\nINFO: " not in console
    # logger=many: TensorBoard and CSV per model, inside the run folder; the LR monitor wrote its column
    assert list((run_dir / "tensorboard" / "vae").glob("events.out.tfevents.*"))
    with open(run_dir / "csv" / "vae" / "metrics.csv") as handle:
        header = next(csv.reader(handle))
    assert any(column.startswith("lr-") for column in header), header
    assert "val/loss" in header


def test_config_tree_has_a_branch_per_group(tmp_path: Path, synthetic_data_dir: Path) -> None:
    cfg = train_cfg(tmp_path / "run", synthetic_data_dir)
    tree = config_tree(cfg)
    lines = tree.splitlines()
    assert lines[0] == "config" and sum(line.startswith("└── ") for line in lines) == 1  # one last branch
    for group in ("data", "model", "fe", "eval", "trainer", "budget", "callbacks", "logger"):
        assert any(line.startswith(("├── " + group, "└── " + group)) for line in lines), group
    assert "hydra" not in [line[4:] for line in lines]
    assert "max_epochs: 1" in tree  # the smoke budget, resolved


def test_stage_logs_start_duration_and_failure(caplog: pytest.LogCaptureFixture) -> None:
    timings: dict[str, float] = {}
    with caplog.at_level("INFO", logger="fevae"):
        with stage("thing", timings, "thing"):
            pass
        with pytest.raises(RuntimeError):
            with stage("broken"):
                raise RuntimeError("x")
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "thing ..." and messages[1].startswith("thing: done in ")
    assert messages[3].startswith("broken: failed after ")
    assert timings["thing"] >= 0


def test_progress_bar_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert progress_settings({"enable_progress_bar": True}) == (True, False)
    assert progress_settings({"enable_progress_bar": False}) == (False, True)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert progress_settings({"enable_progress_bar": True}) == (False, True)


def test_a_trainer_key_a_profile_sets_per_model_is_refused(tmp_path: Path, synthetic_data_dir: Path) -> None:
    cfg = train_cfg(tmp_path / "run", synthetic_data_dir, extra=["+trainer.max_epochs=20"])
    with pytest.raises(FevaeError, match=r"trainer.max_epochs would be ignored.*budget.vae.trainer.max_epochs"):
        validate_config(cfg)
    # a key no profile sets applies to both models and is accepted
    validate_config(train_cfg(tmp_path / "run2", synthetic_data_dir, extra=["+trainer.max_steps=5"]))
    for key in ("callbacks", "logger"):
        cfg = train_cfg(tmp_path / "run3", synthetic_data_dir, extra=[f"+trainer.{key}=[]"])
        with pytest.raises(FevaeError, match=rf"trainer.{key} is not read.*{key} config group"):
            validate_config(cfg)


def test_callbacks_and_loggers_from_config(tmp_path: Path, synthetic_data_dir: Path) -> None:
    cfg = train_cfg(tmp_path / "run", synthetic_data_dir, extra=["callbacks=early_stopping", "logger=many"])
    validate_config(cfg)
    callbacks = user_callbacks(cfg)
    assert [type(c).__name__ for c in callbacks] == ["EarlyStopping"]
    assert user_callbacks(cfg)[0] is not callbacks[0]  # built anew for each training
    loggers = user_loggers(cfg, tmp_path / "run", "vae")
    assert sorted(type(lg).__name__ for lg in loggers) == ["CSVLogger", "TensorBoardLogger"]
    assert {Path(lg.log_dir) for lg in loggers} == {tmp_path / "run" / "tensorboard" / "vae", tmp_path / "run" / "csv" / "vae"}
    assert user_loggers(train_cfg(tmp_path / "r0", synthetic_data_dir, extra=["logger=none"]), tmp_path, "vae") == []

    bad = train_cfg(tmp_path / "r1", synthetic_data_dir, extra=["+callbacks.mine.patience=3"])
    with pytest.raises(FevaeError, match=r"callbacks.mine has no _target_"):
        validate_config(bad)
    wrong = train_cfg(tmp_path / "r2", synthetic_data_dir, extra=["+callbacks.mine._target_=collections.OrderedDict"])
    with pytest.raises(FevaeError, match=r"callbacks.mine builds a OrderedDict, not a Lightning Callback"):
        user_callbacks(wrong)
    wrong = train_cfg(tmp_path / "r3", synthetic_data_dir, extra=["+logger.mine._target_=collections.OrderedDict"])
    with pytest.raises(FevaeError, match=r"logger.mine builds a OrderedDict, not a Lightning Logger"):
        user_loggers(wrong, tmp_path, "vae")


def test_callbacks_enter_the_model_cache_key_only_when_set(tmp_path: Path, synthetic_data_dir: Path) -> None:
    plain = train_cfg(tmp_path / "a", synthetic_data_dir)
    stopping = train_cfg(tmp_path / "b", synthetic_data_dir, extra=["callbacks=early_stopping"])
    assert "callbacks" not in model_key(plain, "vae")  # keys of models trained before the group existed still match
    assert model_hash(plain, "vae") != model_hash(stopping, "vae")
    assert model_hash(plain, "vae") == model_hash(train_cfg(tmp_path / "c", synthetic_data_dir, extra=["logger=csv"]), "vae")


def test_a_run_folder_never_brings_callbacks_or_loggers(tmp_path: Path) -> None:
    """The groups whose classes the user picks are training-only: a folder's config loses them."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create({"seed": 1, "callbacks": {"evil": {"_target_": "os.system", "command": "touch pwned"}},
                                     "logger": {"evil": {"_target_": "os.system"}}}), run_dir / ".hydra" / "config.yaml")
    cfg = run_config(run_dir)
    assert "callbacks" not in cfg and "logger" not in cfg
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
