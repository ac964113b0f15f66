"""Rationales r(σ) and the variance schedules they induce: σ(t) = Φ⁻¹(t) (paper eq. 5–11).

Schedules are data, kept apart from the samplers and the network as in k-diffusion: NumPy float64
arrays in, arrays out, so that config checks, tables and figures never need torch.
`build(name, spec)` takes a *resolved* spec (every key present, a weighted base inlined):
`ied.specs` makes those from config entries.
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
from scipy import special

from ied.expressions import FormulaError, compile_formula

Array = np.ndarray
GRID_INTERVALS = 8192  # log-σ intervals of a tabulated schedule; enough for 1e-9 relative accuracy (tests)
CHECK_POINTS = 100_001  # t grid of the numerical checks run before any job
FLOAT32_SIGMA_MAX = math.sqrt(np.finfo(np.float32).max)  # the denoiser squares σ in float32
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)


class RationaleError(ValueError):
    """An invalid rationale spec; the message names the rationale and the offending key."""

    def __init__(self, name: str, key: str, message: str):
        super().__init__(f"rationale {name!r}: key {key!r}: {message}")
        self.rationale, self.key = name, key


def _f64(x: Any) -> Array:
    return np.asarray(x, dtype=np.float64)


def _quiet(method: Callable) -> Callable:
    """Both branches of a np.where are computed; the unused one may overflow. Results are checked instead."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with np.errstate(all="ignore"):
            return method(*args, **kwargs)
    return wrapper


class Rationale:
    """A density over noise levels σ ∈ [sigma_min, sigma_max] and its schedule σ(t), t ∈ [0, 1]."""

    def __init__(self, name: str, sigma_min: float, sigma_max: float, spec: Mapping[str, Any] | None = None):
        self.name, self.sigma_min, self.sigma_max = name, float(sigma_min), float(sigma_max)
        self.spec = dict(spec or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, [{self.sigma_min:g}, {self.sigma_max:g}])"

    def density(self, sigma: Array) -> Array:
        """Unnormalised rationale r(σ) (eq. 5 numerator)."""
        raise NotImplementedError

    def pdf(self, sigma: Array) -> Array:
        """Normalised density φ(σ) = r(σ)/Z on the domain, 0 outside (eq. 5)."""
        raise NotImplementedError

    def cdf(self, sigma: Array) -> Array:
        """Φ(σ) = ∫_{σ_min}^{σ} φ (eq. 6)."""
        raise NotImplementedError

    def sigma(self, t: Array) -> Array:
        """The variance schedule σ(t) = Φ⁻¹(t), generalized inverse (eq. 7, 9)."""
        raise NotImplementedError

    @_quiet
    def dsigma_dt(self, t: Array) -> Array:
        """dσ/dt = 1/φ(σ(t)) (eq. 10)."""
        return 1.0 / self.pdf(self.sigma(t))

    @_quiet
    def g2(self, t: Array) -> Array:
        """Squared diffusion g(t)² = 2σ(t)/φ(σ(t)) (eq. 11)."""
        s = self.sigma(t)
        return 2.0 * s / self.pdf(s)

    def sample(self, n: int, rng: np.random.Generator) -> Array:
        """σ ~ φ by the Smirnov transform σ = σ(t), t ~ U[0, 1] (eq. 8)."""
        return self.sigma(rng.random(n))

    def _inside(self, sigma: Array) -> Array:
        return (sigma >= self.sigma_min) & (sigma <= self.sigma_max)


