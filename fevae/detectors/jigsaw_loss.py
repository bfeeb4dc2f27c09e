"""The Jigsaw network's own self-supervised loss as an OOD score (Hendrycks et al. 2019, "Using
self-supervised learning can improve model robustness and uncertainty"; Golan & El-Yaniv 2018).

The Jigsaw MLP that gives p_FE its features was trained to tell which of its ``n_permutations``
permutations shuffled an image's tiles. How well it solves the puzzles of a test image measures the
image's *global* structure, with no decoding: per image, every permutation of its centred tiles is
classified (eval mode, no dropout) and the score is the mean log-probability of the true permutation,

    jigsaw_loss(x) = (1/P) Σ_p log softmax(head(trunk(shuffle(tiles(x), π_p))))_p

(= minus the mean cross-entropy; higher = more in-distribution). Its cost is P MLP passes per image.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fevae.detectors.base import Detector
from fevae.errors import FevaeError
from fevae.models.jigsaw import shuffle_tiles


def puzzle_log_probs(jigsaw: torch.nn.Module, x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """``[B]`` float64: the mean over all of the Jigsaw's permutations of the log-probability it gives
    the true permutation of images ``x`` ``[B, C, H, W]`` (centred tiles, no dropout), ``chunk`` images at a time."""
    perms = jigsaw.permutations  # [P, K]
    n_perm = len(perms)
    n_layers = len(jigsaw.hidden_layers)
    labels = torch.arange(n_perm, device=x.device)
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), chunk):
            tiles = jigsaw.tiler.tiles(x[lo : lo + chunk], jitter=False)  # [b, K, D]
            b = len(tiles)
            shuffled = shuffle_tiles(tiles.repeat_interleave(n_perm, 0), perms.repeat(b, 1))  # [b * P, K, D]
            hidden = jigsaw._trunk(shuffled.flatten(1), n_layers, dropout=False)
            logp = torch.log_softmax(jigsaw.head(hidden).double(), dim=-1).view(b, n_perm, n_perm)
            out.append(logp[:, labels, labels].mean(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=x.device)


class JigsawLoss(Detector):
    """``jigsaw_loss``: mean log-probability of the true permutation over all puzzles of the image."""

    name = "jigsaw_loss"

    def __init__(self, chunk: int = 64):
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise FevaeError(f"detector.jigsaw_loss.chunk={chunk!r} is invalid", "set it to an integer ≥ 1 (images per MLP pass)")
        self.chunk = chunk

    def batch(self, x: torch.Tensor, index: torch.Tensor, set_name: str) -> dict[str, torch.Tensor]:
        return {"score": puzzle_log_probs(self.scorer.jigsaw, x, self.chunk)}

    def scores(self, shared: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.name: np.asarray(own["score"], dtype=np.float64)} if "score" in own else {}
