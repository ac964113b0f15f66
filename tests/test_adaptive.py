"""The adaptive training rationale (ied.adaptive): its density, floor, importance weights and state."""
import math

import numpy as np
import pytest

from ied import adaptive
from ied.adaptive import FLOOR, AdaptiveError, AdaptiveSchedule
from ied.rationales import Binned, RationaleError, check_numerics, log_bins
from ied.specs import rationale, resolve_rationale

from conftest import L2


def spec(bins=20, ema=0.9, target=None):
    return {"family": "adaptive", "target": dict(target or L2), "bins": bins, "ema": ema,
            "sigma_min": (target or L2)["sigma_min"], "sigma_max": (target or L2)["sigma_max"]}


def seen_everywhere(schedule, loss_of_sigma):
    """Feed one example at each bin's mid, with the given loss."""
    mid = np.sqrt(schedule.edges[:-1] * schedule.edges[1:])
    schedule.update(loss_of_sigma(mid), np.ones(len(mid)), step=0)


def test_starts_from_the_target_with_the_floor_until_every_bin_is_seen():
    s = AdaptiveSchedule(spec())
    m = s.mass / s.mass.sum()
    np.testing.assert_allclose(s.probabilities(), (1 - FLOOR) * m + FLOOR / len(m))
    counts = np.ones(len(m))
    counts[3] = 0  # one bin not yet seen: still the target's
    s.update(np.arange(len(m), dtype=float) * counts, counts, step=0)
    np.testing.assert_allclose(s.probabilities(), (1 - FLOOR) * m + FLOOR / len(m))
    seen_everywhere(s, lambda sigma: np.ones_like(sigma))
    assert not np.allclose(s.probabilities(), (1 - FLOOR) * m + FLOOR / len(m))


def test_density_is_target_times_the_loss_ema_with_the_floor():
    s = AdaptiveSchedule(spec(ema=0.5))
    seen_everywhere(s, lambda sigma: 1.0 / sigma)  # first sight sets the EMA
    seen_everywhere(s, lambda sigma: 3.0 / sigma)  # then L̄ ← ½ L̄ + ½ L
    mid = np.sqrt(s.edges[:-1] * s.edges[1:])
    np.testing.assert_allclose(s.loss, 2.0 / mid)
    q = s.mass * s.loss
    expected = (1 - FLOOR) * q / q.sum() + FLOOR / len(q)
    np.testing.assert_allclose(s.probabilities(), expected)
    # the floor: every bin keeps FLOOR/bins of the examples, however small its loss
    seen_everywhere(s, lambda sigma: np.where(sigma < 1, 1e-30, 1.0))
    assert s.probabilities().min() >= FLOOR / len(q) * (1 - 1e-12)
    # p(σ) = π_b φ_T(σ)/m_b inside bin b
    p = s.rationale()
    sigma = np.geomspace(L2["sigma_min"], L2["sigma_max"], 1000)[1:-1]
    b = np.searchsorted(s.edges, sigma, side="right") - 1
    np.testing.assert_allclose(p.pdf(sigma), p.probabilities[b] / s.mass[b] * s.target.pdf(sigma), rtol=1e-12)


def test_ema_and_floor_against_a_brute_force_loop_with_empty_bins_and_a_decay_of_0_7():
    """K&G's EMA L̄ ← d·L̄ + (1 − d)·L per bin hit (the first hit sets it), bins not hit unchanged; the floor spread
    over the bins holding target mass only, π_b = 0.95·m_b L̄_b/Σ + 0.05/B′. Written out bin by bin."""
    target = {"family": "gaussian", "sigma_n": 1.0, "sigma_min": 0.002, "sigma_max": 80.0}
    s = AdaptiveSchedule(spec(bins=40, ema=0.7, target=target))
    live = [b for b in range(40) if s.mass[b] > 0]
    assert 0 < len(live) < 40  # bins above σ ≈ 38 hold no mass of N(0, 1²)
    rng = np.random.default_rng(3)
    ema, seen = {}, {}
    for step in range(6):
        counts = np.where(rng.random(40) < 0.7, rng.integers(1, 5, 40), 0) * (s.mass > 0)
        if step == 2:
            counts[live] = np.maximum(counts[live], 1)  # every bin with mass seen from here on
        sums = counts * rng.uniform(0.5, 2.0, 40)
        s.update(sums, counts, step)
        for b in range(40):
            if counts[b]:
                mean = sums[b] / counts[b]
                ema[b] = mean if b not in ema else 0.7 * ema[b] + 0.3 * mean
                seen[b] = seen.get(b, 0) + int(counts[b])
    for b in range(40):
        assert s.count[b] == seen.get(b, 0)
        if b in ema:
            assert s.loss[b] == pytest.approx(ema[b], rel=1e-12)
    q = {b: s.mass[b] * ema[b] for b in live}
    expected = [0.95 * q[b] / sum(q.values()) + 0.05 / len(live) if b in q else 0.0 for b in range(40)]
    np.testing.assert_allclose(s.probabilities(), expected, rtol=1e-12, atol=0)


