"""ied.fidelity against the metrics' definitions and against torch-fidelity (the test-time reference)."""
import math

import numpy as np
import pytest
import torch

from ied import fidelity


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    gen = torch.from_numpy(rng.standard_normal((300, 16)).astype(np.float32))
    real = torch.from_numpy((rng.standard_normal((260, 16)) * 1.3 + 0.2).astype(np.float32))
    return gen, real


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    """Commuting covariances: ‖μ₁ − μ₂‖² + Σᵢ (√aᵢ − √bᵢ)²."""
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    fid = fidelity.frechet_distance({"mu": mu1, "sigma": np.diag(a)}, {"mu": mu2, "sigma": np.diag(b)})
    assert fid == pytest.approx(5.0 + 4.0 + 1.0 + 0.0, abs=1e-12)


def test_fid_statistics_are_the_mean_and_unbiased_covariance(features):
    gen, _ = features
    stats = fidelity.fid_statistics(gen)
    x = gen.double().numpy()
    assert np.allclose(stats["mu"], x.mean(0), atol=1e-6)
    assert np.allclose(stats["sigma"], (x - x.mean(0)).T @ (x - x.mean(0)) / (len(x) - 1), atol=1e-6)


def test_inception_score_is_one_for_uninformative_and_k_for_confident_balanced_logits():
    assert fidelity.inception_score(torch.zeros(100, 10)) == pytest.approx((1.0, 0.0))
    confident = 50.0 * torch.eye(4).repeat(250, 1)  # one split: the 4 classes equally often
    mean, _ = fidelity.inception_score(confident, splits=1)
    assert mean == pytest.approx(4.0, rel=1e-9)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two(features):
    gen, real = features
    same, _ = fidelity.kernel_inception_distance(gen[:150], gen[150:], subset_size=100, subsets=20)
    other, _ = fidelity.kernel_inception_distance(gen, real, subset_size=100, subsets=20)
    assert abs(same) < 0.1 * other and other > 0


def test_precision_and_recall_of_a_set_against_itself_are_one_and_of_a_far_set_zero(features):
    gen, _ = features
    assert fidelity.precision_recall(gen, gen) == (1.0, 1.0)
    assert fidelity.precision_recall(gen, gen + 100.0) == (0.0, 0.0)


