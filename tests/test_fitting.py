"""ied.fitting on exact denoisers: fitted grids against the hand-made ones, the rationale through given levels,
the dynamic programmes against brute force."""
import itertools
import math

import numpy as np
import pytest
import torch

from ied import fitting
from ied.samplers import SAMPLERS, noise_levels, steps_for_nfe
from ied.specs import rationale

from test_samplers import gaussian_denoiser, mixture_denoiser

F64 = torch.float64
DOMAIN = {"sigma_min": 0.002, "sigma_max": 80}
BASE = {"family": "edm", "rho": 7, **DOMAIN}
HAND_MADE = {**{f"EDM ρ={rho}": {"family": "edm", "rho": rho, **DOMAIN} for rho in (1, 2, 3, 5, 7, 10)},
             "VE": {"family": "ve", **DOMAIN}, "L2": {"family": "l2", "v_max": 1.0, **DOMAIN}}
DATA = {"gaussian": gaussian_denoiser, "mixture": mixture_denoiser}


class Fits(dict):
    """Per data set, made when first asked for: the teacher on 64 pilot latents, 256 other latents to score on
    and their reference output (Heun at 2000 steps)."""

    def __missing__(self, name):
        denoiser, base = DATA[name], rationale(BASE)
        pilot = torch.randn(64, 2, generator=torch.Generator().manual_seed(10), dtype=F64)
        scoring = torch.randn(256, 2, generator=torch.Generator().manual_seed(11), dtype=F64)
        self[name] = (fitting.teacher(denoiser, pilot, fitting.fine_levels(base)), scoring,
                      SAMPLERS["heun"](denoiser, scoring, base, 2000))
        return self[name]


@pytest.fixture(scope="module")
def fits():
    return Fits()


def global_error(data, fits, sampler, steps, schedule):
    _, scoring, reference = fits[data]
    return ((SAMPLERS[sampler](DATA[data], scoring, schedule, steps) - reference) ** 2).mean().sqrt().item()


@pytest.mark.parametrize("data", ["gaussian", pytest.param("mixture", marks=pytest.mark.slow)])
@pytest.mark.parametrize("sampler, nfe", [("euler", 5), ("euler", 10), ("heun", 5), ("heun", 9)])
def test_a_fitted_grid_is_as_good_as_the_best_hand_made_one_and_better_than_edm(fits, data, sampler, nfe):
    """Fitted on pilot latents and scored on others: within 1.1× of the best of EDM ρ ∈ {1, 2, 3, 5, 7, 10}, VE
    and L2 on the same domain, and below EDM ρ = 7."""
    base, steps = rationale(BASE), steps_for_nfe(sampler, nfe)
    levels = fitting.fit_schedule(DATA[data], None, base, sampler, nfe, path=fits[data][0])
    assert len(levels) == steps and levels[0] == base.sigma_max and levels[-1] == pytest.approx(base.sigma_min)
    assert np.all(np.diff(levels) < 0)
    fitted = global_error(data, fits, sampler, steps, fitting.rationale_through(levels, base))
    hand = {name: global_error(data, fits, sampler, steps, rationale(spec)) for name, spec in HAND_MADE.items()}
    best = min(hand, key=hand.get)
    print(data, sampler, nfe, f"fitted {fitted:.4g}, best hand-made {best} {hand[best]:.4g}, EDM ρ=7 {hand['EDM ρ=7']:.4g}")
    assert fitted <= 1.1 * hand[best] and fitted < hand["EDM ρ=7"]


@pytest.mark.slow
@pytest.mark.parametrize("data", DATA)
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "ipndm", "unipc"])
def test_the_multistep_solvers_fitted_with_their_history_beat_edm(fits, data, sampler):
    base = rationale(BASE)
    levels = fitting.fit_schedule(DATA[data], None, base, sampler, 10, path=fits[data][0])
    fitted = global_error(data, fits, sampler, 10, fitting.rationale_through(levels, base))
    edm = global_error(data, fits, sampler, 10, rationale(HAND_MADE["EDM ρ=7"]))
    print(data, sampler, f"fitted {fitted:.4g}, EDM ρ=7 {edm:.4g}")
    assert fitted < edm


