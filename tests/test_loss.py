import numpy as np
import torch

from ied.loss import EpsilonLoss
from ied.specs import rationale


def test_epsilon_loss_is_denoiser_loss_over_sigma_squared():
    r = rationale({"family": "ve"})
    y = torch.randn(64, 1, 8, 8)
    weights = torch.randn(1, 1, 8, 8)
    denoiser = lambda x, sigma, labels: torch.tanh(x * weights)
    gen = torch.Generator().manual_seed(0)
    loss, sigma = EpsilonLoss(r)(denoiser, y, None, gen)
    # replay the same draws: σ = σ(t), t ~ U[0, 1], then ε; ‖ε̂ − ε‖² = ‖D − y‖²/σ²
    gen = torch.Generator().manual_seed(0)
    sigma2 = torch.from_numpy(r.sigma(torch.rand(64, generator=gen, dtype=torch.float64).numpy()))
    eps = torch.randn(y.shape, generator=gen)
    s = sigma2.float().view(-1, 1, 1, 1)
    d_loss = (denoiser(y + s * eps, None, None) - y).square().flatten(1).mean(1)
    torch.testing.assert_close(sigma, sigma2)
    torch.testing.assert_close(loss, d_loss / s.flatten() ** 2, rtol=1e-4, atol=1e-6)


def test_explicit_weighting_multiplies():
    r = rationale({"family": "l2"})
    y = torch.randn(16, 1, 4, 4)
    denoiser = lambda x, sigma, labels: 0.5 * x
    plain, sigma = EpsilonLoss(r)(denoiser, y, None, torch.Generator().manual_seed(1))
    weighted, _ = EpsilonLoss(r, lambda s: np.asarray(s) ** 2)(denoiser, y, None, torch.Generator().manual_seed(1))
    torch.testing.assert_close(weighted, plain * sigma.float() ** 2)