def test_every_metric_equals_torch_fidelitys_to_the_bit(features):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    gen, real = features
    theirs = fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(real), False)
    ours = fidelity.frechet_distance(fidelity.fid_statistics(gen), fidelity.fid_statistics(real))
    assert ours == theirs["frechet_inception_distance"]
    isc = isc_features_to_metric(gen, splits=10, shuffle=True, rng_seed=2020)
    assert fidelity.inception_score(gen) == (isc["inception_score_mean"], isc["inception_score_std"])
    kid = kid_features_to_metric(gen, real, kid_subsets=100, kid_subset_size=120, verbose=False)
    assert fidelity.kernel_inception_distance(gen, real, subset_size=120) == (
        kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"])
    prc = prc_features_to_metric(gen, real, save_cpu_ram=True, verbose=False)
    assert fidelity.precision_recall(gen, real) == (prc["precision"], prc["recall"])


def test_precision_and_recall_do_not_depend_on_the_distance_batch(features, monkeypatch):
    gen, real = features
    whole = fidelity.precision_recall(gen, real)
    monkeypatch.setattr(fidelity, "PRC_BATCH", 7)
    assert fidelity.precision_recall(gen, real) == whole


# --- bootstrap intervals -----------------------------------------------------------------------------------
def test_each_resample_s_scores_are_those_of_the_resampled_set(features):
    """A resample's FID, IS, KID (all pairs), precision and recall equal the scores computed on the resampled set
    written out, draw by draw (KID's pairs of two draws of one image counted as distinct draws)."""
    gen, real = features
    gen, real = gen[:120].double(), real[:150].double()
    counts = fidelity.resample_counts(len(gen), 3, seed=7)
    rows = [torch.from_numpy(np.repeat(np.arange(len(gen)), c)) for c in counts]
    stats_r = fidelity.fid_statistics(real)
    fids = fidelity.bootstrap_fid(gen, stats_r, counts)
    for b, r in enumerate(rows):
        assert fids[b] == pytest.approx(fidelity.frechet_distance(fidelity.fid_statistics(gen[r]), stats_r), rel=1e-8)
    kids = fidelity.bootstrap_kid(gen, real, counts)
    for b, r in enumerate(rows):
        x, y, d = gen[r].numpy(), real.numpy(), gen.shape[1]
        k = lambda a, c: (a @ c.T / d + 1) ** 3  # noqa: E731
        n, m = len(x), len(y)
        within = (k(x, x).sum() - np.trace(k(x, x))) / (n * (n - 1))
        assert kids[b] == pytest.approx(within + (k(y, y).sum() - np.trace(k(y, y))) / (m * (m - 1))
                                        - 2 * k(x, y).mean(), rel=1e-9)
    precision, recall = fidelity.bootstrap_precision_recall(gen.float(), real.float(), counts)
    radii_real = fidelity._kth_neighbour_radii(real.float(), 3)
    radii_gen = fidelity._kth_neighbour_radii(gen.float(), 3)
    for b, r in enumerate(rows):
        inside = (torch.cdist(gen.float()[r], real.float()) <= radii_real).any(1).float().mean().item()
        drawn = torch.from_numpy(counts[b] > 0)
        covered = (torch.cdist(real.float(), gen.float()[drawn]) <= radii_gen[drawn]).any(1).float().mean().item()
        assert precision[b] == pytest.approx(inside) and recall[b] == pytest.approx(covered)
    assert fids[-1] == pytest.approx(fidelity.frechet_distance(fidelity.fid_statistics(gen), stats_r), rel=1e-8)
    logits = gen[:, :10] * 3
    scores = fidelity.bootstrap_inception_score(logits, counts)
    for b, r in enumerate(rows):
        assert scores[b] == pytest.approx(fidelity.inception_score(logits[r])[0], rel=1e-10)


def test_a_resample_s_fid_of_fewer_images_than_dimensions_is_that_of_the_resampled_set():
    """Fewer images than feature dimensions (a CIFAR-10 test set of 20 under 2048-d Inception features): the
    resamples' FIDs, computed from the N × N Gram matrix, equal the FIDs of the resampled sets written out."""
    rng = np.random.default_rng(1)
    gen = torch.from_numpy(rng.standard_normal((12, 40)) * 0.8 + 0.1)
    stats_r = fidelity.fid_statistics(torch.from_numpy(rng.standard_normal((60, 40)) * 1.2))
    counts = fidelity.resample_counts(len(gen), 4, seed=3)
    fids = fidelity.bootstrap_fid(gen, stats_r, counts)
    for b, c in enumerate(counts):
        written_out = gen[torch.from_numpy(np.repeat(np.arange(len(gen)), c))]
        # rel 1e-7: frechet_distance's non-symmetric eigenvalues add √ of rounding for each of its 29 null ones
        assert fids[b] == pytest.approx(fidelity.frechet_distance(fidelity.fid_statistics(written_out), stats_r),
                                        rel=1e-7)


def test_the_fid_interval_covers_the_mean_fid_of_a_set_of_n_95_percent_of_the_time():
    """Gaussian features N(0.3, 1.3² I) against N(0, I) in 8 dimensions (population FID 8·0.09 + 8·0.09 = 1.44 in
    closed form): over 200 sets of 400, the 95 % interval of 200 resamples holds the mean FID of a set of 400 (its
    small-sample bias included, by Monte Carlo) 88–99 % of the time."""
    rng = np.random.default_rng(0)
    d, n = 8, 400
    reference = {"mu": np.zeros(d), "sigma": np.eye(d)}

    def fid(x):
        return fidelity.frechet_distance(fidelity.fid_statistics(torch.from_numpy(x)), reference)
    assert d * 0.3**2 + d * (1.3 - 1) ** 2 == pytest.approx(1.44)
    many = [fid(rng.normal(0.3, 1.3, (n, d))) for _ in range(1000)]
    mean = float(np.mean(many))
    assert abs(fid(rng.normal(0.3, 1.3, (200_000, d))) - 1.44) < 0.01  # the closed form, at large n
    held = 0
    for r in range(200):
        x = rng.normal(0.3, 1.3, (n, d))
        low, high = fidelity.centred_interval(fidelity.bootstrap_fid(torch.from_numpy(x), reference,
                                                                     fidelity.resample_counts(n, 200, seed=r)))
        held += low <= mean <= high
    print(f"coverage {held / 200:.1%}")
    assert 0.88 <= held / 200 <= 0.99


def test_intervals_of_a_constant_set_are_degenerate_and_said_to_be():
    from ied.metrics import intervals
    constant = torch.ones(50, 6)
    real = torch.randn(80, 6, generator=torch.Generator().manual_seed(0))
    layers = {"fid": "f", "isc": "l", "kid": "f", "prc": "f"}
    gen = {"f": constant, "l": torch.zeros(50, 4)}
    out = intervals(gen, {"f": real}, layers, fidelity.fid_statistics(real), 20)
    for score in ("kid_mean", "precision", "fid", "isc_mean"):
        assert math.isnan(out[f"{score}_lo"]) and math.isnan(out[f"{score}_hi"]), score
    assert out["interval"].startswith("degenerate: every resample gives one fid, isc_mean, kid_mean, precision")
    varied = {"f": real[:50] * 1.5 + 0.5, "l": torch.randn(50, 4, generator=torch.Generator().manual_seed(1))}
    out = intervals(varied, {"f": real}, layers, fidelity.fid_statistics(real), 50)
    assert out["interval"] == "" and all(out[f"{s}_lo"] < out[f"{s}_hi"] for s in ("fid", "kid_mean", "isc_mean"))
