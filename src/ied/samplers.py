"""Samplers for the driftless reverse process; every one has the shape of k-diffusion's samplers.

`sampler(denoiser, latents, schedule, steps, *, class_labels=None, generator=None, **options) -> x0`
where `denoiser(x, sigma, class_labels)` returns D(x; σ) (score = (D − x)/σ², EDM eq. 3), `latents`
~ N(0, I) are scaled by σ(1) = σ_max to start, and `schedule` is a Rationale. Stepping is in float64,
as in NVlabs/edm; σ values are plain floats so the loop never syncs with the device.

The options' types and ranges are declared in the signatures (`Annotated[float, Range(...)]`,
`Literal[...]`): `resolve_options` reads them there, so config checks and samplers share one source.
This module uses tensor methods only and imports no torch, so the Snakefile can read the signatures
while it parses without loading torch.
"""
import inspect
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Callable, Literal, Mapping, Protocol, get_args, get_origin

import numpy as np

if TYPE_CHECKING:
    import torch

    from ied.rationales import Rationale

Tensor = "torch.Tensor"
Denoiser = Callable[..., Any]


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric sampler option (None: unbounded); inf is allowed only where `inf_ok`."""

    ge: float | None = None
    gt: float | None = None
    inf_ok: bool = False

    def violation(self, value: float) -> str | None:
        if math.isnan(value) or (math.isinf(value) and not self.inf_ok):
            return "must be a finite number"
        if self.ge is not None and not value >= self.ge:
            return f"must be >= {self.ge:g}"
        if self.gt is not None and not value > self.gt:
            return f"must be > {self.gt:g}"
        return None


@dataclass(frozen=True)
class Added:
    """Marks an option added after its sampler's cells existed: at its default it is left out of a cell's identity
    (`identity_options`), so runs finished before it rerun nothing."""


class OptionError(ValueError):
    """A sampler option that is unknown, of the wrong type or out of range; `option` names it."""

    def __init__(self, sampler: str, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.sampler, self.option = sampler, option


class NoiseSource(Protocol):
    def randn_like(self, x: "torch.Tensor") -> "torch.Tensor": ...


def _randn_like(generator: Any, x: "torch.Tensor") -> "torch.Tensor":
    if generator is not None and hasattr(generator, "randn_like"):
        return generator.randn_like(x).to(x.dtype)  # per-image streams (ied.noise.PerImageNoise)
    return x.new_empty(x.shape).normal_(generator=generator)


def _denoise(denoiser: Denoiser, x: "torch.Tensor", sigma: float, class_labels: Any) -> "torch.Tensor":
    sigma_batch = x.new_full((x.shape[0],), sigma)
    return denoiser(x, sigma_batch, class_labels).double()


class ScheduleError(ValueError):
    """Noise levels a sampler cannot step through (not strictly decreasing: a step of zero length)."""


def check_decreasing(levels: np.ndarray, what: str) -> np.ndarray:
    """`levels` if they are finite and strictly decreasing, else ScheduleError naming the first flat step."""
    levels = np.asarray(levels, dtype=np.float64)
    bad = np.flatnonzero(~(np.diff(levels) < 0) | ~np.isfinite(levels[1:]))
    if len(bad) or not np.isfinite(levels[0]):
        i = int(bad[0]) if len(bad) else 0
        raise ScheduleError(f"{what}: the noise levels are not strictly decreasing: σ_{i} = {levels[i]:.17g}, "
                            f"σ_{i + 1} = {levels[i + 1]:.17g} (a step of zero length; use fewer steps or a schedule "
                            f"whose σ(t) rises everywhere)")
    return levels


def noise_levels(schedule: "Rationale", steps: int) -> np.ndarray:
    """σ_i = σ(t_i), t_i = 1 − i/(steps−1), i < steps, then σ_steps = 0 (EDM Alg. 1 time steps); ScheduleError unless
    strictly decreasing."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    levels = np.concatenate([schedule.sigma(np.linspace(1.0, 0.0, steps)), [0.0]])
    return check_decreasing(levels, f"{schedule.name} at {steps} steps")


