import math
import re

import numpy as np
import pytest
from scipy import integrate, special, stats

from ied.rationales import ClosedForm, RationaleError, Tabulated, build, tabulate
from ied.specs import rationale, resolve_rationale

VE = {"family": "ve", "sigma_min": 0.002, "sigma_max": 80.0}
DOMAINS = [(0.01, 50.0), (0.002, 80.0)]  # VE's and EDM's
CLOSED = [
    {"family": "ve"}, {"family": "edm", "rho": 7}, {"family": "edm", "rho": 5}, {"family": "kl", "v_max": 1},
    {"family": "gaussian", "sigma_n": 5}, {"family": "gaussian", "sigma_n": 0.5}, {"family": "lognormal"},
]
ALL = CLOSED + [
    {"family": "l2", "v_max": 1},
    {"family": "expression", "density": "exp(-(log(sigma) - m)**2 / 2) / sigma + 0.01", "params": {"m": 0.5}},
    {"family": "weighted", "base": {"family": "ve"}, "weight": "sigma**2 / (sigma**2 + 0.25)"},
    {"family": "kingma_gao", "weighting": "cosine"}, {"family": "kingma_gao", "weighting": "v"},
    {"family": "kingma_gao", "weighting": "edm"}, {"family": "kingma_gao", "weighting": "sigmoid", "k": 2},
]
# t across [0, 1] including points very close to both ends
T = np.concatenate([np.linspace(0, 1, 20001), [1e-12, 1e-9, 1e-6, 1 - 1e-6, 1 - 1e-9, 1 - 1e-12]])


def make(spec, domain=(0.002, 80.0)):
    return rationale({**spec, "sigma_min": domain[0], "sigma_max": domain[1]})


def close(a, b, rtol=1.3e-6, atol=1e-5):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("spec", CLOSED, ids=lambda s: "-".join(map(str, s.values())))
def test_tabulated_inverse_matches_closed_form(spec, domain):
    closed = make(spec, domain)
    assert isinstance(closed, ClosedForm)
    table = Tabulated("r", *domain, density_fn=closed.density)
    rel = np.max(np.abs(table.sigma(T) - closed.sigma(T)) / closed.sigma(T))
    assert rel <= 1e-9  # the accuracy src/ied/README.md states
    assert closed.sigma(0.0) == pytest.approx(domain[0], rel=1e-12)
    assert closed.sigma(1.0) == pytest.approx(domain[1], rel=1e-12)


def test_closed_forms_are_the_papers_equations():
    lo, hi = 0.01, 50.0
    t = np.linspace(0, 1, 101)
    close(make({"family": "ve"}, (lo, hi)).sigma(t), lo * (hi / lo) ** t, rtol=1e-12)  # eq. 14
    rho = 7.0
    edm = lo ** (1 / rho) + t * (hi ** (1 / rho) - lo ** (1 / rho))
    close(make({"family": "edm", "rho": rho}, (lo, hi)).sigma(t), edm**rho, rtol=1e-12)  # eq. 61, increasing
    # eq. 60 (untruncated KL) is the σ_max → ∞ limit of the truncated schedule
    kl = make({"family": "kl"}, (lo, 1e12)).sigma(t[:-1])
    close(kl, lo / (1 - t[:-1]), rtol=1e-9, atol=0)
    # eq. 50 on a domain holding all of N(0, 5²)'s mass
    g = make({"family": "gaussian", "sigma_n": 5.0}, (1e-9, 100.0)).sigma(t[1:-1])
    close(g, special.erfinv(t[1:-1]) * math.sqrt(2) * 5.0, rtol=1e-7, atol=0)


