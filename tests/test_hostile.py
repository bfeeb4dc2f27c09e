"""Hostile and careless inputs (issue #16): each probe is a bad input fevae must refuse cleanly.

Clean = one ``error: <what> — <fix>`` line (a :class:`FevaeError`; exit status 2 on the command
line), before any work is done, nothing executed from a run folder, nothing half-written.
docs/guarantees.md ("What fevae guarantees") counts the probes of this file (``pytest --collect-only``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fevae.data.doctor import check_split
from fevae.data.idx import read_images_and_labels, write_idx
from fevae.errors import FevaeError
from fevae.evaluation.driver import run_scoring
from fevae.inputs import read_images
from fevae.pipeline.runs import load_run
from fevae.pipeline.folders import config_differences, own_run_folder
from fevae.pipeline.score import check_output_path, write_csv_atomic
from fevae.pipeline.train import train
from fevae.training import load_checkpoint
from fevae.utils.cli import as_user_error, user_errors
from fevae.utils.io import write_bytes_atomic
from fevae.pipeline.checks import validate_config
from fevae.validation import check_trainer_config
from helpers import labelled_images, make_data_dir, write_split
from pipeline import TINY, save_run_config, train_cfg

pytestmark = pytest.mark.slow

TORCH_HINT = "weights_only=False"


class Payload:
    """Unpickling this runs ``touch <marker>``: the code a crafted file would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, Path]:
    """One tiny finished V2 run shared by the probes that need a run folder."""
    root = tmp_path_factory.mktemp("hostile")
    data_dir = make_data_dir(root / "data")
    run_dir = root / "run"
    cfg = train_cfg(run_dir, data_dir, extra=["eval.detectors=[]", "fe.extra_layers=[]"])  # fast: the probes need a run, not its scores
    save_run_config(cfg, run_dir)
    train(cfg)
    return run_dir, data_dir


def planted(trained_run, tmp_path: Path, edit) -> Path:
    """A copy of the trained run whose .hydra/config.yaml is changed by ``edit(dict)``."""
    run_dir = tmp_path / "planted"
    shutil.copytree(trained_run[0], run_dir)
    path = run_dir / ".hydra" / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(yaml.safe_dump(cfg))
    return run_dir


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The single ``error:`` line of a failed CLI call (exit 2, no traceback)."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def cli(module: str, *args: str, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


