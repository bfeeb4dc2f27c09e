"""``python -m fevae.data [hydra overrides]`` (console script ``fevae-data``): the data doctor.

Prints, for every split of every registered dataset (FashionMNIST, MNIST, KMNIST, EMNIST letters,
CIFAR-10, SVHN; see :mod:`fevae.data.discovery`), where it is read from and a content check, or
every folder looked in when it is missing. Exit status 0 when the data a default run needs
(FashionMNIST train and test, MNIST test) is present and sound, whatever the other datasets' state;
1 when not; 2 on a user error (e.g. ``paths.data_dir`` does not exist).
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from fevae.data.doctor import run_doctor
from fevae.utils.cli import CONFIG_DIR, run_cli, user_errors


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="data_doctor")
@user_errors
def main(cfg: DictConfig) -> None:
    """Run the data doctor on ``cfg.data`` and exit 1 when something required is wrong."""
    lines, ok = run_doctor(cfg.data.data_dir, download=cfg.data.download, download_dir=cfg.data.download_dir)
    print("\n".join(lines), flush=True)
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