class ClosedForm(Rationale):
    """A rationale with closed-form F (∝ untruncated CDF) and inverse, truncated to the domain.

    Subclasses give F, F⁻¹ and F' = dF/dσ; where precision in the upper tail matters they also give
    the survival function S (decreasing, S' = −F') and its inverse. Kingma & Gao App. E.3.1 truncation:
    σ̃(t) = F⁻¹(F(σ_min) + t (F(σ_max) − F(σ_min))), and from the top with S where t > ½.
    """

    def _F(self, s: Array) -> Array: raise NotImplementedError
    def _F_inv(self, u: Array) -> Array: raise NotImplementedError
    def _dF(self, s: Array) -> Array: raise NotImplementedError
    def _S(self, s: Array) -> Array: return -self._F(s)
    def _S_inv(self, q: Array) -> Array: return self._F_inv(-q)

    def _ends(self) -> tuple[float, float, float, float]:
        a, b = _f64(self.sigma_min), _f64(self.sigma_max)
        return self._F(a), self._F(b), self._S(a), self._S(b)

    @_quiet
    def pdf(self, sigma: Array) -> Array:
        sigma = _f64(sigma)
        fa, fb, _, _ = self._ends()
        value = self._dF(np.clip(sigma, self.sigma_min, self.sigma_max)) / (fb - fa)
        return np.where(self._inside(sigma), value, 0.0)

    @_quiet
    def cdf(self, sigma: Array) -> Array:
        sigma = np.clip(_f64(sigma), self.sigma_min, self.sigma_max)
        fa, fb, sa, sb = self._ends()
        lower = (self._F(sigma) - fa) / (fb - fa)
        upper = 1.0 - (self._S(sigma) - sb) / (sa - sb)
        return np.clip(np.where(lower <= 0.5, lower, upper), 0.0, 1.0)

    @_quiet
    def sigma(self, t: Array) -> Array:
        t = np.clip(_f64(t), 0.0, 1.0)
        fa, fb, sa, sb = self._ends()
        lower = self._F_inv(fa + t * (fb - fa))
        upper = self._S_inv(sb + (1.0 - t) * (sa - sb))  # 1 − t is exact near t = 1
        sigma = np.clip(np.where(t <= 0.5, lower, upper), self.sigma_min, self.sigma_max)
        return np.where(t == 1.0, self.sigma_max, np.where(t == 0.0, self.sigma_min, sigma))


class VE(ClosedForm):
    """Variance exploding: φ ∝ 1/σ, σ(t) = σ_min (σ_max/σ_min)^t (eq. 14–16)."""

    def density(self, s): return 1.0 / _f64(s)
    def _F(self, s): return np.log(s)
    def _F_inv(self, u): return np.exp(u)
    def _dF(self, s): return 1.0 / s


class EDM(ClosedForm):
    """Karras et al. time discretisation as a rationale: r ∝ σ^{1/ρ−1} (eq. 61–63, increasing t)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, *, rho: float):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.rho = float(rho)

    def density(self, s): return _f64(s) ** (1.0 / self.rho - 1.0)
    def _F(self, s): return s ** (1.0 / self.rho)
    def _F_inv(self, u): return u ** self.rho
    def _dF(self, s): return s ** (1.0 / self.rho - 1.0) / self.rho


class KL(ClosedForm):
    """KL divergence of N(±v, σ²): r = 2v²/σ², Φ⁻¹(t) = σ_min/(1−t) untruncated (eq. 51–60)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, *, v_max: float):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.v_max = float(v_max)

    def density(self, s): return 2.0 * self.v_max**2 / _f64(s) ** 2
    def _F(self, s): return -1.0 / s
    def _F_inv(self, u): return -1.0 / u
    def _dF(self, s): return 1.0 / s**2


class Gaussian(ClosedForm):
    """Half-normal prior N(0, σ_N²): r = exp(−σ²/2σ_N²), Φ = erf(σ/(√2 σ_N)) (eq. 47–50)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, *, sigma_n: float):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.sigma_n = float(sigma_n)
        self._c = math.sqrt(2.0) * self.sigma_n

    def density(self, s): return np.exp(-0.5 * (_f64(s) / self.sigma_n) ** 2)
    def _F(self, s): return special.erf(s / self._c)
    def _F_inv(self, u): return self._c * special.erfinv(u)
    def _dF(self, s): return 2.0 / math.sqrt(math.pi) / self._c * np.exp(-((s / self._c) ** 2))
    def _S(self, s): return special.erfc(s / self._c)
    def _S_inv(self, q): return self._c * special.erfcinv(q)


class LogNormal(ClosedForm):
    """EDM's training distribution: ln σ ~ N(P_mean, P_std²)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, *, p_mean: float, p_std: float):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def _z(self, s): return (np.log(s) - self.p_mean) / self.p_std
    def density(self, s):
        s = _f64(s)
        return np.exp(-0.5 * self._z(s) ** 2) / (s * self.p_std * math.sqrt(2 * math.pi))
    def _F(self, s): return special.ndtr(self._z(s))
    def _F_inv(self, u): return np.exp(self.p_mean + self.p_std * special.ndtri(u))
    def _dF(self, s): return self.density(s)
    def _S(self, s): return special.ndtr(-self._z(s))
    def _S_inv(self, q): return np.exp(self.p_mean - self.p_std * special.ndtri(q))


