"""Rationales r(σ) and the variance schedules they induce: σ(t) = Φ⁻¹(t) (paper eq. 5–11)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from ied.expressions import FormulaError, compile_formula

Tensor = torch.Tensor
F64 = torch.float64
DEFAULT_SIGMA_MIN = 0.002
DEFAULT_SIGMA_MAX = 80.0
GRID_INTERVALS = 8192  # log-σ intervals of a tabulated schedule; enough for 1e-6 relative accuracy (tests)
_GL_NODES, _GL_WEIGHTS = (torch.as_tensor(a, dtype=F64) for a in np.polynomial.legendre.leggauss(8))


class RationaleError(ValueError):
    """An invalid rationale spec; the message names the rationale and the offending key."""

    def __init__(self, name: str, key: str, message: str):
        super().__init__(f"rationale {name!r}: key {key!r}: {message}")
        self.rationale, self.key = name, key


def _f64(x: Any) -> Tensor:
    return torch.as_tensor(x, dtype=F64)


class Rationale:
    """A density over noise levels σ ∈ [sigma_min, sigma_max] and its schedule σ(t), t ∈ [0, 1]."""

    def __init__(self, name: str, sigma_min: float, sigma_max: float, spec: Mapping[str, Any] | None = None):
        self.name, self.sigma_min, self.sigma_max = name, float(sigma_min), float(sigma_max)
        self.spec = dict(spec or {})

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, [{self.sigma_min:g}, {self.sigma_max:g}])"

    def density(self, sigma: Tensor) -> Tensor:
        """Unnormalised rationale r(σ) (eq. 5 numerator)."""
        raise NotImplementedError

    def pdf(self, sigma: Tensor) -> Tensor:
        """Normalised density φ(σ) = r(σ)/Z on the domain, 0 outside (eq. 5)."""
        raise NotImplementedError

    def cdf(self, sigma: Tensor) -> Tensor:
        """Φ(σ) = ∫_{σ_min}^{σ} φ (eq. 6)."""
        raise NotImplementedError

    def sigma(self, t: Tensor) -> Tensor:
        """The variance schedule σ(t) = Φ⁻¹(t), generalized inverse (eq. 7, 9)."""
        raise NotImplementedError

    def dsigma_dt(self, t: Tensor) -> Tensor:
        """dσ/dt = 1/φ(σ(t)) (eq. 10)."""
        return 1.0 / self.pdf(self.sigma(t))

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)² = 2σ(t)/φ(σ(t)) (eq. 11)."""
        s = self.sigma(t)
        return 2.0 * s / self.pdf(s)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """σ ~ φ by the Smirnov transform σ = σ(t), t ~ U[0, 1] (eq. 8)."""
        return self.sigma(torch.rand(n, generator=generator, dtype=F64))

    def _inside(self, sigma: Tensor) -> Tensor:
        return (sigma >= self.sigma_min) & (sigma <= self.sigma_max)