def test_l2_cdf_is_corrected_eq45_against_quadrature():
    v = 1.0
    r = lambda s: math.sqrt(2) * (1 - math.exp(-(v**2) / s**2))  # eq. 43
    for lo, hi in DOMAINS:
        l2 = make({"family": "l2", "v_max": v}, (lo, hi))
        z = integrate.quad(r, lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0]
        for s in [lo, 0.05, 0.3, 1.0, 2.5, 10.0, 40.0, hi]:
            expected = integrate.quad(r, lo, s, epsabs=0, epsrel=1e-13, limit=200)[0] / z
            assert abs(l2.cdf(s) - expected) <= 1e-8
    # the untruncated closed form is a CDF on (0, ∞); the paper's eq. 45 is not (it is negative at σ → 0)
    l2 = make({"family": "l2", "v_max": v}, (1e-6, 1e9))
    assert l2._F(np.float64(1e-6)) == pytest.approx(0.0, abs=1e-6)
    assert l2._F(np.float64(1e9)) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("spec", ALL, ids=lambda s: "-".join(str(v)[:12] for v in s.values()))
def test_pdf_cdf_schedule_consistency(spec):
    r = make(spec)
    # pdf integrates to 1 (in log σ to resolve five decades)
    u = np.linspace(math.log(r.sigma_min), math.log(r.sigma_max), 200001)
    s = np.exp(u)
    assert integrate.simpson(r.pdf(s) * s, x=u) == pytest.approx(1.0, abs=1e-8)
    assert np.abs(r.pdf(np.array([r.sigma_min / 2, r.sigma_max * 2]))).max() == 0.0
    # σ(Φ(σ)) = σ, wherever Φ(σ) is distinguishable from 1 in float64 (N(0, 0.5²) reaches 1 by σ ≈ 4)
    grid = np.exp(np.linspace(math.log(r.sigma_min), math.log(r.sigma_max), 2001))
    grid = grid[1.0 - r.cdf(grid) >= 1e-10]
    assert len(grid) > 500
    assert np.max(np.abs(r.sigma(r.cdf(grid)) - grid) / grid) < 1e-6
    # schedule increasing from σ_min to σ_max
    sig = r.sigma(np.sort(T))
    assert (np.diff(sig) >= 0).all()
    assert sig[0] == pytest.approx(r.sigma_min) and sig[-1] == pytest.approx(r.sigma_max)
    # dσ/dt (eq. 10) against central differences, g² = 2σ dσ/dt (eq. 11)
    t = np.linspace(0.05, 0.95, 19)
    h = 1e-6
    fd = (r.sigma(t + h) - r.sigma(t - h)) / (2 * h)
    close(r.dsigma_dt(t), fd, rtol=1e-5, atol=0)
    close(r.g2(t), 2 * r.sigma(t) * r.dsigma_dt(t), rtol=1e-12, atol=0)


@pytest.mark.parametrize("spec", ALL[:1] + ALL[4:5] + ALL[7:9] + ALL[-1:], ids=lambda s: s["family"])
def test_sample_passes_kolmogorov_smirnov(spec):
    r = make(spec)
    x = r.sample(20000, np.random.default_rng(0))
    assert stats.kstest(x, r.cdf).pvalue > 1e-3
    # and it is a real test: a different rationale's samples fail it
    other = make({"family": "ve"} if spec["family"] != "ve" else {"family": "edm"}).sample(20000, np.random.default_rng(1))
    assert stats.kstest(other, r.cdf).pvalue < 1e-6


def test_known_identities():
    """Kingma & Gao's ELBO weighting is VE; their EDM weighting is EDM's lognormal × (σ² + σ_data²)."""
    t = np.linspace(0, 1, 1001)
    close(make({"family": "kingma_gao", "weighting": "elbo"}).sigma(t), make({"family": "ve"}).sigma(t),
          rtol=1e-10, atol=0)
    weighted = make({"family": "weighted", "base": {"family": "lognormal", "sigma_min": 0.002, "sigma_max": 80},
                     "weight": "sigma**2 + 0.25"})
    close(weighted.sigma(t), make({"family": "kingma_gao", "weighting": "edm"}).sigma(t), rtol=1e-10, atol=0)
    # a constant weight leaves the rationale unchanged (Sec. 3.4)
    close(make({"family": "weighted", "base": {"family": "l2"}, "weight": "3"}).sigma(t),
          make({"family": "l2"}).sigma(t), rtol=1e-10, atol=0)


