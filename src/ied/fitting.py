"""Sampling schedules fitted to a denoiser, and the rationale through given noise levels.

Two methods, both on a fine grid of a base rationale's levels and a teacher: the probability-flow trajectory
of pilot latents through those levels (Heun with sub-steps).
- `fit_schedule`: the levels a sampler visits at a given NFE, by dynamic programming over the fine grid (GITS,
  Chen et al. 2024): a path σ_max = s_0 > … > s_{N−1} = σ_min through fine levels whose summed cost is least, the
  cost of a jump being the sampler's local error there against the teacher.
- `cost_density`: a density whose CDF spaces levels evenly in accumulated cost (the score-optimal grids of
  Williams et al. 2024, σ_i = Λ⁻¹(iΛ/N), Λ = ∫√δ), for every NFE at once.
`rationale_through` turns levels into a rationale (σ(t_i) = s_i at t_i = 1 − i/(N−1)), so a fitted schedule is
sampled, tabled and plotted like any other. Torch is imported only where histories are stacked.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ied.io import CorruptFileError, atomic_path
from ied.rationales import PiecewiseLogLinear, Rationale, build, check_table_domain, schedule_metadata, tabulate
from ied.samplers import Denoiser, OptionError, _denoise, check_decreasing, resolve_options, steps_for_nfe

FINE_LEVELS = 120
TEACHER_SUBSTEPS = 4
THROUGH_KNOTS = 16  # knots per interval of `rationale_through` that follow the base's shape
LOG_UNIFORM_SHARE = 1e-3  # of each interval's mass spread log-uniformly, so a flat base CDF never makes a flat one
FITTED_SAMPLERS = ("euler", "heun", "dpmpp_2m", "dpmpp_3m", "ipndm", "unipc")
FIT_METHODS = ("end_to_end", "trajectory_dp", "cost_density")  # the `method` of a fitted rationale
GRID_METHODS = ("end_to_end", "trajectory_dp")  # the methods that fit one sampler's levels at one NFE
END_TO_END_EVALUATIONS = 240  # sampler runs on the fit split an end-to-end fit may make (its bound and its bill)
END_TO_END_VALIDATIONS = 32  # sampler runs on the validation split: one per start and one per search iteration
VALIDATION_EVERY = 4  # pilot image i is held out for validation when i % 4 == 3
HEUN_START_STRIDE = 4  # an end-to-end Heun fit starts from the dynamic programme on every fourth fine level
START_RHOS = (1, 2, 3, 5, 7, 10)  # EDM ρ of the hand-made grids an end-to-end fit also starts from
END_TO_END_STARTS = 3 + len(START_RHOS)  # the base's, the dynamic programme's, log-uniform and EDM's ρ family
HISTORY_FREE = ("euler", "heun")  # one-step samplers; the multistep ones' cost depends on the jump before
DP_COST = {"dpmpp_3m": "dpmpp_2m"}  # the dynamic programme's local model of a sampler it has no cost of its own for
HEUN_BATCH_ROWS = 1024  # images per denoiser call of Heun's jump costs
PILOT_KEY = 1 << 62  # pilot image i has the noise key PILOT_KEY + i: no evaluation seed (set·10⁷ + image) reaches it

class FittingError(ValueError):
    """A fit that cannot be made (an unknown sampler, too few fine levels for the NFE, a non-finite trajectory or
    cost) or a fitted table that cannot be used (unreadable, or fitted for another spec)."""


@dataclass
class Teacher:
    """The probability-flow trajectory of pilot latents through fine levels (decreasing, σ_max … σ_min): the
    states x_k and the denoiser's outputs D(x_k; σ_k), and how many denoiser calls it took."""

    sigmas: np.ndarray
    states: list
    denoised: list
    calls: int

    def rows(self, index: Any) -> "Teacher":
        """The trajectory of some of the pilot images only."""
        return Teacher(self.sigmas, [x[index] for x in self.states], [d[index] for d in self.denoised], self.calls)

    def levels(self, index: Any) -> "Teacher":
        """The trajectory at some of its levels only (the first and the last among them)."""
        return Teacher(self.sigmas[index], [self.states[k] for k in index], [self.denoised[k] for k in index],
                       self.calls)

    @property
    def end(self) -> Any:
        """What a sampler's last step returns from the teacher's state at σ_min: D(x(σ_min); σ_min)."""
        return self.denoised[-1]


def fine_levels(base: Rationale, levels: int = FINE_LEVELS) -> np.ndarray:
    """`levels` noise levels of the base rationale's schedule, σ(t) at uniform t from 1 to 0 (ScheduleError unless
    strictly decreasing)."""
    return check_decreasing(base.sigma(np.linspace(1.0, 0.0, levels)), f"{base.name} at {levels} fine levels")


