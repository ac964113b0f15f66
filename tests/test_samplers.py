import math
import re

import numpy as np
import pytest
import torch

from ied.samplers import SAMPLERS, OptionError, nfe, noise_levels, resolve_options, sampler_options, steps_for_nfe
from ied.specs import rationale

F64 = torch.float64
MU, S = 0.7, 0.5  # Gaussian data N(μ, s² I)
# N(0, 5²) is cut at 3σ_N (paper App. C.2). KL's and the lognormal's schedules put almost no time
# near σ_max, so their first step jumps down by orders of magnitude: they need σ_max/σ_min ≪ N.
RATIONALES = {
    "ve": {"family": "ve", "sigma_min": 0.002, "sigma_max": 80},
    "l2": {"family": "l2", "sigma_min": 0.002, "sigma_max": 80},
    "gaussian": {"family": "gaussian", "sigma_n": 5, "sigma_min": 0.002, "sigma_max": 15},
    "kl": {"family": "kl", "sigma_min": 0.1, "sigma_max": 10},
    "edm": {"family": "edm", "rho": 7, "sigma_min": 0.002, "sigma_max": 80},
    "lognormal": {"family": "lognormal", "sigma_min": 0.002, "sigma_max": 10},
}
CASES = {
    "euler_maruyama": {}, "euler_maruyama-difference": {"discretization": "difference"},
    "euler": {}, "heun": {},
    "edm_stochastic": {"S_churn": 40, "S_tmin": 0.05, "S_tmax": 50, "S_noise": 1.0},
    "s2n-deterministic": {"gamma": 0.026}, "s2n-ancestral": {"gamma": 1, "delta": 1, "rho": 1},
    "dpmpp_2m": {}, "ipndm": {}, "unipc": {},
}
# Left-point g(t_i)²Δt overshoots where the density at σ_max is ~0: the variance added by the first
# step exceeds σ_max² unless N ≫ g(1)²/σ_max² (test_em_instability_is_real); 'difference' is the fix.
LOGNORMAL_80 = {"family": "lognormal", "sigma_min": 0.002, "sigma_max": 80}


def gaussian_denoiser(x, sigma, labels=None):
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + sg**2 * MU) / (S**2 + sg**2)


def moments_error(case, name, steps, n=50000):
    sampler = SAMPLERS[case.split("-")[0]]
    r = rationale(RATIONALES[name] if isinstance(name, str) else name)
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=F64)
    # start from the exact marginal N(μ, s² + σ_max²) so the only error left is discretisation (and MC)
    latents = (MU + math.sqrt(S**2 + r.sigma_max**2) * z) / r.sigma_max
    x = sampler(gaussian_denoiser, latents, r, steps, generator=torch.Generator().manual_seed(1), **CASES[case])
    return abs(x.mean().item() - MU) + abs(x.var().item() - S**2)


@pytest.mark.parametrize("rationale", RATIONALES)
@pytest.mark.parametrize("case", CASES)
def test_gaussian_data_moments_converge(case, rationale):
    errors = [moments_error(case, rationale, steps) for steps in (8, 64, 512)]
    print(case, rationale, ["%.2e" % e for e in errors])
    assert errors[2] < errors[0]
    assert errors[2] < 0.03  # MC noise of 50k samples is ≈ 0.004


def test_em_instability_is_real():
    """The documented limitation above: left-point EM diverges, the difference form does not."""
    assert moments_error("euler_maruyama", LOGNORMAL_80, 512) > 1.0
    assert moments_error("euler_maruyama-difference", LOGNORMAL_80, 512) < 0.1


