"""ied.nll against exact answers: Gaussian and Gaussian-mixture data with their exact denoisers."""
import math

import numpy as np
import pytest
import torch

from ied.nll import DEQUANTIZATION_OFFSET, bits_per_dim, ode_logp

F64 = torch.float64
MU, S = 0.3, 0.5
SIGMA_MIN, SIGMA_MAX = 0.01, 20.0


def gaussian_denoiser(x, sigma, labels=None):
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + sg**2 * MU) / (S**2 + sg**2)


def gaussian_logp(x, var):
    d = x[0].numel()
    return -0.5 * d * math.log(2 * math.pi * var) - (x - MU).flatten(1).square().sum(1) / (2 * var)


def test_gaussian_exact_trace_equals_the_analytic_density():
    x = MU + S * torch.randn(16, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    logp, nfe = ode_logp(gaussian_denoiser, x, SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-9, atol=1e-9,
                         prior=lambda z: gaussian_logp(z, S**2 + SIGMA_MAX**2))
    expected = gaussian_logp(x, S**2 + SIGMA_MIN**2).numpy()
    np.testing.assert_allclose(logp, expected, atol=1e-6, rtol=0)
    assert nfe > 10


@pytest.mark.parametrize("estimator", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased_within_its_standard_error(estimator):
    """Gaussian data with a full covariance Σ (so ∂D/∂x is not diagonal and each probe gives another estimate):
    D(x; σ) = μ + Σ(Σ + σ²I)⁻¹(x − μ), log p_σ = log N(x; μ, Σ + σ²I)."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=gen, dtype=F64)
    cov = a @ a.T / 4 + 0.05 * torch.eye(4, dtype=F64)
    eye = torch.eye(4, dtype=F64)

    def denoiser(x, sigma, labels=None):
        gain = cov @ torch.linalg.inv(cov + sigma[0].item() ** 2 * eye)
        return MU + ((x.flatten(1) - MU) @ gain.T).reshape(x.shape)

    def exact_logp(z, sigma):
        dist = torch.distributions.MultivariateNormal(torch.full((4,), MU, dtype=F64), cov + sigma**2 * eye)
        return dist.log_prob(z.flatten(1))

    x = (MU + torch.randn(1, 1, 2, 2, generator=gen, dtype=F64)).expand(300, -1, -1, -1)
    z = torch.randn(x.shape, generator=gen, dtype=F64)
    probe = torch.where(z >= 0, 1.0, -1.0).to(F64) if estimator == "rademacher" else z
    logp, _ = ode_logp(denoiser, x, SIGMA_MIN, SIGMA_MAX, estimator=estimator, probe=probe, rtol=1e-7, atol=1e-7,
                       prior=lambda y: exact_logp(y, SIGMA_MAX))
    truth = exact_logp(x[:1], SIGMA_MIN).item()
    se = logp.std(ddof=1) / math.sqrt(len(logp))
    assert logp.std() > 1e-2  # the probes do vary the estimate
    assert abs(logp.mean() - truth) < 4 * se
    exact, _ = ode_logp(denoiser, x[:1], SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-9, atol=1e-9,
                        prior=lambda y: exact_logp(y, SIGMA_MAX))
    assert exact[0] == pytest.approx(truth, abs=1e-6)


def test_gaussian_mixture_density_up_to_the_smoothing_by_sigma_min():
    means = torch.tensor([[-1.0, 0.5], [1.5, -0.5]], dtype=F64)
    scales, weights = torch.tensor([0.3, 0.6], dtype=F64), torch.tensor([0.3, 0.7], dtype=F64)

    def mixture_logp(x, sigma):  # per component N(m_k, (s_k² + σ²) I) in d = 2
        var = scales**2 + sigma**2
        comp = -math.log(2 * math.pi) - torch.log(var) - ((x[:, None] - means) ** 2).sum(-1) / (2 * var)
        return torch.logsumexp(torch.log(weights) + comp, dim=1)

    def denoiser(x, sigma, labels=None):
        s = sigma[0].item()
        var = scales**2 + s**2
        comp = torch.log(weights) - torch.log(var) - ((x[:, None] - means) ** 2).sum(-1) / (2 * var)
        w = torch.softmax(comp, dim=1)
        posterior_means = (scales[:, None] ** 2 * x[:, None] + s**2 * means) / var[:, None]
        return (w[..., None] * posterior_means).sum(1)

    x = torch.tensor([[-1.0, 0.4], [1.2, -0.3], [0.2, 0.0], [2.5, 1.0]], dtype=F64)
    logp, _ = ode_logp(denoiser, x, 1e-3, 30.0, estimator="exact", rtol=1e-9, atol=1e-9,
                       prior=lambda z: mixture_logp(z, 30.0))
    np.testing.assert_allclose(logp, mixture_logp(x, 1e-3).numpy(), atol=1e-5, rtol=0)


def test_bits_per_dim_of_uint8_data():
    """A model uniform on the dequantised cube [−1, 1 + 1/127.5)^d is the uniform 8-bit distribution: 8 bits/dim."""
    d = 3072
    logp_uniform = -d * math.log(256 / 127.5)
    assert bits_per_dim(np.array([logp_uniform]), d)[0] == pytest.approx(8.0, abs=1e-12)
    assert DEQUANTIZATION_OFFSET == pytest.approx(math.log2(127.5))
    assert bits_per_dim(np.array([-d * math.log(2)]), d)[0] == pytest.approx(1.0 + math.log2(127.5))


def test_nll_job_on_a_checkpoint(digits, tmp_path):
    """`ied nll` as the pipeline runs it: a fixed subset, one row per image and probe, finite bits/dim."""

    import pandas as pd

    from ied.cli import main
    from ied.train import train

    from conftest import tiny_spec
    train(tiny_spec(), 0, 2, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c.pt")
    args = ["nll", "--checkpoint", str(tmp_path / "c.pt"), "--data", str(digits / "test.npz"), "--n-images", "6",
            "--probes", "2", "--rtol", "1e-3", "--atol", "1e-3", "--expect-step", "2"]
    assert main(args + ["--batch-size", "6", "--out", str(tmp_path / "a.parquet")]) == 0
    rows = pd.read_parquet(tmp_path / "a.parquet")
    assert len(rows) == 12 and rows["image"].nunique() == 6 and set(rows["probe"]) == {0, 1}
    assert np.isfinite(rows["bpd"]).all() and (rows["nfe"] > 0).all() and (rows["bpd"] > 0).all()
    assert (rows["sigma_min"] == 0.002).all() and (rows["sigma_max"] == 80.0).all()  # the training domain
    assert main(args + ["--batch-size", "4", "--out", str(tmp_path / "b.parquet")]) == 0
    other = pd.read_parquet(tmp_path / "b.parquet")
    assert set(other["image"]) == set(rows["image"])  # the same fixed subset
    # one solver state per batch: a different batch changes the steps, within the solver's tolerance
    merged = rows.merge(other, on=["image", "probe"])
    assert (merged["bpd_x"] - merged["bpd_y"]).abs().max() < 0.05


def test_a_non_finite_drift_stops_the_solve_at_once_naming_sigma():
    """scipy's RK45 shrinks its step forever on a NaN right-hand side; the solve must stop at the first one."""
    from ied.nll import NLLError
    calls = []

    def denoiser(x, sigma, labels=None):
        calls.append(sigma[0].item())
        return x * float("nan") if sigma[0].item() > 1.0 else gaussian_denoiser(x, sigma)

    x = torch.zeros(2, 1, 2, 2, dtype=F64)
    with pytest.raises(NLLError, match=r"not finite at σ = (\d+\.?\d*)") as info:
        ode_logp(denoiser, x, SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-6, atol=1e-6,
                 prior=lambda z: gaussian_logp(z, S**2 + SIGMA_MAX**2))
    assert float(info.value.args[0].split("σ = ")[1]) == pytest.approx(calls[-1], rel=1e-5) and calls[-1] > 1.0
    assert len(calls) < 200  # stopped at the first non-finite evaluation, not after millions


def test_the_evaluations_of_one_solve_are_bounded():
    from ied.nll import NLLError
    x = MU + S * torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with pytest.raises(NLLError, match=r"more than 7 denoiser evaluations \(at σ = .*\); loosen nll.rtol"):
        ode_logp(gaussian_denoiser, x, SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-9, atol=1e-9, max_nfe=7)
    _, nfe = ode_logp(gaussian_denoiser, x, SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-9, atol=1e-9)
    with pytest.raises(NLLError, match=rf"more than {nfe - 1} denoiser"):
        ode_logp(gaussian_denoiser, x, SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-9, atol=1e-9, max_nfe=nfe - 1)
    ode_logp(gaussian_denoiser, x, SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-9, atol=1e-9, max_nfe=nfe)


@pytest.mark.parametrize("rtol, atol", [(math.nan, 1e-5), (1e-5, math.inf), (0.0, 1e-5), (1e-5, -1.0)])
def test_tolerances_must_be_finite_and_positive(rtol, atol):
    from ied.nll import NLLError
    with pytest.raises(NLLError, match="must be a finite number > 0"):
        ode_logp(gaussian_denoiser, torch.zeros(1, 1, 2, 2, dtype=F64), SIGMA_MIN, SIGMA_MAX, estimator="exact",
                 rtol=rtol, atol=atol)


@pytest.fixture(scope="module")
def tiny_checkpoint(digits, tmp_path_factory):
    from ied.train import train

    from conftest import tiny_spec
    path = tmp_path_factory.mktemp("nll") / "ckpt-2.pt"
    train(tiny_spec(), 0, 2, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=path)
    return path


@pytest.mark.parametrize("args, fragment", [
    (["--n-images", "0"], "--n-images: must be >= 1, got 0"), (["--n-images", "-5"], "must be >= 1, got -5"),
    (["--n-images", "abc"], "expected an integer, got 'abc'"), (["--probes", "0"], "--probes: must be >= 1"),
    (["--estimator", "foo"], "--estimator: invalid choice: 'foo'"), (["--batch-size", "0"], "--batch-size: must be"),
    (["--rtol", "nan"], "--rtol: must be a finite number > 0, got nan"), (["--atol", "inf"], "--atol: must be"),
    (["--n-images", "361"], "n_images must be between 1 and the split's 360 images"),
])
def test_bad_nll_arguments_are_one_line(tiny_checkpoint, digits, tmp_path, args, fragment):
    from test_cli import ied
    result = ied("nll", "--checkpoint", tiny_checkpoint, "--data", digits / "test.npz", "--out", tmp_path / "n.parquet",
                 *args, cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode in (1, 2) and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert fragment in lines[0] and lines[0].startswith("error:")
    assert not (tmp_path / "n.parquet").exists()


def test_a_checkpoint_with_a_nan_ema_tensor_is_refused_naming_it(tiny_checkpoint, digits, tmp_path):
    from ied import checkpoints
    from test_cli import ied
    state = checkpoints.load(tiny_checkpoint)
    del state["sha256"]
    name = next(iter(state["ema"]))
    state["ema"][name].view(-1)[0] = float("nan")
    bad = tmp_path / "ckpt-2.pt"
    checkpoints.save(bad, state)  # a valid checksum: the file is intact, its weights are not
    result = ied("nll", "--checkpoint", bad, "--data", digits / "test.npz", "--n-images", "4", "--out",
                 tmp_path / "n.parquet", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1, result.stderr
    assert f"{bad}: the EMA weights hold non-finite values (first in {name!r})" in lines[0]
    assert not (tmp_path / "n.parquet").exists() and bad.exists()  # not corrupt: kept, not moved aside


# --- the likelihood's conventions, against their definitions -----------------------------------------------
def test_the_default_prior_is_n_0_sigma_max_squared():
    from scipy import stats

    from ied.nll import gaussian_logp
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=F64) * 20
    expected = stats.norm(0, 20.0).logpdf(x.flatten(1).numpy()).sum(1)  # N(0, σ_max² I), σ_max = 20
    np.testing.assert_allclose(gaussian_logp(x, 20.0).numpy(), expected, rtol=1e-12)
    # ode_logp uses it when no prior is passed: the same answer as passing it written out
    args = dict(estimator="exact", rtol=1e-6, atol=1e-6)
    x0 = MU + S * torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    default, _ = ode_logp(gaussian_denoiser, x0, SIGMA_MIN, SIGMA_MAX, **args)
    written, _ = ode_logp(gaussian_denoiser, x0, SIGMA_MIN, SIGMA_MAX, **args,
                          prior=lambda z: torch.from_numpy(stats.norm(0, SIGMA_MAX).logpdf(z.flatten(1).numpy()).sum(1)))
    np.testing.assert_allclose(default, written, rtol=1e-12)


def test_dequantization_stays_inside_each_pixels_bin():
    """x = (i + u)/127.5 − 1, u ∈ [0, 1): pixel i's values lie in its own bin, and the bins tile [−1, 1 + 1/127.5)."""
    from ied.nll import dequantize
    images = np.tile(np.arange(256, dtype=np.uint8), (40, 1)).reshape(40, 1, 16, 16)
    x = dequantize(images, torch.arange(40, dtype=torch.int64), 0).numpy()
    u = (x + 1) * 127.5 - images
    assert (u >= -1e-9).all() and (u < 1 + 1e-9).all()
    assert u.min() < 0.01 and u.max() > 0.99 and abs(u.mean() - 0.5) < 0.01  # spread over the whole bin
    assert x.min() >= -1 and x.max() < 1 + 1 / 127.5 and x.max() > 1
    again = dequantize(images, torch.arange(40, dtype=torch.int64), 1).numpy()
    assert not np.array_equal(x, again)  # another probe index, another dequantisation


def test_probes_are_rademacher_or_gaussian_as_named():
    from ied.nll import _probes
    keys = torch.arange(500, dtype=torch.int64)
    rademacher = _probes(keys, 0, (500, 1, 4, 4), "rademacher")
    gaussian = _probes(keys, 0, (500, 1, 4, 4), "gaussian")
    assert set(rademacher.unique().tolist()) == {-1.0, 1.0} and abs(rademacher.mean()) < 0.05
    assert len(gaussian.unique()) == gaussian.numel() and abs(gaussian.std() - 1) < 0.05
    assert _probes(keys, 0, (500, 1, 4, 4), "exact") is None
    assert not torch.equal(_probes(keys, 1, (500, 1, 4, 4), "gaussian"), gaussian)


# --- the estimator and the job against their definitions (in-process, where mutation testing reaches) ------------
def test_hutchinson_is_z_transpose_jacobian_z_and_the_exact_trace_is_the_trace():
    from ied.nll import _divergence
    g = torch.Generator().manual_seed(3)
    a = torch.randn(12, 12, generator=g, dtype=F64)

    def linear(x, sigma, labels=None):
        return (x.flatten(1) @ a.T).reshape(x.shape)

    x = torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
    z = torch.randn(2, 3, 2, 2, generator=g, dtype=F64)
    _, trace = _divergence(linear, x, torch.ones(2, dtype=F64), None, "gaussian", z)
    expected = torch.einsum("bi,ij,bj->b", z.flatten(1), a, z.flatten(1))
    torch.testing.assert_close(trace, expected)
    _, exact = _divergence(linear, x, torch.ones(2, dtype=F64), None, "exact", None)
    torch.testing.assert_close(exact, torch.full((2,), a.trace().item(), dtype=F64))


def test_probes_and_dequantization_cover_every_channel_in_float64():
    from ied.nll import _probes, dequantize
    keys = torch.arange(4, dtype=torch.int64)
    for estimator in ("rademacher", "gaussian"):
        probe = _probes(keys, 0, (4, 3, 2, 2), estimator)
        assert probe.shape == (4, 3, 2, 2) and probe.dtype == torch.float64
        expected = noise_normal(keys, 12).reshape(4, 3, 2, 2)
        torch.testing.assert_close(probe, expected if estimator == "gaussian" else torch.sign(expected))
    x = dequantize(np.zeros((4, 3, 2, 2), np.uint8), keys, 0)
    assert x.dtype == torch.float64 and len(torch.unique(x)) == 48


def noise_normal(keys, n):
    from ied import noise
    from ied.nll import STREAM_PROBE
    return noise.normal(keys, torch.zeros_like(keys), STREAM_PROBE, n, torch.float64)


def test_argument_bounds_are_inclusive():
    from ied.nll import NLLError, check_arguments
    check_arguments(1, 1, "rademacher", 1, 3072, 10)  # one image, one probe, batch 1
    check_arguments(10, 1, "exact", 1, 256, 10)  # the whole split; exact traces at the limit
    check_arguments(None, 2, "gaussian", 8, 3072, 10)  # all
    for args in ((0, 1, "rademacher", 1, 64, 10), (11, 1, "rademacher", 1, 64, 10), (2, 0, "rademacher", 1, 64, 10),
                 (2, 1, "rademacher", 0, 64, 10), (2, 1, "exact", 1, 257, 10), (2, 1, "hutchinson", 1, 64, 10)):
        with pytest.raises(NLLError):
            check_arguments(*args)


def test_gaussian_logp_of_a_single_row():
    from ied.nll import gaussian_logp
    x = torch.ones(1, 1, 2, 2, dtype=F64)
    assert gaussian_logp(x, 2.0).item() == pytest.approx(-2 * math.log(2 * math.pi * 4) - 4 / 8)


def test_the_job_in_process_rows_subset_and_provenance(tiny_checkpoint, digits, tmp_path):
    """nll() itself: the fixed seeded subset (rng 0), one image, exact traces, and the columns it records."""
    import pandas as pd

    from ied.data import load_imageset
    from ied.nll import NLLError, nll
    summary = nll(tiny_checkpoint, digits / "test.npz", tmp_path / "a.parquet", n_images=3, estimator="exact",
                  rtol=1e-3, atol=1e-3, batch_size=2, expect_step=2)
    rows = pd.read_parquet(tmp_path / "a.parquet")
    n = len(load_imageset(digits / "test.npz"))
    assert rows["image"].tolist() == sorted(np.random.default_rng(0).permutation(n)[:3].tolist())
    assert (rows["checkpoint_step"] == 2).all() and (rows["estimator"] == "exact").all()
    assert (rows["rtol"] == 1e-3).all() and (rows["atol"] == 1e-3).all() and summary["images"] == 3
    nll(tiny_checkpoint, digits / "test.npz", tmp_path / "one.parquet", n_images=1, rtol=1e-3, atol=1e-3)
    assert len(pd.read_parquet(tmp_path / "one.parquet")) == 1
    with pytest.raises(NLLError, match="between 1 and the split's 360 images"):
        nll(tiny_checkpoint, digits / "test.npz", tmp_path / "b.parquet", n_images=361)
    assert not (tmp_path / "b.parquet").exists()


def test_the_reported_nfe_is_the_number_of_denoiser_calls():
    calls = []

    def counted(x, sigma, labels=None):
        calls.append(1)
        return gaussian_denoiser(x, sigma)

    x = MU + S * torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    _, nfe = ode_logp(counted, x, SIGMA_MIN, SIGMA_MAX, estimator="exact", rtol=1e-6, atol=1e-6)
    assert nfe == len(calls) > 10