def test_importance_weighted_loss_is_an_unbiased_estimate_of_the_target_objective():
    """E_p[(φ_T/p)(σ)·L(σ)] = E_T[L(σ)], by Monte Carlo against quadrature, with a density far from the target."""
    s = AdaptiveSchedule(spec(bins=30))
    loss = lambda sigma: 1.0 / (1.0 + sigma) + 0.1 * np.sin(sigma)  # noqa: E731
    seen_everywhere(s, lambda sigma: 1.0 / sigma**0.5)
    rng = np.random.default_rng(0)
    sigma, weight, _ = s.draw(rng.random(400_000))
    estimate = weight * loss(sigma)
    grid = np.geomspace(L2["sigma_min"], L2["sigma_max"], 200_001)
    f = s.target.pdf(grid) * loss(grid) * grid  # ∫ φ_T L dσ in ln σ
    exact = float(np.sum(0.5 * (f[1:] + f[:-1]) * np.diff(np.log(grid))))
    se = estimate.std() / math.sqrt(len(estimate))
    assert abs(estimate.mean() - exact) < 4 * se, (estimate.mean(), exact, se)
    assert not np.allclose(weight, 1.0)  # the draw is not the target's
    assert weight.max() <= s.mass.max() * len(s.mass) / FLOOR


@pytest.mark.parametrize("sigma_n, sigma_max, bins", [(1, 80, 100), (1, 80, 1000), (0.05, 80, 100), (5, 80, 100)])
def test_every_weight_is_finite_where_most_bins_hold_no_target_mass(sigma_n, sigma_max, bins):
    """A σ rounded onto its bin's upper edge is weighted by the bin it was drawn in, not by the next one (whose
    target mass may be 0, the weight 0/0): 10⁶ draws, before and after the density has moved."""
    target = {"family": "gaussian", "sigma_n": sigma_n, "sigma_min": 0.002, "sigma_max": sigma_max}
    s = AdaptiveSchedule(spec(bins=bins, target=target))
    t = np.random.default_rng(0).random(1_000_000)
    for _ in range(2):
        sigma, weight, drawn = s.draw(t)
        assert np.isfinite(weight).all() and (weight > 0).all()
        assert s.mass[drawn].min() > 0 and s.rationale().probabilities[drawn].min() > 0
        assert ((sigma >= s.edges[drawn]) & (sigma <= s.edges[drawn + 1])).all()
        np.testing.assert_array_equal(weight, s.mass[drawn] / s.rationale().probabilities[drawn])
        s.update(np.bincount(drawn, weights=1 / sigma, minlength=bins), np.bincount(drawn, minlength=bins), step=0)


def test_a_non_finite_weight_is_named_as_the_weight():
    s = AdaptiveSchedule(spec(bins=10))
    p = s.rationale()
    p.mass = p.mass.copy()
    p.mass[3] = math.nan  # what a damaged target would give
    t = (p._cum[3] + p._cum[4]) / 2
    with pytest.raises(AdaptiveError, match=r"non-finite importance weight .* bin 3"):
        s.draw(np.array([0.5, t]))


def test_draws_follow_the_density_and_its_inverse_is_monotone():
    s = AdaptiveSchedule(spec(bins=10))
    seen_everywhere(s, lambda sigma: sigma**0.3)
    p = s.rationale()
    check_numerics(p)
    t = np.linspace(0, 1, 10001)
    np.testing.assert_allclose(p.cdf(p.sigma(t)), t, atol=1e-9)
    sigma = p.sigma(np.random.default_rng(1).random(200_000))
    counts = np.histogram(sigma, s.edges)[0] / len(sigma)
    np.testing.assert_allclose(counts, p.probabilities, atol=4e-3)


def test_state_round_trips_and_a_nan_loss_names_its_step():
    s = AdaptiveSchedule(spec())
    seen_everywhere(s, lambda sigma: sigma)
    other = AdaptiveSchedule(spec())
    other.load_state_dict(s.state_dict())
    np.testing.assert_array_equal(other.probabilities(), s.probabilities())
    with pytest.raises(AdaptiveError, match="another adaptive spec"):
        AdaptiveSchedule(spec(ema=0.5)).load_state_dict(s.state_dict())
    sums = np.zeros(20)
    sums[4] = math.nan
    with pytest.raises(AdaptiveError, match="step 8"):
        s.update(sums, np.ones(20), step=7)


