"""Nothing mixed, nothing hung, nothing left running (issue #29, items 1-4).

Real processes and real signals: two trainings started at once into one run folder; ``SIGTERM`` and
``SIGINT`` while training and while scoring; ``SIGKILL`` of a run whose worker processes are alive;
``resume=true`` after ``.fevae/`` was deleted, with other settings than the run's files were made with.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

import fevae
from fevae.errors import FevaeError
from fevae.pipeline.folders import own_run_folder
from fevae.training import load_checkpoint
from helpers import make_data_dir
from pipeline import TINY, train_cfg

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")]

#: a quick run: one detector-free scoring pass, one mixture, no separation evaluations
QUICK = ["eval.detectors=[]", "fe.extra_layers=[]", "separation.enabled=false"]


class Training:
    """``python -m fevae.train`` in its own session, its stdout and stderr read line by line."""

    def __init__(self, run_dir: Path, data_dir: Path, *extra: str):
        args = [sys.executable, "-m", "fevae.train", "+experiment=v2_gaussian", *TINY, f"paths.data_dir={data_dir}",
                f"hydra.run.dir={run_dir}", *extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     text=True, start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout, True), daemon=True),
                        threading.Thread(target=self._read, args=(self.proc.stderr, self.stderr, False), daemon=True)]
        for reader in self.readers:
            reader.start()

    def _read(self, stream, into: list[str], forward: bool) -> None:
        for line in stream:
            into.append(line)
            if forward:
                self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 240) -> None:
        """Return as soon as a stdout line contains ``text``."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                if text in self.lines.get(timeout=0.5):
                    return
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
        pytest.fail(f"no line with {text!r} (exit {self.proc.poll()}): {''.join(self.stdout)[-3000:]}{''.join(self.stderr)[-3000:]}")

    def finish(self, timeout: float = 300) -> int:
        code = self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=30)
        return code

    def error_line(self) -> str:
        lines = [line.strip() for line in self.stderr if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), "".join(self.stderr)[-3000:]
        return lines[0]

    def kill_all(self) -> None:
        """SIGKILL whatever of this session is still running (clean-up after a failed test)."""
        for pid in session_members(self.proc.pid):
            with_suppressed(os.kill, pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def with_suppressed(fn, *args) -> None:
    try:
        fn(*args)
    except (ProcessLookupError, PermissionError):
        pass


def session_members(sid: int) -> list[int]:
    """Live (not zombie) processes of session ``sid``: the training and every process it started."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] not in "ZX":
            out.append(int(entry))
    return out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_data_dir(tmp_path_factory.mktemp("process") / "data")


def _read_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _wait(condition, timeout: float = 240, what: str = "") -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.002)
    pytest.fail(f"timed out waiting for {what}")


# ------------------------------------------- 1. two trainings at once: the winner's config everywhere
@pytest.fixture(scope="module")
def raced_run(tmp_path_factory, data_dir) -> tuple[Path, dict, dict]:
    """Two trainings into one folder, interleaved at their most dangerous points with SIGSTOP/SIGCONT:
    A is held as soon as its settings show in ``.hydra/config.yaml``; then B is started and held as soon
    as *its* settings show there (if it gets that far); then A goes on, then B. Returns the run folder
    and, for the winner and the loser, their settings, exit status and stderr."""
    run_dir = tmp_path_factory.mktemp("race") / "run"
    settings = {"A": {"seed": 7, "C": 2}, "B": {"seed": 8, "C": 3}}
    config = run_dir / ".hydra" / "config.yaml"

    def shows(name: str) -> bool:
        stored = _read_yaml(config)
        return isinstance(stored, dict) and stored.get("seed") == settings[name]["seed"]

    runs = {}
    try:
        runs["A"] = Training(run_dir, data_dir, "seed=7", "fe.C=2", *QUICK)
        _wait(lambda: shows("A") or runs["A"].proc.poll() is not None, what="A's settings in .hydra/config.yaml")
        runs["A"].proc.send_signal(signal.SIGSTOP)
        runs["B"] = Training(run_dir, data_dir, "seed=8", "fe.C=3", *QUICK)
        _wait(lambda: shows("B") or runs["B"].proc.poll() is not None, what="B's settings or B's end")
        b_held = runs["B"].proc.poll() is None
        if b_held:
            runs["B"].proc.send_signal(signal.SIGSTOP)
        runs["A"].proc.send_signal(signal.SIGCONT)
        owner = run_dir / ".fevae" / "owner.json"
        _wait(lambda: (_read_yaml(owner) or {}).get("pid") == runs["A"].proc.pid or runs["A"].proc.poll() is not None,
              what="A holding the folder")
        if b_held:
            runs["B"].proc.send_signal(signal.SIGCONT)
        codes = {name: run.finish() for name, run in runs.items()}
    finally:
        for run in runs.values():
            if run.proc.poll() is None:
                run.proc.send_signal(signal.SIGCONT)
                run.kill_all()
    assert sorted(codes.values()) == [0, 2], {n: (c, "".join(runs[n].stderr)[-2000:]) for n, c in codes.items()}
    winner = next(n for n, c in codes.items() if c == 0)
    loser = next(n for n, c in codes.items() if c == 2)
    return run_dir, {**settings[winner], "name": winner}, {**settings[loser], "name": loser, "error": runs[loser].error_line()}


def test_two_trainings_at_once_leave_the_winners_config_everywhere(raced_run):
    run_dir, winner, loser = raced_run
    assert "is in use by pid" in loser["error"]
    hydra_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    state_cfg = OmegaConf.load(run_dir / ".fevae" / "config.yaml")
    loaded = fevae.load_run(run_dir).config
    for where, cfg in ((".hydra/config.yaml", hydra_cfg), (".fevae/config.yaml", state_cfg), ("load_run(dir).config", loaded)):
        assert (cfg.seed, cfg.fe.C) == (winner["seed"], winner["C"]), (where, winner["name"], cfg.seed, cfg.fe.C)
    overrides = (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert f"seed={winner['seed']}" in overrides and f"seed={loser['seed']}" not in overrides
    assert f"output_dir: {run_dir}" in (run_dir / ".hydra" / "hydra.yaml").read_text()


# ------------------------------------------------------- 2. SIGTERM / SIGINT: one line, 128 + signum
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_training_stops_it_with_one_line_and_128_plus_signum(tmp_path, data_dir, signum):
    run_dir = tmp_path / "run"
    run = Training(run_dir, data_dir, "budget.vae.trainer.max_epochs=4", "training.side_by_side=false", *QUICK)
    try:
        run.wait_for("vae epoch 1/4")  # inside Lightning's fit
        _wait(lambda: (run_dir / "checkpoints" / "vae" / "last.ckpt").exists(), what="the first epoch's checkpoint")
        run.proc.send_signal(signum)
        code = run.finish(timeout=60)
    finally:
        run.kill_all()
    name = signal.Signals(signum).name
    assert code == 128 + signum, (code, "".join(run.stderr)[-3000:])
    line = run.error_line()
    assert line.startswith(f"error: interrupted by {name} during train VAE — ") and f"resume=true and hydra.run.dir={run_dir}" in line, line
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "checkpoints" / "jigsaw").exists()
    assert load_checkpoint(run_dir / "checkpoints" / "vae" / "last.ckpt")["epoch"] in (0, 1, 2)  # what a resume starts from
    assert f"vae epoch 4/4" not in "".join(run.stdout)  # it stopped inside the fit
    assert not (run_dir / ".fevae" / "owner.json").exists()  # the lock's holder record is gone with it
    assert session_members(run.proc.pid) == []


def test_sigterm_during_side_by_side_training_ends_every_model_process_with_one_line(tmp_path, data_dir):
    """The models' forked processes end with the run; each keeps its last finished epoch for resume=true."""
    run_dir = tmp_path / "run"
    run = Training(run_dir, data_dir, "budget.vae.trainer.max_epochs=6", "budget.jigsaw.trainer.max_epochs=40",
                   "training.side_by_side=true", *QUICK)
    try:
        run.wait_for("vae epoch 1/6")  # printed by the VAE's process
        assert len(session_members(run.proc.pid)) >= 3, "the run and its two model processes"
        _wait(lambda: (run_dir / "checkpoints" / "vae" / "last.ckpt").exists(), what="the VAE's first checkpoint")
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish(timeout=60)
    finally:
        run.kill_all()
    assert code == 143, (code, "".join(run.stderr)[-3000:])
    line = run.error_line()
    assert line.startswith("error: interrupted by SIGTERM during train vae, jigsaw side by side") and "resume=true" in line, line
    assert session_members(run.proc.pid) == []  # no model process outlives the run
    assert not (run_dir / "metrics.json").exists()
    assert load_checkpoint(run_dir / "checkpoints" / "vae" / "last.ckpt")["epoch"] in range(6)


def test_sigterm_during_scoring_stops_it_and_resume_finishes_without_retraining(tmp_path, data_dir):
    run_dir = tmp_path / "run"
    run = Training(run_dir, data_dir, *QUICK)
    try:
        run.wait_for("] - scoring ...")
        run.proc.send_signal(signal.SIGTERM)
        code = run.finish(timeout=60)
    finally:
        run.kill_all()
    assert code == 143, (code, "".join(run.stderr)[-3000:])
    assert run.error_line().startswith("error: interrupted by SIGTERM during scoring — continue it with resume=true")
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "scores").exists()
    kept = {p: p.read_bytes() for p in (run_dir / "mixture.npz", run_dir / "checkpoints" / "vae" / "best.ckpt",
                                        run_dir / "checkpoints" / "jigsaw" / "best.ckpt")}
    again = Training(run_dir, data_dir, *QUICK, "resume=true")
    try:
        assert again.finish() == 0, "".join(again.stderr)[-3000:]
    finally:
        again.kill_all()
    assert (run_dir / "metrics.json").is_file()
    assert all(p.read_bytes() == data for p, data in kept.items())  # the trained models and the mixture were reused


