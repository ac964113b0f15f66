"""The paper's unweighted ε-prediction objective with σ drawn from the training rationale (eq. 22, 24)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ied.rationales import Rationale

Tensor = torch.Tensor


class EpsilonLoss:
    """‖ε̂ − ε‖² with ε̂ = (y + n − D(y + n; σ))/σ, σ ~ φ_r, n = σε; optionally × λ(σ) (Sec. 3.4)."""

    def __init__(self, rationale: Rationale, weighting: Callable[[np.ndarray], np.ndarray] | None = None):
        self.rationale, self.weighting = rationale, weighting

    def __call__(self, denoiser: Callable, images: Tensor, labels: Tensor | None, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
        """Per-example losses (mean over pixels) and the σ used for each example."""
        t = torch.rand(images.shape[0], generator=generator, dtype=torch.float64)
        sigma = torch.from_numpy(self.rationale.sigma(t.numpy()))  # σ = Φ⁻¹(t), t ~ U[0, 1] (eq. 8)
        eps = torch.randn(images.shape, generator=generator, dtype=torch.float32)
        weight = None if self.weighting is None else torch.from_numpy(self.weighting(sigma.numpy()))
        sigma, eps = sigma.to(images.device), eps.to(images.device)
        s = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        noisy = images + s * eps
        eps_hat = (noisy - denoiser(noisy, sigma, labels)) / s
        loss = (eps_hat.float() - eps).square().flatten(1).mean(dim=1)
        if weight is not None:
            loss = loss * weight.to(loss)
        return loss, sigma
