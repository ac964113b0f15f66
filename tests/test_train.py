import json
import math

import numpy as np
import pytest
import torch

from ied.checkpoints import CheckpointError, CorruptCheckpointError, load as load_checkpoint, load_ema_denoiser
from ied.data import load_imageset, to_model_range
from ied.specs import identity_hash
from ied.train import TrainingError, train

from conftest import sampling_spec, tiny_spec


def run(cfg, digits, tmp_path, start, end, name, log_every=10):
    out = tmp_path / f"{name}-{end}.pt"
    train(cfg, start, end, data_path=digits / "train.npz",
          checkpoint_in=(tmp_path / f"{name}-{start}.pt") if start else None,
          checkpoint_out=out, log_path=tmp_path / f"{name}.jsonl", log_every=log_every)
    return torch.load(out, weights_only=True)


def assert_identical(a, b):
    for key in ("ema", "net"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert a["data_position"] == b["data_position"]
    for i, state in a["optimizer"]["state"].items():
        assert all(torch.equal(v, b["optimizer"]["state"][i][k]) for k, v in state.items()), i


def test_loss_table_is_the_logged_loss_per_sigma_bin(digits, tmp_path):
    """The segment's loss table (ied.layout.LOSS) bins every example of each log interval by σ."""
    import pandas as pd
    train(tiny_spec(), 0, 6, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c.pt",
          log_path=tmp_path / "log.jsonl", loss_table=tmp_path / "loss.parquet", log_every=3)
    table = pd.read_parquet(tmp_path / "loss.parquet")
    logged = {line["step"]: line["loss"] for line in map(json.loads, open(tmp_path / "log.jsonl")) if "loss" in line}
    assert sorted(set(table["step"])) == sorted(logged) == [3, 6]
    for step, rows in table.groupby("step"):
        assert rows["count"].sum() == 3 * 32  # every example of the interval's three steps of 32
        assert (rows["sigma_lo"] < rows["sigma_hi"]).all() and (rows["count"] > 0).all()
        assert (rows["loss"] * rows["count"]).sum() / rows["count"].sum() == pytest.approx(logged[step], rel=1e-9)


def test_resume_is_exact_short(digits, tmp_path):
    cfg = tiny_spec()
    whole = run(cfg, digits, tmp_path, 0, 24, "one")
    run(cfg, digits, tmp_path, 0, 10, "two")
    assert_identical(whole, run(cfg, digits, tmp_path, 10, 24, "two"))
    run(cfg, digits, tmp_path, 0, 1, "three")  # a segment of one step, resumed
    assert_identical(whole, run(cfg, digits, tmp_path, 1, 24, "three"))
    start = json.loads(open(tmp_path / "two.jsonl").readline())
    assert start == {"event": "start", "step": 0, "end_step": 10, "parameters": 164625,
                     "config_hash": identity_hash(cfg), "device": "cpu", "ranks": 1}
    last = [json.loads(line) for line in open(tmp_path / "two.jsonl")][-1]
    assert last == {"event": "checkpoint", "step": 24, "path": str(tmp_path / "two-24.pt")}
    assert whole["step"] == 24 and whole["data_position"] == 24 * cfg["batch_size"]  # global examples consumed


@pytest.mark.slow
def test_resume_is_exact_2k(digits, tmp_path):
    """0→2k in one segment and 0→1k→2k in two give bit-identical EMA weights (issue 3)."""
    cfg = tiny_spec(batch_size=8)
    whole = run(cfg, digits, tmp_path, 0, 2000, "one", log_every=500)
    run(cfg, digits, tmp_path, 0, 1000, "two", log_every=500)
    assert_identical(whole, run(cfg, digits, tmp_path, 1000, 2000, "two", log_every=333))


def test_checkpoint_guards(digits, tmp_path):
    cfg = tiny_spec()
    run(cfg, digits, tmp_path, 0, 5, "a")
    other = tiny_spec(lr=1e-3)
    with pytest.raises(CheckpointError, match="different training config"):
        train(other, 5, 6, data_path=digits / "train.npz", checkpoint_in=tmp_path / "a-5.pt",
              checkpoint_out=tmp_path / "b.pt")
    train(other, 5, 6, data_path=digits / "train.npz", checkpoint_in=tmp_path / "a-5.pt",
          checkpoint_out=tmp_path / "b.pt", allow_config_change=True)
    with pytest.raises(CheckpointError, match="holds step 5, expected 4"):
        train(cfg, 4, 6, data_path=digits / "train.npz", checkpoint_in=tmp_path / "a-5.pt",
              checkpoint_out=tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()
    raw = (tmp_path / "a-5.pt").read_bytes()
    (tmp_path / "bad.pt").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(CheckpointError, match="bad.pt: unreadable or truncated"):
        load_checkpoint(tmp_path / "bad.pt")
    assert torch.load(tmp_path / "a-5.pt", weights_only=True)["config_hash"] == identity_hash(cfg)


def test_silent_corruption_is_caught_by_the_checksum_and_the_cli_moves_the_file_aside(digits, tmp_path, capsys):
    from ied.cli import main

    run(tiny_spec(), digits, tmp_path, 0, 3, "a")
    state = torch.load(tmp_path / "a-3.pt", weights_only=True)
    first = next(iter(state["ema"]))
    state["ema"][first].view(-1)[0] += 1e-3  # a valid file whose weights changed: only the checksum sees it
    torch.save(state, tmp_path / "flipped.pt")
    with pytest.raises(CorruptCheckpointError, match="flipped.pt: checksum mismatch"):
        load_checkpoint(tmp_path / "flipped.pt")

    spec = json.dumps(sampling_spec(sampler="euler", steps=2))
    rc = main(["generate", "--checkpoint", str(tmp_path / "flipped.pt"), "--spec", spec, "--n-samples", "2",
               "--out", str(tmp_path / "s.npz")])
    assert rc == 1 and not (tmp_path / "flipped.pt").exists() and (tmp_path / "flipped.pt.corrupt").exists()
    assert "flipped.pt: checksum mismatch" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


@pytest.mark.slow
def test_short_training_learns_to_denoise(digits, tmp_path):
    cfg = tiny_spec(batch_size=64, network={**tiny_spec()["network"], "dropout": 0.0})
    run(cfg, digits, tmp_path, 0, 600, "learn", log_every=100)
    logs = [json.loads(line) for line in open(tmp_path / "learn.jsonl") if '"loss"' in line]
    assert logs[-1]["loss"] < 0.6 * logs[0]["loss"]
    assert {"images_per_s", "lr", "loss_by_sigma"} <= set(logs[-1])
    test = load_imageset(digits / "test.npz")
    y = to_model_range(torch.from_numpy(test.images))
    labels = torch.from_numpy(test.labels)
    trained, _ = load_ema_denoiser(tmp_path / "learn-600.pt")
    untrained, _ = load_ema_denoiser(tmp_path / "learn-600.pt")
    untrained.load_state_dict(run(cfg, digits, tmp_path, 0, 1, "init")["ema"])
    gen = torch.Generator().manual_seed(0)
    for sigma in (0.2, 0.5, 1.0):
        noisy = y + sigma * torch.randn(y.shape, generator=gen)
        s = torch.full((len(y),), sigma)
        with torch.no_grad():
            err_trained = (trained(noisy, s, labels) - y).square().mean().item()
            err_untrained = (untrained(noisy, s, labels) - y).square().mean().item()
        print(f"sigma={sigma}: MSE trained {err_trained:.4f}, untrained {err_untrained:.4f}")
        assert err_trained < 0.7 * err_untrained


def test_non_finite_loss_stops_training_without_a_checkpoint(digits, tmp_path):
    """A weighting that is NaN on part of the domain (the config check refuses it; this is the job's own guard)."""
    from ied.train import TrainingError
    cfg = tiny_spec(weighting="log(sigma - 1)")
    with pytest.raises(TrainingError, match=r"non-finite loss or gradient at step 1;"):
        train(cfg, 0, 5, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c.pt",
              log_every=100)
    assert not (tmp_path / "c.pt").exists()


def test_ema_follows_its_definition(digits, tmp_path):
    """After each step ema = d·ema + (1 − d)·net, starting from the initial weights (d = 0.9, three steps)."""
    from ied.networks import build_denoiser
    cfg = tiny_spec(ema=0.9, lr=1e-2)
    torch.manual_seed(cfg["seed"])  # the initial weights, as train() draws them
    expected = build_denoiser(cfg["network"], 8, 1, 10).state_dict()
    for step in (1, 2, 3):
        state = run(cfg, digits, tmp_path, step - 1, step, "e")
        assert not torch.equal(state["net"]["net.conv_out.weight"], state["ema"]["net.conv_out.weight"])  # it trains
        expected = {k: 0.9 * expected[k] + 0.1 * state["net"][k] for k in expected}
        for name in expected:
            torch.testing.assert_close(state["ema"][name], expected[name], rtol=1e-5, atol=1e-7)


# --- data-parallel training (ied.distributed), two gloo ranks on the CPU ----------------------------------
DDP_TOLERANCE = 1e-6  # measured 3.7e-9 (2 threads), 6.6e-11 (1): max |Δ| of the EMA after 6 steps, 2 ranks vs 1


def torchrun(spec, digits, tmp_path, start, end, name, ranks=2):
    import subprocess
    import sys
    from conftest import VENV_ENV
    out = tmp_path / f"{name}-{end}.pt"
    resume = ["--resume", str(tmp_path / f"{name}-{start}.pt")] if start else []
    result = subprocess.run([sys.executable, "-m", "ied", "train", "--gpus", str(ranks),  # torchrun (ied.distributed)
                             "--spec", json.dumps(spec), "--data", str(digits / "train.npz"), "--from-step", str(start),
                             "--to-step", str(end), *resume, "--out", str(out), "--device", "cpu", "--log-every", "2"],
                            env={**VENV_ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out, weights_only=True)


def max_difference(a, b, key="ema"):
    return max((a[key][k] - b[key][k]).abs().max().item() for k in a[key])


@pytest.mark.slow
def test_two_ranks_match_one_rank_and_resume_with_another_world_size(digits, tmp_path):
    """The global batch split over 2 gloo ranks takes the same steps as one process (dropout 0: dropout masks are
    drawn per rank), up to the order of floating-point reductions; a 2-rank checkpoint resumes on 1 rank."""
    spec = tiny_spec(batch_size=16, network={**tiny_spec()["network"], "dropout": 0.0})
    one = run(spec, digits, tmp_path, 0, 6, "one", log_every=2)
    two = torchrun(spec, digits, tmp_path, 0, 6, "two")
    print(f"max |EMA(2 ranks) − EMA(1 rank)| = {max_difference(one, two):.2e}")
    assert max_difference(one, two) < DDP_TOLERANCE
    other_seed = run({**spec, "seed": 1}, digits, tmp_path, 0, 6, "seed")
    assert max_difference(one, other_seed, "net") > 1e3 * DDP_TOLERANCE  # the tolerance is far below a real change
    torchrun(spec, digits, tmp_path, 0, 3, "mixed")  # 2 ranks, then resumed on 1
    mixed = run(spec, digits, tmp_path, 3, 6, "mixed", log_every=3)
    print(f"max |EMA(2 → 1 ranks) − EMA(1 rank)| = {max_difference(one, mixed):.2e}")
    assert max_difference(one, mixed) < DDP_TOLERANCE


def test_plan_splits_each_step_by_rank_and_reduces_statistics():
    """Rank r of W takes rows r·B/W … (r+1)·B/W − 1 of each step: the same indices, σ and ε as one process."""
    from ied.distributed import Context
    from ied.specs import rationale
    from ied.train import Plan, _Stats
    r = rationale({"family": "l2"})
    one = Plan(r, None, 1000, 3, 8, Context(), torch.device("cpu"))
    halves = [Plan(r, lambda s: s**2, 1000, 3, 8, Context(rank, 2), torch.device("cpu")) for rank in (0, 1)]
    whole = one.host(range(5, 7))
    parts = [p.host(range(5, 7)) for p in halves]
    for key in ("index", "position", "sigma"):
        joined = torch.cat([torch.cat([parts[0][key][k * 4:(k + 1) * 4], parts[1][key][k * 4:(k + 1) * 4]])
                            for k in range(2)])
        assert torch.equal(joined, whole[key]), key
    assert whole["position"].tolist() == list(range(40, 56))  # steps 5 and 6 of batch 8
    torch.testing.assert_close(parts[1]["weight"], parts[1]["sigma"] ** 2)
    eps = one.epsilon(whole["position"], (16, 1, 2, 2))
    assert torch.equal(halves[1].epsilon(parts[1]["position"][:4], (4, 1, 2, 2)), eps[4:8])

    class Recorder(Context):
        def all_reduce(self, tensor, op="sum"):
            calls.append(op)
            return tensor.mul_(2) if op == "sum" else tensor

    calls = []
    stats = _Stats(torch.device("cpu"))
    stats.add(0, torch.tensor([1.0, 3.0]), torch.tensor([0.01, 50.0], dtype=torch.float64), torch.tensor(1.0))
    stats.reduce(Recorder(0, 2))
    assert calls == ["sum", "sum", "max"]
    line = stats.line(1)
    assert line["loss"] == pytest.approx(2.0)  # summed over 2 ranks, divided by 2
    assert sum(row["count"] for row in stats.rows) == 4 and sorted(line["loss_by_sigma"].values()) == [1.0, 3.0]


def test_data_order_is_a_seeded_permutation_per_epoch():
    from ied.train import DataOrder
    order = DataOrder(10, seed=4)
    first, second = order.indices(0, 10), order.indices(10, 10)
    assert sorted(first) == list(range(10)) and sorted(second) == list(range(10))
    assert not np.array_equal(first, second) and first.dtype == np.int64
    np.testing.assert_array_equal(DataOrder(10, seed=4).indices(7, 6), np.concatenate([first[7:], second[:3]]))
    assert not np.array_equal(DataOrder(10, seed=5).indices(0, 10), first)


def test_loss_statistics_per_sigma_bin_follow_their_definition():
    """Bin [lo, hi) of SIGMA_EDGES holds the σ with lo ≤ σ < hi; a log line gives each bin's mean loss and count,
    the interval's mean loss over its steps, and starts the next interval from zero."""
    from ied.train import SIGMA_EDGES, TrainingError, _Stats
    stats = _Stats(torch.device("cpu"))
    sigma = torch.tensor([5e-4, 1e-3, 0.5, 0.5, 2e3], dtype=torch.float64)
    loss = torch.tensor([1.0, 2.0, 3.0, 5.0, 7.0])
    stats.add(0, loss, sigma, torch.tensor(1.0))
    stats.add(1, 2 * loss, sigma, torch.tensor(1.0))
    line = stats.line(2)
    half = float(SIGMA_EDGES[SIGMA_EDGES <= 0.5].max()), float(SIGMA_EDGES[SIGMA_EDGES > 0.5].min())
    expected = [(0.0, 1e-3, 1.5, 2), (1e-3, float(SIGMA_EDGES[2]), 3.0, 2), (*half, 6.0, 4), (1e3, math.inf, 10.5, 2)]
    assert [(r["step"], r["sigma_lo"], r["sigma_hi"], r["count"]) for r in stats.rows] == [
        (2, lo, hi, n) for lo, hi, _, n in expected]
    assert [r["loss"] for r in stats.rows] == pytest.approx([mean for _, _, mean, _ in expected], rel=1e-12)
    assert line["loss"] == pytest.approx(1.5 * float(loss.mean()), rel=1e-6)
    assert line["loss_by_sigma"] == pytest.approx({f"[{lo:.3g},{hi:.3g})": mean for lo, hi, mean, _ in expected})
    empty = stats.line(3)  # nothing added since the last line
    assert empty["loss"] == 0.0 and empty["loss_by_sigma"] == {} and len(stats.rows) == 4
    stats.check()  # all finite so far
    stats.add(5, loss, sigma, torch.tensor(math.inf))  # a finite loss with a non-finite gradient
    stats.add(6, loss * math.nan, sigma, torch.tensor(1.0))
    with pytest.raises(TrainingError, match="non-finite loss or gradient at step 6;"):  # the first one, 1-based
        stats.check()


def test_grad_clip_bounds_the_first_step(digits, tmp_path):
    """RAdam's first step is un-adapted, θ₁ = θ₀ − lr·ĝ, so with the gradient clipped to norm c the weights move
    by lr·c exactly (‖g‖ ≫ c here); without clipping they move by lr·‖g‖."""
    from ied.train import _model
    moved = {}
    for clip in (None, 1e-3):
        spec = tiny_spec(grad_clip=clip)
        before = _model(spec, (1, 8, 10), torch.device("cpu"), None)[0].state_dict()
        after = run(spec, digits, tmp_path, 0, 1, f"clip{clip}")["net"]
        moved[clip] = math.sqrt(sum(float(((after[k].double() - before[k].double()) ** 2).sum()) for k in before))
    assert moved[1e-3] == pytest.approx(2e-3 * 1e-3, rel=1e-5)
    assert moved[None] > 100 * moved[1e-3]


def test_segment_bounds_and_log_lines(digits, tmp_path):
    common = dict(data_path=digits / "train.npz", checkpoint_out=tmp_path / "c.pt")
    with pytest.raises(ValueError, match=r"need 0 <= start_step < end_step, got 5, 5"):
        train(tiny_spec(), 5, 5, checkpoint_in=None, **common)
    with pytest.raises(CheckpointError, match="resuming at step 10 needs the checkpoint written then"):
        train(tiny_spec(), 10, 12, checkpoint_in=None, **common)
    train(tiny_spec(), 0, 4, checkpoint_in=None, log_path=tmp_path / "log.jsonl", log_every=2, **common)
    lines = [json.loads(line) for line in open(tmp_path / "log.jsonl") if '"loss"' in line]
    assert [line["step"] for line in lines] == [2, 4] and all(line["lr"] == tiny_spec()["lr"] for line in lines)


def test_non_finite_ema_weights_are_never_written(digits, tmp_path):
    """EMA decay NaN: the loss and gradient stay finite, the EMA does not; no checkpoint is written."""
    with pytest.raises(TrainingError, match=r"non-finite EMA weights \('.*'\) at step 2; no checkpoint written"):
        train(tiny_spec(ema=float("nan")), 0, 2, data_path=digits / "train.npz", checkpoint_in=None,
              checkpoint_out=tmp_path / "c.pt")
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.slow
def test_a_failing_rank_s_error_is_the_last_line(digits, tmp_path):
    """torchrun buries a rank's error in its ChildFailedError report; the launcher prints it last, on one line."""
    import subprocess
    import sys

    from conftest import VENV_ENV
    result = subprocess.run([sys.executable, "-m", "ied", "train", "--gpus", "2", "--spec", json.dumps(tiny_spec()),
                             "--data", str(tmp_path / "missing.npz"), "--from-step", "0", "--to-step", "2", "--out",
                             str(tmp_path / "c.pt"), "--device", "cpu"],
                            env={**VENV_ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"error: rank 0: {tmp_path / 'missing.npz'}: prepared dataset not found", result.stderr[-2000:]
    assert not (tmp_path / "c.pt").exists()


@pytest.mark.parametrize("family", [{"family": "l2"}, {"family": "gaussian", "sigma_n": 5, "sigma_max": 15},
                                    {"family": "ve"}])
def test_training_sigma_follows_the_rationale(family):
    """σ of 20,000 training examples against the rationale's CDF Φ (KS test); a uniform σ on the same domain, the
    negative control, is rejected."""
    from scipy import stats

    from ied.distributed import Context
    from ied.specs import rationale
    from ied.train import Plan
    r = rationale(family)
    sigma = Plan(r, None, 1000, 0, 200, Context(), torch.device("cpu")).host(range(100))["sigma"].numpy()
    assert len(sigma) == 20_000 and (sigma >= r.sigma_min).all() and (sigma <= r.sigma_max).all()
    assert stats.kstest(sigma, r.cdf).pvalue > 1e-3
    uniform = np.random.default_rng(0).uniform(r.sigma_min, r.sigma_max, len(sigma))
    assert stats.kstest(uniform, r.cdf).pvalue < 1e-6
    assert len(np.unique(sigma)) == len(sigma)  # 53-bit t: no two examples share a σ


# --- the adaptive training rationale (ied.adaptive) --------------------------------------------------------
def adaptive_spec(**overrides):
    """A tiny training spec whose rationale is adaptive with target L2 (8 bins, so every bin is seen early)."""
    from conftest import L2
    rationale = {"family": "adaptive", "target": dict(L2), "bins": 8, "ema": 0.9, "sigma_min": L2["sigma_min"],
                 "sigma_max": L2["sigma_max"]}
    return tiny_spec(rationale=rationale, **overrides)


def test_adaptive_training_resumes_exactly_and_writes_its_density(digits, tmp_path):
    """0→12→24 equals 0→24 bit for bit, the loss EMAs included; each segment writes the learned density."""
    from ied.adaptive import AdaptiveSchedule, read_density
    cfg = adaptive_spec()
    whole = run(cfg, digits, tmp_path, 0, 24, "one")
    run(cfg, digits, tmp_path, 0, 12, "two")
    train(cfg, 12, 24, data_path=digits / "train.npz", checkpoint_in=tmp_path / "two-12.pt",
          checkpoint_out=tmp_path / "two-24.pt", density_table=tmp_path / "density.parquet", log_every=5)
    resumed = torch.load(tmp_path / "two-24.pt", weights_only=True)
    assert_identical(whole, resumed)
    for key in ("loss", "count"):
        assert torch.equal(whole["adaptive"][key], resumed["adaptive"][key])
    assert int(whole["adaptive"]["count"].sum()) == 24 * 32 and (whole["adaptive"]["count"] > 0).all()
    spec, step, rows = read_density(tmp_path / "density.parquet")
    assert (spec, step) == (cfg["rationale"], 24)
    schedule = AdaptiveSchedule(cfg["rationale"])
    schedule.load_state_dict({k: v.numpy() if hasattr(v, "numpy") else v for k, v in whole["adaptive"].items()})
    np.testing.assert_array_equal(rows["probability"], schedule.rationale().probabilities)
    np.testing.assert_array_equal(rows["count"], whole["adaptive"]["count"].numpy())
    fixed = run(tiny_spec(), digits, tmp_path, 0, 24, "fixed")
    assert max_difference(whole, fixed, "net") > 1e-3  # the adaptive draws are not L2's


def test_adaptive_training_stops_at_a_nan_loss_naming_the_step(digits, tmp_path):
    cfg = adaptive_spec(weighting="log(sigma - 1)")
    with pytest.raises(TrainingError, match=r"non-finite loss at step 1;"):
        train(cfg, 0, 5, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c.pt",
              log_every=100)
    assert not (tmp_path / "c.pt").exists()
    with pytest.raises(TrainingError, match="adaptive training rationale only"):
        train(tiny_spec(), 0, 1, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=tmp_path / "c.pt",
              density_table=tmp_path / "d.parquet")


@pytest.mark.slow
def test_adaptive_two_ranks_match_one_rank(digits, tmp_path):
    """The per-bin loss sums are reduced over the ranks every step: 2 gloo ranks draw the same σ as 1 process."""
    spec = adaptive_spec(batch_size=16, network={**tiny_spec()["network"], "dropout": 0.0})
    one = run(spec, digits, tmp_path, 0, 6, "one", log_every=2)
    two = torchrun(spec, digits, tmp_path, 0, 6, "two")
    print(f"max |EMA(2 ranks) − EMA(1 rank)| = {max_difference(one, two):.2e}")
    assert max_difference(one, two) < DDP_TOLERANCE
    assert torch.equal(one["adaptive"]["count"], two["adaptive"]["count"])
    np.testing.assert_allclose(one["adaptive"]["loss"].numpy(), two["adaptive"]["loss"].numpy(), rtol=1e-6)


def test_adaptive_training_on_a_narrow_target_with_many_bins_finishes(digits, tmp_path):
    """N(0, 1²) on [0.002, 80] in 1000 bins: most bins hold no target mass, and a σ rounded onto the upper edge of
    its bin once took the next bin's weight 0/0. The weight is the bin the draw was made in."""
    gauss = {"family": "gaussian", "sigma_n": 1.0, "sigma_min": 0.002, "sigma_max": 80.0}
    rationale = {"family": "adaptive", "target": gauss, "bins": 1000, "ema": 0.99, "sigma_min": 0.002,
                 "sigma_max": 80.0}
    state = run(tiny_spec(rationale=rationale, batch_size=64), digits, tmp_path, 0, 40, "narrow", log_every=40)
    assert int(state["adaptive"]["count"].sum()) == 40 * 64


@pytest.mark.parametrize("damage, message", [
    (lambda a: a["loss"].__setitem__(3, math.nan), "loss EMA must be finite"),
    (lambda a: a["loss"].__setitem__(3, -0.5), "loss EMA must be finite and ≥ 0"),
    (lambda a: a["count"].__setitem__(0, -1000), "counts must be integers ≥ 0"),
    (lambda a: a.pop("count"), "lacks count"),
    (lambda a: a.pop("spec"), "lacks spec"),
    (lambda a: a.__setitem__("count", torch.zeros(10, 10, dtype=torch.int64)), r"count has shape \(10, 10\)"),
    (lambda a: a.__setitem__("loss", torch.zeros(8, dtype=torch.int64)), "loss EMA must be finite"),
])
def test_a_resaved_checkpoint_with_a_damaged_adaptive_state_is_refused_naming_it(digits, tmp_path, capsys, damage,
                                                                                  message):
    """The checksum proves the file is the one written; a state re-saved through checkpoints.save is still read as
    data: keys, shapes, finiteness and signs, one line naming the checkpoint."""
    from ied import checkpoints
    from ied.cli import main
    cfg = adaptive_spec()
    state = run(cfg, digits, tmp_path, 0, 4, "a")
    state.pop("sha256")
    damage(state["adaptive"])
    checkpoints.save(tmp_path / "a-4.pt", state)
    with pytest.raises(CheckpointError, match=f"a-4.pt: .*{message}"):
        run(cfg, digits, tmp_path, 4, 8, "a")
    code = main(["train", "--spec", json.dumps(cfg), "--data", str(digits / "train.npz"), "--from-step", "4",
                 "--to-step", "8", "--resume", str(tmp_path / "a-4.pt"), "--out", str(tmp_path / "b.pt"),
                 "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "a-4.pt" in err[0] and "Traceback" not in err[0], err