@pytest.mark.parametrize("data", ["gaussian", pytest.param("mixture", marks=pytest.mark.slow)])
def test_the_cost_density_spaces_levels_by_accumulated_root_delta_and_beats_edm_for_euler(fits, data):
    base = rationale(BASE)
    path = fits[data][0]
    density = fitting.cost_density(path, base)
    _, delta = fitting.denoiser_change(path)
    root = np.maximum(np.sqrt(delta), 1e-3 * np.sqrt(delta).mean())[::-1]  # increasing σ
    expected = np.concatenate([[0.0], np.cumsum(root * np.diff(np.log(path.sigmas[::-1])))])
    np.testing.assert_allclose(density.cdf(path.sigmas[::-1]), expected / expected[-1], rtol=1e-9, atol=1e-12)
    fitted = global_error(data, fits, "euler", 10, density)
    assert fitted < global_error(data, fits, "euler", 10, rationale(HAND_MADE["EDM ρ=7"]))


def test_the_rationale_through_levels_passes_through_them_and_follows_the_base_between():
    base = rationale({"family": "l2", "v_max": 1.0, **DOMAIN})
    levels = np.array([80.0, 20.0, 3.0, 0.9, 0.2, 0.002])
    r = fitting.rationale_through(levels, base)
    np.testing.assert_allclose(noise_levels(r, len(levels)), [*levels, 0.0], rtol=1e-9, atol=0)
    assert (r.sigma_min, r.sigma_max) == (base.sigma_min, base.sigma_max)
    assert r.cdf(base.sigma_min) == 0.0 and r.cdf(base.sigma_max) == 1.0
    sigma = np.geomspace(0.002, 80, 4001)
    assert np.all(np.diff(r.cdf(sigma)) > 0) and np.all(r.pdf(sigma) > 0)
    # inside (3, 20): Φ rises as the base's Φ does, rescaled to the interval, within the knots' linear pieces
    inner = np.geomspace(3.0, 20.0, 50)
    share = (base.cdf(inner) - base.cdf(3.0)) / (base.cdf(20.0) - base.cdf(3.0))
    t_lo, t_hi = 3 / 5, 4 / 5  # σ = 3 and 20 are levels 3 and 2 of 6: t = 1 − i/5
    np.testing.assert_allclose((r.cdf(inner) - t_lo) / (t_hi - t_lo), share, atol=5e-3)
    with pytest.raises(fitting.FittingError, match="decrease strictly"):
        fitting.rationale_through(np.array([80.0, 90.0, 0.002]), base)
    with pytest.raises(fitting.FittingError, match="decrease strictly"):
        fitting.rationale_through(np.array([70.0, 1.0, 0.002]), base)


def test_the_dynamic_programmes_find_the_brute_force_optimum():
    rng = np.random.default_rng(0)
    m, nodes = 8, 4
    cost = np.triu(rng.random((m, m)), 1)
    cost[cost == 0] = np.inf
    paths = [(0, *inner, m - 1) for inner in itertools.combinations(range(1, m - 1), nodes - 2)]
    total = lambda p: sum(cost[a, b] for a, b in zip(p, p[1:]))
    assert tuple(fitting.cheapest_path(cost, nodes)) == min(paths, key=total)
    first, after = rng.random(m), rng.random((m, m, m))
    with_history = lambda p: first[p[1]] + sum(after[a, b, c] for a, b, c in zip(p, p[1:], p[2:]))
    assert tuple(fitting.cheapest_path_with_history(first, after, nodes)) == min(paths, key=with_history)
    assert fitting.cheapest_path_with_history(first, after, 2) == [0, m - 1]


