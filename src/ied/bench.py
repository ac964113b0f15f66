"""`ied bench`: throughput, overhead, memory and accuracy numbers as JSON. Targets live here, never in timed tests.

Modes are fp32, bf16 (autocast) and bf16+compile (torch.compile, or with CUDA graphs: bf16+cudagraphs) on the
chosen device; `--preset paper` is the paper's 35M-parameter U-Net at 32×32, `tiny` the digits model.
`scripts/gpu-check` runs the GPU measurements in one command.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ied import device as devices, specs
from ied.networks import build_network, parameter_count
from ied.rationales import ClosedForm, Tabulated
from ied.samplers import SAMPLERS, nfe

_SONG = dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard", decoder_type="standard",
             channel_mult_noise=1, resample_filter=[1, 1], model_channels=128)
PRESETS = {  # network spec (ied.networks.build_network), resolution, channels, classes
    "tiny": ({"base_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}, 8, 1, 10),
    "paper": ({}, 32, 3, 10),
    # the published EDM networks (ied.pretrained): CIFAR-10 DDPM++ (cond.), 64×64 DDPM++ (FFHQ), ImageNet-64 ADM
    "edm-cifar10-ddpmpp": ({"architecture": "EDMPrecond", "kwargs": dict(
        img_resolution=32, img_channels=3, label_dim=10, channel_mult=[2, 2, 2], augment_dim=9, dropout=0.13,
        **_SONG)}, 32, 3, 10),
    "edm-64-ddpmpp": ({"architecture": "EDMPrecond", "kwargs": dict(
        img_resolution=64, img_channels=3, label_dim=0, channel_mult=[1, 2, 2, 2], augment_dim=9, dropout=0.05,
        **_SONG)}, 64, 3, 0),
    "edm-imagenet64-adm": ({"architecture": "EDMPrecond", "kwargs": dict(
        img_resolution=64, img_channels=3, label_dim=1000, use_fp16=True, model_type="DhariwalUNet",
        model_channels=192, channel_mult=[1, 2, 3, 4], dropout=0.1)}, 64, 3, 1000),
}
RATIONALES = {
    "ve": {"family": "ve"}, "l2": {"family": "l2"}, "gauss5": {"family": "gaussian", "sigma_n": 5},
    "kl": {"family": "kl"}, "edm7": {"family": "edm", "rho": 7}, "lognormal": {"family": "lognormal"},
    "kg_cosine": {"family": "kingma_gao", "weighting": "cosine"},
    "expression": {"family": "expression", "density": "exp(-(log(sigma) - 0.5)**2 / 2) / sigma"},
}
MODES = ("fp32", "bf16", "bf16+compile")
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense, no sparsity


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _model(preset: str, device: torch.device, mode: str):
    """The preset's denoiser on the device, prepared for `mode`, and its autocast."""
    network, res, ch, classes = PRESETS[preset]
    denoiser = build_network(network if "architecture" in network else specs.network(network), res, ch, classes)
    compile_mode = {"bf16+compile": True, "bf16+cudagraphs": "reduce-overhead"}.get(mode, False)
    net = devices.prepare_module(denoiser, device)
    if compile_mode:
        net = torch.compile(net, mode=None if compile_mode is True else compile_mode)
    return denoiser, net, (ch, res, res), classes, devices.autocast(device, "fp32" if mode == "fp32" else "bf16")