def test_weighted_base_by_name_is_inlined_on_the_base_domain():
    from ied.config import fill_defaults
    registry = {"l2": fill_defaults("rationale", {"family": "l2", "sigma_min": 0.01, "sigma_max": 50, "label": "L2"}),
                "l2w": fill_defaults("rationale", {"family": "weighted", "base": "l2", "weight": "1 / sigma"})}
    spec = resolve_rationale("l2w", registry["l2w"], registry)
    assert spec["base"] == {"family": "l2", "sigma_min": 0.01, "sigma_max": 50.0, "v_max": 1.0}  # no label
    assert (spec["sigma_min"], spec["sigma_max"]) == (0.01, 50)
    l2w, l2 = build("l2w", spec), build("l2", resolve_rationale("l2", registry["l2"], registry))
    s = np.array([0.1, 1.0, 10.0])
    ratio = l2w.pdf(s) / (l2.pdf(s) / s)
    close(ratio, np.full(3, ratio[0]), rtol=1e-12)


def test_generalized_inverse_skips_zero_density():
    r = make({"family": "expression", "density": "maximum(sigma - 1, 0) * maximum(5 - sigma, 0) + "
                                                 "maximum(sigma - 20, 0) * maximum(30 - sigma, 0)"}, (0.1, 50))
    s = r.sigma(np.linspace(0.001, 0.999, 999))
    assert ((s >= 1) & (s <= 5) | (s >= 20) & (s <= 30)).all()


@pytest.mark.parametrize("spec, key, fragment", [
    ({"family": "nope"}, "family", "unknown family"),
    ({"family": "ve", "sigma_min": 2, "sigma_max": 1}, "sigma_max", "must be > sigma_min"),
    ({"family": "ve", "sigma_min": 0}, "sigma_min", "must be > 0"),
    ({"family": "ve", "sigma_min": -1}, "sigma_min", "must be > 0"),
    ({"family": "ve", "sigma_max": float("nan")}, "sigma_max", "finite number"),
    ({"family": "ve", "sigma_max": "80"}, "sigma_max", "finite number"),
    ({"family": "gaussian"}, "sigma_n", "requires"),
    ({"family": "gaussian", "sigma_n": -5}, "sigma_n", "> 0"),
    ({"family": "edm", "rho": 0}, "rho", "> 0"),
    ({"family": "ve", "rho": 7}, "rho", "unknown key"),
    ({"family": "expression", "density": "-1"}, "density", "negative"),
    ({"family": "expression", "density": "log(sigma - 1)"}, "density", "not finite"),
    ({"family": "expression", "density": "0 * sigma"}, "density", "zero or infinite mass"),
    ({"family": "expression", "density": "sigma * q"}, "density", "unknown name 'q'"),
    ({"family": "expression", "density": "__import__('os')"}, "density", "not allowed"),
    ({"family": "expression", "density": "sigma", "params": [1]}, "params", "mapping"),
    ({"family": "weighted", "base": "missing", "weight": "1"}, "base", "no rationale named"),
    ({"family": "weighted", "base": VE, "weight": "sigma - 1"}, "weight", "negative"),
    ({"family": "kingma_gao", "weighting": "nope"}, "weighting", "unknown weighting"),
    ({"family": "kingma_gao", "weighting": "sigmoid"}, "k", "the sigmoid weighting needs a numeric 'k'"),
    ({"family": "kingma_gao", "weighting": "edm", "sigma_max": 1e-3}, "sigma_max", "must be > sigma_min"),
    ({"family": "ve", "sigma_min": 80.0}, "sigma_max", r"must be > sigma_min \(80.0\), got 80.0"),
    ({"family": "weighted", "base": {"family": "ve", "sigma_min": 0.002, "sigma_max": 80.0}, "weight": "sqrt(sigma - 1)"},
     "weight", "density is not finite everywhere on the domain"),
])
def test_invalid_specs_name_rationale_and_key(spec, key, fragment):
    """build() on specs that bypass the schema (which catches several of these first, see test_config)."""
    with pytest.raises(RationaleError, match=fragment) as info:
        build("myrat", resolve_rationale("myrat", {"sigma_min": 0.002, "sigma_max": 80.0, **spec}, {}))
    assert info.value.rationale.startswith("myrat")
    assert info.value.key == key
    assert "rationale 'myrat'" in str(info.value) and f"key {key!r}" in str(info.value)