class ClosedForm(Rationale):
    """A rationale with closed-form F (∝ untruncated CDF) and inverse, truncated to the domain.

    Subclasses give F, F⁻¹ and F' = dF/dσ; where precision in the upper tail matters they also give
    the survival function S (decreasing, S' = −F') and its inverse. Kingma & Gao App. E.3.1 truncation:
    σ̃(t) = F⁻¹(F(σ_min) + t (F(σ_max) − F(σ_min))).
    """

    def _F(self, s: Tensor) -> Tensor: raise NotImplementedError
    def _F_inv(self, u: Tensor) -> Tensor: raise NotImplementedError
    def _dF(self, s: Tensor) -> Tensor: raise NotImplementedError
    def _S(self, s: Tensor) -> Tensor: return -self._F(s)
    def _S_inv(self, q: Tensor) -> Tensor: return self._F_inv(-q)

    def _ends(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a, b = _f64(self.sigma_min), _f64(self.sigma_max)
        return self._F(a), self._F(b), self._S(a), self._S(b)

    def pdf(self, sigma: Tensor) -> Tensor:
        sigma = _f64(sigma)
        fa, fb, _, _ = self._ends()
        inside = self._inside(sigma)
        value = self._dF(sigma.clamp(self.sigma_min, self.sigma_max)) / (fb - fa)
        return torch.where(inside, value, torch.zeros_like(value))

    def cdf(self, sigma: Tensor) -> Tensor:
        sigma = _f64(sigma).clamp(self.sigma_min, self.sigma_max)
        fa, fb, sa, sb = self._ends()
        lower = (self._F(sigma) - fa) / (fb - fa)
        upper = 1.0 - (self._S(sigma) - sb) / (sa - sb)
        return torch.where(lower <= 0.5, lower, upper).clamp(0.0, 1.0)

    def sigma(self, t: Tensor) -> Tensor:
        t = _f64(t).clamp(0.0, 1.0)
        fa, fb, sa, sb = self._ends()
        lower = self._F_inv(fa + t * (fb - fa))
        upper = self._S_inv(sb + (1.0 - t) * (sa - sb))  # 1 − t is exact near t = 1
        sigma = torch.where(t <= 0.5, lower, upper).clamp(self.sigma_min, self.sigma_max)
        return torch.where(t == 1.0, self.sigma_max, torch.where(t == 0.0, self.sigma_min, sigma))


class VE(ClosedForm):
    """Variance exploding: φ ∝ 1/σ, σ(t) = σ_min (σ_max/σ_min)^t (eq. 14–16)."""

    def density(self, s): return 1.0 / _f64(s)
    def _F(self, s): return torch.log(s)
    def _F_inv(self, u): return torch.exp(u)
    def _dF(self, s): return 1.0 / s


class EDM(ClosedForm):
    """Karras et al. time discretisation as a rationale: r ∝ σ^{1/ρ−1} (eq. 61–63, increasing t)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, rho: float = 7.0):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.rho = float(rho)

    def density(self, s): return _f64(s) ** (1.0 / self.rho - 1.0)
    def _F(self, s): return s ** (1.0 / self.rho)
    def _F_inv(self, u): return u ** self.rho
    def _dF(self, s): return s ** (1.0 / self.rho - 1.0) / self.rho


class KL(ClosedForm):
    """KL divergence of N(±v, σ²): r = 2v²/σ², Φ⁻¹(t) = σ_min/(1−t) untruncated (eq. 51–60)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, v_max: float = 1.0):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.v_max = float(v_max)

    def density(self, s): return 2.0 * self.v_max**2 / _f64(s) ** 2
    def _F(self, s): return -1.0 / s
    def _F_inv(self, u): return -1.0 / u
    def _dF(self, s): return 1.0 / s**2


class Gaussian(ClosedForm):
    """Half-normal prior N(0, σ_N²): r = exp(−σ²/2σ_N²), Φ = erf(σ/(√2 σ_N)) (eq. 47–50)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, sigma_n: float = 5.0):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.sigma_n = float(sigma_n)
        self._c = math.sqrt(2.0) * self.sigma_n

    def density(self, s): return torch.exp(-0.5 * (_f64(s) / self.sigma_n) ** 2)
    def _F(self, s): return torch.special.erf(s / self._c)
    def _F_inv(self, u): return self._c * torch.special.erfinv(u)
    def _dF(self, s): return 2.0 / math.sqrt(math.pi) / self._c * torch.exp(-((s / self._c) ** 2))
    def _S(self, s): return torch.special.erfc(s / self._c)
    def _S_inv(self, q): return -self._c * torch.special.ndtri(q / 2.0) / math.sqrt(2.0)  # erfcinv(q)


class LogNormal(ClosedForm):
    """EDM's training distribution: ln σ ~ N(P_mean, P_std²)."""

    def __init__(self, name, sigma_min, sigma_max, spec=None, p_mean: float = -1.2, p_std: float = 1.2):
        super().__init__(name, sigma_min, sigma_max, spec)
        self.p_mean, self.p_std = float(p_mean), float(p_std)

    def _z(self, s): return (torch.log(s) - self.p_mean) / self.p_std
    def density(self, s):
        s = _f64(s)
        return torch.exp(-0.5 * self._z(s) ** 2) / (s * self.p_std * math.sqrt(2 * math.pi))
    def _F(self, s): return torch.special.ndtr(self._z(s))
    def _F_inv(self, u): return torch.exp(self.p_mean + self.p_std * torch.special.ndtri(u))
    def _dF(self, s): return self.density(s)
    def _S(self, s): return torch.special.ndtr(-self._z(s))
    def _S_inv(self, q): return torch.exp(self.p_mean - self.p_std * torch.special.ndtri(q))


