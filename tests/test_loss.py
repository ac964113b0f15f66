import torch

from ied.loss import epsilon_loss


def test_epsilon_loss_is_denoiser_loss_over_sigma_squared():
    """‖ε̂ − ε‖² = ‖D − y‖²/σ² per example (eq. 22, 24), per-pixel mean."""
    gen = torch.Generator().manual_seed(0)
    y = torch.randn(64, 1, 8, 8, generator=gen)
    weights = torch.randn(1, 1, 8, 8, generator=gen)
    sigma = torch.exp(torch.randn(64, generator=gen, dtype=torch.float64))
    eps = torch.randn(y.shape, generator=gen)
    denoiser = lambda x, sigma, labels: torch.tanh(x * weights)  # noqa: E731
    s = sigma.float().view(-1, 1, 1, 1)
    expected = (denoiser(y + s * eps, None, None) - y).square().flatten(1).mean(1) / s.flatten() ** 2
    torch.testing.assert_close(epsilon_loss(denoiser, y, None, sigma, eps), expected, rtol=1e-4, atol=1e-6)


def test_explicit_weighting_multiplies_outside_the_norm():
    gen = torch.Generator().manual_seed(1)
    y, eps = torch.randn(16, 1, 4, 4, generator=gen), torch.randn(16, 1, 4, 4, generator=gen)
    sigma = torch.rand(16, generator=gen, dtype=torch.float64) + 0.1
    denoiser = lambda x, sigma, labels: 0.5 * x  # noqa: E731
    plain = epsilon_loss(denoiser, y, None, sigma, eps)
    torch.testing.assert_close(epsilon_loss(denoiser, y, None, sigma, eps, sigma**2), plain * sigma.float() ** 2)
