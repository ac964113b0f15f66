"""`ied bench`: throughput and overhead numbers as JSON. Targets live here, never in timed tests."""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ied.networks import build_denoiser, parameter_count
from ied.rationales import ClosedForm, Tabulated
from ied import specs
from ied.specs import rationale
from ied.samplers import SAMPLERS, nfe

PRESETS = {  # network, resolution, channels, classes
    "tiny": ({"base_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.0}, 8, 1, 10),
    "paper": ({}, 32, 3, 10),
}
RATIONALES = {
    "ve": {"family": "ve"}, "l2": {"family": "l2"}, "gauss5": {"family": "gaussian", "sigma_n": 5},
    "kl": {"family": "kl"}, "edm7": {"family": "edm", "rho": 7}, "lognormal": {"family": "lognormal"},
    "kg_cosine": {"family": "kingma_gao", "weighting": "cosine"},
    "expression": {"family": "expression", "density": "exp(-(log(sigma) - 0.5)**2 / 2) / sigma"},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


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


def _model(preset: str, device: torch.device, channels_last: bool, compile_: bool):
    network, res, ch, classes = PRESETS[preset]
    denoiser = build_denoiser(specs.network(network), res, ch, classes).to(device)
    if channels_last and device.type == "cuda":
        denoiser = denoiser.to(memory_format=torch.channels_last)
    if compile_:
        denoiser.net = torch.compile(denoiser.net)
    return denoiser, (ch, res, res), classes


def bench_training(preset: str, batch: int, steps: int, device: torch.device, **model_kw) -> dict:
    from ied.loss import EpsilonLoss

    denoiser, shape, classes = _model(preset, device, **model_kw)
    optimizer = torch.optim.RAdam(denoiser.parameters(), lr=2e-4)
    loss_fn = EpsilonLoss(rationale(RATIONALES["l2"], "l2"))
    x = torch.randn(batch, *shape, device=device).clamp(-1, 1)
    labels = torch.randint(0, classes, (batch,), device=device)
    gen = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = loss_fn(denoiser, x, labels, gen)[0].mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = _timeit(lambda: [step() for _ in range(steps)], device, 3) / steps
    return {"batch_size": batch, "seconds_per_step": seconds, "images_per_s": batch / seconds,
            "parameters": parameter_count(denoiser)}


def bench_sampling(preset: str, batch: int, steps: int, device: torch.device, repeats: int = 3,
                   **model_kw) -> dict:
    denoiser, shape, classes = _model(preset, device, **model_kw)
    denoiser.eval().requires_grad_(False)
    latents = torch.randn(batch, *shape, device=device)
    labels = torch.randint(0, classes, (batch,), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    in_denoiser = [0.0]

    def call(x, sigma, class_labels):
        with autocast:
            return denoiser(x, sigma, class_labels)

    def timed_call(x, sigma, class_labels):
        _sync(device)
        start = time.perf_counter()
        result = call(x, sigma, class_labels)
        _sync(device)
        in_denoiser[0] += time.perf_counter() - start
        return result

    schedule = rationale(RATIONALES["edm7"], "edm7")
    sigma = torch.full((batch,), 1.0, dtype=torch.float64, device=device)
    x64 = latents.to(torch.float64)
    with torch.no_grad():
        out = {"batch_size": batch, "denoiser_forward_s": _timeit(lambda: call(x64, sigma, labels), device, 5)}
        for name, sampler in SAMPLERS.items():
            calls = nfe(name, steps)

            def run(denoise):
                return sampler(denoise, latents, schedule, steps, class_labels=labels,
                               generator=torch.Generator(device).manual_seed(0))

            # overhead: the sampler against a bare loop of the same NFE, alternated so that a machine whose speed
            # drifts (shared CPUs, GPU clocks) affects both alike, the fastest of each as timeit advises.
            # overhead_in_run: wall time over the time spent inside the denoiser in that same run (synchronised
            # around each call), which drift cannot separate.
            walls, bares, in_run = [], [], []
            for _ in range(repeats):
                walls.append(_timeit(lambda: run(call), device, 1))
                bares.append(_timeit(lambda: [call(x64, sigma, labels) for _ in range(calls)], device, 1))
                in_denoiser[0] = 0.0
                start = time.perf_counter()
                run(timed_call)
                _sync(device)
                in_run.append((time.perf_counter() - start) / in_denoiser[0])
            wall = min(walls)
            out[name] = {"steps": steps, "nfe": calls, "seconds": wall, "images_per_s": batch / wall,
                         "nfe_per_s": batch * calls / wall, "overhead": wall / min(bares),
                         "overhead_in_run": min(in_run)}
    return out


def bench_flops(preset: str, device: torch.device, peak_tflops: float | None, images_per_s: float | None) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    denoiser, shape, classes = _model(preset, device, channels_last=False, compile_=False)
    x = torch.randn(1, *shape, device=device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        denoiser(x, torch.ones(1, device=device), torch.zeros(1, dtype=torch.long, device=device))
    flops = counter.get_total_flops()
    out = {"flops_per_forward_per_image": flops}
    if peak_tflops and images_per_s:
        out["utilisation_of_peak"] = flops * images_per_s / (peak_tflops * 1e12)
    return out


def bench_schedules(intervals: int) -> dict:
    t = np.concatenate([np.linspace(0, 1, 20001), [1e-9, 1 - 1e-9]])
    out = {}
    for name, spec in RATIONALES.items():
        r = rationale(spec, name)
        start = time.perf_counter()
        table = Tabulated(name, r.sigma_min, r.sigma_max, density_fn=r.density, intervals=intervals)
        built = time.perf_counter() - start
        exact = r if isinstance(r, ClosedForm) else Tabulated(name, r.sigma_min, r.sigma_max,
                                                              density_fn=r.density, intervals=4 * intervals)
        error = float(np.max(np.abs(table.sigma(t) - exact.sigma(t)) / exact.sigma(t)))
        start = time.perf_counter()
        table.sigma(np.random.default_rng(0).random(1000))
        lookup = time.perf_counter() - start
        out[name] = {"build_s": built, "max_rel_error": error,
                     "against": "closed form" if isinstance(r, ClosedForm) else f"{4 * intervals} intervals",
                     "sigma_of_1000_t_s": lookup}
    return out


def bench_features(n: int, device: torch.device, inception_weights: str | None) -> dict:
    from ied.metrics import DIGITS_EXTRACTOR, DigitsCNN, extractor_kwargs

    out = {}
    model = DigitsCNN().to(device).eval()
    x = torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8, device=device)
    with torch.no_grad():
        out[DIGITS_EXTRACTOR] = {"images_per_s": n / _timeit(lambda: model.features(x), device, 3)}
    if inception_weights:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        kw = extractor_kwargs("inception-v3-compat", inception_weights)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"],
                                          feature_extractor_weights_path=kw["feature_extractor_weights_path"])
        net = net.to(device)
        x = torch.randint(0, 256, (min(n, 256), 3, 32, 32), dtype=torch.uint8, device=device)
        with torch.no_grad():
            out["inception-v3-compat"] = {"images_per_s": len(x) / _timeit(lambda: net(x), device, 3)}
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ied bench", description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-batch", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--sample-batch", type=int, default=256)
    parser.add_argument("--sample-steps", type=int, default=20)
    parser.add_argument("--feature-images", type=int, default=2048)
    parser.add_argument("--table-intervals", type=int, default=8192)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    parser.add_argument("--peak-tflops", type=float, help="device bf16 peak, for the utilisation figure")
    parser.add_argument("--inception-weights", help="also time Inception feature extraction")
    parser.add_argument("--stages", help="a results/<experiment> folder: per-stage wall time of its run")
    parser.add_argument("--only", nargs="+", choices=["training", "sampling", "flops", "schedules", "features"])
    a = parser.parse_args(argv)
    device = torch.device(a.device)
    model_kw = {"channels_last": a.channels_last, "compile_": a.compile}
    parts = set(a.only or ["training", "sampling", "flops", "schedules", "features"])
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
                              f"cpu ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
                              "torch": torch.__version__, "preset": a.preset}
    if "training" in parts:
        report["training"] = bench_training(a.preset, a.train_batch, a.train_steps, device, **model_kw)
    if "sampling" in parts:
        report["sampling"] = bench_sampling(a.preset, a.sample_batch, a.sample_steps, device, **model_kw)
    if "flops" in parts:
        ips = report.get("training", {}).get("images_per_s")
        report["flops"] = bench_flops(a.preset, device, a.peak_tflops, ips and 3 * ips)  # fwd+bwd ≈ 3 forwards
    if "schedules" in parts:
        report["schedules"] = bench_schedules(a.table_intervals)
    if "features" in parts:
        report["features"] = bench_features(a.feature_images, device, a.inception_weights)
    if a.stages:
        report["stages"] = stage_times(a.stages)
    report["peak_memory"] = {"cpu_max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device.type == "cuda":
        report["peak_memory"]["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
