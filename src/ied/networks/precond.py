"""The preconditioners of the published EDM networks (Karras et al. 2022, Table 1): EDMPrecond (every published
`edm-*.pkl`), VPPrecond and VEPrecond (the baselines). Each wraps a SongUNet or a DhariwalUNet as `model`.

The denoiser keeps this project's convention, D(x, σ, class_labels) with integer labels (one-hot inside) or None;
one-hot float labels are taken as they are. Scalars are computed in float32 as upstream; the network runs in
float16 when `use_fp16` is set and the input is on CUDA (ADM), in float32 otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ied.networks.dhariwal_unet import DhariwalUNet
from ied.networks.song_unet import SongUNet

Tensor = torch.Tensor
MODELS = {"SongUNet": SongUNet, "DhariwalUNet": DhariwalUNet}


class _Preconditioned(nn.Module):
    """D(x; σ) = c_skip x + c_out F(c_in x; c_noise), the coefficients given by `coefficients`."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int, use_fp16: bool, model_type: str,
                 model_kwargs: dict):
        super().__init__()
        if model_type not in MODELS:
            raise ValueError(f"model_type {model_type!r} is not one of {sorted(MODELS)}")
        self.img_resolution, self.img_channels, self.label_dim = img_resolution, img_channels, label_dim
        self.use_fp16 = use_fp16
        self.model = MODELS[model_type](img_resolution=img_resolution, in_channels=img_channels,
                                        out_channels=img_channels, label_dim=label_dim, **model_kwargs)

    def coefficients(self, sigma: Tensor) -> tuple:
        raise NotImplementedError

    def _labels(self, class_labels: Tensor | None, device: torch.device) -> Tensor | None:
        if not self.label_dim:
            return None
        if class_labels is None:
            return torch.zeros(1, self.label_dim, device=device)
        if not class_labels.is_floating_point():
            class_labels = F.one_hot(class_labels.long(), self.label_dim)
        return class_labels.to(torch.float32).reshape(-1, self.label_dim)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None,
                augment_labels: Tensor | None = None, force_fp32: bool = False) -> Tensor:
        x = x.to(torch.float32)
        sigma = torch.as_tensor(sigma, device=x.device).to(torch.float32).reshape(-1, 1, 1, 1)
        labels = self._labels(class_labels, x.device)
        fp16 = self.use_fp16 and not force_fp32 and x.device.type == "cuda"
        dtype = torch.float16 if fp16 else torch.float32
        c_skip, c_out, c_in, c_noise = self.coefficients(sigma)
        out = self.model((c_in * x).to(dtype), c_noise.flatten(), labels, augment_labels)
        return c_skip * x + c_out * out.to(torch.float32)


class EDMPrecond(_Preconditioned):
    """EDM's preconditioning: c_skip = σ_d²/(σ² + σ_d²), c_out = σ σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²),
    c_noise = ¼ ln σ."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.0, sigma_max: float = math.inf, sigma_data: float = 0.5,
                 model_type: str = "DhariwalUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, sigma_data

    def coefficients(self, sigma: Tensor) -> tuple:
        sd = self.sigma_data
        return (sd**2 / (sigma**2 + sd**2), sigma * sd / (sigma**2 + sd**2).sqrt(), 1 / (sd**2 + sigma**2).sqrt(),
                sigma.log() / 4)


class VPPrecond(_Preconditioned):
    """Song et al.'s variance-preserving preconditioning: c_skip = 1, c_out = −σ, c_in = 1/√(σ² + 1),
    c_noise = (M − 1) t(σ) with σ(t) = √(exp(½ β_d t² + β_min t) − 1)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 beta_d: float = 19.9, beta_min: float = 0.1, M: int = 1000, epsilon_t: float = 1e-5,
                 model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        cpu = torch.device("cpu")  # plain numbers, also while the network is built on the meta device
        self.sigma_min = float(self.sigma(torch.tensor(epsilon_t, device=cpu)))
        self.sigma_max = float(self.sigma(torch.tensor(1, device=cpu)))

    def sigma(self, t: float | Tensor) -> Tensor:
        t = t if isinstance(t, Tensor) else torch.as_tensor(t)
        return ((0.5 * self.beta_d * t**2 + self.beta_min * t).exp() - 1).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma)
        return ((self.beta_min**2 + 2 * self.beta_d * (1 + sigma**2).log()).sqrt() - self.beta_min) / self.beta_d

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, -sigma, 1 / (sigma**2 + 1).sqrt(), (self.M - 1) * self.sigma_inv(sigma)


class VEPrecond(_Preconditioned):
    """Song et al.'s variance-exploding preconditioning: c_skip = 1, c_out = σ, c_in = 1, c_noise = ln(σ/2)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0, use_fp16: bool = False,
                 sigma_min: float = 0.02, sigma_max: float = 100.0, model_type: str = "SongUNet", **model_kwargs):
        super().__init__(img_resolution, img_channels, label_dim, use_fp16, model_type, model_kwargs)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def coefficients(self, sigma: Tensor) -> tuple:
        return 1, sigma, 1, (0.5 * sigma).log()