def sampled_levels(sampler: str, schedule: "Rationale", steps: int) -> np.ndarray:
    """The noise levels `sampler` visits in `steps` steps: Euler–Maruyama's σ(t) at uniform t from 1 to 0, the
    others' `noise_levels`; ScheduleError unless strictly decreasing."""
    if sampler == "euler_maruyama":
        levels = schedule.sigma(np.linspace(1.0, 0.0, steps + 1))
        return check_decreasing(levels, f"{schedule.name} at {steps} steps")
    return noise_levels(schedule, steps)


def euler_maruyama(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
                   class_labels: Any = None, generator: Any = None,
                   discretization: Literal["sde", "difference"] = "sde") -> Tensor:
    """The paper's sampler: Euler–Maruyama on the reverse SDE (eq. 13), uniform t from 1 to 0."""
    t = np.linspace(1.0, 0.0, steps + 1)
    sigma, g2 = sampled_levels("euler_maruyama", schedule, steps).tolist(), schedule.g2(t).tolist()
    x = latents.double() * sigma[0]
    for i in range(steps):
        # g² Δt (eq. 11), or the exact variance decrement σ_i² − σ_{i+1}² of the discrete chain.
        var = g2[i] / steps if discretization == "sde" else sigma[i] ** 2 - sigma[i + 1] ** 2
        score = (_denoise(denoiser, x, sigma[i], class_labels) - x) / sigma[i] ** 2
        x = x + var * score  # drift: −g² ∇log p dt, time running backwards
        if i < steps - 1:  # the last step returns the mean, as score_sde does
            x = x + math.sqrt(var) * _randn_like(generator, x)
    return x


def euler(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
          class_labels: Any = None, generator: Any = None) -> Tensor:
    """First-order probability-flow ODE solver dx/dσ = (x − D)/σ (EDM Alg. 1 without lines 6–8)."""
    sigma = noise_levels(schedule, steps).tolist()
    x = latents.double() * sigma[0]
    for i in range(steps):
        d = (x - _denoise(denoiser, x, sigma[i], class_labels)) / sigma[i]
        x = x + (sigma[i + 1] - sigma[i]) * d
    return x


def heun(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
         class_labels: Any = None, generator: Any = None) -> Tensor:
    """EDM Algorithm 1 (σ(t) = t, s(t) = 1) on the noise levels σ_i of `schedule`."""
    sigma = noise_levels(schedule, steps).tolist()
    x = latents.double() * sigma[0]  # line 2: x_0 ~ N(0, σ_0² I)
    for i in range(steps):
        s, s_next = sigma[i], sigma[i + 1]
        d = (x - _denoise(denoiser, x, s, class_labels)) / s  # line 4: evaluate dx/dσ at σ_i
        x_next = x + (s_next - s) * d  # line 5: Euler step
        if s_next != 0:  # lines 6–8: second-order correction, skipped when stepping to σ = 0
            d_next = (x_next - _denoise(denoiser, x_next, s_next, class_labels)) / s_next
            x_next = x + (s_next - s) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


def edm_stochastic(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
                   class_labels: Any = None, generator: Any = None,
                   S_churn: Annotated[float, Range(ge=0)] = 0.0, S_tmin: Annotated[float, Range(ge=0)] = 0.0,
                   S_tmax: Annotated[float, Range(ge=0, inf_ok=True)] = math.inf,
                   S_noise: Annotated[float, Range(ge=0)] = 1.0) -> Tensor:
    """EDM Algorithm 2: Heun steps with Langevin-like churn on the noise levels σ_i of `schedule`."""
    sigma = noise_levels(schedule, steps).tolist()
    x = latents.double() * sigma[0]
    for i in range(steps):
        s, s_next = sigma[i], sigma[i + 1]
        # line 4: γ_i = min(S_churn/N, √2 − 1) inside [S_tmin, S_tmax], else 0
        gamma = min(S_churn / steps, math.sqrt(2) - 1) if S_tmin <= s <= S_tmax else 0.0
        s_hat = s + gamma * s  # line 6: temporarily raise the noise level
        if S_churn > 0:  # lines 5 and 7: ε ~ N(0, S_noise² I) at every step, x̂ = x + √(σ̂² − σ²) ε
            x = x + math.sqrt(s_hat**2 - s**2) * S_noise * _randn_like(generator, x)
        d = (x - _denoise(denoiser, x, s_hat, class_labels)) / s_hat  # line 8
        x_next = x + (s_next - s_hat) * d  # line 9
        if s_next != 0:  # lines 10–12: Heun correction
            d_next = (x_next - _denoise(denoiser, x_next, s_next, class_labels)) / s_next
            x_next = x + (s_next - s_hat) * (0.5 * d + 0.5 * d_next)
        x = x_next
    return x