def test_a_fit_refuses_a_sampler_without_a_cost_and_more_levels_than_the_grid():
    base = rationale(BASE)
    with pytest.raises(fitting.FittingError, match="no fitting cost for the sampler 'edm_stochastic'"):
        fitting.fit_schedule(gaussian_denoiser, torch.zeros(2, 2, dtype=F64), base, "edm_stochastic", 9)
    with pytest.raises(fitting.FittingError, match="visits 30 levels: a fit needs 2 to 20"):
        fitting.fit_schedule(gaussian_denoiser, torch.zeros(2, 2, dtype=F64), base, "euler", 30, levels=20)
    with pytest.raises(fitting.FittingError, match="4 jumps of at most 10 fine intervals cannot cross 119"):
        fitting.fit_schedule(gaussian_denoiser, torch.zeros(2, 2, dtype=F64), base, "euler", 5, max_jump=10)
    bounded = fitting.fit_schedule(gaussian_denoiser, torch.ones(2, 2, dtype=F64), base, "euler", 5, max_jump=40)
    index = np.searchsorted(-fitting.fine_levels(base), -bounded)  # positions on the fine grid
    assert len(bounded) == 5 and np.all(np.diff(index) > 0) and np.all(np.diff(index) <= 40)


def test_the_teacher_follows_the_exact_gaussian_flow():
    """x(σ) = x(σ_max) √((s² + σ²)/(s² + σ_max²)) for zero-mean Gaussian data."""
    s = 0.5
    denoiser = lambda x, sigma, labels=None: s**2 / (s**2 + sigma[:, None] ** 2) * x
    latents = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    sigmas = fitting.fine_levels(rationale(BASE))
    path = fitting.teacher(denoiser, latents, sigmas)
    exact = [latents * 80 * math.sqrt((s**2 + sg**2) / (s**2 + 80**2)) for sg in sigmas]
    assert max((a - b).abs().max().item() for a, b in zip(path.states, exact)) < 1e-3
    assert path.calls == 1 + (len(sigmas) - 1) * (2 * fitting.TEACHER_SUBSTEPS)


def test_a_non_finite_denoiser_stops_the_fit_naming_the_noise_level():
    def broken(x, sigma, labels=None):
        return torch.where(sigma[:, None] < 1.0, torch.full_like(x, math.nan), x * 0.5)

    with pytest.raises(fitting.FittingError, match=r"not finite at σ = 0\.9"):
        fitting.fit_schedule(broken, torch.ones(2, 2, dtype=F64), rationale(BASE), "euler", 5)


def test_heuns_batched_costs_are_its_jump_costs_one_by_one(fits):
    path = fits["mixture"][0]
    ends = [3, 7, 40, 119]
    batched = fitting.heun_costs(mixture_denoiser, path, 2, ends, rows=128)  # 2 ends per call: chunks of 64 pilots
    single = [fitting.jump_cost(mixture_denoiser, path, 2, j, "heun") for j in ends]
    assert batched == pytest.approx(single, rel=1e-12)


def test_only_jumps_on_some_path_are_costed_and_the_fit_is_still_the_least_cost_one(fits):
    """At 3 levels a path is 0 → j → M − 1: Heun's fit costs 2(M − 2) jumps, and its middle level is the brute
    force's argmin."""
    jumps = fitting.first_jumps(120, 3, "heun")
    assert set(jumps) == {(0, j) for j in range(1, 119)} | {(i, 119) for i in range(1, 119)}
    # at 5 levels every jump but six is on some path: 0 → 117, 118, 119 and 1, 2 → 119 and 1 → 118 leave too few levels
    assert len(fitting.first_jumps(120, 5, "heun")) == 119 * 120 // 2 - 6
    assert fitting.fit_work({"method": "trajectory_dp", "sampler": "heun", "nfe": 5, "pilot": 64}) == 64 * len(jumps)
    assert fitting.fit_work({"method": "trajectory_dp", "sampler": "dpmpp_2m", "nfe": 5, "pilot": 64}) == 0
    path = fits["gaussian"][0]
    levels = fitting.fit_schedule(gaussian_denoiser, None, rationale(BASE), "heun", 5, path=path)
    totals = [fitting.jump_cost(gaussian_denoiser, path, 0, j, "heun")
              + fitting.jump_cost(gaussian_denoiser, path, j, 119, "heun") for j in range(1, 119)]
    assert levels[1] == path.sigmas[1 + int(np.argmin(totals))]