# ----------------------------------------------------------------- 1. a run folder cannot run code
def _payload_file(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / "payload.pt"
    torch.save(Payload(marker), path)
    return path


PLANTS = {
    "vae_target_os_system": lambda m, p: {"model.vae": {"_target_": "os.system", "command": f"touch {m}"}},
    "jigsaw_target_torch_load": lambda m, p: {"model.jigsaw": {"_target_": "torch.load", "f": str(p), "weights_only": False}},
    "data_target_os_system": lambda m, p: {"data": {"_target_": "os.system", "command": f"touch {m}"}},
    "trainer_target_os_system": lambda m, p: {"trainer": {"_target_": "os.system", "command": f"touch {m}"}},
    "trainer_nested_target": lambda m, p: {"trainer.plugins": {"_target_": "torch.load", "f": str(p), "weights_only": False}},
    "target_at_another_key": lambda m, p: {"eval.hook": {"_target_": "os.system", "command": f"touch {m}"}},
    "vae_likelihood_target": lambda m, p: {"model.vae.likelihood": {"_target_": "os.system", "command": f"touch {m}"}},
    "target_through_interpolation": lambda m, p: {"evil": {"_target_": "os.system", "command": f"touch {m}"}, "model.vae": "${evil}"},
}


def _set(cfg: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for key in path:
        cfg = cfg.setdefault(key, {})
    cfg[last] = value


@pytest.mark.parametrize("name", sorted(PLANTS))
def test_a_planted_target_in_a_run_folder_does_not_run(trained_run, tmp_path, name):
    marker = tmp_path / "pwned"
    payload = _payload_file(tmp_path, marker)
    run_dir = planted(trained_run, tmp_path, lambda cfg: [_set(cfg, k, v) for k, v in PLANTS[name](marker, payload).items()])
    with pytest.raises(FevaeError, match="_target_|not a mapping|not a group"):
        load_run(run_dir)
    assert not marker.exists()


def test_the_score_cli_refuses_a_planted_torch_load_payload(trained_run, tmp_path):
    marker = tmp_path / "pwned"
    payload = _payload_file(tmp_path, marker)
    run_dir = planted(trained_run, tmp_path, lambda cfg: cfg["model"].update(jigsaw={"_target_": "torch.load", "f": str(payload), "weights_only": False}))
    np.save(tmp_path / "x.npy", np.zeros((2, 28, 28), np.uint8))
    line = one_line_error(cli("fevae.score", f"run_dir={run_dir}", f"input={tmp_path / 'x.npy'}", f"output={tmp_path / 'o.csv'}"))
    assert "model.jigsaw._target_='torch.load'" in line and TORCH_HINT not in line
    assert not marker.exists() and not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("content", ["- a\n- list\n", "model: [unclosed\n", "\x00\x01binary\xff"])
def test_an_unreadable_run_config_is_one_error(trained_run, tmp_path, content):
    run_dir = planted(trained_run, tmp_path, lambda cfg: None)
    (run_dir / ".hydra" / "config.yaml").write_bytes(content.encode("latin-1"))
    with pytest.raises(FevaeError, match="config"):
        load_run(run_dir)


@pytest.mark.parametrize("setting, value", [("model.vae.latent_dim", 0), ("model.vae.hidden_dim", "50; rm -rf /"),
                                            ("model.jigsaw.n_permutations", -3), ("model.vae.unknown_key", 1)])
def test_a_run_folder_with_invalid_model_values_is_refused(trained_run, tmp_path, setting, value):
    run_dir = planted(trained_run, tmp_path, lambda cfg: _set(cfg, setting, value))
    with pytest.raises(FevaeError, match=setting.split(".")[-1]):
        load_run(run_dir)


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "hydra.utils.instantiate"])
def test_run_scoring_builds_only_lightnings_trainer(trained_run, tmp_path, target):
    run = load_run(trained_run[0])
    cfg = run.cfg.copy()
    marker = tmp_path / "pwned"
    cfg.trainer = {"_target_": target, "command": f"touch {marker}"}
    with pytest.raises(FevaeError, match="Trainer"):
        run_scoring(cfg, run.vae, run.jigsaw, {}, {})
    assert not marker.exists()


def test_the_trainer_check_accepts_lightning_and_refuses_nested_targets():
    for target in ("lightning.Trainer", "lightning.pytorch.Trainer"):
        check_trainer_config(OmegaConf.create({"_target_": target, "max_epochs": 1}))
    with pytest.raises(FevaeError, match="trainer.plugins"):
        check_trainer_config(OmegaConf.create({"_target_": "lightning.Trainer", "plugins": [{"_target_": "os.system"}]}))