class Tabulated(Rationale):
    """Any density, inverted numerically: the generalized inverse (eq. 9, Algorithm 1) made accurate.

    Φ is integrated on a uniform grid in u = ln σ with 8-point Gauss–Legendre per interval (from the
    bottom for the lower half, from the top for the upper half, so both tails keep relative precision),
    interpolated by monotone cubic Hermite splines whose slopes are the exact density, and inverted by
    a safeguarded Newton solve inside the interval found by binary search.
    """

    def __init__(self, name, sigma_min, sigma_max, spec=None, *, density_fn: Callable[[Array], Array],
                 key: str = "density", intervals: int = GRID_INTERVALS):
        super().__init__(name, sigma_min, sigma_max, spec)
        self._density_fn, self.intervals = density_fn, int(intervals)
        lo, hi, n = math.log(self.sigma_min), math.log(self.sigma_max), self.intervals
        self._u0, self._h = lo, (hi - lo) / n
        u = lo + self._h * np.arange(n + 1, dtype=np.float64)
        u_gl = u[:-1, None] + 0.5 * self._h * (_GL_NODES + 1.0)
        f_nodes = self._checked(lambda: self._f_of_u(u), name, key)
        f_gl = self._checked(lambda: self._f_of_u(u_gl), name, key)
        mass = 0.5 * self._h * (f_gl * _GL_WEIGHTS).sum(axis=1)  # ∫ over each interval
        self._C = np.concatenate([[0.0], np.cumsum(mass)])  # mass below node k
        self._D = np.concatenate([np.cumsum(mass[::-1])[::-1], [0.0]])  # mass above node k
        self.Z = float(self._C[-1])
        if not self.Z > 0.0 or not math.isfinite(self.Z):
            raise RationaleError(name, key, f"density has zero or infinite mass on [{sigma_min:g}, {sigma_max:g}]")
        self._mass = mass
        # Hermite slopes per unit of the local coordinate s ∈ [0, 1], limited (Fritsch–Carlson) to stay monotone.
        m0, m1 = self._h * f_nodes[:-1], self._h * f_nodes[1:]
        norm = np.sqrt(m0**2 + m1**2)
        tau = np.where(norm > 3.0 * mass, 3.0 * mass / np.maximum(norm, 1e-300), 1.0)
        self._m0, self._m1 = m0 * tau, m1 * tau

    def _f_of_u(self, u: Array) -> Array:
        s = np.exp(u)
        return self._density_fn(s) * s

    @staticmethod
    def _checked(fn: Callable[[], Array], name: str, key: str) -> Array:
        try:
            with np.errstate(all="ignore"):
                values = np.asarray(fn(), dtype=np.float64)
        except FormulaError as err:
            raise RationaleError(name, key, str(err)) from None
        if not np.isfinite(values).all():
            raise RationaleError(name, key, "density is not finite everywhere on the domain")
        if (values < 0).any():
            raise RationaleError(name, key, "density is negative somewhere on the domain")
        return values

    @_quiet
    def density(self, sigma: Array) -> Array:
        return self._density_fn(_f64(sigma))

    @_quiet
    def pdf(self, sigma: Array) -> Array:
        sigma = _f64(sigma)
        value = self._density_fn(np.clip(sigma, self.sigma_min, self.sigma_max)) / self.Z
        return np.where(self._inside(sigma), value, 0.0)

    def _partial(self, k: Array, s: Array) -> tuple[Array, Array]:
        """Hermite estimate of the mass from node k to local coordinate s, and its s-derivative."""
        d, m0, m1 = self._mass[k], self._m0[k], self._m1[k]
        s2, s3 = s * s, s * s * s
        value = (-2 * s3 + 3 * s2) * d + (s3 - 2 * s2 + s) * m0 + (s3 - s2) * m1
        slope = 6 * (s - s2) * d + (3 * s2 - 4 * s + 1) * m0 + (3 * s2 - 2 * s) * m1
        return value, slope

    @_quiet
    def cdf(self, sigma: Array) -> Array:
        u = np.log(np.clip(_f64(sigma), self.sigma_min, self.sigma_max))
        x = (u - self._u0) / self._h
        k = np.clip(np.floor(x).astype(np.int64), 0, self.intervals - 1)
        below, _ = self._partial(k, np.clip(x - k, 0.0, 1.0))
        lower = self._C[k] + below
        upper = self._D[k + 1] + (self._mass[k] - below)
        return np.clip(np.where(lower <= 0.5 * self.Z, lower / self.Z, 1.0 - upper / self.Z), 0.0, 1.0)

    @_quiet
    def sigma(self, t: Array) -> Array:
        t = np.clip(_f64(t), 0.0, 1.0)
        flat = t.reshape(-1)
        lower = flat <= 0.5
        target_lo, target_hi = flat * self.Z, (1.0 - flat) * self.Z
        # inf{σ : Φ(σ) ≥ t}: the first interval whose upper mass bound reaches the target.
        k_lo = np.searchsorted(self._C, target_lo) - 1
        k_hi = np.searchsorted(-self._D, -target_hi) - 1
        k = np.clip(np.where(lower, k_lo, k_hi), 0, self.intervals - 1)
        r = np.where(lower, target_lo - self._C[k], self._D[k] - target_hi)
        r = np.minimum(np.maximum(r, 0.0), self._mass[k])
        s = self._solve(k, r)
        sigma = np.clip(np.exp(self._u0 + (k + s) * self._h), self.sigma_min, self.sigma_max)
        # The schedule spans the whole domain even where the density underflows to 0 near an end.
        sigma = np.where(flat == 1.0, self.sigma_max, np.where(flat == 0.0, self.sigma_min, sigma))
        return sigma.reshape(t.shape)

    def _solve(self, k: Array, r: Array, iterations: int = 60) -> Array:
        """Solve partial(k, s) = r for s ∈ [0, 1]: Newton, falling back to bisection outside the bracket."""
        mass = self._mass[k]
        lo, hi = np.zeros_like(r), np.ones_like(r)
        s = np.clip(np.where(mass > 0, r / np.maximum(mass, 1e-300), 0.0), 0.0, 1.0)
        for _ in range(iterations):
            value, slope = self._partial(k, s)
            err = value - r
            lo, hi = np.where(err < 0, s, lo), np.where(err >= 0, s, hi)
            newton = s - err / np.maximum(slope, 1e-300)
            step = np.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
            if np.array_equal(step, s):
                break
            s = step
        return s