def test_a_non_mapping_entry_names_the_rationale():
    from ied.rationales import check_keys
    with pytest.raises(RationaleError, match="the entry must be a mapping, got list") as info:
        check_keys("listy", [1, 2])
    assert (info.value.rationale, info.value.key) == ("listy", "family")


def test_circular_weighted_reference():
    registry = {"a": {"family": "weighted", "base": "b", "weight": "1"},
                "b": {"family": "weighted", "base": "a", "weight": "1"}}
    with pytest.raises(RationaleError, match="circular"):
        resolve_rationale("a", registry["a"], registry)


def test_tabulate_writes_parquet_with_spec(tmp_path):
    import json

    import pyarrow.parquet as pq
    r = rationale({"family": "l2", "v_max": 1.0}, "l2")
    table = tabulate(r, n=101)
    assert table.t[0] == 0 and table.t[-1] == 1 and np.all(np.diff(table.sigma) > 0)
    np.testing.assert_allclose(table.cdf, table.t, atol=1e-9)
    path = tmp_path / "l2.parquet"
    table.to_parquet(path)
    read = pq.read_table(path)
    assert read.column_names == ["t", "sigma", "pdf", "cdf"] and read.num_rows == 101
    assert read.schema.metadata[b"ied.rationale"] == b"l2"
    np.testing.assert_array_equal(read.column("sigma").to_numpy(), table.sigma)
    np.testing.assert_allclose(read.column("pdf").to_numpy(), r.pdf(table.sigma), rtol=1e-15)
    assert json.loads(read.schema.metadata[b"ied.spec"]) == {"family": "l2", "v_max": 1.0, "sigma_min": 0.002,
                                                            "sigma_max": 80.0}
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


# --- errata of the paper, checked numerically (src/ied/README.md) -------------------------------------------
def test_eq43_is_sigma_sqrt_2pi_times_the_squared_l2_distance_of_eq42():
    v = 1.0
    r43 = lambda s: math.sqrt(2) * (1 - math.exp(-v**2 / s**2))  # noqa: E731
    for s in (0.1, 0.7, 2.0, 9.0):
        n = lambda x, mu: math.exp(-0.5 * ((x - mu) / s) ** 2) / (s * math.sqrt(2 * math.pi))  # noqa: E731
        eq42 = integrate.quad(lambda x: (n(x, v) - n(x, -v)) ** 2, -np.inf, np.inf, epsabs=0, epsrel=1e-12)[0]
        assert r43(s) == pytest.approx(s * math.sqrt(2 * math.pi) * eq42, rel=1e-9)
    # the code follows eq. 43 (the paper's experiments), not eq. 42
    l2 = make({"family": "l2", "v_max": v}, (0.002, 80.0))
    assert l2.density(np.array([0.7]))[0] == pytest.approx(r43(0.7), rel=1e-14)


