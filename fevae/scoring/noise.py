"""Per-image Monte-Carlo noise that depends on (seed, stream, image index) only: the same draws whatever the batch, order or process count."""

from __future__ import annotations

import torch

from fevae.errors import FevaeError

SCHEMES = ("PR", "APO")
_MASK64 = (1 << 64) - 1
NOISE_BLOCK_ROWS = 64


def _check_scheme(scheme: str) -> str:
    s = str(scheme).upper()
    if s not in SCHEMES:
        raise FevaeError(f"unknown evaluation scheme {scheme!r}", "set eval.schemes to a subset of [PR, APO]")
    return s


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(seed: int, stream: int, index: int, block: int = 0) -> int:
    """64-bit generator seed for ``(seed, stream, index, block)``.


    The four integers are chained through the SplitMix64 finaliser
    (``h = mix(h ^ v)`` for each value, masked to 64 bits), so - unlike a linear combination such
    as ``seed * 1_000_003 + stream * 7_919 + index`` - distinct tuples do not collide
    systematically (e.g. ``(stream=1, index=0)`` vs ``(stream=0, index=7919)``).
    """
    h = 0x5EED_F00D_CAFE_BEEF
    for v in (seed, stream, index, block):
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h & ((1 << 63) - 1)


def per_sample_normal(
    indices: torch.Tensor,
    seed: int,
    n: int,
    dim: int,
    stream: int = 0,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise ``[n, B, dim]``: rows ``offset .. offset + n - 1`` of item ``b``'s
    own infinite noise stream, which depends only on ``(seed, stream, indices[b])``.


    Each item's stream is cut into blocks of :data:`NOISE_BLOCK_ROWS` rows; block ``k`` is
    ``torch.randn(NOISE_BLOCK_ROWS, dim, dtype=float64)`` from a CPU ``torch.Generator`` seeded with
    :func:`item_seed(seed, stream, index, k) <item_seed>`. Row ``r`` of an item is therefore the
    same whatever ``offset``/``n`` (chunking), batch composition or process requests it. Noise is
    drawn in float64 and cast to ``dtype`` (so float32 and float64 runs see the same draws), then
    moved to ``device``. Note the draws also depend on ``dim``.
    """
    idx = torch.as_tensor(indices)
    if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex():
        raise FevaeError(
            f"indices must be a 1-D integer tensor, got shape {tuple(idx.shape)} dtype {idx.dtype}",
            "pass the dataset index of every item in the batch",
        )
    if n < 0 or dim < 1 or offset < 0:
        raise FevaeError(f"invalid noise request n={n}, dim={dim}, offset={offset}", "use n >= 0, dim >= 1, offset >= 0")
    out = torch.empty((n, idx.shape[0], dim), dtype=torch.float64)
    if n > 0:
        first, last = offset // NOISE_BLOCK_ROWS, (offset + n - 1) // NOISE_BLOCK_ROWS
        lo = offset - first * NOISE_BLOCK_ROWS
        gen = torch.Generator(device="cpu")
        for b, index in enumerate(idx.tolist()):
            blocks = []
            for k in range(first, last + 1):
                gen.manual_seed(item_seed(seed, stream, index, k))
                blocks.append(torch.randn(NOISE_BLOCK_ROWS, dim, generator=gen, dtype=torch.float64))
            out[:, b] = torch.cat(blocks)[lo : lo + n]
    return out.to(device=device, dtype=dtype)


def noise_stream(stream: int, scheme: str) -> int:
    """Noise stream used by :func:`score_batch`: ``2 * stream + (0 for PR, 1 for APO)`` so the two
    schemes never share draws; ``stream`` itself should distinguish data sets/splits."""
    return 2 * int(stream) + SCHEMES.index(_check_scheme(scheme))
