"""The fit_rationale job (ied.fit) on a tiny digits checkpoint, through the CLI, and generate reading its table."""
import pytest
import torch

from ied import fitting
from ied.samplers import noise_levels
from ied.specs import rationale

from test_fitting import BASE


def test_one_teacher_serves_every_fit_and_generate_samples_their_tables(checkpoint, tmp_path, monkeypatch):
    """`ied teacher` once, then `ied fit-rationale` twice from its file (end_to_end and trajectory_dp), then
    `ied generate` with a table: the levels a fit logs are the ones sampled; the table is required, and a
    non-finite cost is one line naming the checkpoint and σ."""
    import json

    from ied import fit
    from ied.cli import main
    from conftest import sampling_spec
    spec = fitted_spec(method="end_to_end")
    teacher, log = tmp_path / "teacher.npz", tmp_path / "teacher.jsonl"
    assert main(["teacher", "--checkpoint", str(checkpoint), "--spec", json.dumps({"base": spec["base"], "pilot": 3}),
                 "--expect-step", "4", "--out", str(teacher), "--log-file", str(log)]) == 0
    assert json.loads(log.read_text())["denoiser_evaluations"] == 3 * fitting.teacher_calls()
    for method in ("end_to_end", "trajectory_dp"):
        table, log = tmp_path / f"{method}.parquet", tmp_path / f"{method}.jsonl"
        spec = fitted_spec(method=method)
        assert main(["fit-rationale", "--checkpoint", str(checkpoint), "--teacher", str(teacher), "--spec",
                     json.dumps(spec), "--name", "fit", "--expect-step", "4", "--out", str(table), "--log-file",
                     str(log)]) == 0
        info = json.loads(log.read_text())
        assert info["teacher_calls"] == fitting.teacher_calls() and info["method"] == method
        assert info["denoiser_evaluations"] <= info["billed"] == fitting.fit_work(spec)
        assert len(info["levels"]) == 4 and info["levels"][0] == 80.0 and info["levels"][-1] == pytest.approx(0.002)
        assert noise_levels(fitting.load_fitted(table, spec), 4)[:-1] == pytest.approx(info["levels"], rel=1e-9)
    assert set(info) >= {"levels"} and "pilot_error" in json.loads((tmp_path / "end_to_end.jsonl").read_text())
    sampling = json.dumps({**sampling_spec(sampler="dpmpp_2m", steps=4), "rationale": spec})
    out = ["generate", "--checkpoint", str(checkpoint), "--spec", sampling, "--n-samples", "3", "--out"]
    assert main([*out, str(tmp_path / "s.npz"), f"--rationale-table={table}"]) == 0
    assert main([*out, str(tmp_path / "t.npz"), "--rationale-table="]) == 1  # a fitted spec needs its table

    def broken(*args, **kwargs):
        raise fitting.FittingError("the cost of the jump σ = 3.1 → 0.9 is not finite")
    monkeypatch.setattr(fitting, "fit_rationale", broken)
    with pytest.raises(fitting.FittingError, match=r"ckpt-4.pt \(step 4\): the cost of the jump σ = 3.1"):
        fit.fit_checkpoint(checkpoint, spec, "fit", tmp_path / "never.parquet", teacher)
    assert not (tmp_path / "never.parquet").exists()


