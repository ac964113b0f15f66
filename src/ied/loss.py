"""The paper's unweighted ε-prediction objective with σ drawn from the training rationale (eq. 22, 24)."""
from __future__ import annotations

from typing import Callable

import torch

Tensor = torch.Tensor


def epsilon_loss(denoiser: Callable, images: Tensor, labels: Tensor | None, sigma: Tensor, eps: Tensor,
                 weight: Tensor | None = None) -> Tensor:
    """Per-example ‖ε̂ − ε‖² (mean over pixels) with ε̂ = (y + σε − D(y + σε; σ))/σ; optionally × λ(σ) (Sec. 3.4).

    σ ~ φ_r (σ = σ_r(t), t ~ U[0, 1], eq. 8) and ε ~ N(0, I) come from the caller (ied.train draws them per
    example from its position in the data stream, so they do not depend on how a batch is split)."""
    s = sigma.to(torch.float32).reshape(-1, *([1] * (images.ndim - 1)))
    noisy = images + s * eps
    eps_hat = (noisy - denoiser(noisy, sigma, labels)) / s
    loss = (eps_hat.float() - eps).square().flatten(1).mean(dim=1)
    return loss if weight is None else loss * weight.to(loss)