# ------------------------------------------------------------------ 6. checkpoints: weights only
def _bad_checkpoints(tmp_path: Path, good: Path) -> dict[str, Path]:
    marker = tmp_path / "pwned"
    files = {
        "random_bytes": np.random.default_rng(0).bytes(4096),
        "pickle_payload": pickle.dumps(Payload(marker)),
        "empty": b"",
        "truncated": good.read_bytes()[: len(good.read_bytes()) // 2],
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.ckpt"
        paths[name].write_bytes(data)
    for name, obj in {"torch_payload": Payload(marker), "saved_list": [1, 2, 3], "no_state_dict": {"epoch": 3},
                      "non_tensor_weights": {"state_dict": {"w": "not a tensor"}}}.items():
        paths[name] = tmp_path / f"{name}.ckpt"
        torch.save(obj, paths[name])
    return paths


BAD_CHECKPOINTS = ["random_bytes", "pickle_payload", "empty", "truncated", "torch_payload", "saved_list", "no_state_dict", "non_tensor_weights"]


@pytest.mark.parametrize("name", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_one_error_that_never_suggests_unsafe_loading(trained_run, tmp_path, name):
    good = trained_run[0] / "checkpoints" / "vae" / "best.ckpt"
    path = _bad_checkpoints(tmp_path, good)[name]
    with pytest.raises(FevaeError) as info:
        load_checkpoint(path)
    assert TORCH_HINT not in str(info.value).split(" — ")[0] and "\n" not in str(info.value)
    assert "never load it with weights_only=False" in str(info.value)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("name", ["pickle_payload", "saved_list"])
def test_a_run_with_a_bad_checkpoint_is_refused_by_the_score_cli(trained_run, tmp_path, name):
    run_dir = planted(trained_run, tmp_path, lambda cfg: None)
    shutil.copy(_bad_checkpoints(tmp_path, run_dir / "checkpoints" / "vae" / "best.ckpt")[name], run_dir / "checkpoints" / "vae" / "best.ckpt")
    with pytest.raises(FevaeError, match="checkpoint"):
        load_run(run_dir)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------- 2. one process per run folder
LOCK_HOLDER = """
import sys, time
from omegaconf import OmegaConf
from fevae.pipeline.folders import own_run_folder
with own_run_folder(sys.argv[1], OmegaConf.create({"seed": 1, "resume": False})):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_training_into_a_busy_run_folder_fails_at_once(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (run_dir / ".hydra").mkdir()
        (run_dir / ".hydra" / "config.yaml").write_text("seed: 1\n")
        shutil.copytree(run_dir / ".hydra", run_dir / ".fevae" / "hydra")  # what the holder recorded at its start
        t0 = time.perf_counter()
        result = cli("fevae.train", "+experiment=v2_gaussian", *TINY, f"paths.data_dir={synthetic_data_dir}", f"hydra.run.dir={run_dir}")
        line = one_line_error(result)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in line and "in use" in line
        assert time.perf_counter() - t0 < 60 and not (run_dir / "checkpoints").exists()
        assert (run_dir / ".hydra" / "config.yaml").read_text() == "seed: 1\n"  # Hydra's rewrite was undone
    finally:
        holder.kill()
        holder.wait()


def test_two_owners_in_one_process_are_refused(tmp_path):
    cfg = OmegaConf.create({"seed": 1, "resume": False})
    with own_run_folder(tmp_path / "run", cfg):
        with pytest.raises(FevaeError, match=f"in use by pid {os.getpid()}"):
            with own_run_folder(tmp_path / "run", cfg):
                pass


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    state = tmp_path / "run" / ".fevae"
    state.mkdir(parents=True)
    (state / "lock").write_text("")
    (state / "owner.json").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "then"}))
    with own_run_folder(tmp_path / "run", OmegaConf.create({"seed": 1, "resume": False})):
        assert json.loads((state / "owner.json").read_text())["pid"] == os.getpid()
    assert f"pid {dead.pid}" in caplog.text and not (state / "owner.json").exists()


def test_ddp_ranks_other_than_zero_do_not_take_the_lock(tmp_path, monkeypatch):
    cfg = OmegaConf.create({"seed": 1, "resume": False})
    with own_run_folder(tmp_path / "run", cfg):
        for var in ("LOCAL_RANK", "RANK"):
            monkeypatch.setenv(var, "1")
            with own_run_folder(tmp_path / "run", cfg):  # rank 1 of the same run: no error, no lock
                pass
            monkeypatch.delenv(var)


@pytest.mark.parametrize("local_rank", ["1", "0"])
def test_a_ddp_rank_above_zero_ends_when_its_launcher_is_killed(tmp_path, local_rank):
    """A launcher (rank 0 under Lightning's DDP launcher, or torchrun's agent) killed with SIGKILL starts a rank
    (LOCAL_RANK=1) that runs a fevae entry point and is then killed: the rank ends within seconds instead of waiting
    in a collective until gloo's timeout. Rank 0 itself watches nothing (it is the user's process)."""
    import signal

    child = ("import os, time\nfrom fevae.utils.cli import user_errors\n@user_errors\ndef task():\n"
             "    time.sleep(60)\ntask()\n")
    launcher = ("import os, subprocess, sys\n"
                f"env = dict(os.environ, LOCAL_RANK={local_rank!r})\n"
                f"p = subprocess.Popen([sys.executable, '-c', {child!r}], env=env)\n"
                f"open({str(tmp_path / 'pid')!r}, 'w').write(str(p.pid))\n"
                "p.wait()\n")
    parent = subprocess.Popen([sys.executable, "-c", launcher])
    pid_file = tmp_path / "pid"
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    rank = int(pid_file.read_text())
    time.sleep(3)  # the rank has imported fevae and entered its task
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended
        except OSError:
            return False

    deadline = time.monotonic() + 10
    while alive(rank) and time.monotonic() < deadline:
        time.sleep(0.1)
    try:
        assert alive(rank) == (local_rank == "0")
    finally:
        if alive(rank):
            os.kill(rank, signal.SIGKILL)


def test_a_fresh_training_into_a_folder_holding_a_run_is_refused(tmp_path):
    cfg = OmegaConf.create({"seed": 1, "resume": False})
    with own_run_folder(tmp_path / "run", cfg):
        pass
    with pytest.raises(FevaeError, match="already holds a run .* resume=true"):
        with own_run_folder(tmp_path / "run", cfg):
            pass


# ------------------------------------------------------------- 3. resume only with the same config
def test_resume_with_changed_settings_is_refused_naming_them(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    with own_run_folder(run_dir, train_cfg(run_dir, synthetic_data_dir)):
        pass
    for extra, keys in ((["fe.C=3"], "fe.C"), (["seed=7"], "data.seed, model.jigsaw.permutation_seed, seed"), (["model.vae.latent_dim=4", "eval.n_samples=3"], "eval.n_samples, model.vae.latent_dim")):
        cfg = train_cfg(run_dir, synthetic_data_dir, extra=["resume=true", *extra])
        with pytest.raises(FevaeError, match=f"started with: {keys}(?: |$)"):
            with own_run_folder(run_dir, cfg):
                pass
    # settings that change no number may differ
    cfg = train_cfg(run_dir, synthetic_data_dir, extra=["resume=true", "trainer.enable_progress_bar=true", f"paths.cache_dir={tmp_path}"])
    with own_run_folder(run_dir, cfg):
        pass


def test_the_resume_check_reads_the_config_of_the_first_start_not_hydras_rewrite(tmp_path, synthetic_data_dir):
    """Hydra rewrites .hydra/config.yaml before the task runs; the CLI still refuses and restores it."""
    run_dir = tmp_path / "run"
    first = train_cfg(run_dir, synthetic_data_dir)
    save_run_config(first, run_dir)
    with own_run_folder(run_dir, first):
        pass
    original = (run_dir / ".hydra" / "config.yaml").read_text()
    result = cli("fevae.train", "+experiment=v2_gaussian", *TINY, "fe.C=3", "resume=true",
                 f"paths.data_dir={synthetic_data_dir}", f"hydra.run.dir={run_dir}")
    assert "fe.C" in one_line_error(result)
    assert (run_dir / ".hydra" / "config.yaml").read_text() == original
    assert config_differences(OmegaConf.create(original), OmegaConf.create(original)) == []


# ------------------------------------------------------------ 4. Optuna: a failed trial is a failed trial
def test_an_optuna_sweep_goes_on_after_a_failed_trial(tmp_path, synthetic_data_dir):
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("fe.C=")]
    # TPE with the default seed 12345 draws fe.C = 2, 40, 2 for its first (random) trials; fe.C=40 > fe.n=32 fails
    cmd = ["-m", "+experiment=v2_gaussian", "hparams_search=optuna", *tiny, f"paths.data_dir={synthetic_data_dir}",
           f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=3",
           "fe.layer=1", "fe.pre_activation=false", "fe.reg_covar=0.001", "fe.C=choice(2,3,40)",
           "eval.detectors=[]", "fe.extra_layers=[]", "cache.enabled=false"]  # fast; the model cache is tested in test_sweep
    result = cli("fevae.train", *cmd, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert len(jobs) == 3
    failed = [j for j in jobs if (j / "error.txt").exists()]
    c_of = {j: OmegaConf.load(j / ".hydra" / "config.yaml").fe.C for j in jobs}
    assert failed and len(failed) < 3 and all(c_of[j] == 40 for j in failed)
    assert all("fe.n=32 is smaller than fe.C=40" in (j / "error.txt").read_text() for j in failed)
    assert "Failed experiment: Return value must be float-castable. Got 'failed: fe.n=32 is smaller than fe.C=40" in result.stdout
    results = OmegaConf.load(sweep / "optimization_results.yaml")
    assert results.best_params["fe.C"] in (2, 3) and 0 <= results.best_value <= 1


# ------------------------------------------------- 5. every setting is checked before any training
BAD_SETTINGS = [
    ("data.val_size=-1", "data.val_size"),
    ("data.saltpepper_fraction=2", "data.saltpepper_fraction"),
    ("model.vae.latent_dim=0", "model.vae.latent_dim"),
    ("model.vae.dropout=1.5", "model.vae.dropout"),
    ("model.vae.lr=0", "model.vae.lr"),
    ("model.vae.latent_dim=2.5", "model.vae.latent_dim"),
    ("model.vae.likelihood.name=poisson", "likelihood.name"),
    ("model.vae.likelihood.sigma=huge", "σ mode"),
    ("model.jigsaw.n_permutations=0", "n_permutations"),
    ("model.jigsaw.tile=10", "tile"),
    ("model.jigsaw.grid=4", "exceed"),
    ("model.jigsaw.hidden=[5]", "fe.layer"),
    ("model.jigsaw.dropout=1", "model.jigsaw.dropout"),
    ("+model.vae.latnt_dim=3", "unknown settings"),
    ("model.vae._target_=os.system", "os.system"),
    ("trainer._target_=os.system", "os.system"),
    ("budget.jigsaw.batch_size=0", "budget.jigsaw.batch_size"),
    ("budget.vae.batch_size=-5", "budget.vae.batch_size"),
    ("budget.vae.trainer.max_epochs=0", "max_epochs"),
    ("budget.jigsaw.trainer.limit_train_batches=-1", "limit_train_batches"),
    ("budget.jigsaw.trainer.limit_val_batches=1.5", "limit_val_batches"),
    ("fe.reg_covar=-1", "fe.reg_covar"),
    ("fe.reg_covar=nan", "fe.reg_covar"),
    ("fe.max_iter=0", "fe.max_iter"),
    ("fe.n_init=0", "fe.n_init"),
    ("fe.C=0", "fe.C"),
    ("seed=-1", "seed"),
]


@pytest.mark.parametrize("override, names", BAD_SETTINGS, ids=[o for o, _ in BAD_SETTINGS])
def test_a_bad_setting_is_refused_by_one_validation_pass(tmp_path, synthetic_data_dir, override, names):
    cfg = train_cfg(tmp_path / "run", synthetic_data_dir, extra=[override])
    with pytest.raises(FevaeError, match=names.replace(".", r"\.").replace("[", r"\[")):
        validate_config(cfg)


@pytest.mark.parametrize("override", ["model.vae.latent_dim=0", "model.jigsaw.n_permutations=0", "budget.jigsaw.batch_size=0"])
def test_the_train_cli_refuses_a_bad_setting_in_one_line_before_training(tmp_path, synthetic_data_dir, override):
    run_dir = tmp_path / "run"
    result = cli("fevae.train", "+experiment=v2_gaussian", *TINY, override, f"paths.data_dir={synthetic_data_dir}", f"hydra.run.dir={run_dir}")
    assert override.split("=")[0].split(".")[-1] in one_line_error(result)
    assert "training" not in result.stdout and not (run_dir / "checkpoints").exists()


def test_train_validates_first(tmp_path, synthetic_data_dir):
    cfg = train_cfg(tmp_path / "run", synthetic_data_dir, extra=["fe.max_iter=0", "paths.data_dir=/nonexistent"])
    with pytest.raises(FevaeError, match="fe.max_iter"):  # not the missing data: nothing was read
        train(cfg)


def test_an_instantiation_error_caused_by_a_user_error_is_unwrapped(capsys):
    def build():
        return instantiate({"_target_": "fevae.data.datamodule.FevaeDataModule", "val_size": -1})

    with pytest.raises(InstantiationException) as info:
        build()
    assert isinstance(as_user_error(info.value), FevaeError)
    with pytest.raises(SystemExit) as exit_info:
        user_errors(build)()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: data.val_size=-1 is invalid")


# ------------------------------------------------------------------ 6. output paths, before any work
def test_output_problems_are_found_before_scoring(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "folder").mkdir()
    with pytest.raises(FevaeError, match="is a file, not a folder"):
        check_output_path(tmp_path / "file" / "out.csv")
    with pytest.raises(FevaeError, match="is an existing folder"):
        check_output_path(tmp_path / "folder")
    with pytest.raises(FevaeError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.csv")


@pytest.mark.parametrize("case", ["parent_is_a_file", "output_is_a_folder"])
def test_the_score_cli_checks_the_output_before_the_run(tmp_path, case):
    (tmp_path / "file").write_text("x")
    output = tmp_path / "file" / "o.csv" if case == "parent_is_a_file" else tmp_path
    # the run folder does not exist either: the output problem is reported first, before any work
    line = one_line_error(cli("fevae.score", f"run_dir={tmp_path / 'no_run'}", f"input={tmp_path / 'no_input'}", f"output={output}"))
    assert "output=" in line


# -------------------------------------------------------------- 7. inputs, permissions, labels
def test_score_without_arguments_is_one_error_line(tmp_path):
    line = one_line_error(cli("fevae.score", cwd=tmp_path))
    assert "run_dir, input, output are required" in line and "usage" in line


@pytest.mark.parametrize("name, content", [("images.csv", b"0,0,0,255\n1,2,3,4\n"), ("images.jpg", b"\xff\xd8\xff\xe0JFIF"),
                                           ("images.txt", b"hello"), ("images", b"PK\x03\x04zip")])
def test_an_unsupported_input_format_gets_its_own_hint(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(FevaeError) as info:
        read_images(tmp_path / name)
    assert "unsupported format" in str(info.value) and "re-download" not in str(info.value) and "np.save" in str(info.value)


def test_sixteen_bit_pngs_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    values = np.linspace(0, 65535, 28 * 28).reshape(28, 28).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "a.png")
    images = read_images(tmp_path)
    assert images.dtype == np.float32 and images.shape == (1, 28, 28)
    np.testing.assert_allclose(images[0], values / 65535.0, rtol=0, atol=1e-6)
    assert 0.2 < float(np.mean(images[0] > 0.5)) < 0.8  # not saturated to 0/1


def test_a_single_png_file_is_an_input(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "one.png")
    assert read_images(tmp_path / "one.png").shape == (1, 28, 28)


@pytest.mark.parametrize("writer", ["bytes", "csv"])
def test_outputs_get_the_usual_umask_permissions(tmp_path, writer):
    old = os.umask(0o022)
    try:
        path = tmp_path / "out"
        if writer == "bytes":
            write_bytes_atomic(path, b"x")
        else:
            write_csv_atomic(path, {"log_p_vae_pr": np.zeros(2)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


def test_a_label_outside_0_to_9_is_refused_for_training_as_by_the_doctor(tmp_path):
    images, labels = labelled_images(20, seed=0)
    labels[3] = 200
    write_split(tmp_path, "train", images, labels)
    paths = (tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(FevaeError) as train_err:
        read_images_and_labels(*paths)
    with pytest.raises(FevaeError) as doctor_err:
        check_split("fashionmnist/train", *paths)
    assert "label 200 is outside 0..9" in str(train_err.value) and str(train_err.value) == str(doctor_err.value)


def test_a_training_set_with_label_200_does_not_train(tmp_path):
    data_dir = make_data_dir(tmp_path / "data")
    labels_path = data_dir / "fashion-mnist" / "train-labels-idx1-ubyte.gz"
    from fevae.data.idx import read_idx

    labels = read_idx(labels_path)
    labels[0] = 200
    write_idx(labels_path, labels)
    cfg = train_cfg(tmp_path / "run", data_dir)
    with pytest.raises(FevaeError, match="label 200"):
        train(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