def s2n(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
        class_labels: Any = None, generator: Any = None, gamma: Annotated[float, Range(gt=-1)] = 0.0,
        delta: Annotated[float, Range(ge=0)] = 1.0, rho: Annotated[float, Range()] = 0.0) -> Tensor:
    """S2N Corollary 1, driftless (α = 1, λ = −2 ln σ), on the noise levels σ_i of `schedule`.

    With ε̂ = (x − D)/σ_t: x_s = x_t − (1+ρ²)/(1+γ) (σ_t^{1+γ} − σ_s^{1+γ}) σ_t^{−γ} ε̂
    + ρ √(σ_t² − σ_s²) (σ_s/σ_t)^δ ε. ρ = 0 is deterministic, γ = ρ = 0 the Euler step, γ = δ = ρ = 1
    ancestral sampling. (The paper's eq. 7 prints the ε̂ term with a + sign; eq. 12 and the Euler
    special case fix it to −.)
    """
    sigma = noise_levels(schedule, steps).tolist()
    x = latents.double() * sigma[0]
    for i in range(steps):
        st, ss = sigma[i], sigma[i + 1]
        eps = (x - _denoise(denoiser, x, st, class_labels)) / st
        x = x - (1 + rho**2) / (1 + gamma) * (st ** (1 + gamma) - ss ** (1 + gamma)) * st ** (-gamma) * eps
        if rho != 0:
            x = x + rho * math.sqrt(st**2 - ss**2) * (ss / st) ** delta * _randn_like(generator, x)
    return x


def _phi(x: float, k: int) -> float:
    """φ_k(x) = Σ_{m≥0} x^m/(m + k)! (φ_0 = e^x, φ_{k+1} = (φ_k − 1/k!)/x): the exponential integrators' weights,
    by their series where the recursion would cancel (|x| < 1)."""
    if abs(x) < 1.0:
        return sum(x**m / math.factorial(m + k) for m in range(24))
    value = math.exp(x)
    for j in range(k):
        value = (value - 1.0 / math.factorial(j)) / x
    return value


def _first_denoised(denoiser: Denoiser, x: "torch.Tensor", sigma: float, class_labels: Any, afs: bool
                    ) -> "torch.Tensor":
    """D at the first level, or with the analytical first step (AFS, Zhou et al. 2024) its large-σ limit, no call:
    dx/dσ = x/√(1 + σ²), i.e. D = x − σ x/√(1 + σ²)."""
    if afs:
        return x * (1.0 - sigma / math.sqrt(1.0 + sigma**2))
    return _denoise(denoiser, x, sigma, class_labels)


