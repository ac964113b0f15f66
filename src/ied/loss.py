"""The paper's unweighted ε-prediction objective with σ drawn from the training rationale (eq. 22, 24)."""
from __future__ import annotations

from typing import Callable

import torch

from ied.rationales import Rationale

Tensor = torch.Tensor


class EpsilonLoss:
    """‖ε̂ − ε‖² with ε̂ = (y + n − D(y + n; σ))/σ, σ ~ φ_r, n = σε; optionally × λ(σ) (Sec. 3.4)."""

    def __init__(self, rationale: Rationale, weighting: Callable[[Tensor], Tensor] | None = None):
        self.rationale, self.weighting = rationale, weighting

    def __call__(self, denoiser: Callable, images: Tensor, labels: Tensor | None, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor]:
        """Per-example losses (mean over pixels) and the σ used for each example."""
        sigma = self.rationale.sample(images.shape[0], generator=generator)
        eps = torch.randn(images.shape, generator=generator, dtype=torch.float32)
        sigma, eps = sigma.to(images.device), eps.to(images.device)
        s = sigma.to(torch.float32).reshape(-1, 1, 1, 1)
        noisy = images + s * eps
        eps_hat = (noisy - denoiser(noisy, sigma, labels)) / s
        loss = (eps_hat.float() - eps).square().flatten(1).mean(dim=1)
        if self.weighting is not None:
            loss = loss * self.weighting(sigma).to(loss)
        return loss, sigma