def test_heun_with_edm_rationale_is_edm_sampler():
    """σ_i of EDM eq. 5 (ρ = 7) and the EDM reference loop, written out as in NVlabs/edm."""
    r = rationale({"family": "edm", "rho": 7, "sigma_min": 0.002, "sigma_max": 80})
    steps, rho = 18, 7
    i = torch.arange(steps, dtype=F64)
    t_steps = (80 ** (1 / rho) + i / (steps - 1) * (0.002 ** (1 / rho) - 80 ** (1 / rho))) ** rho
    t_steps = torch.cat([t_steps, torch.zeros(1, dtype=F64)])
    torch.testing.assert_close(torch.from_numpy(noise_levels(r, steps)), t_steps, rtol=1e-12, atol=0)
    latents = torch.randn(64, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    x_next = latents * t_steps[0]
    for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
        x_cur = x_next
        d_cur = (x_cur - gaussian_denoiser(x_cur, t_cur.expand(64))) / t_cur
        x_next = x_cur + (t_next - t_cur) * d_cur
        if t_next > 0:
            d_prime = (x_next - gaussian_denoiser(x_next, t_next.expand(64))) / t_next
            x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
    torch.testing.assert_close(SAMPLERS["heun"](gaussian_denoiser, latents, r, steps), x_next, rtol=1e-12, atol=1e-12)


def test_s2n_special_cases():
    r = rationale(RATIONALES["ve"])
    latents = torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    euler = SAMPLERS["euler"](gaussian_denoiser, latents, r, 20)
    torch.testing.assert_close(SAMPLERS["s2n"](gaussian_denoiser, latents, r, 20, gamma=0, rho=0), euler)
    assert not torch.allclose(SAMPLERS["s2n"](gaussian_denoiser, latents, r, 20, gamma=0.5, rho=0), euler)


def point_set():
    angles = torch.arange(8, dtype=F64) * (2 * math.pi / 8)
    points = torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return points, torch.arange(8) % 2  # two classes: even and odd corners


def ideal_denoiser(x, sigma, labels=None):
    """EDM App. B.3: D(x; σ) = Σ y_i N(x; y_i, σ²) / Σ N(x; y_i, σ²) over the (class's) points."""
    points, classes = point_set()
    logits = -((x[:, None, :] - points[None]) ** 2).sum(-1) / (2 * sigma[:, None] ** 2)
    if labels is not None:
        logits = logits.masked_fill(classes[None, :] != labels[:, None], -math.inf)
    return torch.softmax(logits, dim=1) @ points


@pytest.mark.parametrize("case", CASES)
def test_finite_point_set_with_class_labels(case):
    r = rationale(RATIONALES["edm"])
    points, classes = point_set()
    labels = torch.arange(200) % 2
    latents = torch.randn(200, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = SAMPLERS[case.split("-")[0]](ideal_denoiser, latents, r, 256, class_labels=labels,
                                     generator=torch.Generator().manual_seed(1), **CASES[case])
    dist = torch.cdist(x, points)
    nearest = dist.argmin(1)
    assert dist.min(1).values.max().item() < 0.05
    assert torch.equal(classes[nearest], labels)  # labels reach the denoiser
    assert len(set(nearest.tolist())) == 8  # every corner is generated


@pytest.mark.parametrize("case", CASES)
def test_reproducible_from_seeded_generator_and_float64(case):
    r = rationale(RATIONALES["l2"])
    latents = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    run = lambda seed: SAMPLERS[case.split("-")[0]](ideal_denoiser, latents, r, 12,
                                                    generator=torch.Generator().manual_seed(seed), **CASES[case])
    a, b, c = run(5), run(5), run(6)
    assert a.dtype == F64 and torch.equal(a, b)
    stochastic = case in ("euler_maruyama", "euler_maruyama-difference", "edm_stochastic", "s2n-ancestral")
    assert torch.equal(a, c) != stochastic


def test_noise_levels_nfe_and_options():
    r = rationale(RATIONALES["ve"])
    levels = noise_levels(r, 5)
    assert levels[0] == pytest.approx(80) and levels[-2] == pytest.approx(0.002)
    assert levels[-1] == 0 and len(levels) == 6
    calls = []

    def counting(x, sigma, labels=None):
        calls.append(1)
        return gaussian_denoiser(x, sigma)

    latents = torch.zeros(2, 1, dtype=F64)
    for name, fn in SAMPLERS.items():
        for options in [{}] + [{"afs": True}] * ("afs" in sampler_options(name)):
            calls.clear()
            fn(counting, latents, r, 10, **options)
            assert len(calls) == nfe(name, 10, options) == 10 * (1 + ("heun" in name or "edm" in name)) \
                - ("heun" in name or "edm" in name) - len(options), (name, options)
            assert steps_for_nfe(name, nfe(name, 10, options), options) == 10
    assert {name for name in SAMPLERS if "afs" in sampler_options(name)} == {"dpmpp_2m", "dpmpp_3m", "ipndm", "unipc"}


def test_options_added_later_stay_out_of_a_cells_identity_at_their_defaults():
    """A cell of iPNDM, UniPC or DPM-Solver++(2M) sampled before max_order, order and afs existed keeps its identity;
    set away from the default they enter it, one spelling each (4.0 is 4, true is not 1)."""
    from ied.samplers import OptionError, identity_options
    assert identity_options("ipndm", {}) == identity_options("ipndm", {"max_order": 4, "afs": False}) == {}
    assert identity_options("unipc", {"order": 3.0}) == {"order": 3}
    assert identity_options("dpmpp_3m", {}) == {"afs": False}  # a new sampler keeps all of its options
    assert identity_options("euler_maruyama", {}) == {"discretization": "sde"}
    for options, fragment in (({"max_order": True}, r"one of \[1, 2, 3, 4\], got True"), ({"max_order": 5}, "one of"),
                              ({"afs": 1}, "true or false")):
        with pytest.raises(OptionError, match=fragment):
            identity_options("ipndm", options)


def test_options_are_checked_against_the_signatures():
    assert resolve_options("edm_stochastic", {}) == {"S_churn": 0.0, "S_tmin": 0.0, "S_tmax": math.inf,
                                                     "S_noise": 1.0}
    assert resolve_options("s2n", {"gamma": 1}) == {"gamma": 1.0, "delta": 1.0, "rho": 0.0}
    assert resolve_options("euler_maruyama", {"discretization": "difference"}) == {"discretization": "difference"}
    for sampler, options, option, fragment in [
        ("edm_stochastic", {"S_churn": "abc"}, "S_churn", "must be a number"),
        ("edm_stochastic", {"S_churn": -50}, "S_churn", "must be >= 0"),
        ("edm_stochastic", {"S_noise": math.nan}, "S_noise", "must be a finite number"),
        ("edm_stochastic", {"S_tmin": math.inf}, "S_tmin", "must be a finite number"),
        ("s2n", {"gamma": -1}, "gamma", "must be > -1"),  # the bound itself is excluded
        ("edm_stochastic", {"S_churn": True}, "S_churn", "must be a number"),
        ("euler_maruyama", {"discretization": "foo"}, "discretization", "one of ['sde', 'difference']"),
        ("s2n", {"gamma": -2}, "gamma", "must be > -1"),
        ("s2n", {"delta": -1}, "delta", "must be >= 0"),
        ("heun", {"S_churn": 1}, "S_churn", "not an option of heun"),
    ]:
        with pytest.raises(OptionError, match=re.escape(fragment)) as info:
            resolve_options(sampler, options)
        assert info.value.option == option and info.value.sampler == sampler
        assert str(info.value).startswith(f"{option}: ")
    for sampler, options, option, fragment in [("nope", {}, "sampler", "unknown sampler 'nope'; choose one of ["),
                                               ("heun", [1], "options", "must be a mapping of option names")]:
        with pytest.raises(OptionError, match=re.escape(fragment)) as info:
            resolve_options(sampler, options)
        assert (info.value.sampler, info.value.option) == (sampler, option)


class CountingNoise:
    """A seeded stream of normals that counts its draws (both samplers under test consume the same stream)."""

    def __init__(self, seed=0):
        self.gen, self.draws = torch.Generator().manual_seed(seed), 0

    def randn_like(self, x):
        self.draws += 1
        return torch.randn(x.shape, generator=self.gen, dtype=x.dtype)


def edm_algorithm2(denoiser, latents, t_steps, S_churn, S_tmin, S_tmax, S_noise, noise):
    """EDM Algorithm 2 written out as NVlabs/edm's edm_sampler (noise drawn at every step, line 5)."""
    num_steps = len(t_steps) - 1
    x_next = latents.to(F64) * t_steps[0]
    for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
        x_cur = x_next
        gamma = min(S_churn / num_steps, math.sqrt(2) - 1) if S_tmin <= t_cur <= S_tmax else 0
        t_hat = t_cur + gamma * t_cur
        x_hat = x_cur + math.sqrt(t_hat**2 - t_cur**2) * S_noise * noise.randn_like(x_cur)
        d_cur = (x_hat - gaussian_denoiser(x_hat, torch.full((len(x_hat),), t_hat, dtype=F64))) / t_hat
        x_next = x_hat + (t_next - t_hat) * d_cur
        if i < num_steps - 1:
            d_prime = (x_next - gaussian_denoiser(x_next, torch.full((len(x_next),), t_next, dtype=F64))) / t_next
            x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
    return x_next


@pytest.mark.parametrize("S_churn, S_tmin, S_tmax, S_noise", [
    (2.0, 0.0, math.inf, 1.0),  # γ = 0.2, below the √2 − 1 cap
    (0.5, 0.0, math.inf, 1.0),  # S_churn below 1 still churns (γ = 0.05)
    (40.0, 0.0, math.inf, 1.0),  # γ capped at √2 − 1
    (4.0, 0.05, 5.0, 1.007),  # churn only inside [S_tmin, S_tmax], S_noise ≠ 1
])
def test_edm_stochastic_is_algorithm2(S_churn, S_tmin, S_tmax, S_noise):
    r = rationale(RATIONALES["edm"])
    steps = 10
    latents = torch.randn(64, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    t_steps = noise_levels(r, steps).tolist()
    reference = edm_algorithm2(gaussian_denoiser, latents, t_steps, S_churn, S_tmin, S_tmax, S_noise, CountingNoise())
    ours = SAMPLERS["edm_stochastic"](gaussian_denoiser, latents, r, steps, generator=CountingNoise(), S_churn=S_churn,
                                      S_tmin=S_tmin, S_tmax=S_tmax, S_noise=S_noise)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    heun = SAMPLERS["heun"](gaussian_denoiser, latents, r, steps)
    assert (ours - heun).abs().max() > 1e-3  # the churn did something


@pytest.mark.parametrize("name, options, draws", [
    ("euler_maruyama", {}, 9), ("euler", {}, 0), ("heun", {}, 0), ("edm_stochastic", {}, 0),
    ("edm_stochastic", {"S_churn": 5.0}, 10), ("s2n", {}, 0), ("s2n", {"rho": 1.0}, 10),
])
def test_how_often_each_sampler_draws_noise(name, options, draws):
    noise = CountingNoise()
    SAMPLERS[name](gaussian_denoiser, torch.zeros(4, 2, dtype=F64), rationale(RATIONALES["ve"]), 10, generator=noise,
                   **options)
    assert noise.draws == draws


def test_euler_maruyama_last_step_is_the_mean():
    """The last step adds no noise (score_sde): two runs whose streams differ only after draw steps − 1 agree."""
    class Diverging(CountingNoise):
        def randn_like(self, x):
            return super().randn_like(x) if self.draws < 9 else torch.full_like(x, math.nan)

    r, latents = rationale(RATIONALES["ve"]), torch.randn(8, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x = SAMPLERS["euler_maruyama"](gaussian_denoiser, latents, r, 10, generator=Diverging())
    torch.testing.assert_close(x, SAMPLERS["euler_maruyama"](gaussian_denoiser, latents, r, 10, generator=CountingNoise()))
    assert torch.isfinite(x).all()


def test_s2n_is_corollary_1_written_out():
    """S2N's generalized step with γ, δ, ρ away from the special cases, against the formula step by step."""
    r = rationale(RATIONALES["ve"])
    gamma, delta, rho, steps = 0.3, 0.7, 0.5, 12
    latents = torch.randn(32, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    sigma = noise_levels(r, steps).tolist()
    noise = CountingNoise(7)
    x = latents * sigma[0]
    for st, ss in zip(sigma[:-1], sigma[1:]):
        eps_hat = (x - gaussian_denoiser(x, torch.full((32,), st, dtype=F64))) / st
        x = x - (1 + rho**2) / (1 + gamma) * (st ** (1 + gamma) - ss ** (1 + gamma)) * st ** (-gamma) * eps_hat \
            + rho * math.sqrt(st**2 - ss**2) * (ss / st) ** delta * noise.randn_like(x)
    ours = SAMPLERS["s2n"](gaussian_denoiser, latents, r, steps, generator=CountingNoise(7), gamma=gamma, delta=delta,
                           rho=rho)
    torch.testing.assert_close(ours, x, rtol=1e-12, atol=1e-12)


def test_one_step_of_each_sampler_by_hand():
    """A single step from σ_max, against the formulas: where each sampler starts and what its step does."""
    r = rationale(RATIONALES["ve"])
    latents = torch.randn(8, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    s0 = r.sigma(np.array([1.0]))[0]
    x0 = latents * s0  # every sampler starts at σ(1) = σ_max
    d0 = gaussian_denoiser(x0, torch.full((8,), s0, dtype=F64))
    g2 = r.g2(np.array([1.0]))[0]
    em = SAMPLERS["euler_maruyama"](gaussian_denoiser, latents, r, 1)  # one step: the mean, no noise
    torch.testing.assert_close(em, x0 + g2 * (d0 - x0) / s0**2, rtol=1e-12, atol=1e-12)
    difference = SAMPLERS["euler_maruyama"](gaussian_denoiser, latents, r, 1, discretization="difference")
    s1 = r.sigma(np.array([0.0]))[0]
    torch.testing.assert_close(difference, x0 + (s0**2 - s1**2) * (d0 - x0) / s0**2, rtol=1e-12, atol=1e-12)
    euler = SAMPLERS["euler"](gaussian_denoiser, latents, r, 1)  # σ_0 = σ_max → 0 in one Euler step: D(x0)
    torch.testing.assert_close(euler, d0, rtol=1e-12, atol=1e-12)
    assert noise_levels(r, 1).tolist() == [s0, 0.0]
    with pytest.raises(ValueError, match="steps must be >= 1"):
        noise_levels(r, 0)


def test_edm_churn_window_includes_its_bounds():
    """S_tmin ≤ σ_i ≤ S_tmax: a window whose ends are noise levels churns at both ends."""
    r = rationale(RATIONALES["edm"])
    steps = 8
    levels = noise_levels(r, steps).tolist()
    latents = torch.randn(16, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    window = {"S_churn": 3.0, "S_tmin": levels[5], "S_tmax": levels[2], "S_noise": 1.0}
    reference = edm_algorithm2(gaussian_denoiser, latents, levels, window["S_churn"], window["S_tmin"],
                               window["S_tmax"], 1.0, CountingNoise(3))
    ours = SAMPLERS["edm_stochastic"](gaussian_denoiser, latents, r, steps, generator=CountingNoise(3), **window)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    narrower = {**window, "S_tmin": levels[5] * 1.0001, "S_tmax": levels[2] * 0.9999}
    assert not torch.allclose(SAMPLERS["edm_stochastic"](gaussian_denoiser, latents, r, steps,
                                                         generator=CountingNoise(3), **narrower), ours)


# --- the low-NFE solvers: against diffusers (Apache-2.0, a test dependency), the published formulas, their order --

MIXTURE = (torch.tensor([[-1.0, 0.5], [0.8, -0.3], [0.2, 1.2]], dtype=F64), torch.tensor([0.3, 0.1, 0.2], dtype=F64),
           torch.tensor([0.5, 0.3, 0.2], dtype=F64))  # means, standard deviations, weights


def mixture_denoiser(x, sigma, labels=None):
    """E[y | x] for y ~ Σ π_k N(μ_k, s_k² I), x = y + σ n: posterior weights times each component's mean."""
    means, stds, weights = MIXTURE
    var = stds[None, :] ** 2 + sigma[:, None] ** 2  # [B, K]
    log_w = torch.log(weights)[None] - ((x[:, None, :] - means[None]) ** 2).sum(-1) / (2 * var) - x.shape[1] * torch.log(var) / 2
    post = torch.softmax(log_w, dim=1)
    component = (stds[None, :, None] ** 2 * x[:, None, :] + sigma[:, None, None] ** 2 * means[None]) / var[..., None]
    return (post[..., None] * component).sum(1)


EXACT_DENOISERS = {"gaussian": gaussian_denoiser, "mixture": mixture_denoiser, "points": ideal_denoiser}


def _diffusers_scheduler(cls, sigmas, **config):
    """A diffusers multistep scheduler stepping on `sigmas` (float64, ending in 0) instead of its own grid."""
    scheduler = cls(**config)
    scheduler.set_timesteps(len(sigmas) - 1)
    scheduler.sigmas = torch.tensor(sigmas, dtype=F64)
    return scheduler


def _vp(sigma):  # diffusers keeps the VP sample α x with α = 1/√(1 + σ²); the data-prediction steps are the same
    return 1 / math.sqrt(1 + sigma**2)


def diffusers_dpmpp_2m(denoiser, latents, sigmas):
    """diffusers' DPM-Solver++ (midpoint, order 2) update functions, first order on the first and the last step as
    its step() orders them (step() itself casts to float32, so its two updates are called here in float64)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = _diffusers_scheduler(DPMSolverMultistepScheduler, sigmas, algorithm_type="dpmsolver++", solver_order=2,
                                 solver_type="midpoint", final_sigmas_type="zero", lower_order_final=True)
    sample = latents.double() * sigmas[0] * _vp(sigmas[0])
    outputs = []
    for i in range(len(sigmas) - 1):
        sched._step_index = i
        denoised = denoiser(sample / _vp(sigmas[i]), sample.new_full((len(sample),), sigmas[i]))
        outputs = [*outputs[-1:], denoised]
        if i == 0 or sigmas[i + 1] == 0:
            sample = sched.dpm_solver_first_order_update(denoised, sample=sample)
        else:
            sample = sched.multistep_dpm_solver_second_order_update(outputs, sample=sample)
    return sample


def diffusers_unipc(denoiser, latents, sigmas):
    """diffusers' UniPC (bh2, order 2, data prediction) through its own step()."""
    from diffusers import UniPCMultistepScheduler

    sched = _diffusers_scheduler(UniPCMultistepScheduler, sigmas, solver_order=2, solver_type="bh2",
                                 predict_x0=True, prediction_type="sample", lower_order_final=True,
                                 final_sigmas_type="zero")
    sample = latents.double() * sigmas[0] * _vp(sigmas[0])
    for i, t in enumerate(sched.timesteps):
        denoised = denoiser(sample / _vp(sigmas[i]), sample.new_full((len(sample),), sigmas[i]))
        sample = sched.step(denoised, t, sample, return_dict=False)[0]
    return sample


def diffusers_dpmpp_3m(denoiser, latents, sigmas):
    """diffusers' DPM-Solver++ update functions of orders 1, 2, 3 (solver_order=3, dpmsolver++, lower_order_final),
    in the order its step() takes them below 15 steps: 1, 2, 3, …, 3, 2, and 1 on the step to σ = 0 (step() itself
    casts to float32, so the updates are called here in float64)."""
    from diffusers import DPMSolverMultistepScheduler

    sched = _diffusers_scheduler(DPMSolverMultistepScheduler, sigmas, algorithm_type="dpmsolver++", solver_order=3,
                                 final_sigmas_type="zero", lower_order_final=True)
    steps = len(sigmas) - 1
    assert steps < 15  # diffusers lowers the second-to-last step's order only below 15 steps
    sample = latents.double() * sigmas[0] * _vp(sigmas[0])
    outputs = []
    for i in range(steps):
        sched._step_index = i
        denoised = denoiser(sample / _vp(sigmas[i]), sample.new_full((len(sample),), sigmas[i]))
        outputs = [*outputs[-2:], denoised]
        if i == 0 or sigmas[i + 1] == 0:
            sample = sched.dpm_solver_first_order_update(denoised, sample=sample)
        elif i == 1 or i == steps - 2:
            sample = sched.multistep_dpm_solver_second_order_update(outputs, sample=sample)
        else:
            sample = sched.multistep_dpm_solver_third_order_update(outputs, sample=sample)
    return sample


def diffusers_unipc_3(denoiser, latents, sigmas):
    """diffusers' UniPC of order 3 (bh2, data prediction, lower_order_final) through its own step()."""
    from diffusers import UniPCMultistepScheduler

    sched = _diffusers_scheduler(UniPCMultistepScheduler, sigmas, solver_order=3, solver_type="bh2",
                                 predict_x0=True, prediction_type="sample", lower_order_final=True,
                                 final_sigmas_type="zero")
    sample = latents.double() * sigmas[0] * _vp(sigmas[0])
    for i, t in enumerate(sched.timesteps):
        denoised = denoiser(sample / _vp(sigmas[i]), sample.new_full((len(sample),), sigmas[i]))
        sample = sched.step(denoised, t, sample, return_dict=False)[0]
    return sample


REFERENCES = {("dpmpp_2m", ()): diffusers_dpmpp_2m, ("unipc", ()): diffusers_unipc,
              ("dpmpp_3m", ()): diffusers_dpmpp_3m, ("unipc", (("order", 3),)): diffusers_unipc_3}


def afs_first(denoiser, first_sigma):
    """The denoiser with its first call replaced by the analytical first step's D = x − σ x/√(1 + σ²) (diff-sampler:
    dx/dσ = x/√(1 + σ₀²)); later calls go through."""
    calls = []

    def wrapped(x, sigma, labels=None):
        calls.append(1)
        if len(calls) == 1:
            assert sigma[0].item() == first_sigma
            return x - first_sigma * x / math.sqrt(1 + first_sigma**2)
        return denoiser(x, sigma)
    return wrapped


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own numpy use
@pytest.mark.parametrize("data", EXACT_DENOISERS)
@pytest.mark.parametrize("afs", [False, True], ids=["", "afs"])
@pytest.mark.parametrize("name, options", list(REFERENCES), ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}{x}" for k, x in v))
def test_low_nfe_solvers_equal_diffusers_in_float64(name, options, afs, data):
    """On the same σ grid (EDM ρ = 7, 3 to 12 levels) and exact denoisers, ≤ 1e-10 apart; with the analytical
    first step, diffusers' first model output is its large-σ limit."""
    r = rationale(RATIONALES["edm"])
    latents = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    denoiser = EXACT_DENOISERS[data]
    for steps in (3, 5, 12):
        ours = SAMPLERS[name](denoiser, latents, r, steps, afs=afs, **dict(options))
        reference = afs_first(denoiser, 80.0) if afs else denoiser
        with torch_default_float64():
            theirs = REFERENCES[name, options](reference, latents, noise_levels(r, steps).tolist())
        assert (ours - theirs).abs().max().item() <= 1e-10, (steps, (ours - theirs).abs().max().item())


def test_third_order_solvers_are_not_their_second_order_versions():
    """So the equality above is a test of the third-order terms: they move the result on a coarse grid."""
    r = rationale(RATIONALES["edm"])
    latents = torch.randn(64, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    for third, second in ((SAMPLERS["dpmpp_3m"], SAMPLERS["dpmpp_2m"]),
                          (lambda *a: SAMPLERS["unipc"](*a, order=3), SAMPLERS["unipc"])):
        assert (third(mixture_denoiser, latents, r, 6) - second(mixture_denoiser, latents, r, 6)).abs().max() > 1e-3


def test_the_exponential_integrators_weights_are_accurate_at_small_steps():
    """φ_k(−h) by its series where the recursion φ_{k+1} = (φ_k − 1/k!)/x cancels (diffusers' UniPC loses all digits
    of its third weight at h = 1e-6): against mpmath at 50 digits, and the two ways agree where both are accurate."""
    import mpmath
    import ied.samplers as module
    mpmath.mp.dps = 50
    for h in (1e-8, 1e-6, 1e-3, 0.3):
        for k in (1, 2, 3, 4):
            x = mpmath.mpf(-h)
            exact = (mpmath.exp(x) - sum(x**j / mpmath.factorial(j) for j in range(k))) / x**k
            assert module._phi(-h, k) == pytest.approx(float(exact), rel=1e-13), (h, k)
    for k in (1, 2, 3, 4):  # φ_k by its series and by its recursion agree where both are accurate
        for h in (0.5, 1.0, 1.5, 3.0):
            recursion = math.exp(-h)
            for j in range(k):
                recursion = (recursion - 1 / math.factorial(j)) / -h
            assert module._phi(-h, k) == pytest.approx(recursion, rel=1e-12)


class torch_default_float64:
    """diffusers builds some coefficients with torch.tensor(list): make them float64 as the grid is."""

    def __enter__(self):
        self.saved = torch.get_default_dtype()
        torch.set_default_dtype(F64)

    def __exit__(self, *exc):
        torch.set_default_dtype(self.saved)


@pytest.mark.parametrize("data", EXACT_DENOISERS)
def test_ipndm_is_the_published_adams_bashforth_recursion(data):
    """Zhang & Chen 2023's iPNDM written out for 6 steps: orders 1, 2, 3, 4, 4, 4 with fixed coefficients on
    d = (x − D)/σ, the last step to σ = 0 included."""
    r = rationale(RATIONALES["edm"])
    denoiser = EXACT_DENOISERS[data]
    latents = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    s = noise_levels(r, 6).tolist()
    x, d = latents * s[0], []
    for i in range(6):
        d.insert(0, (x - denoiser(x, x.new_full((64,), s[i]))) / s[i])
        h = s[i + 1] - s[i]
        if i == 0:
            x = x + h * d[0]
        elif i == 1:
            x = x + h * (3 * d[0] - d[1]) / 2
        elif i == 2:
            x = x + h * (23 * d[0] - 16 * d[1] + 5 * d[2]) / 12
        else:
            x = x + h * (55 * d[0] - 59 * d[1] + 37 * d[2] - 9 * d[3]) / 24
    assert (SAMPLERS["ipndm"](denoiser, latents, r, 6) - x).abs().max().item() <= 1e-12


@pytest.mark.parametrize("max_order", [1, 2, 3, 4])
@pytest.mark.parametrize("afs", [False, True])
def test_ipndm_of_each_maximum_order_is_its_adams_bashforth_formula(max_order, afs):
    """Order min(i + 1, max_order) at step i with the equal-step Adams–Bashforth coefficients written out; the
    analytical first step takes dx/dσ = x/√(1 + σ₀²) instead of the first call (diff-sampler's AFS)."""
    r = rationale(RATIONALES["edm"])
    latents = torch.randn(64, 2, generator=torch.Generator().manual_seed(5), dtype=F64)
    s = noise_levels(r, 7).tolist()
    coefficients = {1: [1], 2: [3 / 2, -1 / 2], 3: [23 / 12, -16 / 12, 5 / 12], 4: [55 / 24, -59 / 24, 37 / 24, -9 / 24]}
    x, d = latents * s[0], []
    for i in range(7):
        slope = x / math.sqrt(1 + s[0] ** 2) if (afs and i == 0) else (x - mixture_denoiser(x, x.new_full((64,), s[i]))) / s[i]
        d.insert(0, slope)
        order = min(i + 1, max_order)
        x = x + (s[i + 1] - s[i]) * sum(c * v for c, v in zip(coefficients[order], d))
    ours = SAMPLERS["ipndm"](mixture_denoiser, latents, r, 7, max_order=max_order, afs=afs)
    assert (ours - x).abs().max().item() <= 1e-12


def test_global_order_of_convergence_on_gaussian_data():
    """Gaussian data N(0, s²I) has the exact probability-flow solution x(σ) = x(σ_max) √((s² + σ²)/(s² + σ_max²)).
    The error at σ = 0 halves about 2× per doubling of the steps for Euler, 4× or more for the others (σ_min = 1e-4
    keeps the last step's own error, σ_min²/2s² relative, below what is measured)."""
    r = rationale({"family": "edm", "rho": 7, "sigma_min": 1e-4, "sigma_max": 80})
    denoiser = lambda x, sigma, labels=None: S**2 / (S**2 + sigma[:, None] ** 2) * x
    latents = torch.randn(16, 3, generator=torch.Generator().manual_seed(6), dtype=F64)
    exact = latents * 80 * S / math.sqrt(S**2 + 80**2)
    orders = {}
    for name in ("euler", "heun", "dpmpp_2m", "ipndm", "unipc"):
        errors = [(SAMPLERS[name](denoiser, latents, r, n) - exact).abs().max().item() for n in (64, 128)]
        orders[name] = math.log2(errors[0] / errors[1])
    print({k: round(v, 2) for k, v in orders.items()})
    assert 0.9 <= orders["euler"] <= 1.1
    assert all(orders[name] >= 2.0 for name in ("heun", "dpmpp_2m", "ipndm", "unipc")), orders


def test_steps_for_nfe_inverts_nfe_and_names_the_nearest_nfe_otherwise():
    from ied.samplers import steps_for_nfe
    for name in SAMPLERS:
        for steps in (1, 2, 9, 18):
            assert steps_for_nfe(name, nfe(name, steps)) == steps
    with pytest.raises(ValueError, match=r"heun cannot make 10 denoiser evaluations .*2·steps − 1.*nearest it can: 9 or 11"):
        steps_for_nfe("heun", 10)
    with pytest.raises(ValueError, match="nearest it can: 1$"):
        steps_for_nfe("edm_stochastic", 0)


class Levels:
    """A schedule that visits given noise levels at uniform t (what a damaged or degenerate table could give)."""

    name, sigma_min, sigma_max = "flat", 0.002, 80.0

    def __init__(self, levels):
        self.levels = np.asarray(levels, dtype=np.float64)

    def sigma(self, t):
        return np.interp(np.asarray(t), np.linspace(0.0, 1.0, len(self.levels)), self.levels[::-1])

    def g2(self, t):
        return np.ones_like(np.asarray(t, dtype=np.float64))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_sampler_refuses_levels_that_do_not_decrease_strictly(name, capsys):
    """[80, 80, 1, 0.002]: a step of zero length (UniPC returned NaN, DPM-Solver++(2M) divided by zero); refused in
    one line by every sampler before its first denoiser call, and by the CLI without a traceback."""
    from ied.samplers import ScheduleError
    calls = []

    def counting(x, sigma, labels=None):
        calls.append(1)
        return gaussian_denoiser(x, sigma)
    with pytest.raises(ScheduleError, match=r"not strictly decreasing: σ_0 = 80, σ_1 = 80 \(a step of zero length"):
        SAMPLERS[name](counting, torch.zeros(2, 1, dtype=F64), Levels([80.0, 80.0, 1.0, 0.002]), 4,
                       generator=torch.Generator().manual_seed(0))
    assert calls == []
    SAMPLERS[name](counting, torch.zeros(2, 1, dtype=F64), Levels([80.0, 79.9, 1.0, 0.002]), 4,
                   generator=torch.Generator().manual_seed(0))