def test_density_table_and_the_learned_rationale(tmp_path):
    s = AdaptiveSchedule(spec())
    seen_everywhere(s, lambda sigma: 1 + sigma)
    adaptive.write_density(tmp_path / "d.parquet", s, 300)
    got, step, rows = adaptive.read_density(tmp_path / "d.parquet")
    assert (got, step) == (s.spec, 300)
    assert list(rows.columns) == ["step", "sigma_lo", "sigma_hi", "sigma", "pdf", "probability", "target_mass",
                                  "loss", "count"]
    learned = adaptive.learned_rationale("learned", got, rows)
    t = np.linspace(0, 1, 101)
    np.testing.assert_array_equal(learned.sigma(t), s.rationale().sigma(t))
    rows.to_parquet(tmp_path / "plain.parquet")  # the rows without the spec
    with pytest.raises(AdaptiveError, match="not an adaptive"):
        adaptive.read_density(tmp_path / "plain.parquet")


def test_binned_refuses_probability_where_the_target_has_none():
    target = rationale({"family": "ve", "sigma_min": 0.01, "sigma_max": 10})
    edges = log_bins(0.01, 10, 3)
    with pytest.raises(RationaleError, match="bins"):
        Binned("b", target, edges, [1.0, -1.0, 1.0])
    b = Binned("b", target, edges, [1.0, 0.0, 1.0])  # an empty bin holds no draw
    sigma = b.sigma(np.linspace(0, 1, 1001)[1:-1])
    assert not ((sigma > edges[1]) & (sigma < edges[2])).any()


@pytest.mark.parametrize("entry, key", [
    ({"family": "adaptive", "target": "nothing"}, "target"),
    ({"family": "adaptive", "target": "ad"}, "target"),
    ({"family": "adaptive", "target": "l2", "bins": 1}, "bins"),
    ({"family": "adaptive", "target": "l2", "ema": 1.0}, "ema"),
    ({"family": "adaptive", "target": "l2", "sigma_min": 0.1}, "sigma_min"),
    ({"family": "learned", "model": "l2"}, "model"),
])
def test_resolving_refuses_bad_adaptive_and_learned_entries(entry, key):
    registry = {"l2": {"family": "l2", "v_max": 1.0, "sigma_min": 0.002, "sigma_max": 80},
                "ad": {"family": "adaptive", "target": "l2", "bins": 100, "ema": 0.99}}
    entry = {"bins": 100, "ema": 0.99, **entry} if entry["family"] == "adaptive" else {"step": 300, **entry}
    with pytest.raises(RationaleError, match=f"key '{key}'"):
        resolve_rationale("x", entry, {**registry, "x": entry})


def test_an_adaptive_spec_inlines_its_target_and_a_learned_one_its_model():
    registry = {"l2": {"family": "l2", "v_max": 1.0, "sigma_min": 0.002, "sigma_max": 80, "label": "L2"},
                "ad": {"family": "adaptive", "target": "l2", "bins": 100, "ema": 0.99},
                "lr": {"family": "learned", "model": "ad", "step": 300}}
    ad = resolve_rationale("ad", registry["ad"], registry)
    assert ad == {"family": "adaptive", "target": {"family": "l2", "v_max": 1.0, "sigma_min": 0.002,
                                                   "sigma_max": 80}, "bins": 100, "ema": 0.99,
                  "sigma_min": 0.002, "sigma_max": 80}
    assert resolve_rationale("lr", registry["lr"], registry)["adaptive"] == ad


