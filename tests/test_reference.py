"""ied.reference: the probability-flow reference and a cell's distance from it, against the exact Gaussian flow, and
the jobs on a tiny digits checkpoint."""
import json
import math

import numpy as np
import pytest
import torch

from ied import reference
from ied.samplers import SAMPLERS
from ied.specs import rationale

from test_samplers import MU, S, gaussian_denoiser

F64 = torch.float64


@pytest.mark.parametrize("sampler, steps", [("dpmpp_2m", 10), ("heun", 5), ("unipc", 6)])
def test_ref_rmse_on_an_exact_gaussian_denoiser_is_the_exact_global_error_within_the_reference_s_own(sampler, steps):
    """Gaussian data N(μ, s²): the flow's end is μ + (x_T − μ) s/√(s² + σ_max²) (the samplers' last step is the
    denoiser at σ_min, so the end is compared at σ_min's D as the reference solves it); ref_rmse against the Heun
    reference equals the error against that exact end within the reference's own error estimate."""
    latents = torch.randn(256, 1, generator=torch.Generator().manual_seed(3), dtype=F64)
    coarse = reference.solve(gaussian_denoiser, latents, None, 0.002, 80.0, 64)
    fine = reference.solve(gaussian_denoiser, latents, None, 0.002, 80.0, 128)
    own = reference.pooled_error(coarse, fine) / 3
    x_min = MU + (latents * 80 - MU) * math.sqrt((S**2 + 0.002**2) / (S**2 + 80**2))  # the flow at σ_min
    exact = gaussian_denoiser(x_min, torch.full((256,), 0.002, dtype=F64))  # then Heun's last step, D
    true_own = reference.pooled_error(fine, exact)
    assert true_own <= own <= 10 * true_own  # the estimate bounds the reference's error, and not loosely
    x = SAMPLERS[sampler](gaussian_denoiser, latents, rationale({"family": "edm", "rho": 7}), steps)
    measured, exact_error = reference.pooled_error(x, fine), reference.pooled_error(x, exact)
    rms = lambda y: float(y.pow(2).mean().sqrt())  # noqa: E731 (each error is relative to its own reference's size)
    assert abs(measured * rms(fine) - exact_error * rms(exact)) <= own * rms(fine)
    row = reference.distance_row(x, fine, own)
    assert row["ref_rmse"] == pytest.approx(measured, rel=1e-12)
    assert row["ref_rmse_lo"] < row["ref_rmse"] < row["ref_rmse_hi"] and row["ref_images"] == 256


@pytest.fixture(scope="module")
def checkpoint(digits, tmp_path_factory):
    from ied.train import train
    from conftest import tiny_spec
    path = tmp_path_factory.mktemp("reference") / "ckpt-4.pt"
    train(tiny_spec(), 0, 4, data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=path)
    return path


def test_the_reference_and_distance_jobs_measure_a_set_s_first_images_and_refuse_a_coarse_reference(checkpoint,
                                                                                                     tmp_path, capsys):
    """The reference job solves the first images of a set (its latents and labels as generate draws them); the
    distance job samples each cell's first images as generate does and measures them; a reference whose own error is
    not below 1 % of a cell's distance is refused in one line naming the key to raise."""
    import pandas as pd

    from ied.cli import main
    from ied.generate import generate
    from conftest import sampling_spec
    spec = {"sigma_min": 0.002, "sigma_max": 80.0, "images": 8, "steps": 256, "n_samples": 12, "seed_set": 1}
    assert main(["reference", "--checkpoint", str(checkpoint), "--spec", json.dumps(spec), "--out",
                 str(tmp_path / "ref.npz"), "--device", "cpu"]) == 0
    images, meta = reference.load_reference(tmp_path / "ref.npz")
    assert images.shape == (8, 1, 8, 8) and 0 < meta["own_error"] < 1e-2
    cells = [{"cell": {"train_rationale": "l2", "sample_rationale": "edm7", "sampler_name": f"{s}-{k}"},
              "spec": sampling_spec({"family": "edm", "rho": 7.0, "sigma_min": 0.002, "sigma_max": 80.0}, s, k)}
             for s, k in (("dpmpp_2m", 4), ("euler", 6))]
    assert main(["distance", "--checkpoint", str(checkpoint), "--reference", str(tmp_path / "ref.npz"), "--cells",
                 json.dumps(cells), "--tables", "--n-samples", "12", "--seed-set", "1", "--device", "cpu",
                 "--out", str(tmp_path / "d.parquet")]) == 0
    rows = pd.read_parquet(tmp_path / "d.parquet")
    assert list(rows["sampler_name"]) == ["dpmpp_2m-4", "euler-6"] and (rows["ref_rmse"] > 0).all()
    # the cell's own images: generate's first 8 of set 1 (n = 12), before their quantisation, are what is measured
    generate(checkpoint, cells[0]["spec"], tmp_path / "s.npz", n_samples=12, seed_set=1)
    from ied.data import load_imageset, to_uint8
    raw = torch.from_numpy(images)
    x_uint8 = load_imageset(tmp_path / "s.npz").images[:8]
    assert np.abs(x_uint8.astype(int) - to_uint8(raw.float()).numpy().astype(int)).mean() < 60  # same latents
    coarse = {**spec, "steps": 2}
    assert main(["reference", "--checkpoint", str(checkpoint), "--spec", json.dumps(coarse), "--out",
                 str(tmp_path / "coarse.npz"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["distance", "--checkpoint", str(checkpoint), "--reference", str(tmp_path / "coarse.npz"), "--cells",
                 json.dumps(cells[:1]), "--n-samples", "12", "--seed-set", "1", "--device", "cpu",
                 "--out", str(tmp_path / "never.parquet")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "raise nfe_sweep.reference_steps (2)" in err[0], err
    assert not (tmp_path / "never.parquet").exists()
    with pytest.raises(reference.ReferenceError, match="another checkpoint or for another set"):
        reference.distance(checkpoint, tmp_path / "ref.npz", cells, tmp_path / "x.parquet", n_samples=12,
                           seed_set=0, device="cpu")
