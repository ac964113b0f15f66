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


# --- bootstrap intervals over the generated images (the reference fixed) ---------------------------------------
BOOTSTRAP_SEED = 2026  # the resamples' seed: an interval is a function of the features and the resample count
BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_ROWS = 4096  # rows of a kernel or distance block computed at once (memory only)


def resample_counts(n: int, resamples: int, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """How often each of n generated images is drawn in each resample of n with replacement (resamples × n), then
    the set itself (a row of ones), whose value the interval is centred by."""
    drawn = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples)
    return np.vstack([drawn, np.ones((1, n), dtype=drawn.dtype)])


def centred_interval(replicates: np.ndarray, level: float = BOOTSTRAP_LEVEL) -> tuple[float, float]:
    """The central `level` interval of the resamples' values (all but the last), moved by their bias: their mean
    minus the set's own value (the last). A resample of n draws holds about 63 % distinct images, so a score biased
    at small n (FID, KID with repeated draws, recall) is biased further in it; the move centres the interval on the
    set's own value, and its coverage of the score's mean over sets of n is about `level` (tests)."""
    values, own = replicates[:-1], replicates[-1]
    tail = 50 * (1 - level)
    low, high = np.percentile(values, [tail, 100 - tail])
    shift = float(np.mean(values)) - float(own)
    return float(low) - shift, float(high) - shift


def bootstrap_fid(generated: torch.Tensor, reference: dict[str, np.ndarray], counts: np.ndarray) -> np.ndarray:
    """The FID of each resample of the generated features against fixed reference statistics: its weighted mean and
    covariance Σ, and tr (Σ Σ_r)^½ as Σ √λ of S Σ S = MᵀM, S = Σ_r^½, M the weighted, centred rows of Y = XS. The
    eigenvalues come from the smaller of MᵀM (D × D) and MMᵀ (N × N, from the Gram matrix YYᵀ computed once), which
    share their non-zero ones: a set of fewer images than dimensions costs N³ per resample, not D³."""
    x = generated.double()
    n, d = x.shape
    values, vectors = np.linalg.eigh(reference["sigma"])
    root = torch.from_numpy((vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T).to(x)
    y = (x - x.mean(0)) @ root  # the covariance ignores a shift: centred first, so little cancels below
    mu_r = torch.from_numpy(reference["mu"]).to(x)
    trace_r = float(np.trace(reference["sigma"]))
    gram = y @ y.T if n <= d else None
    out = np.empty(len(counts))
    for b, weights in enumerate(torch.from_numpy(counts).to(x)):
        mu = weights @ x / n
        trace = (weights * (x - mu).pow(2).sum(1)).sum() / (n - 1)
        out[b] = float((mu - mu_r).pow(2).sum() + trace + trace_r - 2 * _root_trace(y, gram, weights))
    return out


def _root_trace(y: torch.Tensor, gram: torch.Tensor | None, weights: torch.Tensor) -> torch.Tensor:
    """Σ √λ over the eigenvalues of MᵀM = Σ_i w_i (y_i − ν)(y_i − ν)ᵀ / (N − 1), ν = Σ_i w_i y_i / N, formed as MMᵀ
    from the Gram matrix G = YYᵀ where it is given (G − g1ᵀ − 1gᵀ + (wᵀg/N) 11ᵀ, g = Gw/N, rows and columns scaled
    by √w)."""
    n = len(y)
    if gram is None:
        centred = y - weights @ y / n
        inner = (centred * weights[:, None]).T @ centred
    else:
        g = gram @ weights / n
        centred = gram - g[:, None] - g[None, :] + (weights @ g) / n
        scale = weights.sqrt()
        inner = centred * scale[:, None] * scale[None, :]
    return torch.linalg.eigvalsh(inner / (n - 1)).clamp(min=0).sqrt().sum()


def bootstrap_inception_score(logits: torch.Tensor, counts: np.ndarray, splits: int = ISC_SPLITS,
                              seed: int = SEED) -> np.ndarray:
    """The Inception Score (mean over splits, as `inception_score`: the resampled set shuffled by the same seed) of
    each resample of the logits; the class probabilities computed once."""
    log_p = logits.double().log_softmax(dim=1).cpu().numpy()
    p = np.exp(log_p)
    n = len(log_p)
    order = np.random.RandomState(seed).permutation(n)  # a resample has n draws: inception_score's shuffle of them
    out = np.empty(len(counts))
    for b, row_counts in enumerate(counts):
        rows = np.repeat(np.arange(n), row_counts)[order]
        scores = []
        for i in range(splits):
            part = rows[i * n // splits:(i + 1) * n // splits]
            marginal = p[part].mean(axis=0)
            scores.append(np.exp((p[part] * (log_p[part] - np.log(marginal))).sum(axis=1).mean()))
        out[b] = np.mean(scores)
    return out


def bootstrap_kid(generated: torch.Tensor, real: torch.Tensor, counts: np.ndarray) -> np.ndarray:
    """The unbiased MMD² of the cubic polynomial kernel over all pairs for each resample of the generated features
    (pairs of two draws of one image count, as distinct draws): KID without its random subsets, whose mean it is."""
    x, y = generated.double(), real.double()
    n, m, d = len(x), len(y), x.shape[1]
    weights = torch.from_numpy(counts.T.copy()).to(x)  # n × B
    within, cross, diagonal = torch.zeros(len(counts)).to(x), torch.zeros(len(counts)).to(x), torch.zeros(n).to(x)
    for start in range(0, n, BOOTSTRAP_ROWS):
        block = x[start:start + BOOTSTRAP_ROWS]
        k_xx = (block @ x.T / d + 1) ** 3
        within += (weights[start:start + BOOTSTRAP_ROWS] * (k_xx @ weights)).sum(0)
        diagonal[start:start + len(block)] = ((block * block).sum(1) / d + 1) ** 3
        cross += weights[start:start + BOOTSTRAP_ROWS].T @ ((block @ y.T / d + 1) ** 3).sum(1)
    k_yy = sum(float((((y[s:s + BOOTSTRAP_ROWS] @ y.T / d + 1) ** 3).sum()
                      - (((y[s:s + BOOTSTRAP_ROWS] ** 2).sum(1) / d + 1) ** 3).sum()))
               for s in range(0, m, BOOTSTRAP_ROWS)) / (m * (m - 1))
    within = (within - weights.T @ diagonal) / (n * (n - 1))
    return (within - 2 * cross / (n * m) + k_yy).cpu().numpy()


def bootstrap_precision_recall(generated: torch.Tensor, real: torch.Tensor, counts: np.ndarray,
                               k: int = PRC_NEIGHBOURHOOD) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of each resample, the k-NN radii those of the full sets: precision the resampled share
    of generated images inside the real balls, recall the share of real images inside the ball of an image drawn."""
    real_radii, generated_radii = _kth_neighbour_radii(real, k), _kth_neighbour_radii(generated, k)
    inside = torch.cat([(_distances(part, real) <= real_radii).any(dim=1) for part in generated.split(PRC_BATCH)])
    drawn = torch.from_numpy(counts > 0).to(torch.float32).T  # n × B
    covered = torch.zeros(len(counts))
    for part in real.split(PRC_BATCH):
        within = (_distances(part, generated) <= generated_radii).to(torch.float32)  # real part × n
        covered += ((within @ drawn) > 0).to(torch.float32).sum(0)
    precision = counts @ inside.numpy().astype(np.float64) / counts.sum(1)
    return precision, (covered / len(real)).numpy().astype(np.float64)
