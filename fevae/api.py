"""The Python API: score images with a finished run, train a run.

.. code-block:: python

    import fevae

    run = fevae.load_run("outputs/train/v2_gaussian/<time>")   # models and mixtures loaded once
    scores = run.score(images)          # pandas DataFrame, one row per image, the score CLI's columns
    run.metrics, run.config, run.run_dir

    run_dir = fevae.train_run(["+experiment=v2_gaussian", "profile=smoke"])   # -> Path of the run folder

:func:`load_run` is :func:`fevae.pipeline.runs.load_run` (allow-listed ``_target_`` classes only,
``weights_only`` weights, plain-array mixtures; nothing from the folder is imported or unpickled)
wrapped in a :class:`Run`; :meth:`Run.score` goes through the score CLI's own code
(:func:`fevae.inputs.validate_images`, :func:`fevae.score.score_loaded`,
:func:`fevae.score.output_columns`), so it gives the CLI's numbers, columns and errors.

:func:`train_run` runs ``python -m fevae.train`` in a child process (see its docstring for why).
It is not called ``fevae.train``: that name is the module ``fevae/train.py`` (``python -m
fevae.train``, ``from fevae.train import train``), and a function of the same name in the package
would be replaced by the module as soon as anything imports it.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fevae.utils.io import full_length_scores
from fevae.errors import FevaeError
from fevae.inputs import DEFAULT_IMAGE_SHAPE, image_shape_of, shape_help, validate_images
from fevae.pipeline.runs import CONFIG_FILE, TrainedRun, run_config
from fevae.pipeline.folders import config_differences
from fevae.pipeline.runs import load_run as load_trained_run
from fevae.pipeline.score import ScoringParts, output_columns, score_loaded, scoring_parts
from fevae.utils.cli import CONFIG_DIR, override_key
from fevae.utils.log import lightning_quiet
from fevae.pipeline.checks import validate_config

__all__ = ["Run", "load_run", "train_run", "train"]

#: settings a :meth:`Run.score` call may override (the models and mixtures were loaded with the rest)
SCORE_MAY_CHANGE = ("eval", "trainer")
METRICS_FILE = "metrics.json"


def compose_config(config_name: str, overrides: Iterable[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """``conf/<config_name>.yaml`` composed with ``overrides`` as its CLI would, outside any Hydra app.

    Hydra's global state (an app this is called from, a test's composed config) is left as it was.
    A bad override is one :class:`FevaeError` (the CLI prints the same as a Hydra error).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    saved = GlobalHydra.instance().hydra
    GlobalHydra.instance().hydra = None
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)
    except (HydraException, OmegaConfBaseException) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FevaeError(f"overrides {overrides}: {first}", f"check them against conf/{config_name}.yaml and its config groups") from err
    finally:
        GlobalHydra.instance().hydra = saved


def _overrides_list(overrides: Iterable[str] | str | None) -> list[str]:
    """Overrides as a list: one string is one override (``"eval.n_samples=5"``), never its characters."""
    if overrides is None:
        return []
    if isinstance(overrides, (str, bytes)):
        overrides = [overrides.decode() if isinstance(overrides, bytes) else overrides]
    return [str(o) for o in overrides]