class Tabulated(Rationale):
    """Any density, inverted numerically: the generalized inverse (eq. 9, Algorithm 1) made accurate.

    Φ is integrated on a uniform grid in u = ln σ with 8-point Gauss–Legendre per interval (from the
    bottom for the lower half, from the top for the upper half, so both tails keep relative precision),
    interpolated by monotone cubic Hermite splines whose slopes are the exact density, and inverted by
    a safeguarded Newton solve inside the interval found by binary search.
    """

    def __init__(self, name, sigma_min, sigma_max, spec=None, *, density_fn: Callable[[Tensor], Tensor],
                 key: str = "density", intervals: int = GRID_INTERVALS):
        super().__init__(name, sigma_min, sigma_max, spec)
        self._density_fn, self.intervals = density_fn, int(intervals)
        lo, hi, n = math.log(self.sigma_min), math.log(self.sigma_max), self.intervals
        self._u0, self._h = lo, (hi - lo) / n
        u = lo + self._h * torch.arange(n + 1, dtype=F64)
        u_gl = u[:-1, None] + 0.5 * self._h * (_GL_NODES + 1.0)
        f_nodes = self._checked(lambda: self._f_of_u(u), name, key)
        f_gl = self._checked(lambda: self._f_of_u(u_gl), name, key)
        mass = 0.5 * self._h * (f_gl * _GL_WEIGHTS).sum(dim=1)  # ∫ over each interval
        zero = torch.zeros(1, dtype=F64)
        self._C = torch.cat([zero, torch.cumsum(mass, 0)])  # mass below node k
        self._D = torch.cat([torch.flip(torch.cumsum(torch.flip(mass, [0]), 0), [0]), zero])  # mass above
        self.Z = float(self._C[-1])
        if not self.Z > 0.0 or not math.isfinite(self.Z):
            raise RationaleError(name, key, f"density has zero or infinite mass on [{sigma_min:g}, {sigma_max:g}]")
        self._mass = mass
        # Hermite slopes per unit of the local coordinate s ∈ [0, 1], limited (Fritsch–Carlson) to stay monotone.
        m0, m1 = self._h * f_nodes[:-1], self._h * f_nodes[1:]
        norm = torch.sqrt(m0**2 + m1**2)
        tau = torch.where(norm > 3.0 * mass, 3.0 * mass / norm.clamp_min(1e-300), torch.ones_like(mass))
        self._m0, self._m1 = m0 * tau, m1 * tau

    def _f_of_u(self, u: Tensor) -> Tensor:
        s = torch.exp(u)
        return self._density_fn(s) * s

    @staticmethod
    def _checked(fn: Callable[[], Tensor], name: str, key: str) -> Tensor:
        try:
            values = fn()
        except FormulaError as err:
            raise RationaleError(name, key, str(err)) from None
        if not torch.isfinite(values).all():
            raise RationaleError(name, key, "density is not finite everywhere on the domain")
        if (values < 0).any():
            raise RationaleError(name, key, "density is negative somewhere on the domain")
        return values

    def density(self, sigma: Tensor) -> Tensor:
        return self._density_fn(_f64(sigma))

    def pdf(self, sigma: Tensor) -> Tensor:
        sigma = _f64(sigma)
        value = self._density_fn(sigma.clamp(self.sigma_min, self.sigma_max)) / self.Z
        return torch.where(self._inside(sigma), value, torch.zeros_like(value))

    def _partial(self, k: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Hermite estimate of the mass from node k to local coordinate s, and its s-derivative."""
        d, m0, m1 = self._mass[k], self._m0[k], self._m1[k]
        s2, s3 = s * s, s * s * s
        value = (-2 * s3 + 3 * s2) * d + (s3 - 2 * s2 + s) * m0 + (s3 - s2) * m1
        slope = 6 * (s - s2) * d + (3 * s2 - 4 * s + 1) * m0 + (3 * s2 - 2 * s) * m1
        return value, slope

    def cdf(self, sigma: Tensor) -> Tensor:
        u = torch.log(_f64(sigma).clamp(self.sigma_min, self.sigma_max))
        x = (u - self._u0) / self._h
        k = x.floor().long().clamp(0, self.intervals - 1)
        below, _ = self._partial(k, (x - k).clamp(0.0, 1.0))
        lower = self._C[k] + below
        upper = self._D[k + 1] + (self._mass[k] - below)
        return torch.where(lower <= 0.5 * self.Z, lower / self.Z, 1.0 - upper / self.Z).clamp(0.0, 1.0)

    def sigma(self, t: Tensor) -> Tensor:
        t = _f64(t).clamp(0.0, 1.0)
        flat = t.reshape(-1)
        lower = flat <= 0.5
        target_lo, target_hi = flat * self.Z, (1.0 - flat) * self.Z
        # inf{σ : Φ(σ) ≥ t}: the first interval whose upper mass bound reaches the target.
        k_lo = torch.searchsorted(self._C, target_lo) - 1
        k_hi = torch.searchsorted(-self._D, -target_hi) - 1
        k = torch.where(lower, k_lo, k_hi).clamp(0, self.intervals - 1)
        r = torch.where(lower, target_lo - self._C[k], self._D[k] - target_hi)
        r = torch.minimum(r.clamp_min(0.0), self._mass[k])
        s = self._solve(k, r)
        sigma = torch.exp(self._u0 + (k + s) * self._h).clamp(self.sigma_min, self.sigma_max)
        # The schedule spans the whole domain even where the density underflows to 0 near an end.
        sigma = torch.where(flat == 1.0, self.sigma_max, torch.where(flat == 0.0, self.sigma_min, sigma))
        return sigma.reshape(t.shape)

    def _solve(self, k: Tensor, r: Tensor, iterations: int = 60) -> Tensor:
        """Solve partial(k, s) = r for s ∈ [0, 1]: Newton, falling back to bisection outside the bracket."""
        mass = self._mass[k]
        lo, hi = torch.zeros_like(r), torch.ones_like(r)
        s = torch.where(mass > 0, r / mass.clamp_min(1e-300), torch.zeros_like(r)).clamp(0.0, 1.0)
        for _ in range(iterations):
            value, slope = self._partial(k, s)
            err = value - r
            lo, hi = torch.where(err < 0, s, lo), torch.where(err >= 0, s, hi)
            newton = s - err / slope.clamp_min(1e-300)
            step = torch.where((newton > lo) & (newton < hi), newton, 0.5 * (lo + hi))
            if torch.equal(step, s):
                break
            s = step
        return s


class L2(Tabulated):
    """Squared L2 distance of N(±v, σ²) (eq. 43); closed-form CDF, numerical inverse.

    Erratum: eq. 18/45 are wrong. With r = √2 (1 − e^{−v²/σ²}) on (0, ∞) the CDF is
    Φ(σ) = [σ (1 − e^{−v²/σ²}) + v √π erfc(v/σ)] / (v √π), checked against quadrature in the tests.
    """

    def __init__(self, name, sigma_min, sigma_max, spec=None, v_max: float = 1.0, **kwargs):
        self.v_max = float(v_max)
        super().__init__(name, sigma_min, sigma_max, spec, density_fn=self._r, **kwargs)

    def _r(self, s: Tensor) -> Tensor:
        return math.sqrt(2.0) * -torch.expm1(-((self.v_max / s) ** 2))

    def _F(self, s: Tensor) -> Tensor:
        v = self.v_max
        return (s * -torch.expm1(-((v / s) ** 2)) + v * math.sqrt(math.pi) * torch.special.erfc(v / s)) / (
            v * math.sqrt(math.pi))

    def cdf(self, sigma: Tensor) -> Tensor:
        s = _f64(sigma).clamp(self.sigma_min, self.sigma_max)
        fa, fb = self._F(_f64(self.sigma_min)), self._F(_f64(self.sigma_max))
        return ((self._F(s) - fa) / (fb - fa)).clamp(0.0, 1.0)


# --- Kingma & Gao (2023) Table 1 weightings w(λ), λ = log-SNR = −2 ln σ -----------------------------
def _kg_weighting(name: str, weighting: str, k: float | None) -> Callable[[Tensor], Tensor]:
    table: dict[str, Callable[[Tensor], Tensor]] = {
        "elbo": lambda lam: torch.ones_like(lam),
        "cosine": lambda lam: 1.0 / torch.cosh(lam / 2.0),
        "edm": lambda lam: torch.exp(-0.5 * ((lam - 2.4) / 2.4) ** 2) / (2.4 * math.sqrt(2 * math.pi))
        * (torch.exp(-lam) + 0.5**2),
        "v": lambda lam: torch.exp(-lam / 2.0),
        "sigmoid": lambda lam: torch.sigmoid(-lam + k),
    }
    if weighting not in table:
        raise RationaleError(name, "weighting", f"unknown weighting {weighting!r}; choose one of {sorted(table)}")
    if weighting == "sigmoid" and k is None:
        raise RationaleError(name, "k", "the sigmoid weighting needs a numeric 'k'")
    return table[weighting]


# --- building rationales from config entries -------------------------------------------------------
_COMMON = {"family", "sigma_min", "sigma_max", "label"}
FAMILIES: dict[str, set[str]] = {
    "ve": set(), "l2": {"v_max"}, "gaussian": {"sigma_n"}, "kl": {"v_max"}, "edm": {"rho"},
    "lognormal": {"p_mean", "p_std"}, "expression": {"density", "params"}, "weighted": {"base", "weight"},
    "kingma_gao": {"weighting", "k"},
}
_REQUIRED = {"gaussian": {"sigma_n"}, "expression": {"density"}, "weighted": {"base", "weight"},
             "kingma_gao": {"weighting"}}
_POSITIVE = {"v_max", "sigma_n", "rho", "p_std"}


def _number(name: str, spec: Mapping[str, Any], key: str, default: float | None = None) -> float | None:
    value = spec.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RationaleError(name, key, f"must be a finite number, got {value!r}")
    if key in _POSITIVE and value <= 0:
        raise RationaleError(name, key, f"must be > 0, got {value!r}")
    return float(value)


def build(name: str, spec: Mapping[str, Any], registry: Mapping[str, Mapping[str, Any]] | None = None,
          _seen: tuple[str, ...] = ()) -> Rationale:
    """Turn one config entry into a Rationale; `registry` resolves a weighted rationale's base by name."""
    if not isinstance(spec, Mapping):
        raise RationaleError(name, "family", f"the entry must be a mapping, got {type(spec).__name__}")
    family = spec.get("family")
    if family not in FAMILIES:
        raise RationaleError(name, "family", f"unknown family {family!r}; choose one of {sorted(FAMILIES)}")
    for key in spec:
        if key not in _COMMON | FAMILIES[family]:
            raise RationaleError(name, key, f"unknown key for family {family!r} "
                                            f"(allowed: {sorted(_COMMON | FAMILIES[family])})")
    for key in sorted(_REQUIRED.get(family, set())):
        if key not in spec:
            raise RationaleError(name, key, f"family {family!r} requires this key")
    base = None
    if family == "weighted":
        base = _resolve_base(name, spec["base"], registry, _seen)
    default_lo, default_hi = (base.sigma_min, base.sigma_max) if base else (DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX)
    lo, hi = _number(name, spec, "sigma_min", default_lo), _number(name, spec, "sigma_max", default_hi)
    if lo <= 0:
        raise RationaleError(name, "sigma_min", f"must be > 0, got {lo!r}")
    if lo >= hi:
        raise RationaleError(name, "sigma_max", f"must be > sigma_min ({lo!r}), got {hi!r}")
    args = (name, lo, hi, dict(spec))
    if family == "ve":
        return VE(*args)
    if family == "edm":
        return EDM(*args, rho=_number(name, spec, "rho", 7.0))
    if family == "kl":
        return KL(*args, v_max=_number(name, spec, "v_max", 1.0))
    if family == "gaussian":
        return Gaussian(*args, sigma_n=_number(name, spec, "sigma_n"))
    if family == "lognormal":
        return LogNormal(*args, p_mean=_number(name, spec, "p_mean", -1.2), p_std=_number(name, spec, "p_std", 1.2))
    if family == "l2":
        return L2(*args, v_max=_number(name, spec, "v_max", 1.0))
    if family == "expression":
        return Tabulated(*args, density_fn=_formula(name, "density", spec["density"], spec.get("params")))
    if family == "weighted":
        weight = _formula(name, "weight", spec["weight"], None)
        return Tabulated(*args, density_fn=lambda s: weight(s) * base.pdf(s), key="weight")
    weighting = spec["weighting"]
    w = _kg_weighting(name, weighting, _number(name, spec, "k"))
    return Tabulated(*args, density_fn=lambda s: w(-2.0 * torch.log(s)) / s, key="weighting")


def _formula(name: str, key: str, text: Any, params: Any) -> Callable[[Tensor], Tensor]:
    if params is not None and not isinstance(params, Mapping):
        raise RationaleError(name, "params", f"must be a mapping of names to numbers, got {params!r}")
    try:
        return compile_formula(text, params)
    except FormulaError as err:
        raise RationaleError(name, key, str(err)) from None


def _resolve_base(name: str, base: Any, registry: Mapping[str, Any] | None, seen: tuple[str, ...]) -> Rationale:
    if isinstance(base, str):
        if registry is None or base not in registry:
            raise RationaleError(name, "base", f"no rationale named {base!r} is defined")
        if base in seen + (name,):
            raise RationaleError(name, "base", f"circular reference through {base!r}")
        return build(base, registry[base], registry, seen + (name,))
    if isinstance(base, Mapping):
        return build(f"{name}.base", base, registry, seen + (name,))
    raise RationaleError(name, "base", f"must be a rationale name or an inline entry, got {base!r}")


def build_all(specs: Mapping[str, Mapping[str, Any]]) -> dict[str, Rationale]:
    """Build every entry of a config's `rationales:` mapping (errors name the entry and key)."""
    return {name: build(name, spec, specs) for name, spec in specs.items()}


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

    def to_parquet(self, path: str) -> None:
        """Write the table (atomically) with the rationale spec in the Parquet metadata."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ied.io import atomic_path

        table = pa.table({"t": self.t, "sigma": self.sigma, "pdf": self.pdf, "cdf": self.cdf})
        meta = {b"ied.rationale": self.name.encode(), b"ied.spec": json.dumps(self.spec, sort_keys=True).encode()}
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **meta})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)


def tabulate(rationale: Rationale, n: int = 1001) -> ScheduleTable:
    """Sample σ(t), φ(σ(t)) and Φ(σ(t)) on n uniform t ∈ [0, 1]."""
    t = torch.linspace(0.0, 1.0, n, dtype=F64)
    sigma = rationale.sigma(t)
    return ScheduleTable(rationale.name, rationale.spec, t.numpy(), sigma.numpy(),
                         rationale.pdf(sigma).numpy(), rationale.cdf(sigma).numpy())