def _dpmpp(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, order: int, class_labels: Any,
           afs: bool) -> Tensor:
    """DPM-Solver++ of multistep order `order` (Lu et al. 2022, data prediction, λ = −log σ): the exponential
    integrator with the denoiser's Taylor terms from the last levels, of order min(order, i + 1, steps − i) at step i
    (the lower orders while fewer levels exist, and at the end as diff-sampler's lower_order_final); the step to
    σ = 0 is its limit, x = D."""
    sigma = noise_levels(schedule, steps).tolist()
    x = latents.double() * sigma[0]
    history: list[Any] = []  # D at the last levels, newest first
    for i in range(steps):
        s, s_next = sigma[i], sigma[i + 1]
        denoised = _first_denoised(denoiser, x, s, class_labels, afs) if i == 0 else \
            _denoise(denoiser, x, s, class_labels)
        history = [denoised, *history[:order - 1]]
        p = min(order, i + 1, steps - i)
        if s_next == 0:
            return denoised  # the exponential integrator's limit: σ_next/σ → 0, 1 − e^{−h} → 1
        h = math.log(s / s_next)
        b = math.expm1(-h)
        x = (s_next / s) * x - b * denoised
        if p >= 2:  # D1 = (D_i − D_{i−1})/r0, r0 = h_{i−1}/h
            r0 = math.log(sigma[i - 1] / s) / h
            d1_0 = (history[0] - history[1]) / r0
            if p == 2:
                x = x - b * d1_0 / 2  # 2M: D_i + (D_i − D_{i−1})/2r
            else:  # 3M: D1 and D2 from the divided differences over the last three levels
                r1 = math.log(sigma[i - 2] / sigma[i - 1]) / h
                d1_1 = (history[1] - history[2]) / r1
                d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
                d2 = (d1_0 - d1_1) / (r0 + r1)
                # diffusers' ((e^{−h} − 1)/h + 1) D1 − ((e^{−h} − 1 + h)/h² − ½) D2, without the cancellation
                x = x + h * _phi(-h, 2) * d1 + h * _phi(-h, 3) * d2
    return x


def dpmpp_2m(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
             class_labels: Any = None, generator: Any = None, afs: Annotated[bool, Added()] = False) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): data prediction, the exponential integrator in λ = −log σ with
    the denoiser extrapolated from the last two levels; first order on the first step and on the step to σ = 0."""
    return _dpmpp(denoiser, latents, schedule, steps, 2, class_labels, afs)


def dpmpp_3m(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
             class_labels: Any = None, generator: Any = None, afs: bool = False) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, multistep order 3): as 2M, with the second divided difference of the last
    three levels; orders 1, 2, 3, …, 3, 2 and the step to σ = 0, x = D (diff-sampler's lower_order_final, as
    diffusers' below 15 steps)."""
    return _dpmpp(denoiser, latents, schedule, steps, 3, class_labels, afs)


