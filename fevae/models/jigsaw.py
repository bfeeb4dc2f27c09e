"""Self-supervised Jigsaw classifier Γ (Noroozi & Favaro, 2016) used as feature extractor (App. A).

A 3×3 grid of 7×7 tiles is cut from each 28×28 image (the default geometry; any ``grid × grid``
lattice of ``tile × tile`` tiles of all C channels that fits in the C×H×W image is possible, e.g.
3×3 tiles of 8×8 from 10×10 cells at offset 1 for 3×32×32 images), shuffled by one of
``n_permutations`` fixed permutations, and an MLP (hidden 100-80-60-40, ReLU + Dropout(0.2)) on the
flattened tiles (``n_tiles × C × tile × tile`` inputs) predicts which permutation was applied. :meth:`Jigsaw.features` returns a hidden layer's activations for the *unshuffled*
centred tiles, used as the low-dimensional features f = l(x) and f = l(φ(z)).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from omegaconf import ListConfig
from torch import Tensor, nn
from torch.nn import functional as F

from fevae.errors import FevaeError
from fevae.models.likelihoods import IMAGE_SHAPE, check_image_shape


@functools.lru_cache(maxsize=8)
def _all_permutations(n_tiles: int) -> np.ndarray:
    """All ``n_tiles!`` permutations in lexicographic order, ``uint8 [n_tiles!, n_tiles]``."""
    return np.array(list(itertools.permutations(range(n_tiles))), dtype=np.uint8)


@functools.lru_cache(maxsize=16)
def _make_permutations(n: int, seed: int, n_tiles: int) -> np.ndarray:
    candidates = _all_permutations(n_tiles)
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(candidates)))]
    # Running minimum Hamming distance of every candidate to the chosen set (0 for chosen ones).
    min_dist = (candidates != candidates[chosen[0]]).sum(1, dtype=np.int64)
    for _ in range(n - 1):
        best = np.flatnonzero(min_dist == min_dist.max())
        j = int(best[rng.integers(len(best))])
        chosen.append(j)
        np.minimum(min_dist, (candidates != candidates[j]).sum(1, dtype=np.int64), out=min_dist)
    return candidates[chosen].astype(np.int64)


def make_permutations(n: int = 100, seed: int = 0, n_tiles: int = 9) -> np.ndarray:
    """``n`` distinct permutations of ``range(n_tiles)``, far apart in Hamming distance.

    Greedy max-min selection over all ``n_tiles!`` permutations: start from one permutation drawn
    with ``seed``, then repeatedly add the candidate whose minimum Hamming distance to the chosen
    set is largest (ties broken by the seeded RNG). Noroozi & Favaro (2016) maximise the *average*
    distance instead; max-min directly guarantees that no two classes are near-identical puzzles.
    Deterministic in ``(n, seed, n_tiles)``; results are cached. Returns ``int64 [n, n_tiles]``.
    """
    if not 2 <= n_tiles <= 9:
        raise FevaeError(
            f"{n_tiles} tiles per puzzle is not supported",
            "use model.jigsaw.tiles.grid=2 or 3 (4 or 9 tiles)",
        )
    if not 1 <= n <= math.factorial(n_tiles):
        raise FevaeError(
            f"model.jigsaw.n_permutations={n} is out of range",
            f"use 1..{math.factorial(n_tiles)} for {n_tiles} tiles",
        )
    return _make_permutations(int(n), int(seed), int(n_tiles)).copy()


class JigsawTiler:
    """Cuts a ``grid × grid`` puzzle of ``tile × tile`` tiles from ``C × H × W`` images.

    The puzzle covers the square ``[offset, offset + grid * cell)`` in both axes, split into
    ``grid × grid`` cells of ``cell × cell`` pixels; each tile (all C channels) is cropped from its
    cell (row-major order), at a random position with ``jitter`` and centred otherwise. The square
    must fit in the image: ``offset + grid * cell <= min(H, W)``.
    """

    def __init__(
        self,
        grid: int = 3,
        cell: int = 9,
        tile: int = 7,
        offset: int = 0,
        image_shape: Sequence[int] = IMAGE_SHAPE,
    ):
        self.image_shape = check_image_shape(image_shape)
        _, height, width = self.image_shape
        for key, value, ok in [
            ("grid", grid, grid >= 1),
            ("cell", cell, cell >= 1),
            ("tile", tile, 1 <= tile <= cell),
            ("offset", offset, offset >= 0),
        ]:
            if not ok:
                raise FevaeError(
                    f"model.jigsaw.tiles.{key}={value} is invalid",
                    "need grid >= 1, 1 <= tile <= cell, offset >= 0",
                )
        size = min(height, width)
        if offset + grid * cell > size:
            raise FevaeError(
                f"model.jigsaw.tiles.* (offset {offset} + grid {grid} × cell {cell} = "
                f"{offset + grid * cell} pixels) exceed the {height}×{width} image",
                f"choose model.jigsaw offset + grid * cell <= {size} (the image's smaller side)",
            )
        self.grid, self.cell, self.tile, self.offset = grid, cell, tile, offset
        cells = torch.arange(grid * grid)
        #: top-left corner of each cell, ``[n_tiles]`` each
        self.cell_rows = offset + (cells // grid) * cell
        self.cell_cols = offset + (cells % grid) * cell

    @property
    def n_tiles(self) -> int:
        return self.grid * self.grid

    def tile_dim(self, channels: int | None = None) -> int:
        """Length of one flattened tile, ``C * tile * tile`` (C: the image's channels by default)."""
        if channels is None:
            channels = self.image_shape[0]
        return channels * self.tile * self.tile

    def tiles(
        self, x: Tensor, jitter: bool, generator: torch.Generator | None = None
    ) -> Tensor:
        """Tiles of images ``x`` ``[B, C, H, W]`` → ``[B, n_tiles, C * tile * tile]``."""
        b, device = x.shape[0], x.device
        slack = self.cell - self.tile
        if jitter:
            gen_device = generator.device if generator is not None else device
            shift = torch.randint(
                0, slack + 1, (2, b, self.n_tiles), generator=generator, device=gen_device
            ).to(device)
        else:
            shift = torch.full((2, b, self.n_tiles), slack // 2, device=device)
        steps = torch.arange(self.tile, device=device)
        rows = (self.cell_rows.to(device) + shift[0])[..., :, None] + steps  # [B, K, t]
        cols = (self.cell_cols.to(device) + shift[1])[..., :, None] + steps
        batch = torch.arange(b, device=device)[:, None, None, None]
        # [B, H, W, C] indexed → [B, K, t, t, C]
        patches = x.permute(0, 2, 3, 1)[batch, rows[..., :, None], cols[..., None, :]]
        return patches.permute(0, 1, 4, 2, 3).reshape(b, self.n_tiles, -1)


def shuffle_tiles(tiles: Tensor, perms: Tensor) -> Tensor:
    """Reorder ``tiles [B, K, D]``: output position ``j`` holds input tile ``perms[b, j]``."""
    return tiles.gather(1, perms[..., None].expand(-1, -1, tiles.shape[-1]))


def unshuffle_tiles(shuffled: Tensor, perms: Tensor) -> Tensor:
    """Inverse of :func:`shuffle_tiles`."""
    return shuffle_tiles(shuffled, perms.argsort(dim=1))


class Jigsaw(L.LightningModule):
    """Jigsaw-puzzle permutation classifier (MLP on flattened tiles), trained with SGD.

    Args:
        n_permutations: number of permutation classes.
        permutation_seed: seed of :func:`make_permutations`.
        hidden: widths of the hidden layers (each Linear → ReLU → Dropout).
        dropout: dropout rate after each hidden layer.
        lr, momentum, weight_decay: SGD settings.
        grid, cell, tile, offset: puzzle geometry, see :class:`JigsawTiler`.
        image_shape: ``(C, H, W)`` of the images (``data.image_shape``), default 1×28×28; the MLP
            reads ``n_tiles × C × tile × tile`` inputs. Stored in the hyperparameters as a plain
            tuple of ints.
    """

    def __init__(
        self,
        n_permutations: int = 100,
        permutation_seed: int = 0,
        hidden: Sequence[int] = (100, 80, 60, 40),
        dropout: float = 0.2,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        grid: int = 3,
        cell: int = 9,
        tile: int = 7,
        offset: int = 0,
        image_shape: Sequence[int] = IMAGE_SHAPE,
    ):
        super().__init__()
        if isinstance(image_shape, ListConfig):
            image_shape = list(image_shape)
        image_shape = check_image_shape(image_shape)  # plain tuple: weights_only-loadable checkpoint
        if isinstance(hidden, ListConfig):
            hidden = list(hidden)
        hidden = tuple(int(h) for h in hidden)  # plain tuple: weights_only-loadable checkpoint
        if not hidden or min(hidden) < 1:
            raise FevaeError(
                f"model.jigsaw.hidden={list(hidden)} is invalid", "use positive widths"
            )
        if not 0 <= dropout < 1:
            raise FevaeError(
                f"model.jigsaw.dropout={dropout} is out of range", "use 0 <= dropout < 1"
            )
        self.save_hyperparameters()

        self.tiler = JigsawTiler(grid, cell, tile, offset, image_shape=image_shape)
        perms = make_permutations(n_permutations, permutation_seed, self.tiler.n_tiles)
        self.register_buffer("permutations", torch.from_numpy(perms))
        widths = (self.tiler.n_tiles * self.tiler.tile_dim(), *hidden)
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden[-1], n_permutations)

    def _trunk(
        self, h: Tensor, n_layers: int, *, dropout: bool, pre_activation: bool = False
    ) -> Tensor:
        """Run the first ``n_layers`` hidden layers on flat tiles ``h`` ``[B, K * D]``."""
        for i, linear in enumerate(self.hidden_layers[:n_layers]):
            pre = linear(h)
            if pre_activation and i == n_layers - 1:
                return pre
            h = torch.relu(pre)
            if dropout:
                h = self.dropout(h)
        return h

    def forward(self, shuffled_tiles: Tensor) -> Tensor:
        """Permutation logits ``[B, n_permutations]`` for shuffled tiles ``[B, K, D]``."""
        h = self._trunk(shuffled_tiles.flatten(1), len(self.hidden_layers), dropout=True)
        return self.head(h)

    def _check_layer(self, layer: int) -> None:
        n = len(self.hidden_layers)
        if not (isinstance(layer, int) and 1 <= layer <= n):
            raise FevaeError(f"fe.layer={layer} is not a hidden layer", f"use 1..{n}")

    def feature_dim(self, layer: int = 1) -> int:
        """Width of hidden layer ``layer`` (1-based)."""
        self._check_layer(layer)
        return self.hparams.hidden[layer - 1]

    def features(self, x: Tensor, layer: int = 1, pre_activation: bool = False) -> Tensor:
        """Hidden-layer ``layer`` activations ``[B, hidden[layer-1]]`` of unshuffled centred tiles.

        ``x`` is any ``[B, C, H, W]`` tensor (the model's ``image_shape``) in [0, 1] (images or
        decoded images φ(z)).
        Post-ReLU by default, the linear output if ``pre_activation``. Dropout is never applied,
        so the result does not depend on train/eval mode. Gradients are not disabled.
        """
        self._check_layer(layer)
        tiles = self.tiler.tiles(x, jitter=False)
        return self._trunk(tiles.flatten(1), layer, dropout=False, pre_activation=pre_activation)

    # -------------------------------------------------------------------------- training

    def _shared_step(self, x: Tensor, labels: Tensor, stage: str, jitter: bool) -> Tensor:
        tiles = self.tiler.tiles(x, jitter=jitter)
        logits = self(shuffle_tiles(tiles, self.permutations[labels]))
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        on_epoch = stage == "val"  # epoch means are averaged over DDP ranks (sync_dist; nothing to do on one process)
        self.log(f"{stage}/loss", loss, on_epoch=on_epoch, sync_dist=on_epoch)
        self.log(f"{stage}/acc", acc, prog_bar=True, on_epoch=on_epoch, sync_dist=on_epoch)
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        labels = torch.randint(len(self.permutations), (x.shape[0],), device=x.device)
        return self._shared_step(x, labels, "train", jitter=True)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x = batch[0]
        labels = torch.arange(x.shape[0], device=x.device) % len(self.permutations)
        return self._shared_step(x, labels, "val", jitter=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        return torch.optim.SGD(
            self.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay
        )