def _scoring_overrides(overrides: Iterable[str] | str) -> list[str]:
    overrides = _overrides_list(overrides)
    hydra_keys = [o for o in overrides if override_key(o) == "hydra" or override_key(o).startswith("hydra.")]
    if hydra_keys:
        raise FevaeError(f"overrides {hydra_keys} set Hydra's own settings, which scoring does not use", "leave them out")
    return overrides


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """Restore the global RNGs (and Lightning's seed variables) on exit: scoring seeds them with the run's seed."""
    state = random.getstate(), np.random.get_state()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []  # scoring runs there (accelerator=auto)
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(state[0])
        np.random.set_state(state[1])
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def as_images(images: Any, name: str = "images", image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """A numpy array or torch tensor of images, checked as the score CLI checks a file's
    (:func:`fevae.inputs.validate_images`) against ``image_shape`` (C, H, W): [N,H,W] (or [N,1,H,W])
    for one channel, [N,H,W,C] for colour; uint8 pixels or floats in [0,1]."""
    if isinstance(images, torch.Tensor):
        images = _tensor_array(images, name, image_shape)
    if isinstance(images, np.ma.MaskedArray):
        raise FevaeError(f"input={name} is a masked array, and scoring has no notion of masked pixels",
                         "fill the masked pixels (images.filled(0)) or drop those images, then pass a plain array")
    if not isinstance(images, np.ndarray):
        raise FevaeError(f"input={name} is a {type(images).__name__}, not a numpy array or torch tensor", shape_help(image_shape))
    if images.dtype.kind == "c":
        raise FevaeError(f"input={name} has complex dtype {images.dtype}", "pass real pixel values: " + shape_help(image_shape))
    return validate_images(np.ascontiguousarray(np.asarray(images)), name, image_shape=image_shape)


def _tensor_array(images: torch.Tensor, name: str, image_shape: tuple[int, int, int]) -> np.ndarray:
    """A dense, real torch tensor as a numpy array; bfloat16/float16 become float32 (exact: every
    half-precision value is a float32 one); sparse, meta, quantized, nested and complex tensors are refused."""
    kind = ("a meta tensor (shape only, no values)" if images.is_meta else
            f"a sparse tensor ({images.layout})" if images.layout != torch.strided else
            "a quantized tensor" if images.is_quantized else
            "a nested tensor" if getattr(images, "is_nested", False) else
            f"a complex tensor ({images.dtype})" if images.is_complex() else None)
    if kind is not None:
        fix = {"a meta": "pass a tensor that holds its pixel values", "a sparse": "pass images.to_dense()",
               "a quantized": "pass images.dequantize()", "a nested": "pass a regular [N,...] tensor (torch.stack)"}
        raise FevaeError(f"input={name} is {kind}, which is not scored",
                         next((v for k, v in fix.items() if kind.startswith(k)), "pass real pixel values: " + shape_help(image_shape)))
    images = images.detach()
    if images.dtype in (torch.bfloat16, torch.float16):
        images = images.float()
    return images.cpu().numpy()


def scores_frame(scores: dict[str, np.ndarray]):
    """The scores as a DataFrame: one row per image, the score CLI's columns in its order
    (:func:`fevae.score.output_columns`); a detector scored on a subset of the images only is NaN elsewhere."""
    import pandas as pd

    full = full_length_scores(scores)
    columns = output_columns(scores)
    data = {column: full[column] for column in columns}
    return pd.DataFrame(data, columns=columns)


class Run:
    """A finished run, loaded once: :meth:`score` images with it; its :attr:`metrics` and :attr:`config`.

    Made by :func:`load_run`. ``trained`` is the :class:`fevae.pipeline.runs.TrainedRun` (config, VAE, Jigsaw,
    mixtures) that every :meth:`score` call reuses.
    """

    def __init__(self, trained: TrainedRun, overrides: Iterable[str] = ()):
        self.trained = trained
        self.overrides = list(overrides)
        # what scoring reads from the folder besides the models (fitted detectors, the background VAE), loaded by
        # the first call and kept, per list of a call's overrides (they may change eval.detectors or eval.schemes)
        self._parts: dict[tuple[str, ...], ScoringParts] = {}
        self._configs: dict[tuple[str, ...], DictConfig] = {}  # a call's overrides -> its composed, checked config

    def __repr__(self) -> str:
        return f"fevae.Run({str(self.run_dir)!r})"

    @property
    def run_dir(self) -> Path:
        return self.trained.run_dir

    @property
    def config(self) -> DictConfig:
        """The run's config (its ``.hydra/config.yaml`` with the load's overrides), a read-only copy."""
        cfg = copy.deepcopy(self.trained.cfg)
        OmegaConf.set_readonly(cfg, True)
        return cfg

    @property
    def metrics(self) -> dict[str, Any]:
        """The run's ``metrics.json``, parsed (read at each access)."""
        path = self.run_dir / METRICS_FILE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise FevaeError(f"{self.run_dir} has no {METRICS_FILE}: the run stopped before scoring", "finish it with resume=true") from None
        except (OSError, ValueError) as err:
            raise FevaeError(f"{path} is not readable JSON ({type(err).__name__})", "re-score the run with `python -m fevae.evaluate`") from err

    def score(self, images: Any, overrides: Iterable[str] = (), stream_name: str = "input"):
        """Scores of ``images`` (numpy or torch, the run's shape: [N,H,W] or [N,H,W,C] uint8 0–255 or floats in [0,1]) as a pandas DataFrame.

        One row per image in input order, the score CLI's columns in its order, and the same numbers
        as ``python -m fevae.score run_dir=... input=<the images as .npy> [overrides]``
        (``likelihood_regret`` is NaN past the first ``eval.regret.subset`` rows). ``overrides`` are
        the CLI's scoring overrides (``eval.*``, ``trainer.*``, e.g. ``["eval.n_samples=50"]``) on
        top of the load's; the models are not reloaded, and what else the call reads from the folder (the fitted
        detectors' ``detectors.npz``, the background VAE) and the config composed from ``overrides`` are loaded by
        the first call that needs them and kept for the next ones. Invalid images raise the CLI's
        :class:`FevaeError`. The global RNG state is left as it was, and Lightning's notices are not shown.
        """
        trained = self.trained
        x = as_images(images, image_shape=image_shape_of(trained.cfg.data))
        overrides = _scoring_overrides(overrides)
        if overrides:
            trained = dataclasses.replace(self.trained, cfg=self._scoring_config(overrides))
        key = tuple(overrides)
        with _rng_kept(), lightning_quiet():
            if key not in self._parts:
                self._parts[key] = scoring_parts(trained)
            scores = score_loaded(trained, x, stream_name, self._parts[key])
        return scores_frame(scores)

    def _scoring_config(self, overrides: list[str]) -> DictConfig:
        """The run's config with a call's scoring ``overrides``, composed and checked once per distinct list."""
        key = tuple(overrides)
        if key not in self._configs:
            every = self.overrides + overrides
            cfg = run_config(self.run_dir, every, compose_config("score", every))
            validate_config(cfg, source=str(self.run_dir / CONFIG_FILE), skip=())
            differ = config_differences(self.trained.cfg, cfg, may_change=SCORE_MAY_CHANGE)
            if differ:
                raise FevaeError(
                    f"score(overrides=...) changes {', '.join(differ)}, which the loaded models and mixtures were made with",
                    "override only eval.* and trainer.* here; pass other settings to load_run(run_dir, overrides=[...])",
                )
            self._configs[key] = cfg
        return self._configs[key]

    def outlier_score(self, images: Any, overrides: Iterable[str] = (), stream_name: str = "input"):
        """:meth:`score` in pytorch-ood's convention, **higher = more OOD**: the same DataFrame negated (the
        same columns and rows; a subset detector's NaN rows stay NaN). AUROC computed with the OOD images as
        the positive class on these equals fevae's AUROC on :meth:`score`."""
        return -self.score(images, overrides, stream_name)


def load_run(run_dir: str | Path, overrides: Iterable[str] = (), map_location: str | torch.device = "cpu") -> Run:
    """Load a finished run (``python -m fevae.train``'s folder) once, to score images with it.

    ``overrides`` are the score CLI's (``eval.*``, ``trainer.*``), applied as it applies them: the
    score config (``conf/score.yaml``) is composed with them, so group overrides and today's
    defaults of scoring settings an older run lacks come from it. The folder is loaded by
    :func:`fevae.pipeline.runs.load_run`: allow-listed classes, ``weights_only`` weights, no pickles.
    """
    overrides = _scoring_overrides(overrides)
    trained = load_trained_run(run_dir, overrides, compose_config("score", overrides), map_location=map_location)
    return Run(trained, overrides)


def _hydra_quoted(value: str) -> str:
    """``value`` as one quoted Hydra override value (a path with spaces, ``=``, commas...)."""
    return "'" + value.replace("'", "\\'") + "'"


def train_run(overrides: Iterable[str] = (), quiet: bool = False) -> Path:
    """Train one run, ``python -m fevae.train <overrides>``, and return its run folder (absolute).

    Runs the CLI itself in a child process, so the folder is a CLI run's in every file (``.hydra/``
    config, overrides and Hydra files, ``train.log`` from Hydra's logging, the ownership lock of
    :func:`fevae.pipeline.folders.own_run_folder`, checkpoints, mixtures, scores, metrics, report) and stays so
    when the CLI changes; ``trainer=ddp`` works (Lightning's DDP launcher re-runs the command line,
    which inside this process would be the caller's script); and this process's logging, RNGs,
    torch settings and Hydra state are left alone. The cost is one Python start-up (seconds).

    The folder is ``hydra.run.dir`` as composed here from ``overrides`` (default
    ``outputs/train/<experiment>/<time>``, relative to the working directory) and is passed to
    the child, so the two cannot disagree on the time. The child's output is forwarded to
    ``sys.stdout`` unless ``quiet`` (the run's ``train.log`` has it either way). A user error (bad
    setting, missing data, folder in use) is the CLI's :class:`FevaeError`; a sweep (``-m``) is refused.
    """
    overrides = _overrides_list(overrides)
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        raise FevaeError(f"train_run trains one run; {flags} are command-line flags", "leave them out; sweep with `python -m fevae.train -m ...`")
    cfg = compose_config("train", overrides, return_hydra_config=True)
    run_dir = Path(os.path.abspath(str(cfg.hydra.run.dir)))
    args = [o for o in overrides if override_key(o) != "hydra.run.dir"] + [f"hydra.run.dir={_hydra_quoted(str(run_dir))}"]
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[1])  # the child imports this very fevae
    env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
    tail: collections.deque[str] = collections.deque(maxlen=40)
    error = None
    with subprocess.Popen([sys.executable, "-m", "fevae.train", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, text=True, errors="replace", env=env) as child:
        try:
            for line in child.stdout:
                tail.append(line)
                if line.startswith("error: "):
                    error = line[len("error: "):].strip()
                if not quiet:
                    sys.stdout.write(line)
                    sys.stdout.flush()
            code = child.wait()
        except BaseException:  # interrupted (Ctrl-C): stop the training too
            child.terminate()
            child.wait()
            raise
    if code == FevaeError.exit_code and error:
        raise FevaeError(error)
    if code != 0:
        raise RuntimeError(f"python -m fevae.train {' '.join(args)} failed (exit status {code}):\n{''.join(tail)}")
    if not (run_dir / CONFIG_FILE).is_file():
        raise RuntimeError(f"python -m fevae.train finished but {run_dir / CONFIG_FILE} is missing")
    return run_dir


#: ``fevae.api.train(...)``: the same as :func:`train_run`
train = train_run