def teacher(denoiser: Denoiser, latents: Any, sigmas: np.ndarray, substeps: int = TEACHER_SUBSTEPS,
            class_labels: Any = None) -> Teacher:
    """Heun through `sigmas` with `substeps` log-spaced sub-steps per interval, from latents × σ_max."""
    x = latents.double() * float(sigmas[0])
    states, denoised = [x], [_denoise(denoiser, x, float(sigmas[0]), class_labels)]
    calls = 1
    for a, b in zip(sigmas[:-1], sigmas[1:]):
        sub = np.geomspace(a, b, substeps + 1)
        d = denoised[-1]
        for k, (s, s_next) in enumerate(zip(sub[:-1], sub[1:])):
            if k:
                d = _denoise(denoiser, x, float(s), class_labels)
                calls += 1
            slope = (x - d) / s
            euler = x + (s_next - s) * slope
            end = _denoise(denoiser, euler, float(s_next), class_labels)
            x = x + (s_next - s) * 0.5 * (slope + (euler - end) / s_next)
            calls += 1
        states.append(x)
        denoised.append(_denoise(denoiser, x, float(b), class_labels))
        calls += 1
        if not (bool(x.isfinite().all()) and bool(denoised[-1].isfinite().all())):
            raise FittingError(f"the teacher's trajectory is not finite at σ = {b:.6g}")
    return Teacher(np.asarray(sigmas, dtype=np.float64), states, denoised, calls)


def _rms(residual: Any, scale: Any) -> Any:
    """Root-mean-square of a residual per element relative to the teacher's state there (an error relative to the
    state's size: what it becomes at the end of a contracting flow); leading dimensions are kept."""
    dims = tuple(range(residual.ndim - scale.ndim, residual.ndim))
    return ((residual**2).mean(dim=dims) / (scale**2).mean()) ** 0.5


def _slope(path: Teacher, k: int) -> Any:
    return (path.states[k] - path.denoised[k]) / path.sigmas[k]


def jump_cost(denoiser: Denoiser, path: Teacher, i: int, j: int, sampler: str, class_labels: Any = None) -> float:
    """The local error of a first step of `sampler` from the teacher's state at level i to level j (no history):
    Euler's and iPNDM's (an Euler step), DPM-Solver++(2M)'s and UniPC's predictor (the exponential integrator's,
    DDIM) from the teacher's evaluation at i, so no denoiser call; Heun's own step, which evaluates the denoiser
    once more at j."""
    x, d, s, s_next = path.states[i], path.denoised[i], path.sigmas[i], path.sigmas[j]
    if sampler in ("dpmpp_2m", "unipc"):
        step = (s_next / s) * x + (1 - s_next / s) * d
    else:
        slope = _slope(path, i)
        step = x + (s_next - s) * slope
        if sampler == "heun":
            end = _denoise(denoiser, step, float(s_next), class_labels)
            step = x + (s_next - s) * 0.5 * (slope + (step - end) / s_next)
    return float(_rms(step - path.states[j], path.states[j]))