def test_a_fitted_table_reads_back_its_rationale_and_only_for_its_spec(tmp_path):
    base = rationale(BASE)
    levels = np.array([80.0, 9.0, 1.3, 0.2, 0.002])
    spec = {"family": "fitted", "model": "l2", "step": 900, "method": "trajectory_dp", "base": base.spec,
            "sampler": "euler", "nfe": 5, "pilot": 64, "sigma_min": 0.002, "sigma_max": 80.0}
    fitting.save_fitted(tmp_path / "f.parquet", "fit", spec, fitting.rationale_through(levels, base), {"pilot": 64})
    back = fitting.load_fitted(tmp_path / "f.parquet", spec)
    assert noise_levels(back, 5)[:-1] == pytest.approx(levels, rel=1e-9)
    with pytest.raises(fitting.FittingError, match="made for another spec"):
        fitting.load_fitted(tmp_path / "f.parquet", {**spec, "pilot": 32})
    table = __import__("pandas").read_parquet(tmp_path / "f.parquet")  # a schedule table, as tabulate writes
    assert list(table.columns) == ["t", "sigma", "pdf", "cdf"] and table["sigma"].iloc[-1] == pytest.approx(80.0)


@pytest.mark.parametrize("levels, span", [([500.0, 9.0, 1.3, 0.2, 0.002], r"\[0.002, 500\]"),
                                          ([80.0, 9.0, 1.3, 0.2, 1e-9], r"\[1e-09, 80\]")])
def test_a_fitted_table_whose_knots_leave_its_spec_s_domain_is_refused(tmp_path, levels, span):
    """The spec in the metadata says what was asked for; the knots are what is sampled: their range must be it."""
    spec = {"family": "fitted", "model": "l2", "step": 900, "method": "trajectory_dp", "base": rationale(BASE).spec,
            "sampler": "euler", "nfe": 5, "pilot": 64, "sigma_min": 0.002, "sigma_max": 80.0}
    other = rationale({**BASE, "sigma_min": min(levels), "sigma_max": max(levels)})
    fitting.save_fitted(tmp_path / "f.parquet", "fit", spec, fitting.rationale_through(np.array(levels), other), {})
    with pytest.raises(fitting.FittingError, match=f"f.parquet: its levels span {span}, not the spec's domain "
                                                   r"\[0.002, 80\]; delete it and rerun its fit_rationale job"):
        fitting.load_fitted(tmp_path / "f.parquet", spec)


def test_pilot_keys_are_no_evaluation_seeds_key():
    from ied.generate import SEED_SET_STRIDE
    from ied.config import schema
    sets = schema()["$defs"]["sample_set"]["properties"]["sets"]
    largest_seed_key = sets["maximum"] * SEED_SET_STRIDE  # set k's keys are k·stride + image, image < stride
    assert fitting.PILOT_KEY > largest_seed_key