def test_eq62_63_have_flipped_signs_and_the_code_is_increasing():
    lo, hi, rho = 0.002, 80.0, 7.0
    eq62 = lambda s: (s ** (1 / rho) - hi ** (1 / rho)) / (lo ** (1 / rho) - hi ** (1 / rho))  # noqa: E731
    eq63 = lambda s: s ** (1 / rho - 1) / (rho * (lo ** (1 / rho) - hi ** (1 / rho)))  # noqa: E731
    assert eq62(lo) == pytest.approx(1.0) and eq62(hi) == pytest.approx(0.0)  # a decreasing "CDF"
    assert eq63(1.0) < 0  # a negative "PDF"
    edm = make({"family": "edm", "rho": rho}, (lo, hi))
    assert edm.cdf(np.array([lo, hi])).tolist() == pytest.approx([0.0, 1.0])
    assert edm.pdf(np.array([1.0]))[0] == pytest.approx(-eq63(1.0), rel=1e-12)  # |eq. 63| is the density
    assert edm.cdf(np.array([1.0]))[0] == pytest.approx(1 - eq62(1.0), rel=1e-12)  # 1 − eq. 62 is the CDF


def test_eq41_weighting_belongs_outside_the_norm():
    """E_{φ_r}[λ(σ) f(σ)] = (Z_{rλ}/Z_r) E_{φ_{rλ}}[f(σ)] for any f: the weighted rationale (Sec. 3.4) absorbs a
    weight on the loss, λ‖s − ε‖²; eq. 41's ‖λ s − ε‖² is not of that form (with s = 0 it ignores λ)."""
    base = {"family": "l2", "v_max": 1.0, "sigma_min": 0.01, "sigma_max": 50.0}
    weight = "sigma**2 / (sigma**2 + 0.25)"
    r, rw = rationale(base), rationale({"family": "weighted", "base": base, "weight": weight})
    lam = lambda s: s**2 / (s**2 + 0.25)  # noqa: E731
    f = lambda s: np.log1p(s) / (1 + s)  # any per-σ loss  # noqa: E731
    u = np.linspace(math.log(0.01), math.log(50.0), 200001)
    s = np.exp(u)
    lhs = integrate.simpson(r.pdf(s) * lam(s) * f(s) * s, x=u)
    ratio = integrate.simpson(r.pdf(s) * lam(s) * s, x=u)  # Z_{rλ}/Z_r
    assert lhs == pytest.approx(ratio * integrate.simpson(rw.pdf(s) * f(s) * s, x=u), rel=1e-8)


def test_algorithm1_returns_the_noise_level_not_the_density_value():
    """Algorithm 1 returns V_k (a density value); the generalized inverse is the grid's σ_k."""
    r = make({"family": "expression", "density": "exp(-(log(sigma) - 1)**2)"}, (0.01, 100.0))
    t = np.linspace(0.01, 0.99, 50)
    sigma = r.sigma(t)
    assert np.all((sigma >= 0.01) & (sigma <= 100.0))
    np.testing.assert_allclose(r.cdf(sigma), t, atol=1e-9)  # σ_k: Φ(σ_k) = t
    assert not np.allclose(r.density(sigma), sigma)  # V_k = r(σ_k) is something else


def _mp_reference(spec, domain, t):
    """σ(t) of the truncated closed form in 60-digit arithmetic (mpmath), for the upper-tail check."""
    import mpmath as mp
    mp.mp.dps = 60
    a, b, t = mp.mpf(domain[0]), mp.mpf(domain[1]), mp.mpf(float(t))
    family = spec["family"]
    if family == "gaussian":
        c = mp.sqrt(2) * spec["sigma_n"]
        F, F_inv = (lambda s: mp.erf(s / c)), (lambda u: c * mp.erfinv(u))
    elif family == "lognormal":
        m, sd = mp.mpf(-1.2), mp.mpf(1.2)
        F = lambda s: mp.ncdf((mp.log(s) - m) / sd)  # noqa: E731
        F_inv = lambda u: mp.exp(m + sd * mp.sqrt(2) * mp.erfinv(2 * u - 1))  # noqa: E731
    elif family == "ve":
        F, F_inv = mp.log, mp.exp
    elif family == "edm":
        rho = mp.mpf(spec["rho"])
        F, F_inv = (lambda s: s ** (1 / rho)), (lambda u: u**rho)
    else:  # kl
        F, F_inv = (lambda s: -1 / s), (lambda u: -1 / u)
    return float(F_inv(F(a) + t * (F(b) - F(a))))


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("spec", CLOSED, ids=lambda s: "-".join(map(str, s.values())))
def test_upper_tail_of_closed_forms_against_high_precision(spec, domain):
    """σ(t) near t = 1, where 1 − t loses all digits unless the survival function is used, to 1e-9 relative."""
    r = make(spec, domain)
    for t in (1 - 1e-6, 1 - 1e-9, 1 - 1e-12, 1e-9, 1e-12):
        expected = _mp_reference(spec, domain, t)
        assert r.sigma(np.array([t]))[0] == pytest.approx(expected, rel=1e-9, abs=0), t


