"""Correctness on CUDA (skipped without a GPU; scripts/gpu-check runs them on the lent machine).

The exact-denoiser sampler checks on the GPU, bf16 against fp32 generation of the same seeds, exact resume
of training with deterministic algorithms, a bf16 loss curve against fp32, and the published ADM in fp16.
"""
import json
import math
import os

import numpy as np
import pytest
import torch

from conftest import L2, sampling_spec, tiny_spec

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic GEMMs
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
MU, S = 0.7, 0.5


def gaussian_denoiser(x, sigma, labels=None):
    sg = sigma.view(-1, *([1] * (x.ndim - 1)))
    return (S**2 * x + sg**2 * MU) / (S**2 + sg**2)


@pytest.mark.parametrize("name, options", [("euler_maruyama", {}), ("heun", {}), ("edm_stochastic", {"S_churn": 40})])
def test_exact_denoiser_moments_on_cuda(name, options):
    from ied.noise import PerImageNoise
    from ied.samplers import SAMPLERS
    from ied.specs import rationale
    r = rationale({"family": "edm", "rho": 7, "sigma_min": 0.002, "sigma_max": 80})
    noise = PerImageNoise(torch.arange(50000), "cuda")
    z = noise.randn((50000, 1), dtype=torch.float64)
    latents = (MU + math.sqrt(S**2 + r.sigma_max**2) * z) / r.sigma_max
    x = SAMPLERS[name](gaussian_denoiser, latents, r, 256, generator=noise, **options)
    assert x.device.type == "cuda"
    assert abs(x.mean().item() - MU) + abs(x.var().item() - S**2) < 0.03


def test_per_image_noise_matches_the_cpu_stream():
    """Integer Philox is exact on both devices; Box–Muller may differ in the last bits of float64."""
    from ied.noise import PerImageNoise
    cpu = PerImageNoise(torch.arange(64), "cpu").randn((64, 3, 8, 8), dtype=torch.float64)
    gpu = PerImageNoise(torch.arange(64), "cuda").randn((64, 3, 8, 8), dtype=torch.float64).cpu()
    torch.testing.assert_close(cpu, gpu, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    from ied.train import train
    path = tmp_path_factory.mktemp("cuda") / "ckpt-300.pt"
    train(tiny_spec(batch_size=64, network={**tiny_spec()["network"], "dropout": 0.0}), 0, 300,
          data_path=digits / "train.npz", checkpoint_in=None, checkpoint_out=path, device="cuda", log_every=100)
    return path


def test_bf16_and_fp32_generation_agree(trained, digits, tmp_path):
    """Same seeds in bf16 and fp32: their FID (digits CNN) is far below the FID between two seed sets of fp32."""
    from ied.data import load_imageset
    from ied.generate import generate
    from ied.metrics import DIGITS_EXTRACTOR, calculate, train_digits_cnn
    cnn = tmp_path / "cnn.pt"
    train_digits_cnn(load_imageset(digits / "train.npz"), load_imageset(digits / "test.npz"), cnn)
    spec = sampling_spec(L2, "heun", 18)
    sets = {name: generate(trained, spec, tmp_path / f"{name}.npz", n_samples=2000, seed_set=seed, batch_size=500,
                           device="cuda", precision=precision).images
            for name, seed, precision in [("fp32", 0, "fp32"), ("bf16", 0, "bf16"), ("fp32_other", 1, "fp32")]}
    same_seeds = calculate(sets["bf16"], sets["fp32"], DIGITS_EXTRACTOR, cnn, isc=False)["fid"]
    other_seeds = calculate(sets["fp32_other"], sets["fp32"], DIGITS_EXTRACTOR, cnn, isc=False)["fid"]
    print(json.dumps({"fid_bf16_vs_fp32_same_seeds": same_seeds, "fid_fp32_seed_sets_0_vs_1": other_seeds}))
    assert same_seeds < 0.5 * other_seeds


def test_training_resumes_exactly_on_cuda_with_deterministic_algorithms(digits, tmp_path):
    """Bit for bit where every kernel has a deterministic implementation; otherwise (warn_only) within 1e-6."""
    from ied.train import train
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        cfg, data = tiny_spec(batch_size=32), digits / "train.npz"
        whole = train(cfg, 0, 40, data_path=data, checkpoint_in=None, checkpoint_out=tmp_path / "a-40.pt",
                      device="cuda", precision="fp32")
        train(cfg, 0, 20, data_path=data, checkpoint_in=None, checkpoint_out=tmp_path / "b-20.pt", device="cuda",
              precision="fp32")
        resumed = train(cfg, 20, 40, data_path=data, checkpoint_in=tmp_path / "b-20.pt",
                        checkpoint_out=tmp_path / "b-40.pt", device="cuda", precision="fp32")
    finally:
        torch.use_deterministic_algorithms(False)
    difference = max((whole["ema"][k] - resumed["ema"][k]).abs().max().item() for k in whole["ema"])
    print(json.dumps({"cuda_resume_max_abs_difference": difference}))
    assert difference <= 1e-6


def test_bf16_loss_curve_matches_fp32_within_noise(digits, tmp_path):
    from ied.train import train
    curves = {}
    for precision in ("fp32", "bf16"):
        log = tmp_path / f"{precision}.jsonl"
        train(tiny_spec(batch_size=64), 0, 400, data_path=digits / "train.npz", checkpoint_in=None,
              checkpoint_out=tmp_path / f"{precision}.pt", log_path=log, log_every=50, device="cuda",
              precision=precision)
        curves[precision] = np.array([json.loads(line)["loss"] for line in open(log) if '"loss"' in line])
    spread = np.abs(np.diff(curves["fp32"][2:])).mean()  # step-to-step noise of the fp32 curve
    print(json.dumps({k: v.round(4).tolist() for k, v in curves.items()}))
    assert np.abs(curves["bf16"][2:] - curves["fp32"][2:]).mean() < 3 * spread + 0.01


def test_published_adm_runs_in_fp16_on_cuda_close_to_fp32():
    """use_fp16 (the ImageNet-64 ADM) runs the network in float16 on CUDA and returns float32, close to fp32."""
    from ied.networks import EDMPrecond
    torch.manual_seed(0)
    kwargs = dict(img_resolution=16, img_channels=3, label_dim=10, model_channels=64, channel_mult=[1, 2],
                  num_blocks=1, attn_resolutions=[8], dropout=0.0)
    fp16, fp32 = EDMPrecond(**kwargs, use_fp16=True), EDMPrecond(**kwargs, use_fp16=False)
    fp32.load_state_dict(fp16.state_dict())
    seen = []
    fp16.model.out_conv.register_forward_hook(lambda m, args, out: seen.append(out.dtype))
    x, sigma, labels = torch.randn(4, 3, 16, 16), torch.tensor([0.1, 1.0, 5.0, 40.0]), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        a = fp16.cuda().eval()(x.cuda(), sigma.cuda(), labels.cuda())
        b = fp32.cuda().eval()(x.cuda(), sigma.cuda(), labels.cuda())
    assert seen == [torch.float16] and a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