class PiecewiseLogLinear(Rationale):
    """A rationale given by its CDF at knots σ_min = σ_0 < … < σ_K = σ_max (Φ rising strictly from 0 to 1), linear in
    log σ between knots, so φ(σ) = ΔΦ/(Δ ln σ)/σ there. Its schedule passes through every knot: σ(Φ_k) = σ_k."""

    def __init__(self, name: str, sigma: Array, cdf: Array, spec: Mapping[str, Any] | None = None):
        sigma, cdf = _f64(sigma), _f64(cdf)
        if sigma.ndim != 1 or len(sigma) < 2 or sigma.shape != cdf.shape:
            raise RationaleError(name, "sigma", "needs at least two knots, as many CDF values as levels")
        if not (sigma[0] > 0 and np.all(np.diff(sigma) > 0) and np.all(np.diff(cdf) > 0)
                and cdf[0] == 0.0 and cdf[-1] == 1.0 and np.isfinite(sigma).all()):
            raise RationaleError(name, "sigma", "knots must rise strictly (σ > 0), the CDF strictly from 0 to 1")
        super().__init__(name, sigma[0], sigma[-1], spec)
        self.knots, self.knot_cdf = sigma, cdf
        self._u = np.log(sigma)
        self._slope = np.diff(cdf) / np.diff(self._u)

    def density(self, sigma: Array) -> Array:
        return self.pdf(sigma)

    @_quiet
    def pdf(self, sigma: Array) -> Array:
        sigma = _f64(sigma)
        k = np.clip(np.searchsorted(self._u, np.log(np.clip(sigma, self.sigma_min, self.sigma_max))) - 1, 0,
                    len(self._slope) - 1)
        return np.where(self._inside(sigma), self._slope[k] / sigma, 0.0)

    @_quiet
    def cdf(self, sigma: Array) -> Array:
        return np.interp(np.log(np.clip(_f64(sigma), self.sigma_min, self.sigma_max)), self._u, self.knot_cdf)

    @_quiet
    def sigma(self, t: Array) -> Array:
        t = np.clip(_f64(t), 0.0, 1.0)
        sigma = np.clip(np.exp(np.interp(t, self.knot_cdf, self._u)), self.sigma_min, self.sigma_max)
        return np.where(t == 1.0, self.sigma_max, np.where(t == 0.0, self.sigma_min, sigma))


