"""Counter-based random numbers (Philox-4x32-10, Salmon et al. 2011) for per-image and per-example noise.

A value depends only on (key, counter, stream, element index), never on which other rows share the
batch: image i of a seed set is bit-identical whatever the batch size or shard layout, and a training
example's σ and ε depend on its global position in the data stream, not on how the batch is split
across GPUs. All rows are drawn in one vectorised call (no Python loop over images), in int64
arithmetic with 16-bit limbs so no product overflows.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
_M0, _M1 = 0xD2511F53, 0xCD9E8D57  # Philox multipliers
_W0, _W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
ROUNDS = 10

SEED_SET_STRIDE = 10_000_000  # image i of seed set k has the noise key k·stride + i
STREAM_SAMPLING = 0  # sampler latents (draw 0) and per-step noise (draws 1, 2, …)
STREAM_EPSILON = 1  # training ε per example
STREAM_TIME = 2  # training t ~ U[0, 1] per example (σ = σ(t))


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """High and low 32 bits of a·m for 32-bit a (int64 tensor) and constant m, without overflowing int64."""
    a_lo, a_hi = a & 0xFFFF, a >> 16
    m_lo, m_hi = m & 0xFFFF, m >> 16
    ll, lh, hl, hh = a_lo * m_lo, a_lo * m_hi, a_hi * m_lo, a_hi * m_hi
    mid = (ll >> 16) + (lh & 0xFFFF) + (hl & 0xFFFF)
    lo = ((mid & 0xFFFF) << 16) | (ll & 0xFFFF)
    hi = hh + (lh >> 16) + (hl >> 16) + (mid >> 16)
    return hi, lo


def philox4x32(counter: Sequence[torch.Tensor], key: Sequence[torch.Tensor], rounds: int = ROUNDS
               ) -> tuple[torch.Tensor, ...]:
    """Philox-4x32: four 32-bit counter words and two key words (int64 tensors holding uint32) → four words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + _W0) & MASK32, (k1 + _W1) & MASK32
        hi0, lo0 = _mulhilo(c0, _M0)
        hi1, lo1 = _mulhilo(c2, _M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _words(keys: torch.Tensor, counters: torch.Tensor, stream: int, blocks: int) -> tuple[torch.Tensor, ...]:
    """Philox output for rows (keys, counters: int64 [B]) and element blocks 0..blocks−1: four [B, blocks] words."""
    device = keys.device
    block = torch.arange(blocks, dtype=torch.int64, device=device)[None, :]
    shape = (keys.shape[0], blocks)

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x[:, None].expand(shape)
        return x & MASK32, (x >> 32) & MASK32

    k0, k1 = split(keys)
    c2, c3 = split(counters)
    c1 = torch.full(shape, stream & MASK32, dtype=torch.int64, device=device)
    return philox4x32((block.expand(shape), c1, c2, c3), (k0, k1))


def normal(keys: torch.Tensor, counters: torch.Tensor, stream: int, n: int, dtype=torch.float32) -> torch.Tensor:
    """Standard normals [B, n]: row b from (keys[b], counters[b], stream) by Box–Muller on Philox words."""
    w0, w1, w2, w3 = _words(keys, counters, stream, (n + 3) // 4)
    u = [(w.double() + 0.5) * 2.0**-32 for w in (w0, w1, w2, w3)]  # in (0, 1): log never sees 0
    r01, r23 = torch.sqrt(-2.0 * torch.log(u[0])), torch.sqrt(-2.0 * torch.log(u[2]))
    t01, t23 = 2.0 * math.pi * u[1], 2.0 * math.pi * u[3]
    z = torch.stack([r01 * torch.cos(t01), r01 * torch.sin(t01), r23 * torch.cos(t23), r23 * torch.sin(t23)], -1)
    return z.reshape(keys.shape[0], -1)[:, :n].to(dtype)


def uniform(keys: torch.Tensor, counters: torch.Tensor, stream: int) -> torch.Tensor:
    """One float64 uniform in [0, 1) per row, with 53 random bits (27 of one word, 26 of another)."""
    w0, w1, _, _ = _words(keys, counters, stream, 1)
    # in int64: an int64 tensor times a Python float is float32 in torch, which would keep 24 of the 53 bits
    return ((w0[:, 0] >> 5) * (1 << 26) + (w1[:, 0] >> 6)).double() * 2.0**-53


class PerImageNoise:
    """The noise source of one batch of images, one Philox key per image seed.

    `randn(shape)` draws the latents (draw 0); each later `randn_like(x)` is the next draw, as a sampler
    step asks for noise. Image i gets the same numbers in any batch, so samples do not depend on the
    batch size or the shard layout."""

    def __init__(self, seeds: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu"):
        self.keys = torch.as_tensor(seeds, dtype=torch.int64, device=device)
        self.draws = 0

    def randn(self, shape: Sequence[int], dtype=torch.float32) -> torch.Tensor:
        """Standard normals of `shape` (shape[0] = number of images), the next draw."""
        n = math.prod(shape[1:])
        counters = torch.full_like(self.keys, self.draws)
        self.draws += 1
        return normal(self.keys, counters, STREAM_SAMPLING, n, dtype).reshape(tuple(shape))

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(tuple(x.shape), dtype=x.dtype)


def balanced_labels(n: int, num_classes: int, seed_set: int) -> np.ndarray:
    """Labels i mod classes, shuffled by the seed set (all 0 for an unconditional network, num_classes = 0)."""
    if num_classes == 0:
        return np.zeros(n, dtype=np.int64)
    return np.random.default_rng([seed_set, 12345]).permutation(np.arange(n) % num_classes).astype(np.int64)