def test_unnormalised_rationales_are_the_papers():
    """r(σ) itself (not only the normalised φ): eq. 14, 43, 47, 51 and 61's σ^{1/ρ−1}, EDM's log-normal."""
    s = np.array([0.05, 0.7, 3.0])
    domain = (0.002, 80.0)
    np.testing.assert_allclose(make({"family": "ve"}, domain).density(s), 1 / s, rtol=1e-15)
    np.testing.assert_allclose(make({"family": "l2", "v_max": 1.5}, domain).density(s),
                               math.sqrt(2) * (1 - np.exp(-1.5**2 / s**2)), rtol=1e-14)
    np.testing.assert_allclose(make({"family": "gaussian", "sigma_n": 5}, domain).density(s),
                               np.exp(-0.5 * s**2 / 25), rtol=1e-15)
    np.testing.assert_allclose(make({"family": "kl", "v_max": 1.5}, domain).density(s), 2 * 1.5**2 / s**2,
                               rtol=1e-15)
    np.testing.assert_allclose(make({"family": "edm", "rho": 7}, domain).density(s), s ** (1 / 7 - 1), rtol=1e-15)
    np.testing.assert_allclose(make({"family": "lognormal"}, domain).density(s),
                               stats.lognorm(s=1.2, scale=math.exp(-1.2)).pdf(s), rtol=1e-12)


@pytest.mark.parametrize("spec, key, fragment", [
    ({"family": "edm", "rho": 0.001}, "rho", "not finite at t"),
    ({"family": "gaussian", "sigma_n": 1e-4, "sigma_max": 15.0}, "sigma_n", "decreases between t"),
    ({"family": "lognormal", "p_mean": 100.0, "p_std": 1.2}, "p_mean", "density is not finite and non-negative"),
    ({"family": "ve", "sigma_max": 1e300}, "sigma_max", "too large: the denoiser squares σ in float32"),
    ({"family": "ve", "sigma_max": 1.9e19}, "sigma_max", "σ_max < 1.84e+19"),
])
def test_numerical_checks_name_the_rationale_and_key(spec, key, fragment):
    from ied.rationales import check_numerics
    full = {"sigma_min": 0.002, "sigma_max": 80.0, **spec}
    with pytest.raises(RationaleError, match=re.escape(fragment)) as info:
        check_numerics(build("myrat", full))
    assert info.value.rationale == "myrat" and info.value.key == key
    assert f"rationale 'myrat': key '{key}'" in str(info.value)


def test_numerical_checks_pass_every_configured_family_and_catch_bad_ends():
    from ied.rationales import check_numerics
    for spec in ALL:
        check_numerics(make(spec))  # every family on EDM's domain passes
    r = make({"family": "ve"})
    r.sigma = lambda t: np.minimum(0.002 * 40000 ** np.asarray(t), 79.0)  # increasing, but never reaches σ_max
    with pytest.raises(RationaleError, match=r"σ\(1\) = 79; expected σ_min = 0.002, σ_max = 80") as info:
        check_numerics(r)
    assert info.value.key == "family"  # VE has no parameter to blame
    r = make({"family": "ve"})
    r.pdf = lambda s: np.full(np.shape(s), 1e-3)  # a density that does not integrate to 1
    with pytest.raises(RationaleError, match="integrates to 0.0") as info:
        check_numerics(r)
    r.pdf = lambda s: np.full(np.shape(s), -1.0)
    with pytest.raises(RationaleError, match="not finite and non-negative"):
        check_numerics(r)