def test_a_learned_rationale_is_the_density_at_its_checkpoint_and_sampling_reads_its_table(tmp_path):
    """learn-rationale turns a segment's density table into a schedule table; generate builds the same density from
    it, refuses it for another spec and names the missing table."""
    from ied.cli import main
    from ied.rationales import RationaleError
    from ied.specs import sampling_rationale as _schedule
    import json
    s = AdaptiveSchedule(spec())
    seen_everywhere(s, lambda sigma: 1 + np.sqrt(sigma))
    adaptive.write_density(tmp_path / "density.parquet", s, 300)
    learned = {"family": "learned", "model": "ad", "step": 300, "adaptive": s.spec,
               "sigma_min": s.spec["sigma_min"], "sigma_max": s.spec["sigma_max"]}
    assert main(["learn-rationale", "--density", str(tmp_path / "density.parquet"), "--spec", json.dumps(learned),
                 "--name", "lr", "--out", str(tmp_path / "lr.parquet")]) == 0
    rationale, identity = _schedule(learned, tmp_path / "lr.parquet")
    t = np.linspace(0, 1, 1001)
    np.testing.assert_array_equal(rationale.sigma(t), s.rationale().sigma(t))
    assert set(identity) == {"rationale_table_sha256"}
    with pytest.raises(AdaptiveError, match="another spec"):
        adaptive.load_learned(tmp_path / "lr.parquet", {**learned, "step": 600})
    with pytest.raises(AdaptiveError, match="another adaptive spec or step"):
        adaptive.save_learned(tmp_path / "density.parquet", {**learned, "step": 600}, "lr", tmp_path / "x.parquet")
    with pytest.raises(RationaleError, match="learned sampling rationale needs its table"):
        _schedule(learned, None)


def _density_table(tmp_path, s, rows_edit=None, name="density.parquet"):
    """A density table of `s` at step 300, its rows edited (as a tampered or damaged file would hold them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    adaptive.write_density(tmp_path / name, s, 300)
    if rows_edit is not None:
        table = pq.read_table(tmp_path / name)
        rows = table.to_pandas()
        rows_edit(rows)
        pq.write_table(pa.Table.from_pandas(rows, preserve_index=False).replace_schema_metadata(table.schema.metadata),
                       tmp_path / name)
    return tmp_path / name


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.__setitem__("probability", 0.0), "not a density .*all 0"),
    (lambda r: r.loc.__setitem__((len(r) - 1, "sigma_hi"), 500.0), r"span \[0.002, 500\], not the spec's domain"),
    (lambda r: r.loc.__setitem__((0, "sigma_lo"), 1e-6), r"span \[1e-06, 80\], not the spec's domain"),
    (lambda r: r.loc.__setitem__((3, "sigma_lo"), r.loc[3, "sigma_lo"] * 1.5), "not the 20 bins"),
    (lambda r: r.loc.__setitem__((3, "sigma_hi"), r.loc[3, "sigma_hi"] * 1.5), "not the 20 bins"),
    (lambda r: r.__setitem__("probability", math.nan), "not a density"),
])
def test_learn_rationale_refuses_a_density_that_is_not_its_spec_s(tmp_path, capsys, edit, message):
    """The density table's rows are read as data: its bins must be the spec's, its probabilities a density; one line
    naming the file and the job that rewrites it, nothing written."""
    import json
    from ied.cli import main
    s = AdaptiveSchedule(spec())
    seen_everywhere(s, lambda sigma: 1 + sigma)
    density = _density_table(tmp_path, s, edit)
    learned = {"family": "learned", "model": "ad", "step": 300, "adaptive": s.spec,
               "sigma_min": s.spec["sigma_min"], "sigma_max": s.spec["sigma_max"]}
    with pytest.raises(AdaptiveError, match=f"density.parquet: .*{message}.*train_adaptive_segment"):
        adaptive.save_learned(density, learned, "lr", tmp_path / "lr.parquet")
    assert main(["learn-rationale", "--density", str(density), "--spec", json.dumps(learned), "--name", "lr",
                 "--out", str(tmp_path / "lr.parquet")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "density.parquet" in err[0], err
    assert not (tmp_path / "lr.parquet").exists()


def test_a_learned_table_whose_bins_leave_the_spec_s_domain_is_refused(tmp_path):
    import json
    import pyarrow.parquet as pq
    s = AdaptiveSchedule(spec())
    seen_everywhere(s, lambda sigma: 1 + sigma)
    learned = {"family": "learned", "model": "ad", "step": 300, "adaptive": s.spec,
               "sigma_min": s.spec["sigma_min"], "sigma_max": s.spec["sigma_max"]}
    adaptive.save_learned(_density_table(tmp_path, s), learned, "lr", tmp_path / "lr.parquet")
    table = pq.read_table(tmp_path / "lr.parquet")
    meta = dict(table.schema.metadata)
    bins = json.loads(meta[b"ied.bins"])
    bins["edges"][-1] = 500.0
    meta[b"ied.bins"] = json.dumps(bins).encode()
    pq.write_table(table.replace_schema_metadata(meta), tmp_path / "lr.parquet")
    with pytest.raises(AdaptiveError, match=r"lr.parquet: its levels span \[0.002, 500\].*learned_rationale"):
        adaptive.load_learned(tmp_path / "lr.parquet", learned)
