"""The Jigsaw network's own self-supervised loss as an OOD score (Hendrycks et al. 2019, "Using
self-supervised learning can improve model robustness and uncertainty"; Golan & El-Yaniv 2018).

The Jigsaw MLP that gives p_FE its features was trained to tell which of its ``n_permutations``
permutations shuffled an image's tiles. How well it solves the puzzles of a test image measures the
image's *global* structure, with no decoding: per image, every permutation of its centred tiles is
classified (eval mode, no dropout) and the score is the mean log-probability of the true permutation,

    jigsaw_loss(x) = (1/P) Σ_p log softmax(head(trunk(shuffle(tiles(x), π_p))))_p

(= minus the mean cross-entropy; higher = more in-distribution). Its cost is P MLP passes per image.

Two options (both off by default, ``conf/detector/jigsaw_loss.yaml``):

* ``jitter_draws: K`` — the tiles cut with the Jigsaw's training jitter instead of centred, the score
  averaged over K such tilings. Each image's K tilings depend on (run seed, set, image index) only, like the
  Monte-Carlo noise (:func:`fevae.scoring.noise.item_seed`), so not on batch or process count. Cost ×K.
* ``decoded_samples: S`` — adds the column ``jigsaw_loss_apo``, the analogue of p_FE's second factor:
  ``jigsaw_loss(x) + (1/S) Σ_s jigsaw_loss(φ(z_s))`` over the first S posterior draws z_s ~ q(z|x) of the APO
  scheme (the same z as APO's p_FE for those draws). Cost: S decodes and S×P MLP passes more per image.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fevae.detectors.base import Detector
from fevae.errors import FevaeError
from fevae.models.jigsaw import shuffle_tiles
from fevae.scoring.estimators import sample_chunks
from fevae.scoring.noise import item_seed

#: added to a set's noise stream for the jitter draws, so they never share a generator seed with the Monte-Carlo noise
JITTER_STREAM = 1 << 24


def jittered_tiles(jigsaw: torch.nn.Module, x: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """Tiles ``[B, K, D]`` of images ``x`` cut with the Jigsaw's training jitter, image ``b``'s from a generator
    seeded with ``seeds[b]`` (so an image's tiling does not depend on the batch it is in)."""
    gen = torch.Generator(device="cpu")
    out = []
    for image, seed in zip(x, seeds):
        gen.manual_seed(seed)
        out.append(jigsaw.tiler.tiles(image[None], jitter=True, generator=gen))
    return torch.cat(out) if out else jigsaw.tiler.tiles(x, jitter=False)


def puzzle_log_probs(jigsaw: torch.nn.Module, x: torch.Tensor, chunk: int = 64,
                     tile_seeds: list[int] | None = None) -> torch.Tensor:
    """``[B]`` float64: the mean over all of the Jigsaw's permutations of the log-probability it gives
    the true permutation of images ``x`` ``[B, C, H, W]`` (centred tiles, no dropout), ``chunk`` images at a time.
    ``tile_seeds`` (one per image): jittered tiles instead (:func:`jittered_tiles`)."""
    perms = jigsaw.permutations  # [P, K]
    n_perm = len(perms)
    n_layers = len(jigsaw.hidden_layers)
    labels = torch.arange(n_perm, device=x.device)
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), chunk):
            part = x[lo : lo + chunk]
            tiles = (jigsaw.tiler.tiles(part, jitter=False) if tile_seeds is None  # [b, K, D]
                     else jittered_tiles(jigsaw, part, tile_seeds[lo : lo + chunk]))
            b = len(tiles)
            shuffled = shuffle_tiles(tiles.repeat_interleave(n_perm, 0), perms.repeat(b, 1))  # [b * P, K, D]
            hidden = jigsaw._trunk(shuffled.flatten(1), n_layers, dropout=False)
            logp = torch.log_softmax(jigsaw.head(hidden).double(), dim=-1).view(b, n_perm, n_perm)
            out.append(logp[:, labels, labels].mean(1))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.float64, device=x.device)


class JigsawLoss(Detector):
    """``jigsaw_loss``: mean log-probability of the true permutation over all puzzles of the image
    (and ``jigsaw_loss_apo`` with ``decoded_samples``)."""

    name = "jigsaw_loss"

    def __init__(self, chunk: int = 64, jitter_draws: int = 0, decoded_samples: int = 0):
        for key, value, low in (("chunk", chunk, 1), ("jitter_draws", jitter_draws, 0), ("decoded_samples", decoded_samples, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FevaeError(f"detector.jigsaw_loss.{key}={value!r} is invalid", f"set it to an integer ≥ {low}")
        self.chunk, self.jitter_draws, self.decoded_samples = chunk, jitter_draws, decoded_samples

    def outputs(self) -> list[str]:
        return [self.name] + ([f"{self.name}_apo"] if self.decoded_samples else [])

    def _log_probs(self, x: torch.Tensor, index: torch.Tensor, set_name: str) -> torch.Tensor:
        jigsaw = self.scorer.jigsaw
        if not self.jitter_draws:
            return puzzle_log_probs(jigsaw, x, self.chunk)
        stream = JITTER_STREAM + self.scorer.stream(set_name, "PR")
        draws = [puzzle_log_probs(jigsaw, x, self.chunk, [item_seed(self.scorer.seed, stream, i, k) for i in index.tolist()])
                 for k in range(self.jitter_draws)]
        return torch.stack(draws).mean(0)

    def batch(self, x: torch.Tensor, index: torch.Tensor, set_name: str) -> dict[str, torch.Tensor]:
        out = {"score": self._log_probs(x, index, set_name)}
        if self.decoded_samples:
            s = self.scorer
            chunks = sample_chunks(  # the APO scheme's first draws: the same z as its p_FE
                x, index, decode=s.decode, log_likelihood=s.vae.log_likelihood, phi=s.vae.phi, encode=s.vae.encode,
                features={"jigsaw": lambda images: puzzle_log_probs(s.jigsaw, images, self.chunk)[:, None]},
                scheme="APO", n_samples=self.decoded_samples, chunk_size=s.chunk_size, seed=s.seed, stream=s.stream(set_name, "APO"))
            out["decoded"] = torch.cat([c["f_phi/jigsaw"][..., 0] for c in chunks]).mean(0)
        return out

    def scores(self, shared: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "score" not in own:
            return {}
        out = {self.name: np.asarray(own["score"], dtype=np.float64)}
        if "decoded" in own:
            out[f"{self.name}_apo"] = out[self.name] + np.asarray(own["decoded"], dtype=np.float64)
        return out