def heun_costs(denoiser: Denoiser, path: Teacher, i: int, ends: list[int], class_labels: Any = None,
               rows: int = HEUN_BATCH_ROWS) -> np.ndarray:
    """`jump_cost` of Heun from level i to each level of `ends`, its end evaluations batched over the ends (at most
    `rows` images per denoiser call; a call's overhead dominates a small network's)."""
    import torch

    x, slope, s = path.states[i], _slope(path, i), path.sigmas[i]
    per_call = max(1, rows // x.shape[0])
    out = []
    for chunk in (ends[k:k + per_call] for k in range(0, len(ends), per_call)):
        s_next = torch.tensor([path.sigmas[j] for j in chunk], dtype=x.dtype, device=x.device)
        h = (s_next - s).reshape((-1,) + (1,) * x.ndim)
        euler = x + h * slope  # [J, B, ...]
        flat = euler.reshape((-1,) + tuple(x.shape[1:]))
        labels = None if class_labels is None else class_labels.repeat(len(chunk))
        end = denoiser(flat, s_next.repeat_interleave(x.shape[0]), labels).double().reshape(euler.shape)
        step = x + h * 0.5 * (slope + (euler - end) / s_next.reshape(h.shape))
        out += [float(_rms(step[k] - path.states[j], path.states[j])) for k, j in enumerate(chunk)]
    return np.asarray(out)


def history_costs(path: Teacher, i: int, ends: range, sampler: str) -> np.ndarray:
    """The local error of a step of a multistep `sampler` from level i to each level j in `ends` after a step from
    each h < i ([h, j]), the history (the denoiser at h and i) taken from the teacher: DPM-Solver++(2M)'s step,
    iPNDM's second-order Adams–Bashforth step, UniPC's UniP-2 predictor, which is DPM-Solver++(2M)'s step (its
    corrector evaluates at the predicted point, which the teacher does not hold; measured on Gaussian data, the
    predictor's cost fits UniPC better than the corrector's with the teacher's evaluation in its place)."""
    import torch

    s, x, d = path.sigmas[i], path.states[i], path.denoised[i]
    shape = (-1,) + (1,) * x.ndim
    if sampler == "ipndm":  # the history enters as 1.5 d_i − 0.5 d_h
        history = 1.5 * _slope(path, i) - 0.5 * torch.stack([_slope(path, h) for h in range(i)])
    else:  # as D_i − D_h
        history = d - torch.stack([path.denoised[h] for h in range(i)])
    out = np.empty((i, len(ends)))
    for column, j in enumerate(ends):
        s_next = path.sigmas[j]
        if sampler == "ipndm":
            step = x + (s_next - s) * history
        else:
            h = math.log(s / s_next)
            r = torch.from_numpy(np.log(path.sigmas[:i] / s) / h).reshape(shape)  # an earlier level, in steps of h
            b = math.expm1(-h)
            ddim = (s_next / s) * x - b * d
            # 2M: x − (e^{−h} − 1)(D_i + (D_i − D_h)/2r); UniP-2: DDIM − B ½ (D_h − D_i)/r, the same step
            step = ddim - b * history / (2 * r)
        out[:, column] = _rms(step - path.states[j], path.states[j]).numpy()
    return out


def cheapest_path(cost: np.ndarray, nodes: int) -> list[int]:
    """The increasing path 0 = i_0 < … < i_{nodes−1} = M − 1 through an M×M upper-triangular cost matrix whose
    summed jump cost is least (dynamic programming over the number of jumps)."""
    m = len(cost)
    best = np.full((nodes, m), np.inf)
    came = np.zeros((nodes, m), dtype=np.int64)
    best[0, 0] = 0.0
    for k in range(1, nodes):
        for j in range(k, m):
            totals = best[k - 1, :j] + cost[:j, j]
            came[k, j] = int(np.argmin(totals))
            best[k, j] = totals[came[k, j]]
    path = [m - 1]
    for k in range(nodes - 1, 0, -1):
        path.append(int(came[k, path[-1]]))
    return path[::-1]


def cheapest_path_with_history(first: np.ndarray, cost: np.ndarray, nodes: int) -> list[int]:
    """The least-cost path 0 = i_0 < … < i_{nodes−1} = M − 1 when a jump's cost depends on the jump before it:
    `first[j]` for the first jump 0 → j, `cost[h, i, j]` for i → j after h → i (dynamic programming over the last
    jump)."""
    m = len(first)
    if nodes == 2:
        return [0, m - 1]
    index = np.arange(m)
    cost = np.where((index[:, None, None] < index[None, :, None]) & (index[None, :, None] < index[None, None, :]),
                    cost, np.inf)  # only h < i < j
    last = np.full((m, m), np.inf)  # last[h, i]: the least cost of a path whose last jump is h → i
    last[0, 1:] = first[1:]
    came = []
    for _ in range(nodes - 2):
        totals = last[:, :, None] + cost  # [h, i, j]
        came.append(np.argmin(totals, axis=0))
        last = np.take_along_axis(totals, came[-1][None], axis=0)[0]
    path = [m - 1, int(np.argmin(last[:, m - 1]))]
    for back in reversed(came):  # the first jump's start is 0: came[0] holds it
        path.append(int(back[path[-1], path[-2]]))
    return path[::-1]


def fit_schedule(denoiser: Denoiser, latents: Any, base: Rationale, sampler: str, nfe: int, *,
                 method: str = "trajectory_dp", options: Mapping[str, Any] | None = None, levels: int = FINE_LEVELS,
                 substeps: int = TEACHER_SUBSTEPS, max_jump: int | None = None, class_labels: Any = None,
                 path: Teacher | None = None) -> np.ndarray:
    """The noise levels `sampler` (with `options`) visits at `nfe` denoiser calls per image, fitted on `latents`
    (pilot noise): strictly decreasing, from base.sigma_max to base.sigma_min (the final 0 not included).

    `trajectory_dp`: the path through the teacher's fine levels whose summed local error is least (`dp_levels`).
    `end_to_end`: the levels whose error of the sampler itself at σ = 0 against the teacher's end state is least
    on a fit split of the pilots, kept by a held-out split (`end_to_end`)."""
    if method not in GRID_METHODS:
        raise FittingError(f"unknown method {method!r} for a grid (one of {list(GRID_METHODS)})")
    steps = grid_steps(sampler, nfe, options, levels)
    if max_jump is not None and max_jump * (steps - 1) < levels - 1:
        raise FittingError(f"{steps - 1} jumps of at most {max_jump} fine intervals cannot cross {levels - 1}")
    path = path or teacher(denoiser, latents, fine_levels(base, levels), substeps, class_labels)
    if method == "trajectory_dp":
        return dp_levels(denoiser, path, sampler, steps, max_jump, class_labels)
    return end_to_end(denoiser, latents, base, sampler, steps, path, options, class_labels).levels


def grid_steps(sampler: str, nfe: int, options: Mapping[str, Any] | None = None, levels: int = FINE_LEVELS) -> int:
    """The levels `sampler` visits at `nfe` calls per image, which a fit can choose among `levels` fine ones."""
    if sampler not in FITTED_SAMPLERS:
        raise FittingError(f"no fitting cost for the sampler {sampler!r} (one of {sorted(FITTED_SAMPLERS)})")
    try:
        steps = steps_for_nfe(sampler, nfe, options)
    except ValueError as err:
        raise FittingError(str(err)) from None
    if not 2 <= steps <= levels:
        raise FittingError(f"{sampler} at NFE {nfe} visits {steps} levels: a fit needs 2 to {levels} (fine levels)")
    return steps


def dp_levels(denoiser: Denoiser, path: Teacher, sampler: str, steps: int, max_jump: int | None = None,
              class_labels: Any = None) -> np.ndarray:
    """GITS' dynamic programme: the `steps` fine levels from σ_max to σ_min whose summed local error against the
    teacher is least (`jump_cost`); for the multistep solvers a step's cost depends on the step before it
    (`history_costs`, the history taken from the teacher), and the programme runs over pairs of levels. `max_jump`
    bounds a jump in fine intervals (Heun's cost evaluates the denoiser once per jump considered)."""
    sampler = DP_COST.get(sampler, sampler)
    m = len(path.sigmas)
    reach = m if max_jump is None else max_jump + 1
    cost = np.full((m, m), np.inf)
    jumps = first_jumps(m, steps, sampler, max_jump)
    if sampler == "heun":  # its cost evaluates the denoiser: batched over the ends of the jumps from each level
        for i in sorted({i for i, _ in jumps}):
            ends = [j for start, j in jumps if start == i]
            cost[i, ends] = heun_costs(denoiser, path, i, ends, class_labels)
    else:
        for i, j in jumps:
            cost[i, j] = jump_cost(denoiser, path, i, j, sampler, class_labels)
    _check_finite(cost, path.sigmas)
    if sampler in HISTORY_FREE:
        return path.sigmas[cheapest_path(cost, steps)]
    after = np.full((m, m, m), np.inf)
    for i in range(1, m - 1):
        ends = range(i + 1, min(m, i + reach))
        after[:i, i, ends.start:ends.stop] = history_costs(path, i, ends, sampler)
    _check_finite(after, path.sigmas)
    return path.sigmas[cheapest_path_with_history(cost[0], after, steps)]


# --- end to end: the sampler's own error at σ = 0 -----------------------------------------------------------
@dataclass
class EndToEnd:
    """An end-to-end fit: the levels chosen, and the report of the fit (errors of each grid on the fit and
    validation splits, the evaluations made)."""

    levels: np.ndarray
    report: dict


class _Spent(Exception):
    """The fit's evaluations are spent: the search stops with the best grid it has."""


def split(pilot: int) -> tuple[np.ndarray, np.ndarray]:
    """The pilot images a fit runs on and those it holds out for validation (every VALIDATION_EVERY-th)."""
    index = np.arange(pilot)
    held = index % VALIDATION_EVERY == VALIDATION_EVERY - 1
    if not held.any():
        held[-1] = True
    return index[~held], index[held]


def sampler_error(denoiser: Denoiser, latents: Any, target: Any, base: Rationale, sampler: str, steps: int,
                  levels: np.ndarray, options: Mapping[str, Any] | None = None, class_labels: Any = None) -> float:
    """The relative RMS error at σ = 0 of `sampler` itself (the function `generate` runs) on the schedule through
    `levels` against `target`; inf where the sampler cannot step through them or leaves the finite numbers."""
    from ied.samplers import SAMPLERS, ScheduleError

    try:
        schedule = rationale_through(levels, base)
        x = SAMPLERS[sampler](denoiser, latents, schedule, steps, class_labels=class_labels, **dict(options or {}))
    except (FittingError, ScheduleError):
        return math.inf
    error = float(_rms(x - target, target))
    return error if math.isfinite(error) else math.inf


def _levels_of(theta: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Strictly decreasing levels from σ_max = hi to σ_min = lo: log-gaps in proportion to softmax(θ)."""
    weights = np.exp(theta - theta.max())
    gaps = math.log(hi / lo) * weights / weights.sum()
    levels = np.exp(math.log(hi) - np.concatenate([[0.0], np.cumsum(gaps)]))
    levels[0], levels[-1] = hi, lo
    return levels


def end_to_end(denoiser: Denoiser, latents: Any, base: Rationale, sampler: str, steps: int, path: Teacher,
               options: Mapping[str, Any] | None = None, class_labels: Any = None, target: Any = None,
               evaluations: int = END_TO_END_EVALUATIONS, validations: int = END_TO_END_VALIDATIONS) -> EndToEnd:
    """The levels minimising `sampler_error` against the teacher's end state (or `target`) on the fit split of the
    pilots: Powell's search over the softmax of the log-gaps (σ_max and σ_min fixed), from the best on the fit split
    of the dynamic programme's grid, the base's and the hand-made ones (`hand_made_levels`), at most `evaluations`
    sampler runs. The grid kept is the one of least error on the held-out split among the search's iterates, its
    start included (early stopping: the starts do not compete on the held-out split themselves, which would pick
    the luckiest of them)."""
    from scipy.optimize import minimize

    fit, held = split(len(latents))
    target = path.end if target is None else target
    labels = (lambda rows: None) if class_labels is None else (lambda rows: class_labels[rows])

    def error(levels: np.ndarray, rows: np.ndarray) -> float:
        return sampler_error(denoiser, latents[rows], target[rows], base, sampler, steps, levels, options, labels(rows))

    starts = {"base": noise_levels_of(base, steps), "trajectory_dp": _dp_start(denoiser, path.rows(fit), sampler,
                                                                                  steps, labels(fit)),
              **hand_made_levels(base.sigma_min, base.sigma_max, steps)}
    pilot_error = {name: error(levels, fit) for name, levels in starts.items()}
    validation_error = {name: error(levels, held) for name, levels in starts.items()}
    start = min(starts, key=lambda name: pilot_error[name])
    lo, hi = base.sigma_min, base.sigma_max
    spent = {"fit": 0, "held": len(starts)}
    best = {"value": pilot_error[start], "theta": np.log(np.diff(-np.log(starts[start])))}
    kept = [(validation_error[start], starts[start], start)]  # the search's iterates, from its start

    def objective(theta: np.ndarray) -> float:
        if spent["fit"] >= evaluations:
            raise _Spent
        spent["fit"] += 1
        value = error(_levels_of(theta, lo, hi), fit)
        if value < best["value"]:
            best.update(value=value, theta=np.array(theta))
        return value

    def validate(theta: np.ndarray) -> None:
        if spent["held"] < validations:
            spent["held"] += 1
            kept.append((error(_levels_of(theta, lo, hi), held), _levels_of(theta, lo, hi), "end_to_end"))

    if steps > 2:  # two levels are σ_max and σ_min: nothing to choose
        try:
            minimize(objective, best["theta"], method="Powell", callback=lambda xk: validate(best["theta"]),
                     options={"xtol": 1e-3, "ftol": 1e-5, "maxfev": evaluations})
        except _Spent:
            pass
        validate(best["theta"])
    chosen_error, levels, chosen = min(kept, key=lambda item: item[0])
    report = {"method": "end_to_end", "start": start, "chosen": chosen, "starts": len(starts),
              "evaluations": spent["fit"],
              "validations": spent["held"], "fit_images": len(fit), "validation_images": len(held),
              "pilot_error": {**pilot_error, "end_to_end": float(best["value"])},
              "validation_error": {**validation_error, "end_to_end": float(chosen_error)}}
    return EndToEnd(levels, report)


def hand_made_levels(lo: float, hi: float, steps: int) -> dict[str, np.ndarray]:
    """The hand-made grids on [lo, hi] an end-to-end fit also starts from (one sampler run each): EDM's ρ family and
    log-uniform levels (VE, logSNR-uniform), so the fit is never worse than these on its pilots."""
    t = np.linspace(1.0, 0.0, steps)
    out = {f"EDM ρ={rho:g}": (lo ** (1 / rho) + t * (hi ** (1 / rho) - lo ** (1 / rho))) ** rho for rho in START_RHOS}
    out["log-uniform"] = np.exp(math.log(lo) + t * math.log(hi / lo))
    for levels in out.values():
        levels[0], levels[-1] = hi, lo
    return out


def noise_levels_of(base: Rationale, steps: int) -> np.ndarray:
    """The levels the base's own schedule visits in `steps` steps (σ(t) at uniform t, the final 0 left out)."""
    return check_decreasing(base.sigma(np.linspace(1.0, 0.0, steps)), f"{base.name} at {steps} levels")


def _dp_start(denoiser: Denoiser, path: Teacher, sampler: str, steps: int, class_labels: Any) -> np.ndarray:
    """The dynamic programme's grid as a start; Heun's on every HEUN_START_STRIDE-th fine level (its cost evaluates
    the denoiser at every jump's end)."""
    if sampler == "heun":
        m = len(path.sigmas)
        index = sorted(set(range(0, m, HEUN_START_STRIDE)) | {m - 1})
        if len(index) >= steps:
            path = path.levels(index)
    return dp_levels(denoiser, path, sampler, steps, class_labels=class_labels)


def first_jumps(m: int, steps: int, sampler: str, max_jump: int | None = None) -> list[tuple[int, int]]:
    """The jumps i → j of the fine grid whose history-free cost the fit needs: for a one-step sampler those on some
    path of `steps` levels from 0 to m − 1 (at 3 levels: from 0 or to m − 1), for a multistep one those from 0."""
    reach = m if max_jump is None else max_jump + 1
    jumps = steps - 1
    return [(i, j) for i in range(m - 1 if sampler in HISTORY_FREE else 1) for j in range(i + 1, min(m, i + reach))
            if (i > 0) + 1 + (j < m - 1) <= jumps <= i + 1 + (m - 1 - j)]


def teacher_calls(levels: int = FINE_LEVELS, substeps: int = TEACHER_SUBSTEPS) -> int:
    """Denoiser evaluations per pilot image of the teacher's trajectory (`teacher`)."""
    return 1 + (levels - 1) * 2 * substeps


def fit_work(spec: Mapping[str, Any], levels: int = FINE_LEVELS) -> int:
    """Denoiser evaluations (images × calls) of a fit job beyond its teacher's (a job of its own, `teacher_calls`
    per pilot image): Heun's one per jump its dynamic programme considers, and an end-to-end fit's sampler runs at
    their bound (its evaluations on the fit split, its validations on the held-out one). Every other cost is
    computed from the teacher's evaluations."""
    if spec["method"] == "cost_density":
        return 0
    steps = steps_for_nfe(spec["sampler"], spec["nfe"], spec.get("options"))
    if spec["method"] == "trajectory_dp":
        return spec["pilot"] * len(first_jumps(levels, steps, "heun")) if spec["sampler"] == "heun" else 0
    fit, held = split(spec["pilot"])
    work = spec["nfe"] * (len(fit) * (END_TO_END_EVALUATIONS + END_TO_END_STARTS) + len(held) * END_TO_END_VALIDATIONS)
    if spec["sampler"] == "heun":
        strided = len(set(range(0, levels, HEUN_START_STRIDE)) | {levels - 1})
        work += len(fit) * len(first_jumps(strided if strided >= steps else levels, steps, "heun"))
    return work


def _check_finite(cost: np.ndarray, sigmas: np.ndarray) -> None:
    """A NaN cost (a jump never considered is +inf) stops the fit, naming the jump's levels."""
    bad = np.argwhere(np.isnan(cost))
    if len(bad):
        i, j = bad[0][-2:]
        raise FittingError(f"the cost of the jump σ = {sigmas[i]:.6g} → {sigmas[j]:.6g} is not finite")


def denoiser_change(path: Teacher) -> tuple[np.ndarray, np.ndarray]:
    """δ on the teacher's intervals: the mean squared change of D(x(σ); σ) per element and per unit of log σ,
    with the geometric midpoints of the intervals."""
    u = np.log(path.sigmas)
    change = np.array([float(((b - a) ** 2).mean()) for a, b in zip(path.denoised[:-1], path.denoised[1:])])
    return np.sqrt(path.sigmas[:-1] * path.sigmas[1:]), change / np.diff(u) ** 2


def cost_density(path: Teacher, base: Rationale, floor: float = 1e-3) -> Rationale:
    """The rationale whose CDF is the accumulated √δ over log σ (Λ(σ)/Λ(σ_max)): equal spacing in cost at any
    number of levels. Why √δ: a first-order exponential-integrator step of length h in log σ errs by about
    ½ h² √δ, and the sum of those errors under Σ h = log(σ_max/σ_min) is least when h ∝ 1/√δ. `floor` (a fraction
    of the mean √δ) keeps every interval's density positive."""
    _, delta = denoiser_change(path)
    rate = np.sqrt(delta)
    if not rate.max() > 0:
        raise FittingError(f"the denoiser's output does not change along the teacher's trajectory from σ = "
                           f"{path.sigmas[0]:.6g} to {path.sigmas[-1]:.6g}: no cost to space levels by")
    rate = np.maximum(rate, floor * rate.mean())
    u = np.log(path.sigmas[::-1])  # increasing
    mass = np.concatenate([[0.0], np.cumsum((rate[::-1]) * np.diff(u))])
    spec = {"family": "tabulated", "sigma_min": base.sigma_min, "sigma_max": base.sigma_max}
    return PiecewiseLogLinear("cost density", np.exp(u), mass / mass[-1], spec)


def rationale_through(sigmas: np.ndarray, base: Rationale, knots: int = THROUGH_KNOTS) -> Rationale:
    """A rationale whose schedule passes through `sigmas` (decreasing, σ_max … σ_min of `base`) at t_i =
    1 − i/(N−1), so `samplers.noise_levels(r, N)` is `sigmas` then 0. Between two levels its CDF follows the base's,
    rescaled to the interval (linear in log σ between `knots` knots), so it is a proper density on base's domain."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    n = len(sigmas)
    if n < 2 or not np.all(np.diff(sigmas) < 0) or not (math.isclose(sigmas[0], base.sigma_max, rel_tol=1e-12)
                                                        and math.isclose(sigmas[-1], base.sigma_min, rel_tol=1e-12)):
        raise FittingError("the levels must decrease strictly from the base's sigma_max to its sigma_min")
    up, t = sigmas[::-1], np.linspace(0.0, 1.0, n)  # increasing σ, and Φ at each level
    points, cdf = [up[:1]], [t[:1]]
    for k in range(n - 1):
        lo, hi = up[k], up[k + 1]
        inner = np.geomspace(lo, hi, knots + 1)[1:]
        by_base = (base.cdf(inner) - base.cdf(lo)) / max(float(base.cdf(hi) - base.cdf(lo)), 1e-300)
        by_log = np.log(inner / lo) / math.log(hi / lo)  # a trace of log-uniform keeps the CDF strictly rising
        share = (1 - LOG_UNIFORM_SHARE) * np.clip(by_base, 0.0, 1.0) + LOG_UNIFORM_SHARE * by_log
        share[-1] = 1.0
        inner[-1] = hi
        points.append(inner)
        cdf.append(t[k] + (t[k + 1] - t[k]) * share)
    spec = {"family": "tabulated", "sigma_min": base.sigma_min, "sigma_max": base.sigma_max}
    return PiecewiseLogLinear("fitted", np.concatenate(points), np.concatenate(cdf), spec)


# --- the teacher as a file: one per model, checkpoint, base and pilot, read by every fit of them --------------
class CorruptTeacherError(CorruptFileError, FittingError):
    """A teacher file that is truncated or fails its checksum."""


def _teacher_digest(arrays: Mapping[str, np.ndarray], meta: str) -> str:
    digest = hashlib.sha256(meta.encode())
    for key in sorted(arrays):
        array = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save_teacher(path: str | Path, path_: Teacher, latents: np.ndarray, labels: np.ndarray | None,
                 meta: Mapping[str, Any]) -> None:
    """The teacher trajectory (levels, states, the denoiser's outputs), its latents and labels, and what it was
    computed from (`meta`), as an .npz with a checksum (atomically; no pickle)."""
    arrays = {"sigmas": np.asarray(path_.sigmas, dtype=np.float64),
              "states": np.stack([np.asarray(x, dtype=np.float64) for x in path_.states]),
              "denoised": np.stack([np.asarray(d, dtype=np.float64) for d in path_.denoised]),
              "latents": np.asarray(latents), "labels": np.asarray(labels if labels is not None else [], np.int64)}
    text = json.dumps({**dict(meta), "calls": int(path_.calls)}, sort_keys=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(text), sha256=np.array(_teacher_digest(arrays, text)), **arrays)


def load_teacher(path: str | Path, expect: Mapping[str, Any]) -> tuple[Teacher, np.ndarray, np.ndarray | None, dict]:
    """A `save_teacher` file, checked against its checksum and against `expect` (the entries its meta must hold):
    the trajectory (as NumPy arrays), latents, labels (None if unconditional) and meta."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in ("sigmas", "states", "denoised", "latents", "labels")}
            text, stored = str(npz["meta"]), str(npz["sha256"])
    except FileNotFoundError:
        raise FittingError(f"{path}: no teacher file; rerun its teacher job") from None
    except Exception as err:  # noqa: BLE001 — zip, key or dtype damage all mean the same thing
        raise CorruptTeacherError(path, f"unreadable or truncated teacher file ({type(err).__name__})") from None
    if _teacher_digest(arrays, text) != stored:
        raise CorruptTeacherError(path, "checksum mismatch; the teacher file is corrupt")
    meta = json.loads(text)
    for key, value in expect.items():
        if json.loads(json.dumps(meta.get(key))) != json.loads(json.dumps(value)):
            raise FittingError(f"{path}: a teacher of another {key} than the fit's; delete it and rerun its teacher "
                               f"job")
    path_ = Teacher(arrays["sigmas"], list(arrays["states"]), list(arrays["denoised"]), int(meta["calls"]))
    return path_, arrays["latents"], arrays["labels"] if len(arrays["labels"]) else None, meta


# --- the pipeline's fit job: a checkpoint in, a schedule table with the fitted knots out -----------------------
def check_spec(spec: Any) -> None:
    """A resolved `fitted` spec as the fit job needs it, before any work: its method, a base rationale, a pilot of at
    least one image (two for end_to_end: one held out) and, for a grid, a sampler with its options and an NFE it can
    fit. FittingError names the key."""
    def fail(key: str, message: str):
        raise FittingError(f"fitted spec: key {key!r}: {message}")

    if not isinstance(spec, Mapping):
        fail("family", f"the spec must be a mapping, got {type(spec).__name__}")
    if spec.get("family") != "fitted":
        fail("family", f"must be 'fitted', got {spec.get('family')!r}")
    if spec.get("method") not in FIT_METHODS:
        fail("method", f"must be one of {list(FIT_METHODS)}, got {spec.get('method')!r}")
    pilot, least = spec.get("pilot"), 2 if spec["method"] == "end_to_end" else 1
    if isinstance(pilot, bool) or not isinstance(pilot, int) or pilot < least:
        fail("pilot", f"must be an integer ≥ {least} (pilot images), got {pilot!r}")
    if not isinstance(spec.get("base"), Mapping):
        fail("base", f"must be a resolved rationale entry, got {spec.get('base')!r}")
    try:
        build("base", spec["base"])
    except ValueError as err:
        fail("base", str(err))
    if spec["method"] == "cost_density":
        return
    for key in ("sampler", "nfe"):
        if key not in spec:
            fail(key, f"required by method {spec['method']}")
    if spec["sampler"] not in FITTED_SAMPLERS:
        fail("sampler", f"no fitting cost for {spec['sampler']!r} (one of {list(FITTED_SAMPLERS)})")
    try:
        resolve_options(spec["sampler"], spec.get("options", {}))
    except OptionError as err:
        fail(f"options.{err.option}", str(err))
    if isinstance(spec["nfe"], bool) or not isinstance(spec["nfe"], int):
        fail("nfe", f"must be an integer, got {spec['nfe']!r}")
    try:
        grid_steps(spec["sampler"], spec["nfe"], spec.get("options"))
    except FittingError as err:
        fail("nfe", str(err))


def fit_rationale(denoiser: Denoiser, spec: Mapping[str, Any], path: Teacher, latents: Any, class_labels: Any = None
                  ) -> tuple[PiecewiseLogLinear, dict]:
    """The rationale a resolved `fitted` spec asks for, fitted to `denoiser` from its teacher `path` on the pilot
    `latents`, and the fit's report (the levels, and for end_to_end the errors of each grid)."""
    check_spec(spec)
    base = build("base", spec["base"])
    if spec["method"] == "cost_density":
        return cost_density(path, base), {"method": "cost_density"}
    steps = grid_steps(spec["sampler"], spec["nfe"], spec.get("options"))
    if spec["method"] == "trajectory_dp":
        levels, report = dp_levels(denoiser, path, spec["sampler"], steps, class_labels=class_labels), {}
    else:
        fit = end_to_end(denoiser, latents, base, spec["sampler"], steps, path, spec.get("options"), class_labels)
        levels, report = fit.levels, fit.report
    return rationale_through(levels, base), {"method": spec["method"], **report, "levels": levels.tolist()}


def save_fitted(path: str | Path, name: str, spec: Mapping[str, Any], rationale: PiecewiseLogLinear,
                info: Mapping[str, Any]) -> None:
    """A schedule table of the fitted rationale (the columns of `tabulate`), its spec, knots and fit in the
    metadata."""
    table = tabulate(rationale)
    table.name, table.spec = name, dict(spec)
    knots = {"sigma": rationale.knots.tolist(), "cdf": rationale.knot_cdf.tolist()}
    table.to_parquet(str(path), extra={"ied.knots": json.dumps(knots), "ied.fit": json.dumps(dict(info))})


def load_fitted(path: str | Path, spec: Mapping[str, Any]) -> PiecewiseLogLinear:
    """The fitted rationale of a `save_fitted` table, which must have been fitted for `spec`."""
    meta = schedule_metadata(path, spec, "ied.knots", "fit_rationale", FittingError)
    try:
        knots = json.loads(meta[b"ied.knots"])
        rationale = PiecewiseLogLinear(meta[b"ied.rationale"].decode(), knots["sigma"], knots["cdf"], dict(spec))
    except (ValueError, KeyError, TypeError) as err:
        raise FittingError(f"{path}: its knots are not a schedule ({err}); delete it and rerun its fit_rationale "
                           f"job") from None
    check_table_domain(path, rationale.sigma_min, rationale.sigma_max, spec, "fit_rationale", FittingError)
    return rationale