@pytest.mark.parametrize("sampler", ["ipndm", "dpmpp_2m", "unipc"])
def test_history_costs_are_the_samplers_second_steps_from_the_teacher(fits, sampler):
    """The cost of i → j after h → i is the local error of the sampler's own second-order step with the history the
    teacher holds: iPNDM's AB2 x + (σ_j − σ_i)(3/2 d_i − 1/2 d_h), DPM-Solver++(2M)'s (and UniP-2's) exponential
    integrator with D_i + (D_i − D_h)/(2r), each written out, relative RMS against the teacher's state at j."""
    path = fits["mixture"][0]
    i, ends = 5, range(6, 30, 7)
    costs = fitting.history_costs(path, i, ends, sampler)
    s, x, d = path.sigmas, path.states, path.denoised
    for h in (0, 2, 4):
        for column, j in enumerate(ends):
            if sampler == "ipndm":
                slope = lambda k: (x[k] - d[k]) / s[k]  # noqa: E731
                step = x[i] + (s[j] - s[i]) * (1.5 * slope(i) - 0.5 * slope(h))
            else:
                step_h, prev_h = math.log(s[i] / s[j]), math.log(s[h] / s[i])
                r = prev_h / step_h
                dd = (1 + 1 / (2 * r)) * d[i] - 1 / (2 * r) * d[h]
                step = (s[j] / s[i]) * x[i] - math.expm1(-step_h) * dd
            exact = (((step - x[j]) ** 2).mean() / (x[j] ** 2).mean()).sqrt().item()
            assert costs[h, column] == pytest.approx(exact, rel=1e-10), (h, j)


# --- end to end: the sampler's own error, on exact 32-dimensional denoisers -------------------------------------
D32 = 32
STD32 = torch.linspace(0.1, 1.0, D32, dtype=F64)  # an anisotropic Gaussian: scales from 0.1 to 1
POINTS32 = torch.randn(7, D32, generator=torch.Generator().manual_seed(0), dtype=F64) / math.sqrt(D32)
TAU = 0.3


def gaussian32(x, sigma, labels=None):
    """E[y | x] for y ~ N(0, diag(STD32²)), x = y + σ n."""
    return STD32**2 * x / (STD32**2 + sigma.view(-1, 1) ** 2)


def mixture32(x, sigma, labels=None):
    """E[y | x] for y ~ (1/7) Σ N(p_k, τ² I), 7 points of norm about 1, τ = 0.3."""
    var = TAU**2 + sigma[:, None] ** 2
    post = torch.softmax(-((x[:, None, :] - POINTS32[None]) ** 2).sum(-1) / (2 * var), dim=1)
    component = (TAU**2 * x[:, None, :] + sigma[:, None, None] ** 2 * POINTS32[None]) / var[..., None]
    return (post[..., None] * component).sum(1)


class EndToEndCase(dict):
    """Per data set, made when first asked for: 64 pilot latents and their teacher, 256 latents the fit never sees
    and their flow's end at σ = 0 (the Gaussian's in closed form, the mixture's by Heun at 1000 steps)."""

    def __missing__(self, name):
        denoiser, base = {"gaussian": gaussian32, "mixture": mixture32}[name], rationale(BASE)
        pilot = torch.randn(64, D32, generator=torch.Generator().manual_seed(10), dtype=F64)
        scoring = torch.randn(256, D32, generator=torch.Generator().manual_seed(11), dtype=F64)
        if name == "gaussian":  # x(σ) = x(σ_max) √((s² + σ²)/(s² + σ_max²)) per dimension
            reference = scoring * 80 * STD32 / torch.sqrt(STD32**2 + 80**2)
        else:
            reference = SAMPLERS["heun"](denoiser, scoring, base, 1000)
        self[name] = (denoiser, base, pilot, fitting.teacher(denoiser, pilot, fitting.fine_levels(base)), scoring,
                      reference)
        return self[name]


@pytest.fixture(scope="module")
def e2e():
    return EndToEndCase()


def held_out_error(case, sampler, steps, schedule):
    denoiser, _, _, _, scoring, reference = case
    x = SAMPLERS[sampler](denoiser, scoring, schedule, steps)
    return (((x - reference) ** 2).mean() / (reference**2).mean()).sqrt().item()


@pytest.mark.parametrize("data", ["gaussian", "mixture"])
@pytest.mark.parametrize("sampler, nfe", [("dpmpp_2m", 5), ("dpmpp_2m", 10), ("ipndm", 5), ("ipndm", 10),
                                          ("unipc", 5), ("unipc", 10), ("heun", 5), ("heun", 9)])