class Binned(Rationale):
    """A target rationale reweighted per bin of log σ: p(σ) = π_b φ_T(σ) / m_b in bin b, where m_b is the target's
    mass there and π_b the bin's probability (0 where m_b is 0). The adaptive training rationale (ied.adaptive)
    draws from it; within a bin σ follows the target, so the importance weight φ_T/p = m_b/π_b is one number."""

    def __init__(self, name: str, target: Rationale, edges: Array, probabilities: Array,
                 spec: Mapping[str, Any] | None = None):
        edges, pi = _f64(edges), _f64(probabilities)
        if edges.ndim != 1 or len(edges) < 3 or pi.shape != (len(edges) - 1,):
            raise RationaleError(name, "bins", "needs at least two bins and one probability per bin")
        super().__init__(name, edges[0], edges[-1], spec)
        self.target, self.edges = target, edges
        cdf = target.cdf(edges)
        self.lower, self.mass = cdf[:-1], np.maximum(np.diff(cdf), 0.0)  # C_b, the mass below bin b; m_b, in it
        if not (np.isfinite(pi).all() and (pi >= 0).all() and np.all((pi > 0) <= (self.mass > 0))):
            raise RationaleError(name, "bins", "bin probabilities must be finite, ≥ 0, and 0 where the target has no mass")
        if not pi.sum() > 0:
            raise RationaleError(name, "bins", "bin probabilities are all 0: no density")
        self.probabilities = pi / pi.sum()
        self._last_live = int(np.flatnonzero(self.probabilities > 0)[-1])
        self._cum = np.concatenate([[0.0], np.cumsum(self.probabilities)])
        self._cum[-1] = 1.0

    def bin_of(self, sigma: Array) -> Array:
        """The bin b with edge_b ≤ σ < edge_{b+1} (the last bin holds σ_max)."""
        return np.clip(np.searchsorted(self.edges, sigma, side="right") - 1, 0, len(self.mass) - 1)

    def density(self, sigma: Array) -> Array:
        return self.pdf(sigma)

    @_quiet
    def pdf(self, sigma: Array) -> Array:
        sigma = _f64(sigma)
        b = self.bin_of(sigma)
        ratio = np.where(self.mass[b] > 0, self.probabilities[b] / np.maximum(self.mass[b], 1e-300), 0.0)
        return np.where(self._inside(sigma), ratio * self.target.pdf(sigma), 0.0)

    @_quiet
    def cdf(self, sigma: Array) -> Array:
        sigma = np.clip(_f64(sigma), self.sigma_min, self.sigma_max)
        b = self.bin_of(sigma)
        within = np.where(self.mass[b] > 0, (self.target.cdf(sigma) - self.lower[b]) / np.maximum(self.mass[b], 1e-300),
                          0.0)
        return np.clip(self._cum[b] + self.probabilities[b] * np.clip(within, 0.0, 1.0), 0.0, 1.0)

    def sigma(self, t: Array) -> Array:
        return self.draw(t)[0]

    @_quiet
    def draw(self, t: Array) -> tuple[Array, Array]:
        """σ(t) and the bin each σ was drawn in. A σ rounded onto a bin's edge belongs to the bin it was drawn in,
        which `bin_of` cannot tell (the next bin may hold no probability)."""
        t = np.clip(_f64(t), 0.0, 1.0)
        # the bin b with Π_b ≤ t < Π_{b+1} (a bin of probability 0 holds no t), then the target's inverse inside it
        b = np.searchsorted(self._cum, t, side="right") - 1
        b = np.where(self.probabilities[np.clip(b, 0, len(self.mass) - 1)] > 0, b, self._last_live)  # t = 1
        b = np.clip(b, 0, len(self.mass) - 1)
        s = np.clip((t - self._cum[b]) / np.maximum(self.probabilities[b], 1e-300), 0.0, 1.0)
        sigma = np.clip(self.target.sigma(self.lower[b] + s * self.mass[b]), self.edges[b], self.edges[b + 1])
        return np.where(t == 1.0, self.sigma_max, np.where(t == 0.0, self.sigma_min, sigma)), b


def log_bins(sigma_min: float, sigma_max: float, bins: int) -> Array:
    """`bins` + 1 edges evenly spaced in log σ (Kingma & Gao App. F: evenly in λ = −2 ln σ)."""
    edges = np.exp(np.linspace(math.log(sigma_min), math.log(sigma_max), int(bins) + 1))
    edges[0], edges[-1] = sigma_min, sigma_max
    return edges


