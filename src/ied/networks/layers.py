"""The building blocks of the published EDM networks (Karras et al. 2022), written for this project.

Names, shapes, buffers and the order of creation follow the published checkpoints (NVlabs/edm's
`training/networks.py`, read for these facts only), so their state dicts load with `strict=True`. Weights stay in
float32 and are cast to the input's dtype in `forward`, which is how the fp16 ADM network runs. Initialisation is a
plain scaled normal: these modules are built to receive published weights, not to reproduce EDM's training.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def _init(*shape: int, fan_in: int) -> nn.Parameter:
    return nn.Parameter(torch.randn(*shape) / math.sqrt(max(fan_in, 1)))


class Linear(nn.Module):
    """x Wᵀ + b; `weight` is out × in, `bias` absent when bias=False."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _init(out_features, in_features, fan_in=in_features)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        out = x @ self.weight.to(x.dtype).t()
        return out if self.bias is None else out + self.bias.to(x.dtype)


def resample_kernel(taps: Sequence[float]) -> Tensor:
    """The separable 2-D resampling filter f fᵀ / (Σf)², shape 1 × 1 × k × k ([1, 1]: a 2 × 2 box)."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """A k × k convolution (k = 0: none), optionally after a 2× up- or downsampling by `resample_filter`.

    Downsampling is a depthwise filter with stride 2; upsampling a depthwise transposed filter (4 f fᵀ) with stride 2.
    `fused_resample` convolves first and then downsamples (or upsamples and then convolves), with the padding of both
    in one place, as NCSN++'s residual encoder does."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, up: bool = False,
                 down: bool = False, resample_filter: Sequence[float] = (1, 1), fused_resample: bool = False):
        super().__init__()
        if up and down:
            raise ValueError("a convolution resamples up or down, not both")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan_in = in_channels * kernel * kernel
        self.weight = _init(out_channels, in_channels, kernel, kernel, fan_in=fan_in) if kernel else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        self.register_buffer("resample_filter", resample_kernel(resample_filter) if up or down else None)

    def _resample(self, x: Tensor, f: Tensor, padding: int) -> Tensor:
        channels = x.shape[1]
        if self.up:
            return F.conv_transpose2d(x, (4 * f).tile(channels, 1, 1, 1), groups=channels, stride=2, padding=padding)
        return F.conv2d(x, f.tile(channels, 1, 1, 1), groups=channels, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        w = None if self.weight is None else self.weight.to(x.dtype)
        f = None if self.resample_filter is None else self.resample_filter.to(x.dtype)
        w_pad = 0 if w is None else w.shape[-1] // 2
        f_pad = 0 if f is None else (f.shape[-1] - 1) // 2
        if self.fused_resample and f is not None and w is not None:
            if self.up:
                x = F.conv2d(self._resample(x, f, w_pad + f_pad), w)
            else:
                x = self._resample(F.conv2d(x, w, padding=w_pad + f_pad), f, 0)
        else:
            if f is not None:
                x = self._resample(x, f, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        return x if self.bias is None else x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)


class GroupNorm(nn.Module):
    """Group normalisation with min(32, C/4) groups."""

    def __init__(self, num_channels: int, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        return F.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Softmax attention over positions, per head: q, k, v are (batch·heads) × channels × positions. The weights are
    computed in float32 whatever the input's dtype."""
    weights = torch.einsum("ncq,nck->nqk", q.float(), (k / math.sqrt(k.shape[1])).float()).softmax(dim=2).to(q.dtype)
    return torch.einsum("nqk,nck->ncq", weights, v)


class UNetBlock(nn.Module):
    """Residual block of DDPM++, NCSN++ and ADM: GroupNorm → SiLU → conv (optionally resampling), the embedding
    added (or, with adaptive_scale, as scale and shift), GroupNorm → SiLU → dropout → conv, a skip path, all scaled by
    `skip_scale`; then optional self-attention with its own residual."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, up: bool = False, down: bool = False,
                 attention: bool = False, num_heads: int | None = None, channels_per_head: int = 64,
                 dropout: float = 0.0, skip_scale: float = 1.0, eps: float = 1e-5,
                 resample_filter: Sequence[float] = (1, 1), resample_proj: bool = False, adaptive_scale: bool = True):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        self.num_heads = 0 if not attention else num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout, self.skip_scale, self.adaptive_scale = dropout, float(skip_scale), adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if resample_proj or out_channels != in_channels else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        params = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = params.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + params))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            n, c, height, width = h.shape
            # q, k and v interleave per channel: qkv channel 3c + j is part j of channel c (within its head)
            q, k, v = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            h = (self.proj(attention(q, k, v).reshape(n, c, height, width)) + h) * self.skip_scale
        return h


def decoder_level_start(dec: nn.ModuleDict, res: int, lowest: bool, channels: int, block: dict) -> None:
    """How a decoder level of DDPM++, NCSN++ and ADM begins: at the lowest resolution with two blocks, the first
    with attention (`{r}x{r}_in0`, `_in1`), at the others with an upsampling block (`_up`)."""
    if lowest:
        dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True, **block)
        dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True, **block)


def drop_labels(labels: Tensor, p: float) -> Tensor:
    """Class-label dropout (training only): each example's one-hot labels zeroed with probability p."""
    if not p:
        return labels
    keep = torch.rand(labels.shape[0], 1, device=labels.device) >= p
    return labels * keep.to(labels.dtype)


class PositionalEmbedding(nn.Module):
    """[cos(x ω_j), sin(x ω_j)], ω_j = (1/max_positions)^(j / (C/2 − endpoint)), j < C/2 (DDPM++, ADM)."""

    def __init__(self, num_channels: int, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x: Tensor) -> Tensor:
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=torch.float32, device=x.device) / (half - (1 if self.endpoint else 0))
        angles = torch.outer(x, ((1 / self.max_positions) ** freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """[cos(2π x f_j), sin(2π x f_j)] with random frequencies f ~ N(0, scale²), a buffer `freqs` (NCSN++)."""

    def __init__(self, num_channels: int, scale: float = 16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: Tensor) -> Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)