def test_an_end_to_end_grid_is_never_worse_than_the_hand_made_ones_or_the_dynamic_programmes(e2e, data, sampler,
                                                                                              nfe):
    """On 256 latents the fit never saw, against the flow's end: the end-to-end grid's error is at most every
    hand-made grid's (EDM ρ ∈ {1, 2, 3, 5, 7, 10}, VE, L2) and the trajectory_dp grid's, within 2 %."""
    denoiser, base, pilot, path, _, _ = e2e[data]
    steps = fitting.grid_steps(sampler, nfe)
    ours = fitting.fit_schedule(denoiser, pilot, base, sampler, nfe, method="end_to_end", path=path)
    dp = fitting.fit_schedule(denoiser, pilot, base, sampler, nfe, method="trajectory_dp", path=path)
    errors = {name: held_out_error(e2e[data], sampler, steps, rationale(spec)) for name, spec in HAND_MADE.items()}
    errors["trajectory_dp"] = held_out_error(e2e[data], sampler, steps, fitting.rationale_through(dp, base))
    error = held_out_error(e2e[data], sampler, steps, fitting.rationale_through(ours, base))
    print(f"{data} {sampler} NFE {nfe}: end-to-end {error:.4g}, " + ", ".join(f"{k} {v:.4g}" for k, v in errors.items()))
    assert error <= 1.02 * min(errors.values()), (error, errors)


def test_the_end_to_end_fit_reports_its_errors_and_keeps_within_its_evaluations(e2e):
    denoiser, base, pilot, path, _, _ = e2e["mixture"]
    calls = []

    def counting(x, sigma, labels=None):
        calls.append(len(x))
        return denoiser(x, sigma)
    fit = fitting.end_to_end(counting, pilot, base, "dpmpp_2m", 10, path)
    report = fit.report
    fitted, held = fitting.split(64)
    assert (len(fitted), len(held)) == (report["fit_images"], report["validation_images"]) == (48, 16)
    assert report["evaluations"] <= fitting.END_TO_END_EVALUATIONS
    assert report["validations"] <= fitting.END_TO_END_VALIDATIONS
    starts = {"base", "trajectory_dp", "log-uniform", *(f"EDM ρ={rho}" for rho in fitting.START_RHOS)}
    assert set(report["pilot_error"]) == set(report["validation_error"]) == starts | {"end_to_end"}
    assert report["starts"] == len(starts) == fitting.END_TO_END_STARTS
    assert report["pilot_error"]["end_to_end"] <= min(report["pilot_error"][k] for k in starts)
    # every denoiser call is a sampler run of 10 calls on one split, and the bill bounds them
    assert sum(calls) == 10 * (48 * (report["evaluations"] + len(starts)) + 16 * report["validations"])
    spec = {"method": "end_to_end", "sampler": "dpmpp_2m", "nfe": 10, "pilot": 64}
    assert sum(calls) <= fitting.fit_work(spec)
    levels = fit.levels
    assert levels[0] == 80 and levels[-1] == 0.002 and np.all(np.diff(levels) < 0) and len(levels) == 10


def test_an_end_to_end_fit_to_a_wrong_target_is_worse_where_it_is_scored(e2e):
    """The optimisation can fail: fitted to the flow's end shifted by 0.3 (a wrong objective), the grid's error on
    the latents it never saw is worse than the grid fitted to the right one."""
    denoiser, base, pilot, path, _, _ = e2e["gaussian"]
    right = fitting.end_to_end(denoiser, pilot, base, "dpmpp_2m", 10, path)
    wrong = fitting.end_to_end(denoiser, pilot, base, "dpmpp_2m", 10, path, target=path.end + 0.3)
    errors = [held_out_error(e2e["gaussian"], "dpmpp_2m", 10, fitting.rationale_through(fit.levels, base))
              for fit in (right, wrong)]
    assert errors[1] > 1.5 * errors[0], errors