# The key a failed numerical check blames: the parameter that shapes each family's density.
BLAMED = {"ve": "family", "edm": "rho", "kl": "v_max", "gaussian": "sigma_n", "lognormal": "p_mean", "l2": "v_max",
          "expression": "density", "weighted": "weight", "kingma_gao": "weighting"}


@pytest.mark.parametrize("spec", ALL, ids=lambda s: "-".join(str(v) for v in s.values() if not isinstance(v, dict)))
def test_numerical_checks_blame_each_familys_parameter(spec):
    from ied.rationales import check_numerics
    r = make(spec)
    good = r.sigma
    r.sigma = lambda t: np.where(np.asarray(t) == 0.5, np.nan, good(t))  # t = 0.5 is on the check's grid
    with pytest.raises(RationaleError, match=r"not finite at t = 0\.5 ") as info:
        check_numerics(r)
    assert info.value.key == BLAMED[spec["family"]]


@pytest.mark.parametrize("t_bad", [1e-12, 1e-9, 1e-6, 1 - 1e-6, 1 - 1e-9, 1 - 1e-12])
def test_numerical_checks_reach_both_tails(t_bad):
    from ied.rationales import check_numerics
    r = make({"family": "ve"})
    good = r.sigma
    r.sigma = lambda t: np.where(np.asarray(t) == t_bad, np.inf, good(t))
    with pytest.raises(RationaleError, match=re.escape(f"not finite at t = {t_bad:.6g} ")):
        check_numerics(r)


def test_numerical_checks_name_where_and_how_a_schedule_fails():
    from ied.rationales import FLOAT32_SIGMA_MAX, check_numerics
    r = make({"family": "ve"})
    good = r.sigma
    r.sigma = lambda t: good(t) * np.where(np.asarray(t) == 0.5, 0.5, 1.0)
    with pytest.raises(RationaleError, match=re.escape("decreases between t = 0.49999 and 0.5:")):
        check_numerics(r)
    r.sigma = lambda t: np.maximum(good(t), 0.003)  # non-decreasing, but σ(0) is not σ_min
    with pytest.raises(RationaleError, match=re.escape("σ(0) = 0.003, σ(1) = 80; expected σ_min = 0.002")):
        check_numerics(r)
    r = make({"family": "ve"})
    r.pdf = lambda s: 0.4 / (np.asarray(s) * math.log(80.0 / 0.002))  # integrates to 0.4
    with pytest.raises(RationaleError, match=r"integrates to 0\.4 on \[0\.002, 80\], not 1") as info:
        check_numerics(r)
    assert info.value.key == "family"
    with pytest.raises(RationaleError, match="too large"):  # σ_max² must stay below float32's largest value
        check_numerics(build("edge", {"family": "ve", "sigma_min": 0.002, "sigma_max": FLOAT32_SIGMA_MAX}))
    check_numerics(build("edge", {"family": "ve", "sigma_min": 0.002, "sigma_max": FLOAT32_SIGMA_MAX * (1 - 1e-15)}))


def test_closed_forms_keep_their_names_and_parameters():
    for spec, attrs in [({"family": "kl", "v_max": 2.0}, {"v_max": 2.0}),
                        ({"family": "gaussian", "sigma_n": 3.0}, {"sigma_n": 3.0}),
                        ({"family": "lognormal", "p_mean": -1.0, "p_std": 1.5}, {"p_mean": -1.0, "p_std": 1.5}),
                        ({"family": "edm", "rho": 5.0}, {"rho": 5.0})]:
        r = build("named", {"sigma_min": 0.01, "sigma_max": 50.0, **spec})
        assert r.name == "named" and repr(r).startswith(f"{type(r).__name__}('named', [0.01, 50])")
        assert all(getattr(r, k) == v for k, v in attrs.items())