# Adams–Bashforth coefficients of orders 1–4 on equal steps, newest derivative first (iPNDM keeps them fixed).
_ADAMS_BASHFORTH = ((1.0,), (3 / 2, -1 / 2), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ipndm(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
          class_labels: Any = None, generator: Any = None, max_order: Annotated[Literal[1, 2, 3, 4], Added()] = 4,
          afs: Annotated[bool, Added()] = False) -> Tensor:
    """iPNDM (Zhang & Chen 2023) on dx/dσ = (x − D(x; σ))/σ: Adams–Bashforth steps of order min(i + 1, max_order),
    the lower orders while fewer past derivatives exist, with the fixed equal-step coefficients."""
    sigma = noise_levels(schedule, steps).tolist()
    x = latents.double() * sigma[0]
    history: list[Any] = []  # dx/dσ at the last levels, newest first
    for i in range(steps):
        denoised = _first_denoised(denoiser, x, sigma[i], class_labels, afs) if i == 0 else \
            _denoise(denoiser, x, sigma[i], class_labels)
        history = [(x - denoised) / sigma[i], *history[:max_order - 1]]
        slope = sum(c * d for c, d in zip(_ADAMS_BASHFORTH[len(history) - 1], history))
        x = x + (sigma[i + 1] - sigma[i]) * slope
    return x


def _unipc_rhs(h: float, order: int) -> np.ndarray:
    """UniPC's right-hand side with B(h) = e^{−h} − 1 (bh2, data prediction): k! φ_{k+1}(−h)/φ_1(−h), k = 1…order
    (diffusers' h_phi_k·k!/B_h, here without its cancellation at small h)."""
    return np.array([math.factorial(k) * _phi(-h, k + 1) / _phi(-h, 1) for k in range(1, order + 1)])


def _unipc_weights(h: float, nodes: list[float], corrector: bool) -> np.ndarray:
    """The weights of the divided differences at the p − 1 earlier `nodes` (r_k = (λ_{i−k} − λ_i)/h < 0) of UniPC-p:
    UniP's solve the first p − 1 rows of R ρ = b over the nodes (ρ = ½ at p = 2), UniC's all p over the nodes and 1
    (ρ = ½ at p = 1); R_kj = r_j^k."""
    rks = np.array(nodes + [1.0] if corrector else nodes)
    if len(rks) == 1:
        return np.array([0.5])
    matrix = np.vstack([rks**k for k in range(len(rks))])
    return np.linalg.solve(matrix, _unipc_rhs(h, len(rks)))


def unipc(denoiser: Denoiser, latents: Tensor, schedule: "Rationale", steps: int, *,
          class_labels: Any = None, generator: Any = None, order: Annotated[Literal[2, 3], Added()] = 2,
          afs: Annotated[bool, Added()] = False) -> Tensor:
    """UniPC (Zhao et al. 2023), B(h) = e^h − 1 (bh2), data prediction, of order 2 or 3: the UniP-p predictor, then
    the UniC-p corrector with the denoiser evaluated at the predicted point, an evaluation the next step reuses (one
    call per step). Step i has p = min(order, i + 1, steps − i) (the lower orders at the start and the end, as
    diffusers' lower_order_final); the step to σ = 0 is DDIM's, x = D, uncorrected."""
    sigma = noise_levels(schedule, steps).tolist()
    x = latents.double() * sigma[0]
    model = [_first_denoised(denoiser, x, sigma[0], class_labels, afs)]  # D at the levels so far, newest last
    for i in range(steps):
        s, s_next = sigma[i], sigma[i + 1]
        if s_next == 0:
            return model[-1]
        p = min(order, i + 1, steps - i)
        h = math.log(s / s_next)  # λ_next − λ, λ = −log σ
        b = math.expm1(-h)        # B(h) of data prediction, e^{−h} − 1
        ddim = (s_next / s) * x - b * model[-1]
        nodes = [math.log(s / sigma[i - k]) / h for k in range(1, p)]  # earlier levels, (λ_{i−k} − λ_i)/h < 0
        d1 = [(model[-1 - k] - model[-1]) / r for k, r in enumerate(nodes, start=1)]
        predicted = ddim - b * sum(w * d for w, d in zip(_unipc_weights(h, nodes, False), d1)) if d1 else ddim
        model.append(_denoise(denoiser, predicted, s_next, class_labels))
        rho = _unipc_weights(h, nodes, True)
        correction = rho[-1] * (model[-1] - model[-2]) + sum(w * d for w, d in zip(rho[:-1], d1))
        x = ddim - b * correction
        model = model[-order:]
    return x


SAMPLERS: dict[str, Callable[..., Any]] = {
    "euler_maruyama": euler_maruyama, "euler": euler, "heun": heun, "edm_stochastic": edm_stochastic, "s2n": s2n,
    "dpmpp_2m": dpmpp_2m, "dpmpp_3m": dpmpp_3m, "ipndm": ipndm, "unipc": unipc,
}
_NFE_PER_STEP = {"euler_maruyama": (1, 0), "euler": (1, 0), "s2n": (1, 0), "heun": (2, -1), "edm_stochastic": (2, -1),
                 "dpmpp_2m": (1, 0), "dpmpp_3m": (1, 0), "ipndm": (1, 0), "unipc": (1, 0)}


def _per_step(sampler: str, options: Mapping[str, Any] | None) -> tuple[int, int]:
    """Denoiser calls per step and the constant: the analytical first step saves one call."""
    per_step, offset = _NFE_PER_STEP[sampler]
    return per_step, offset - bool((options or {}).get("afs"))


def describe(sampler: str, options: Mapping[str, Any] | None = None) -> str:
    """A sampler with its options away from their defaults, as published rows name a solver: `unipc (order 3)`,
    `dpmpp_2m (afs)`, `ipndm`."""
    declared, resolved = sampler_options(sampler), resolve_options(sampler, options or {})
    shown = [name if value is True else f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}"
             for name, value in resolved.items() if value != declared[name].default]
    return f"{sampler} ({', '.join(shown)})" if shown else sampler


