"""The U-Net this pipeline trains: the paper's σ-conditioned U-Net (Sec. 4.2) in EDM preconditioning (Karras et al.
Table 1). Its checkpoints name no architecture (`ied.networks.PIPELINE_UNET`)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ied.networks.layers import PositionalEmbedding  # [cos, sin] of c_noise, as DDPM++ (endpoint False)

Tensor = torch.Tensor


def _groups(channels: int) -> int:
    return math.gcd(channels, min(32, max(1, channels // 4)))


class ResBlock(nn.Module):
    """GroupNorm → SiLU → conv, plus the embedding, → GroupNorm → SiLU → dropout → conv, residual."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float):
        super().__init__()
        self.norm0, self.conv0 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.affine = nn.Linear(emb_dim, c_out)
        self.norm1, self.conv1 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv1.weight)
        nn.init.zeros_(self.conv1.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = h + self.affine(emb)[:, :, None, None]
        h = self.conv1(self.dropout(F.silu(self.norm1(h))))
        return (h + self.skip(x)) / math.sqrt(2)


class AttentionBlock(nn.Module):
    """Multi-head self-attention over spatial positions, residual."""

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv, self.proj = nn.Conv2d(channels, 3 * channels, 1), nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return (x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))) / math.sqrt(2)


class UNet(nn.Module):
    """U-Net F(x; c_noise, labels): levels of residual blocks, attention in the bottleneck."""

    def __init__(self, img_resolution: int, in_channels: int, label_dim: int, *, base_channels: int,
                 channel_mult: Sequence[int], num_blocks: int, dropout: float, attention: bool):
        super().__init__()
        if img_resolution % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"img_resolution {img_resolution} is not divisible by 2^{len(channel_mult) - 1}")
        emb_dim = 4 * base_channels
        self.label_dim = label_dim
        self.noise_embedding = PositionalEmbedding(base_channels)
        self.embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_embedding = nn.Embedding(label_dim, emb_dim) if label_dim else None
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
        chans = [base_channels * m for m in channel_mult]
        self.down, skips, c = nn.ModuleList(), [base_channels], base_channels
        for level, c_level in enumerate(chans):
            for _ in range(num_blocks):
                self.down.append(ResBlock(c, c_level, emb_dim, dropout))
                c = c_level
                skips.append(c)
            if level < len(chans) - 1:
                self.down.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = nn.ModuleList([ResBlock(c, c, emb_dim, dropout),
                                  AttentionBlock(c) if attention else nn.Identity(),
                                  ResBlock(c, c, emb_dim, dropout)])
        self.up = nn.ModuleList()
        for level, c_level in reversed(list(enumerate(chans))):
            for _ in range(num_blocks + 1):
                self.up.append(ResBlock(c + skips.pop(), c_level, emb_dim, dropout))
                c = c_level
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(c, c, 3, padding=1))
        self.norm_out, self.conv_out = nn.GroupNorm(_groups(c), c), nn.Conv2d(c, in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, c_noise: Tensor, class_labels: Tensor | None = None) -> Tensor:
        emb = self.embed(self.noise_embedding(c_noise))
        if self.label_embedding is not None:
            if class_labels is None:
                raise ValueError("this network is class-conditional: pass class_labels")
            emb = emb + self.label_embedding(class_labels.long())
        emb = F.silu(emb)
        h = self.conv_in(x)
        skips = [h]
        for block in self.down:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
            skips.append(h)
        for block in self.mid:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class UNetDenoiser(nn.Module):
    """Denoiser D(x; σ) = c_skip x + c_out F(c_in x; c_noise) (EDM Table 1, c_noise = ¼ ln σ)."""

    def __init__(self, net: UNet, sigma_data: float):
        super().__init__()
        self.net, self.sigma_data = net, sigma_data

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sd**2 + sigma**2).sqrt()
        c_noise = sigma.log().flatten() / 4
        f = self.net(c_in * x, c_noise.expand(x.shape[0]), class_labels)
        return c_skip * x + c_out * f.to(torch.float32)


def build_denoiser(network: dict, img_resolution: int, in_channels: int, label_dim: int) -> UNetDenoiser:
    """The preconditioned U-Net from a complete `network:` spec (ied.specs.network fills the defaults)."""
    kwargs = dict(network)
    sigma_data = kwargs.pop("sigma_data")
    return UNetDenoiser(UNet(img_resolution, in_channels, label_dim, **kwargs), sigma_data)
