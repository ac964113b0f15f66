"""The fit_rationale job (ied.fit) on a tiny digits checkpoint, through the CLI, and generate reading its table."""
import pytest

from ied import fitting
from ied.samplers import noise_levels
from ied.specs import rationale

from test_fitting import BASE


def test_the_fit_job_fits_a_checkpoint_and_generate_samples_its_table(digits, tmp_path, monkeypatch):
    """`ied fit-rationale` on a tiny digits checkpoint, then `ied generate` with the table: the levels it logs are
    the ones sampled; the table is required, and a non-finite cost is one line naming the checkpoint and σ."""
    import json

    from ied import specs as spec_module
    from ied import fit
    from ied.cli import main
    from ied.train import train
    from conftest import sampling_spec, tiny_spec
    ckpt = tmp_path / "ckpt-4.pt"
    train(tiny_spec(), 0, 4, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=ckpt)
    base = spec_module.rationale(BASE)
    spec = {"family": "fitted", "model": "l2", "step": 4, "method": "trajectory_dp", "base": base.spec,
            "sampler": "dpmpp_2m", "nfe": 4, "pilot": 3, "sigma_min": 0.002, "sigma_max": 80.0}
    table, log = tmp_path / "fit.parquet", tmp_path / "fit.jsonl"
    assert main(["fit-rationale", "--checkpoint", str(ckpt), "--spec", json.dumps(spec), "--name", "fit",
                 "--expect-step", "4", "--out", str(table), "--log-file", str(log)]) == 0
    info = json.loads(log.read_text())
    assert info["denoiser_evaluations"] == 3 * fitting.teacher_calls() and info["teacher_calls"] == fitting.teacher_calls()
    assert len(info["levels"]) == 4 and info["levels"][0] == 80.0 and info["levels"][-1] == pytest.approx(0.002)
    assert noise_levels(fitting.load_fitted(table, spec), 4)[:-1] == pytest.approx(info["levels"], rel=1e-9)
    sampling = json.dumps({**sampling_spec(sampler="dpmpp_2m", steps=4), "rationale": spec})
    out = ["generate", "--checkpoint", str(ckpt), "--spec", sampling, "--n-samples", "3", "--out"]
    assert main([*out, str(tmp_path / "s.npz"), f"--rationale-table={table}"]) == 0
    assert main([*out, str(tmp_path / "t.npz"), "--rationale-table="]) == 1  # a fitted spec needs its table

    def broken(*args, **kwargs):
        raise fitting.FittingError("the cost of the jump σ = 3.1 → 0.9 is not finite")
    monkeypatch.setattr(fitting, "fit_rationale", broken)
    with pytest.raises(fitting.FittingError, match=r"ckpt-4.pt \(step 4\): the cost of the jump σ = 3.1"):
        fit.fit_checkpoint(ckpt, spec, "fit", tmp_path / "never.parquet")
    assert not (tmp_path / "never.parquet").exists()