def bin_mass(target: Rationale, edges: Array) -> Array:
    """The target's probability per bin (differences of its CDF at the edges)."""
    return np.maximum(np.diff(target.cdf(_f64(edges))), 0.0)


class L2(Tabulated):
    """Squared L2 distance of N(±v, σ²) (eq. 43); closed-form CDF, numerical inverse.

    Erratum: eq. 18/45 are wrong. With r = √2 (1 − e^{−v²/σ²}) on (0, ∞) the CDF is
    Φ(σ) = [σ (1 − e^{−v²/σ²}) + v √π erfc(v/σ)] / (v √π), checked against quadrature in the tests.
    """

    def __init__(self, name, sigma_min, sigma_max, spec=None, *, v_max: float, **kwargs):
        self.v_max = float(v_max)
        super().__init__(name, sigma_min, sigma_max, spec, density_fn=self._r, **kwargs)

    def _r(self, s: Array) -> Array:
        return math.sqrt(2.0) * -np.expm1(-((self.v_max / s) ** 2))

    def _F(self, s: Array) -> Array:
        v = self.v_max
        return (s * -np.expm1(-((v / s) ** 2)) + v * math.sqrt(math.pi) * special.erfc(v / s)) / (
            v * math.sqrt(math.pi))

    @_quiet
    def cdf(self, sigma: Array) -> Array:
        s = np.clip(_f64(sigma), self.sigma_min, self.sigma_max)
        fa, fb = self._F(_f64(self.sigma_min)), self._F(_f64(self.sigma_max))
        return np.clip((self._F(s) - fa) / (fb - fa), 0.0, 1.0)


# --- Kingma & Gao (2023) Table 1 weightings w(λ), λ = log-SNR = −2 ln σ -----------------------------
KG_WEIGHTINGS: dict[str, Callable[[Array, float | None], Array]] = {
    "elbo": lambda lam, k: np.ones_like(lam),
    "cosine": lambda lam, k: 1.0 / np.cosh(lam / 2.0),
    "edm": lambda lam, k: np.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
    * (np.exp(-lam) + 0.5**2),
    "v": lambda lam, k: np.exp(-lam / 2.0),
    "sigmoid": lambda lam, k: special.expit(-lam + k),
}


# --- building rationales from resolved specs ------------------------------------------------------
COMMON_KEYS = ("family", "sigma_min", "sigma_max")
FAMILIES: dict[str, tuple[str, ...]] = {  # family → its parameters (the registry the config checks use)
    "ve": (), "l2": ("v_max",), "gaussian": ("sigma_n",), "kl": ("v_max",), "edm": ("rho",),
    "lognormal": ("p_mean", "p_std"), "expression": ("density", "params"), "weighted": ("base", "weight"),
    "kingma_gao": ("weighting", "k"),
    # fitted to a model's checkpoint by a pipeline job (ied.fitting); built from that job's table, not from the spec
    "fitted": ("model", "step", "method", "base", "sampler", "options", "nfe", "pilot"),
    # learned in training (ied.adaptive): a training density ∝ target × EMA of the loss per bin of log σ
    "adaptive": ("target", "bins", "ema"),
    # an adaptive model's learned density at one of its checkpoints, read from that training segment's table
    "learned": ("model", "step", "adaptive"),
}
# families whose density exists only after a pipeline job (a fit, a training): read from that job's table
TABLED = ("fitted", "learned")
OPTIONAL = {"params", "k", "sampler", "options", "nfe", "adaptive"}
_POSITIVE = {"v_max", "sigma_n", "rho", "p_std"}


def _number(name: str, spec: Mapping[str, Any], key: str) -> float | None:
    value = spec.get(key)
    if value is None and key in OPTIONAL:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RationaleError(name, key, f"must be a finite number, got {value!r}")
    if key in _POSITIVE and value <= 0:
        raise RationaleError(name, key, f"must be > 0, got {value!r}")
    return float(value)