# ------------------------------------------------------ 3. no worker outlives a killed training
@pytest.mark.parametrize("marker", ["vae epoch 1/6", "] - scoring ...", "figures (drawn beside the metrics) ..."],
                         ids=["side-by-side-training", "scoring", "writing"])
def test_no_process_outlives_a_sigkilled_training(tmp_path, data_dir, marker):
    run = Training(tmp_path / "run", data_dir, "eval.detectors=[]", "fe.extra_layers=[2]", "separation.enabled=false",
                   "fe.n_jobs=-1", "eval.figures=all",  # (TINY has neither worker pool)
                   "training.side_by_side=true", "budget.vae.trainer.max_epochs=6", "budget.jigsaw.trainer.max_epochs=40",
                   "data.num_workers=1")  # scoring's own workers: the Jigsaw child's loky workers may be gone by then
    try:
        run.wait_for(marker)  # the side-by-side children, the data loaders' or the figure's workers start about now
        deadline = time.monotonic() + 20
        children = []
        while not children and time.monotonic() < deadline:
            children = [pid for pid in session_members(run.proc.pid) if pid != run.proc.pid]
            time.sleep(0 if children else 0.05)
        assert children, "the test needs a training with worker processes"
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while session_members(run.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert session_members(run.proc.pid) == [], "workers outlived their killed parent"
        for reader in run.readers:  # nothing holds the training's stdout/stderr open: a reader gets EOF
            reader.join(timeout=max(0.1, deadline - time.monotonic()))
            assert not reader.is_alive()
    finally:
        run.kill_all()


# ----------------------------------- 4. resume checks the run's own files, not only .fevae/config.yaml
@pytest.fixture
def stateless_copy(raced_run, tmp_path) -> tuple[Path, list[str]]:
    """A copy of the raced run without ``.fevae/`` and the overrides it was trained with."""
    run_dir, winner, _ = raced_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    shutil.rmtree(copy / ".fevae")
    return copy, [f"seed={winner['seed']}", f"fe.C={winner['C']}", *QUICK, "resume=true"]


@pytest.mark.parametrize("change, words", [
    ("fe.C=5", ["mixture.npz was fitted with fe.C={C}", "asks for fe.C=5"]),
    ("fe.n=24", ["mixture.npz was fitted with fe.n=32", "asks for fe.n=24"]),
    ("fe.layer=2", ["mixture.npz was fitted on 100 features (layer 1 of", "fe.layer=2 has 80"]),
    ("model.vae.latent_dim=4", ["checkpoints/vae/last.ckpt has", "shape [", "model.vae as configured has shape ["]),
], ids=["C", "n", "layer", "vae_shape"])
def test_resume_without_fevae_state_is_checked_against_the_runs_files(stateless_copy, data_dir, change, words):
    copy, overrides = stateless_copy
    cfg = train_cfg(copy, data_dir, extra=[*overrides, change])
    with pytest.raises(FevaeError) as info:
        with own_run_folder(copy, cfg):
            pass
    winner_c = OmegaConf.load(copy / ".hydra" / "config.yaml").fe.C
    for word in words:
        assert word.format(C=winner_c) in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    with own_run_folder(copy, train_cfg(copy, data_dir, extra=overrides)):  # its own settings: accepted
        pass


def test_the_train_cli_refuses_resume_with_another_c_after_fevae_was_deleted(stateless_copy, data_dir):
    copy, overrides = stateless_copy
    mixture = (copy / "mixture.npz").read_bytes()
    run = Training(copy, data_dir, *overrides, "fe.C=5")
    try:
        code = run.finish()
    finally:
        run.kill_all()
    assert code == 2, "".join(run.stderr)[-3000:]
    line = run.error_line()
    assert "fe.C=5" in line and "mixture.npz was fitted with fe.C=" in line and " — " in line, line
    assert (copy / "mixture.npz").read_bytes() == mixture
    assert OmegaConf.load(copy / ".hydra" / "config.yaml").fe.C != 5  # the refused start wrote no config
