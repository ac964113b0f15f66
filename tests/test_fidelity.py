"""ied.fidelity against the metrics' definitions and against torch-fidelity (the test-time reference)."""
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