def deterministic(sampler: str, options: Mapping[str, Any] | None = None) -> bool:
    """Whether `sampler` with `options` solves the probability-flow ODE (no noise is drawn): a cell of it has a
    distance from the flow's solution."""
    options = resolve_options(sampler, options or {})
    if sampler == "euler_maruyama":
        return False
    if sampler == "edm_stochastic":
        return options["S_churn"] == 0
    if sampler == "s2n":
        return options["rho"] == 0
    return True


def nfe(sampler: str, steps: int, options: Mapping[str, Any] | None = None) -> int:
    """Denoiser evaluations per image for `steps` steps of `sampler` with `options`."""
    per_step, offset = _per_step(sampler, options)
    return per_step * steps + offset


def steps_for_nfe(sampler: str, target: int, options: Mapping[str, Any] | None = None) -> int:
    """The steps at which `sampler` (with `options`) makes `target` denoiser evaluations per image. Raises ValueError
    naming the nearest NFE it can make when no step count makes exactly `target`."""
    per_step, offset = _per_step(sampler, options)
    steps, rest = divmod(target - offset, per_step)
    if rest == 0 and steps >= 1:
        return steps
    nearest = sorted({nfe(sampler, max(1, k), options) for k in (steps, steps + 1)},
                     key=lambda n: (abs(n - target), n))
    closest = [n for n in nearest if abs(n - target) == abs(nearest[0] - target)]
    rule = f"{per_step}·steps {'−' if offset < 0 else '+'} {abs(offset)}" if offset else f"{per_step}·steps"
    raise ValueError(f"{sampler} cannot make {target} denoiser evaluations per image (NFE = {rule}); the nearest it "
                     f"can: {' or '.join(map(str, closest))}")


def sampler_options(sampler: str) -> dict[str, inspect.Parameter]:
    """The keyword options of a sampler (name → signature parameter, with its annotation and default)."""
    params = inspect.signature(SAMPLERS[sampler]).parameters
    return {k: p for k, p in params.items() if p.kind is p.KEYWORD_ONLY and k not in ("class_labels", "generator")}


def identity_options(sampler: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved options as a cell's identity holds them: every option, but those added later (`Added`) only away
    from their defaults."""
    resolved, declared = resolve_options(sampler, options), sampler_options(sampler)
    return {name: value for name, value in resolved.items()
            if not (_added(declared[name].annotation) and value == declared[name].default)}


def _added(annotation: Any) -> bool:
    return get_origin(annotation) is Annotated and any(isinstance(m, Added) for m in get_args(annotation)[1:])


def resolve_options(sampler: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option of `sampler`, the given ones checked against their declared type and range, the rest at
    their defaults. Raises OptionError naming the option."""
    if sampler not in SAMPLERS:
        raise OptionError(sampler, "sampler", f"unknown sampler {sampler!r}; choose one of {sorted(SAMPLERS)}")
    declared = sampler_options(sampler)
    if not isinstance(options, Mapping):
        raise OptionError(sampler, "options", f"must be a mapping of option names to values, got {options!r}")
    for name in options:
        if name not in declared:
            raise OptionError(sampler, name, f"not an option of {sampler} (allowed: {sorted(declared)})")
    return {name: _checked(sampler, name, param.annotation, options.get(name, param.default))
            for name, param in declared.items()}


def _checked(sampler: str, name: str, annotation: Any, value: Any) -> Any:
    kind, *meta = get_args(annotation) if get_origin(annotation) is Annotated else (annotation,)
    if get_origin(kind) is Literal:  # one spelling per choice: 4.0 is 4, and true is not 1
        choices = get_args(kind)
        same_kind = [c for c in choices if isinstance(value, bool) == isinstance(c, bool) and c == value]
        if not same_kind:
            raise OptionError(sampler, name, f"must be one of {list(choices)}, got {value!r}")
        return same_kind[0]
    if kind is bool:
        if not isinstance(value, bool):
            raise OptionError(sampler, name, f"must be true or false, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise OptionError(sampler, name, f"must be a number, got {value!r}")
        for bound in meta:
            problem = bound.violation(float(value))
            if problem:
                raise OptionError(sampler, name, f"{problem}, got {value!r}")
        return float(value)
    raise TypeError(f"option {name!r} of {sampler} has an undeclared type {annotation!r}")