def test_a_teacher_of_another_base_pilot_or_checkpoint_is_refused_and_a_damaged_one_moved_aside(checkpoint, tmp_path,
                                                                                                  capsys):
    import json

    from ied import fit
    from ied.cli import main
    teacher = tmp_path / "teacher.npz"
    fit.teacher_checkpoint(checkpoint, {"base": fitted_spec()["base"], "pilot": 3}, teacher)
    for other, key in ((fitted_spec(pilot=4), "pilot"), (fitted_spec(base={**BASE, "rho": 5.0}), "base")):
        with pytest.raises(fitting.FittingError, match=f"teacher.npz: a teacher of another {key} than the fit's"):
            fit.fit_checkpoint(checkpoint, other, "fit", tmp_path / "f.parquet", teacher)
    data = teacher.read_bytes()
    teacher.write_bytes(data[: len(data) // 2])
    code = main(["fit-rationale", "--checkpoint", str(checkpoint), "--teacher", str(teacher), "--spec",
                 json.dumps(fitted_spec()), "--name", "fit", "--out", str(tmp_path / "f.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "teacher.npz: unreadable or truncated" in err[0], err
    assert (tmp_path / "teacher.npz.corrupt").exists() and not teacher.exists()


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory):
    from ied.train import train
    from conftest import tiny_spec
    path = tmp_path_factory.mktemp("fit") / "ckpt-4.pt"
    train(tiny_spec(), 0, 4, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=path)
    return path


def fitted_spec(**overrides):
    spec = {"family": "fitted", "model": "l2", "step": 4, "method": "trajectory_dp", "base": rationale(BASE).spec,
            "sampler": "dpmpp_2m", "nfe": 4, "pilot": 3, "sigma_min": 0.002, "sigma_max": 80.0}
    spec.update(overrides)
    return {k: v for k, v in spec.items() if v is not None}


@pytest.mark.parametrize("spec, message", [
    (fitted_spec(sampler=None), "key 'sampler': required by method trajectory_dp"),
    (fitted_spec(pilot=0), "key 'pilot': must be an integer ≥ 1"),
    (fitted_spec(method="foo"), "key 'method': must be one of"),
    (fitted_spec(nfe=500), "key 'nfe': dpmpp_2m at NFE 500 visits 500 levels"),
    (fitted_spec(sampler="heun", nfe=4), "key 'nfe': heun cannot make 4"),
    (fitted_spec(sampler="em"), "key 'sampler': no fitting cost"),
    ({}, "key 'family'"),
])
def test_the_fit_job_refuses_a_bad_spec_in_one_line_before_reading_the_checkpoint(checkpoint, tmp_path, capsys,
                                                                                   monkeypatch, spec, message):
    import json
    from ied import fit
    from ied.cli import main

    def never(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the spec was checked")
    monkeypatch.setattr(fit, "load_ema_denoiser", never)
    code = main(["fit-rationale", "--checkpoint", str(checkpoint), "--teacher", str(tmp_path / "none.npz"), "--spec",
                 json.dumps(spec), "--name", "fit", "--out", str(tmp_path / "fit.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "fit.parquet").exists()


@pytest.mark.parametrize("spec", [{}, {"family": "learned", "model": "ad", "step": "last"},
                                  {"family": "learned", "model": "ad", "step": 300, "adaptive": {"family": "ve"}}])
def test_learn_rationale_refuses_a_bad_spec_in_one_line(tmp_path, capsys, spec):
    import json
    from ied.cli import main
    code = main(["learn-rationale", "--density", str(tmp_path / "none.parquet"), "--spec", json.dumps(spec),
                 "--name", "lr", "--out", str(tmp_path / "lr.parquet")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith("error: learned spec: key "), err


@pytest.mark.parametrize("denoiser", [lambda x, sigma, labels=None: torch.zeros_like(x),
                                      lambda x, sigma, labels=None: x.clone()], ids=["zero", "identity"])
def test_a_cost_density_of_a_denoiser_that_never_changes_names_the_checkpoint_and_sigma(checkpoint, tmp_path,
                                                                                        monkeypatch, denoiser):
    from ied import fit
    real = fit.load_ema_denoiser
    monkeypatch.setattr(fit, "load_ema_denoiser", lambda *a, **k: (denoiser, real(*a, **k)[1]))
    spec = fitted_spec(method="cost_density", sampler=None, nfe=None)
    fit.teacher_checkpoint(checkpoint, {"base": spec["base"], "pilot": 3}, tmp_path / "teacher.npz")
    with pytest.raises(fitting.FittingError, match=r"ckpt-4.pt \(step 4\): the denoiser's output does not change "
                                                   r"along the teacher's trajectory from σ = 80 to 0.002"):
        fit.fit_checkpoint(checkpoint, spec, "fit", tmp_path / "fit.parquet", tmp_path / "teacher.npz")