def check_keys(name: str, spec: Mapping[str, Any], extra: tuple[str, ...] = ()) -> str:
    """The spec's family, after checking it is known and every key belongs to it; returns the family."""
    if not isinstance(spec, Mapping):
        raise RationaleError(name, "family", f"the entry must be a mapping, got {type(spec).__name__}")
    family = spec.get("family")
    if family not in FAMILIES:
        raise RationaleError(name, "family", f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    allowed = COMMON_KEYS + FAMILIES[family] + extra
    for key in spec:
        if key not in allowed:
            raise RationaleError(name, key, f"unknown key for family {family!r} (allowed: {sorted(allowed)})")
    return family


def build(name: str, spec: Mapping[str, Any]) -> Rationale:
    """Turn one resolved spec (every key given, a weighted base inlined) into a Rationale."""
    family = check_keys(name, spec)
    if family in TABLED:
        raise RationaleError(name, "family", f"a {family} rationale is read from the table of the job that makes it "
                                             f"(ied.fitting.load_fitted)")
    if family == "adaptive":
        raise RationaleError(name, "family", "an adaptive rationale's density is learned in training (ied.adaptive)")
    for key in COMMON_KEYS + FAMILIES[family]:
        if key not in spec and key not in OPTIONAL:
            raise RationaleError(name, key, f"family {family!r} requires this key")
    base = build(f"{name}.base", spec["base"]) if family == "weighted" else None
    lo, hi = _number(name, spec, "sigma_min"), _number(name, spec, "sigma_max")
    if lo <= 0:
        raise RationaleError(name, "sigma_min", f"must be > 0, got {lo!r}")
    if lo >= hi:
        raise RationaleError(name, "sigma_max", f"must be > sigma_min ({lo!r}), got {hi!r}")
    args = (name, lo, hi, dict(spec))
    num = functools.partial(_number, name, spec)
    if family in ("ve", "edm", "kl", "gaussian", "lognormal"):
        cls = {"ve": VE, "edm": EDM, "kl": KL, "gaussian": Gaussian, "lognormal": LogNormal}[family]
        return cls(*args, **{key: num(key) for key in FAMILIES[family]})
    if family == "l2":
        return L2(*args, v_max=num("v_max"))
    if family == "expression":
        return Tabulated(*args, density_fn=_formula(name, "density", spec["density"], spec.get("params")))
    if family == "weighted":
        weight = _formula(name, "weight", spec["weight"], None)
        return Tabulated(*args, density_fn=lambda s: weight(s) * base.pdf(s), key="weight")
    weighting = spec["weighting"]
    if weighting not in KG_WEIGHTINGS:
        raise RationaleError(name, "weighting", f"unknown weighting {weighting!r}; choose one of "
                                                f"{sorted(KG_WEIGHTINGS)}")
    k = num("k")
    if weighting == "sigmoid" and k is None:
        raise RationaleError(name, "k", "the sigmoid weighting needs a numeric 'k'")
    w = KG_WEIGHTINGS[weighting]
    return Tabulated(*args, density_fn=lambda s: w(-2.0 * np.log(s), k) / s, key="weighting")


def _formula(name: str, key: str, text: Any, params: Any) -> Callable[[Array], Array]:
    if params is not None and not isinstance(params, Mapping):
        raise RationaleError(name, "params", f"must be a mapping of names to numbers, got {params!r}")
    try:
        return compile_formula(text, params)
    except FormulaError as err:
        raise RationaleError(name, key, str(err)) from None


# --- numerical checks before any job ---------------------------------------------------------------
def check_numerics(rationale: Rationale, points: int = CHECK_POINTS) -> None:
    """σ(t) finite and non-decreasing on a dense t grid from σ_min to σ_max; a density with positive mass."""
    name, lo, hi = rationale.name, rationale.sigma_min, rationale.sigma_max

    def fail(key: str, message: str):
        raise RationaleError(name, key, message)

    if hi >= FLOAT32_SIGMA_MAX:
        fail("sigma_max", f"{hi:g} is too large: the denoiser squares σ in float32 (σ_max < {FLOAT32_SIGMA_MAX:.3g})")
    family_key = {"gaussian": "sigma_n", "edm": "rho", "lognormal": "p_mean", "kl": "v_max", "l2": "v_max",
                  "expression": "density", "weighted": "weight", "kingma_gao": "weighting"}
    key = family_key.get(rationale.spec.get("family"), "family")
    tail = np.array([1e-12, 1e-9, 1e-6, 1 - 1e-6, 1 - 1e-9, 1 - 1e-12])
    t = np.sort(np.concatenate([np.linspace(0.0, 1.0, points), tail]))
    sigma = rationale.sigma(t)
    if not np.isfinite(sigma).all():
        fail(key, f"σ(t) is not finite at t = {t[~np.isfinite(sigma)][0]:.6g} (its mass on "
                  f"[{lo:g}, {hi:g}] is below float64 resolution?)")
    if (np.diff(sigma) < 0).any():
        i = int(np.argmax(np.diff(sigma) < 0))
        fail(key, f"σ(t) decreases between t = {t[i]:.6g} and {t[i + 1]:.6g}: the density's mass on "
                  f"[{lo:g}, {hi:g}] is lost to rounding (choose a domain that holds its mass)")
    if not (math.isclose(sigma[0], lo, rel_tol=1e-9) and math.isclose(sigma[-1], hi, rel_tol=1e-9)):
        fail(key, f"σ(0) = {sigma[0]:.6g}, σ(1) = {sigma[-1]:.6g}; expected σ_min = {lo:g}, σ_max = {hi:g}")
    grid = np.exp(np.linspace(math.log(lo), math.log(hi), 4097))
    pdf = rationale.pdf(grid)
    if not np.isfinite(pdf).all() or (pdf < 0).any():
        fail(key, "the normalised density is not finite and non-negative on the domain")
    mass = float(np.sum(0.5 * (pdf[1:] * grid[1:] + pdf[:-1] * grid[:-1]) * np.diff(np.log(grid))))
    if not mass > 0.5:
        fail(key, f"the normalised density integrates to {mass:.3g} on [{lo:g}, {hi:g}], not 1")


# --- schedule tables ---------------------------------------------------------------------------------
@dataclass
class ScheduleTable:
    """A rationale sampled on a uniform t grid: the data behind Fig. 1 and the pipeline's Parquet tables."""

    name: str
    spec: dict
    t: np.ndarray
    sigma: np.ndarray
    pdf: np.ndarray
    cdf: np.ndarray

    def to_parquet(self, path: str, extra: Mapping[str, str] | None = None) -> None:
        """Write the table (atomically) with the rationale spec, and any `extra` text, in the Parquet metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ied.io import atomic_path

        table = pa.table({"t": self.t, "sigma": self.sigma, "pdf": self.pdf, "cdf": self.cdf})
        meta = {b"ied.rationale": self.name.encode(), b"ied.spec": json.dumps(self.spec, sort_keys=True).encode(),
                **{key.encode(): value.encode() for key, value in (extra or {}).items()}}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)


def schedule_metadata(path: str | Path, spec: Mapping[str, Any], key: str, job: str,
                      error: type[ValueError] = ValueError) -> dict[bytes, bytes]:
    """The Parquet metadata of a schedule table that `job` wrote for `spec`, holding `key` (a fit's knots, a learned
    density's bins); `error` naming the file and the job to rerun if it is unreadable, not such a table, or made for
    another spec."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(str(path)).metadata or {}
    except (OSError, pa.ArrowException) as err:
        raise error(f"{path}: not a readable Parquet table ({type(err).__name__}); rerun its {job} job") from None
    if key.encode() not in meta or b"ied.spec" not in meta:
        raise error(f"{path}: not a table of a {job} job (no {key} in its metadata)")
    if json.loads(meta[b"ied.spec"]) != json.loads(json.dumps(dict(spec))):
        raise error(f"{path}: made for another spec than the one asked for; rerun its {job} job")
    return meta


def check_table_domain(path: str | Path, low: float, high: float, spec: Mapping[str, Any], job: str,
                       error: type[ValueError] = ValueError) -> None:
    """A table's σ range [low, high] must be its spec's domain (the spec in the metadata proves only what was asked
    for, not what the rows hold); `error` names the file and the job that rewrites it."""
    lo, hi = float(spec["sigma_min"]), float(spec["sigma_max"])
    if not (math.isclose(low, lo, rel_tol=1e-9) and math.isclose(high, hi, rel_tol=1e-9)):
        raise error(f"{path}: its levels span [{low:.6g}, {high:.6g}], not the spec's domain [{lo:g}, {hi:g}]; "
                    f"delete it and rerun its {job} job")


def tabulate(rationale: Rationale, n: int = 1001) -> ScheduleTable:
    """Sample σ(t), φ(σ(t)) and Φ(σ(t)) on n uniform t ∈ [0, 1]."""
    t = np.linspace(0.0, 1.0, n)
    sigma = rationale.sigma(t)
    return ScheduleTable(rationale.name, rationale.spec, t, sigma, rationale.pdf(sigma), rationale.cdf(sigma))