def _peak_memory(device: torch.device) -> dict:
    out = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        out["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def bench_training(preset: str, batch: int, steps: int, device: torch.device, mode: str) -> dict:
    """Training images/s of one RAdam step (ε-loss, L2 rationale), as ied.train takes it."""
    from ied.loss import epsilon_loss

    _reset_peak(device)
    denoiser, net, shape, classes, autocast = _model(preset, device, mode)
    params = list(denoiser.parameters())
    optimizer = torch.optim.RAdam(params, lr=2e-4, foreach=device.type == "cuda")
    x = torch.randn(batch, *shape, device=device).clamp(-1, 1)
    labels = torch.randint(0, classes, (batch,), device=device) if classes else None
    sigma = torch.from_numpy(specs.rationale(RATIONALES["l2"]).sample(batch, np.random.default_rng(0))).to(device)
    eps = torch.randn_like(x)

    def step():
        with autocast:
            loss = epsilon_loss(net, x, labels, sigma, eps).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = _timeit(lambda: [step() for _ in range(steps)], device, 3) / steps
    return {"batch_size": batch, "mode": mode, "seconds_per_step": seconds, "images_per_s": batch / seconds,
            "parameters": parameter_count(denoiser), "peak_memory": _peak_memory(device)}


def bench_sampling(preset: str, batch: int, steps: int, device: torch.device, mode: str, samplers=("euler_maruyama",),
                   repeats: int = 3) -> dict:
    """NFE/s of the samplers at one batch size, with per-image noise; overhead = wall ÷ time inside the denoiser."""
    from ied.noise import PerImageNoise

    _reset_peak(device)
    _, net, shape, classes, autocast = _model(preset, device, mode)
    net.eval().requires_grad_(False)
    labels = torch.randint(0, classes, (batch,), device=device) if classes else None
    schedule = specs.rationale(RATIONALES["edm7"])
    in_denoiser = [0.0]

    def call(x, sigma, class_labels):
        with autocast:
            return net(x, sigma, class_labels)

    def timed_call(x, sigma, class_labels):
        _sync(device)
        start = time.perf_counter()
        result = call(x, sigma, class_labels)
        _sync(device)
        in_denoiser[0] += time.perf_counter() - start
        return result

    out: dict[str, Any] = {"batch_size": batch, "mode": mode}
    with torch.no_grad():
        for name in samplers:
            sampler, calls = SAMPLERS[name], nfe(name, steps)

            def run(denoise):
                noise = PerImageNoise(torch.arange(batch), device)
                return sampler(denoise, noise.randn((batch, *shape)), schedule, steps, class_labels=labels,
                               generator=noise)

            wall = _timeit(lambda: run(call), device, repeats)
            in_denoiser[0] = 0.0
            start = time.perf_counter()
            run(timed_call)
            _sync(device)
            overhead = (time.perf_counter() - start) / in_denoiser[0]
            out[name] = {"steps": steps, "nfe": calls, "seconds": wall, "images_per_s": batch / wall,
                         "nfe_per_s": batch * calls / wall, "overhead_in_run": overhead}
        noise = PerImageNoise(torch.arange(batch), device)
        x = torch.zeros(batch, *shape, dtype=torch.float64, device=device)
        per_draw = _timeit(lambda: noise.randn_like(x), device, 10)
        step = out[samplers[0]]["seconds"] / out[samplers[0]]["nfe"]
        out["per_image_noise"] = {"seconds_per_draw": per_draw, "fraction_of_a_step": per_draw / step}
    out["peak_memory"] = _peak_memory(device)
    return out


def bench_flops(preset: str, device: torch.device) -> float:
    """FLOPs of one denoiser forward per image (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    _, net, shape, _, _ = _model(preset, device, "fp32")
    x = torch.randn(1, *shape, device=device)
    labels = torch.zeros(1, dtype=torch.long, device=device) if PRESETS[preset][3] else None
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(x, torch.ones(1, device=device), labels)
    return float(counter.get_total_flops())


def bench_schedules(intervals: int) -> dict:
    """Build time and accuracy of tabulated schedules against closed forms (or a 4× finer table)."""
    t = np.concatenate([np.linspace(0, 1, 20001), [1e-9, 1 - 1e-9]])
    out = {}
    for name, spec in RATIONALES.items():
        r = specs.rationale(spec, name)
        start = time.perf_counter()
        table = Tabulated(name, r.sigma_min, r.sigma_max, density_fn=r.density, intervals=intervals)
        built = time.perf_counter() - start
        exact = r if isinstance(r, ClosedForm) else Tabulated(name, r.sigma_min, r.sigma_max,
                                                              density_fn=r.density, intervals=4 * intervals)
        error = float(np.max(np.abs(table.sigma(t) - exact.sigma(t)) / exact.sigma(t)))
        start = time.perf_counter()
        table.sigma(np.random.default_rng(0).random(1000))
        out[name] = {"build_s": built, "max_rel_error": error, "sigma_of_1000_t_s": time.perf_counter() - start,
                     "against": "closed form" if isinstance(r, ClosedForm) else f"{4 * intervals} intervals"}
    return out


def bench_features(n: int, device: torch.device, inception_weights: str | None) -> dict:
    from ied.metrics import DIGITS_EXTRACTOR, DigitsCNN, extractor

    model = DigitsCNN().to(device).eval()
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, device=device)
    with torch.no_grad():
        out = {DIGITS_EXTRACTOR: {"images_per_s": n / _timeit(lambda: model.features(x), device, 3)}}
    if inception_weights:
        net, _ = extractor("inception-v3-compat", inception_weights, device)
        x = torch.randint(0, 256, (min(n, 256), 3, 32, 32), dtype=torch.uint8, device=device)
        with torch.no_grad():
            out["inception-v3-compat"] = {"images_per_s": len(x) / _timeit(lambda: net(x), device, 3)}
    return out


def bench_bootstrap(n: int, dims: int, resamples: int, device: torch.device) -> dict:
    """Seconds of the score intervals of n generated and n reference features of `dims` dimensions (Inception's
    pool3: 2048), each score timed on the set alone (its fixed cost: the reference's root, kernels, distances) and on
    `resamples` resamples; 200 resamples extrapolate linearly from the difference."""
    from ied import fidelity

    generator = torch.Generator().manual_seed(0)
    gen = torch.randn(n, dims, generator=generator).to(device)
    real = (torch.randn(n, dims, generator=generator) * 1.1 + 0.1).to(device)
    reference = fidelity.fid_statistics(real.cpu())
    parts = {"fid": lambda c: fidelity.bootstrap_fid(gen, reference, c),
             "isc": lambda c: fidelity.bootstrap_inception_score(gen[:, :1008], c),
             "kid": lambda c: fidelity.bootstrap_kid(gen, real, c),
             "precision_recall": lambda c: fidelity.bootstrap_precision_recall(gen, real, c)}
    out: dict[str, Any] = {"images": n, "dims": dims, "resamples_timed": resamples}
    for name, fn in parts.items():  # one call each (no warm-up: the work dwarfs it)
        seconds = []
        for counts in (fidelity.resample_counts(n, 0), fidelity.resample_counts(n, resamples)):
            start = time.perf_counter()
            fn(counts)
            _sync(device)
            seconds.append(time.perf_counter() - start)
        per = max(seconds[1] - seconds[0], 0.0) / resamples
        out[name] = {"fixed_seconds": seconds[0], "seconds_per_200": seconds[0] + 200 * per}
    out["seconds_per_200"] = sum(v["seconds_per_200"] for k, v in out.items() if isinstance(v, dict))
    return out


def bench_nll(preset: str, batch: int, device: torch.device, rtol: float) -> dict:
    """Likelihood throughput: images/s and NFE per image of one batched probability-flow ODE solve."""
    from ied.nll import ode_logp

    _, net, shape, classes, _ = _model(preset, device, "fp32")
    net.eval().requires_grad_(False)
    x = torch.rand(batch, *shape, device=device, dtype=torch.float64) * 2 - 1
    probe = torch.where(torch.randn_like(x) >= 0, 1.0, -1.0)
    labels = torch.randint(0, classes, (batch,), device=device) if classes else None
    start = time.perf_counter()
    _, calls = ode_logp(net, x, 0.002, 80.0, labels=labels, probe=probe, rtol=rtol, atol=rtol)
    seconds = time.perf_counter() - start
    return {"batch_size": batch, "rtol": rtol, "seconds": seconds, "images_per_s": batch / seconds,
            "nfe_per_image": calls}


def bench_ddp(batch: int, steps: int) -> dict:
    """Tiny-model training images/s with 1 and 2 gloo ranks on the CPU (torchrun), and the scaling efficiency."""
    import subprocess
    import tempfile

    from ied.data import prepare
    spec = {"dataset": "digits", "rationale": {"family": "l2", "sigma_min": 0.002, "sigma_max": 80.0, "v_max": 1.0},
            "network": specs.network(PRESETS["tiny"][0]), "batch_size": batch, "lr": 2e-3, "ema": 0.99,
            "grad_clip": None, "seed": 0, "weighting": None}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepare("digits", "train", f"{tmp}/train.npz")
        for ranks in (1, 2):
            start = time.perf_counter()
            subprocess.run([str(Path(sys.executable).with_name("torchrun")), "--standalone",
                            f"--nproc-per-node={ranks}", "-m", "ied", "train", "--spec", json.dumps(spec),
                            "--data", f"{tmp}/train.npz", "--from-step", "0", "--to-step", str(steps), "--device",
                            "cpu", "--log-every", str(steps), "--out", f"{tmp}/c{ranks}.pt"], check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
            out[f"ranks_{ranks}"] = {"seconds": time.perf_counter() - start,
                                     "images_per_s": steps * batch / (time.perf_counter() - start)}
    out["scaling_efficiency"] = out["ranks_2"]["images_per_s"] / (2 * out["ranks_1"]["images_per_s"])
    out["note"] = "gloo on CPU, one thread per rank, start-up included"
    return out


def stage_times(results: str) -> dict:
    """Per-rule job wall time from Snakemake's benchmark files of a finished run."""
    import pandas as pd

    stages: dict[str, dict] = {}
    for path in sorted(Path(results).glob("benchmarks/*/*.tsv")):
        seconds = float(pd.read_csv(path, sep="\t")["s"].iloc[0])
        entry = stages.setdefault(path.parent.name, {"jobs": 0, "job_seconds": 0.0})
        entry["jobs"] += 1
        entry["job_seconds"] += seconds
    return stages


# What each job kind imports before its first useful work, after the CLI: its command's module (ied.cli) and what
# that module imports inside the functions the job calls first.
JOB_IMPORTS = {"train": "ied.train", "generate": "ied.generate",
               "evaluate": "ied.metrics, ied.fidelity, ied.device, pandas",
               "nll": "ied.nll, torch, pandas, scipy.integrate, ied.checkpoints, ied.data, ied.rationales",
               "tables": "ied.tables", "figures": "ied.figures"}


def bench_startup(repeats: int = 3, top: int = 5) -> dict:
    """Per job kind: seconds from process start until what the job imports before its first useful work is
    imported (JOB_IMPORTS; the best of `repeats` fresh interpreters), and the top-level imports that dominate it
    (`python -X importtime`, cumulative seconds)."""
    import subprocess

    out = {}
    for kind, module in JOB_IMPORTS.items():
        code = f"import ied.cli, {module}"
        seconds = []
        for _ in range(repeats):
            tick = time.perf_counter()
            result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                                    timeout=300, env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
            seconds.append(time.perf_counter() - tick)
        imports = []
        for line in result.stderr.splitlines():
            parts = line.removeprefix("import time:").split("|")
            if len(parts) == 3 and parts[1].strip().isdigit():
                imports.append((int(parts[1]), parts[2].strip()))
        dominant = sorted((i for i in imports if i[1].split(".")[0] != "ied" and "." not in i[1]), reverse=True)[:top]
        out[kind] = {"seconds": min(seconds), "imports": module,
                     "dominant_imports_s": {name: us / 1e6 for us, name in dominant}}
    return out


def _utilisation(flops: float, per_s: float, device: torch.device, peak: float | None) -> float | None:
    """Fraction of the device's bf16 peak that flops × per_s reaches."""
    if peak is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    return flops * per_s / (peak * 1e12) if peak else None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `ied bench`."""
    add = parser.add_argument
    add("--preset", choices=sorted(PRESETS), default="tiny", help="the network to measure")
    add("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    add("--modes", nargs="+", default=["fp32"], choices=MODES + ("bf16+cudagraphs",), help="precision and compilation")
    add("--train-batch", type=int, nargs="+", default=[64], help="training batch sizes")
    add("--train-steps", type=int, default=5, help="timed training steps per batch size")
    add("--sample-batch", type=int, nargs="+", default=[256], help="sampling batch sizes")
    add("--sample-steps", type=int, default=20, help="sampler steps per timed run")
    add("--samplers", nargs="+", default=["euler_maruyama"], choices=sorted(SAMPLERS), help="samplers to time")
    add("--feature-images", type=int, default=2048, help="images for the feature-extraction rate")
    add("--table-intervals", type=int, default=8192, help="t intervals of the timed schedule tables")
    add("--nll-batch", type=int, default=64, help="images per likelihood batch")
    add("--nll-rtol", type=float, default=1e-3, help="RK45's tolerance for the likelihood's rate")
    add("--ddp-batch", type=int, default=64, help="global batch of the 1- vs 2-rank run")
    add("--peak-tflops", type=float, help="device bf16 peak (default: from the GPU's name)")
    add("--inception-weights", help="also time Inception feature extraction")
    add("--stages", help="a results/<experiment> folder: per-stage wall time of its run")
    add("--bootstrap", type=int, nargs=3, default=[50_000, 2048, 2], metavar=("IMAGES", "DIMS", "RESAMPLES"),
        help="the score intervals' cost: features of IMAGES × DIMS, RESAMPLES timed")
    add("--only", nargs="+", default=["training", "sampling", "flops", "schedules", "features"],
        choices=["training", "sampling", "flops", "schedules", "features", "nll", "ddp", "startup", "bootstrap"],
        help="what to measure")


def _throughput(report: dict, a: argparse.Namespace, device: torch.device, flops: float) -> None:
    """Training images/s and sampling NFE/s per mode and batch size, with the utilisation of the bf16 peak."""
    for part, batches, run, per_s, factor in (
            ("training", a.train_batch, lambda b, m: bench_training(a.preset, b, a.train_steps, device, m),
             lambda r: r["images_per_s"], 3.0),  # forward + backward ≈ 3 forwards
            ("sampling", a.sample_batch, lambda b, m: bench_sampling(a.preset, b, a.sample_steps, device, m,
                                                                     tuple(a.samplers)),
             lambda r: r[a.samplers[0]]["nfe_per_s"], 1.0)):
        if part not in a.only:
            continue
        report[part] = []
        for mode in a.modes:
            for batch in batches:
                try:
                    result = run(batch, mode)
                except torch.cuda.OutOfMemoryError:
                    torch.cuda.empty_cache()
                    report[part].append({"batch_size": batch, "mode": mode, "out_of_memory": True})
                    continue
                result["utilisation_of_bf16_peak"] = _utilisation(factor * flops, per_s(result), device,
                                                                  a.peak_tflops)
                report[part].append(result)


def run(a: argparse.Namespace) -> int:
    """Measure what `a` asks for and print the report as JSON."""
    device = devices.choose(a.device)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                              f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
                              "torch": torch.__version__, "preset": a.preset}
    flops = bench_flops(a.preset, device)
    if "flops" in a.only:
        report["flops_per_forward_per_image"] = flops
    _throughput(report, a, device, flops)
    if "schedules" in a.only:
        report["schedules"] = bench_schedules(a.table_intervals)
    if "features" in a.only:
        report["features"] = bench_features(a.feature_images, device, a.inception_weights)
    if "nll" in a.only:
        report["nll"] = bench_nll(a.preset, a.nll_batch, device, a.nll_rtol)
    if "ddp" in a.only:
        report["ddp"] = bench_ddp(a.ddp_batch, a.train_steps)
    if "bootstrap" in a.only:
        report["bootstrap"] = bench_bootstrap(*a.bootstrap, device)
    if "startup" in a.only:
        report["startup"] = bench_startup()
    if a.stages:
        report["stages"] = stage_times(a.stages)
    report["peak_memory"] = _peak_memory(device)
    json.dump(report, sys.stdout, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v)
    print()
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m ied.bench`: the same as `ied bench`."""
    parser = argparse.ArgumentParser(prog="ied bench", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
