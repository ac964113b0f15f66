"""FID, Inception Score, KID and precision/recall of extracted features, from their papers, with torch-fidelity's
conventions and defaults (so the numbers are its numbers; tests compare them). Importing torch-fidelity itself costs
an evaluation job about 3 s (its package imports torchvision), which the digits extractor does not need."""
from __future__ import annotations

import numpy as np
import torch

SEED = 2020          # torch-fidelity's rng_seed: the IS shuffle and the KID subsets
ISC_SPLITS = 10
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PRC_NEIGHBOURHOOD = 3
PRC_BATCH = 10000    # rows of the distance matrix computed at once (memory only)


def fid_statistics(features: torch.Tensor) -> dict[str, np.ndarray]:
    """Mean and covariance (N − 1 normalised) of N×D features: the Gaussian FID fits (Heusel et al. 2017)."""
    array = features.numpy()
    return {"mu": np.mean(array, axis=0), "sigma": np.cov(array, rowvar=False)}


def frechet_distance(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    """‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁Σ₂)^½, the trace of the root from the eigenvalues of Σ₁Σ₂."""
    diff = first["mu"] - second["mu"]
    eigenvalues = np.linalg.eigvals(first["sigma"].dot(second["sigma"])).astype("complex128")
    root_trace = np.sum(np.sqrt(eigenvalues).real)
    return float(diff.dot(diff) + np.trace(first["sigma"]) + np.trace(second["sigma"]) - 2 * root_trace)


def inception_score(logits: torch.Tensor, splits: int = ISC_SPLITS, seed: int = SEED) -> tuple[float, float]:
    """exp E_x KL(p(y|x) ‖ p(y)) per split of the shuffled logits (Salimans et al. 2016): mean and std over splits."""
    n = len(logits)
    logits = logits[np.random.RandomState(seed).permutation(n), :].double()
    p, log_p = logits.softmax(dim=1), logits.log_softmax(dim=1)
    scores = []
    for i in range(splits):
        part = slice(i * n // splits, (i + 1) * n // splits)
        marginal = p[part].mean(dim=0, keepdim=True)
        scores.append((p[part] * (log_p[part] - marginal.log())).sum(dim=1).mean().exp().item())
    return float(np.mean(scores)), float(np.std(scores))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (np.matmul(x, y.T) / x.shape[1] + 1) ** 3


def _mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Off-diagonal means of k_xx and k_yy minus twice the mean of k_xy (summed in torch-fidelity's order, rows
    first, so float32 kernels give its digits)."""
    m = len(k_xx)
    within_x = (k_xx.sum(axis=1) - np.diagonal(k_xx)).sum()
    within_y = (k_yy.sum(axis=1) - np.diagonal(k_yy)).sum()
    return (within_x + within_y) / (m * (m - 1)) - 2 * k_xy.sum(axis=0).sum() / (m * m)


def kernel_inception_distance(first: torch.Tensor, second: torch.Tensor, subset_size: int = KID_SUBSET_SIZE,
                              subsets: int = KID_SUBSETS, seed: int = SEED) -> tuple[float, float]:
    """The MMD² of the cubic polynomial kernel k(x, y) = (xᵀy/d + 1)³ over random subsets (Bińkowski et al. 2018):
    mean and std over subsets."""
    x, y = first.cpu().numpy(), second.cpu().numpy()
    rng = np.random.RandomState(seed)
    mmds = np.zeros(subsets)
    for i in range(subsets):
        a = x[rng.choice(len(x), subset_size, replace=False)]
        b = y[rng.choice(len(y), subset_size, replace=False)]
        mmds[i] = _mmd2_unbiased(_polynomial_kernel(a, a), _polynomial_kernel(a, b), _polynomial_kernel(b, b))
    return float(np.mean(mmds)), float(np.std(mmds))


def _distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.cdist(x, part).cpu() for part in y.split(PRC_BATCH)], dim=1)


def _kth_neighbour_radii(x: torch.Tensor, k: int) -> torch.Tensor:
    return torch.cat([_distances(part, x).kthvalue(k + 1).values for part in x.split(PRC_BATCH)])


def _covered(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """The fraction of `points` inside at least one ball around `centres`."""
    inside = [(_distances(part, centres) <= radii).any(dim=1).float() for part in points.split(PRC_BATCH)]
    return torch.cat(inside).mean().item()


def precision_recall(generated: torch.Tensor, real: torch.Tensor, k: int = PRC_NEIGHBOURHOOD) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019): the fraction of generated samples within the real
    samples' k-NN balls, and of real samples within the generated samples' balls."""
    precision = _covered(generated, real, _kth_neighbour_radii(real, k))
    recall = _covered(real, generated, _kth_neighbour_radii(generated, k))
    return precision, recall
