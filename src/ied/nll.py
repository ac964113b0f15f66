"""Negative log-likelihood in bits per dimension through the probability-flow ODE (score_sde's likelihood).

The ODE dx/dσ = f(x, σ) = (x − D(x; σ))/σ is integrated from σ_min to σ_max of the model's training domain
with the instantaneous change of variables, d log p_σ(x(σ))/dσ = −∇·f, so

    log p_{σ_min}(x) = log N(x(σ_max); 0, σ_max² I) + ∫_{σ_min}^{σ_max} ∇·f(x(σ), σ) dσ,   ∇·f = (d − tr ∂D/∂x)/σ.

The trace is exact (d vector–Jacobian products; for tiny images) or Hutchinson's εᵀ(∂D/∂x)ε with one
Rademacher or Gaussian probe per image, fixed along the path as in score_sde. One scipy `solve_ivp` (RK45)
integrates the whole batch on the flattened state, at the stated rtol and atol.

8-bit data are dequantised uniformly in the model's range (ied.data.to_model_range), x = (i + u)/127.5 − 1
with u ~ U[0, 1)^d, and

    bits/dim = −log p(x) / (d ln 2) + log2(127.5),

the second term adding back the per-dimension Jacobian from [0, 256) to model space: score_sde's
convention (its offset 7 = log2 128 is the same term for its scaling 2/256). The models are
class-conditional, so this is log p(x | y) at the image's own label.

torch is imported inside the functions: config checks read ESTIMATORS without loading it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ied import device as devices
from ied.io import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    from torch import Tensor

ESTIMATORS = ("rademacher", "gaussian", "exact")
EXACT_MAX_DIMS = 256  # exact traces: one backward pass per dimension per ODE step (8×8 digits: 64)
MAX_NFE = 10_000  # denoiser evaluations per solve; score_sde's CIFAR-10 solves take a few hundred


class NLLError(RuntimeError):
    """A likelihood that cannot be computed (non-finite drift, too many evaluations, bad arguments)."""
DEQUANTIZATION_OFFSET = math.log2(127.5)  # bits/dim from [0, 256) to the model's range [−1, 1]
STREAM_PROBE, STREAM_DEQUANT = 3, 4  # Philox streams (ied.noise) of the probes and the dequantisation noise


def gaussian_logp(x: "Tensor", sigma: float) -> "Tensor":
    """log N(x; 0, σ² I) per row, the prior at σ_max."""
    d = x[0].numel()
    return -0.5 * d * math.log(2 * math.pi * sigma**2) - x.flatten(1).square().sum(1) / (2 * sigma**2)


def _divergence(denoiser: Callable, x: Tensor, sigma: Tensor, labels: Any, estimator: str, probe: Tensor | None
                ) -> tuple[Tensor, Tensor]:
    """D(x; σ) and tr ∂D/∂x per row (exact, or the probe's Hutchinson estimate)."""
    import torch

    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        out = denoiser(x, sigma, labels).to(x.dtype)
        if estimator == "exact":
            flat = out.flatten(1)
            trace = torch.zeros(len(x), dtype=x.dtype, device=x.device)
            for i in range(flat.shape[1]):
                grad, = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
                trace += grad.flatten(1)[:, i]
        else:
            grad, = torch.autograd.grad((out * probe).sum(), x)
            trace = (grad * probe).flatten(1).sum(1)
    return out.detach(), trace.detach()


def check_tolerances(rtol: float, atol: float) -> None:
    """RK45's tolerances: finite and positive (a NaN tolerance makes the solver step forever)."""
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (math.isfinite(value) and value > 0):
            raise NLLError(f"{name} must be a finite number > 0, got {value}")


def ode_logp(denoiser: Callable, x0: Tensor, sigma_min: float, sigma_max: float, *, labels: Any = None,
             estimator: str = "rademacher", probe: Tensor | None = None, rtol: float = 1e-5, atol: float = 1e-5,
             prior: Callable[[Tensor], Tensor] | None = None, max_nfe: int = MAX_NFE) -> tuple[np.ndarray, int]:
    """log p_{σ_min}(x0) per row by the probability-flow ODE, and the number of denoiser evaluations used.

    `prior(x)` is log p_{σ_max} (default N(0, σ_max² I)); `probe` the Hutchinson vectors (shape of x0). The solve
    stops with NLLError at the first non-finite drift or divergence (scipy's RK45 would shrink its step forever)
    and after `max_nfe` evaluations."""
    import torch
    from scipy.integrate import solve_ivp

    if estimator not in ESTIMATORS:
        raise NLLError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    check_tolerances(rtol, atol)
    shape, batch = tuple(x0.shape), x0.shape[0]
    d = x0[0].numel()
    size = batch * d
    nfe = [0]

    def rhs(s: float, state: np.ndarray) -> np.ndarray:
        if nfe[0] >= max_nfe:
            raise NLLError(f"the probability-flow ODE took more than {max_nfe} denoiser evaluations (at σ = {s:.6g}); "
                           f"loosen nll.rtol / nll.atol or raise nll.max_nfe")
        x = torch.from_numpy(state[:size]).reshape(shape).to(x0)
        out, trace = _divergence(denoiser, x, x.new_full((batch,), s), labels, estimator, probe)
        nfe[0] += 1
        drift = (x - out) / s
        div = (d - trace) / s
        derivative = np.concatenate([drift.flatten().double().cpu().numpy(), div.double().cpu().numpy()])
        if not np.isfinite(derivative).all():
            raise NLLError(f"the denoiser's drift or divergence is not finite at σ = {s:.6g}")
        return derivative

    state0 = np.concatenate([x0.detach().flatten().double().cpu().numpy(), np.zeros(batch)])
    solution = solve_ivp(rhs, (sigma_min, sigma_max), state0, method="RK45", rtol=rtol, atol=atol)
    if not solution.success:
        raise NLLError(f"the probability-flow ODE did not converge: {solution.message}")
    x_end = torch.from_numpy(solution.y[:size, -1]).reshape(shape)
    log_prior = (prior or (lambda x: gaussian_logp(x, sigma_max)))(x_end)
    return (log_prior.double() + torch.from_numpy(solution.y[size:, -1])).numpy(), nfe[0]


def bits_per_dim(logp: np.ndarray, dims: int) -> np.ndarray:
    """bits/dim of 8-bit data from the continuous log-density of its dequantised model-range values."""
    return -np.asarray(logp) / (dims * math.log(2)) + DEQUANTIZATION_OFFSET


def _probes(keys: "Tensor", probe_index: int, shape: tuple[int, ...], estimator: str) -> "Tensor | None":
    """One probe per image, from Philox keyed by (image index, probe index): batch-independent."""
    import torch

    from ied import noise

    if estimator == "exact":
        return None
    counters = torch.full_like(keys, probe_index)
    z = noise.normal(keys, counters, STREAM_PROBE, math.prod(shape[1:]), torch.float64).reshape(shape)
    return z if estimator == "gaussian" else torch.where(z >= 0, 1.0, -1.0).to(torch.float64)


def dequantize(images: np.ndarray, keys: "Tensor", probe_index: int) -> "Tensor":
    """uint8 images → (i + u)/127.5 − 1, u ~ U[0, 1) from Philox keyed by (image index, probe index)."""
    import torch

    from ied import noise

    shape = images.shape
    counters = torch.full_like(keys, probe_index)
    words = noise.normal(keys, counters, STREAM_DEQUANT, math.prod(shape[1:]), torch.float64)
    u = torch.special.ndtr(words).reshape(shape)  # normal → uniform by its CDF
    return (torch.from_numpy(images).double() + u) / 127.5 - 1.0


def check_arguments(n_images: int | None, probes: int, estimator: str, batch_size: int, dims: int,
                    available: int) -> None:
    """The job's arguments, before any solve: NLLError names the one that cannot work."""
    if n_images is not None and not 1 <= n_images <= available:
        raise NLLError(f"n_images must be between 1 and the split's {available} images (or all), got {n_images}")
    if probes < 1 or batch_size < 1:
        raise NLLError(f"probes and batch_size must be >= 1, got {probes} and {batch_size}")
    if estimator not in ESTIMATORS:
        raise NLLError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if estimator == "exact" and dims > EXACT_MAX_DIMS:
        raise NLLError(f"exact traces cost one backward pass per dimension at every ODE step: {dims} dimensions here, "
                       f"the limit is {EXACT_MAX_DIMS}; use rademacher or gaussian")


def summarize(frame: "pd.DataFrame") -> dict[str, float]:
    """Mean bits/dim and its standard error over images: the probes of one image are averaged first, since they
    share the image and are not independent draws of the mean."""
    per_image = frame.groupby("image")["bpd"].mean()
    se = float(per_image.std(ddof=1) / math.sqrt(len(per_image))) if len(per_image) > 1 else math.nan
    return {"bpd": float(per_image.mean()), "bpd_se": se}


def nll(checkpoint: str | Path, data: str | Path, out: str | Path, *, n_images: int | None, probes: int = 1,
        estimator: str = "rademacher", rtol: float = 1e-5, atol: float = 1e-5, batch_size: int = 128,
        device: str = "auto", expect_step: int | None = None, expect_config_hash: str | None = None,
        max_nfe: int = MAX_NFE) -> dict:
    """Bits/dim of `n_images` images (None: all) of a prepared split, a fixed seeded subset, under a checkpoint's EMA
    denoiser.

    Writes one Parquet row per (image, probe) and returns the summary (mean, standard error, NFE, images/s)."""
    import pandas as pd
    import torch

    from ied.checkpoints import load_ema_denoiser
    from ied.data import load_imageset
    from ied.adaptive import domain_rationale

    check_tolerances(rtol, atol)
    split = load_imageset(data)
    check_arguments(n_images, probes, estimator, batch_size, math.prod(split.images.shape[1:]), len(split))
    dev = devices.choose(device)
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev, step=expect_step, config_hash=expect_config_hash)
    schedule = domain_rationale(ckpt["spec"]["rationale"])  # the domain the model was trained on
    index = np.sort(np.random.default_rng(0).permutation(len(split))[:n_images])  # the same images everywhere
    rows, tick = [], time.perf_counter()
    for start in range(0, len(index), batch_size):
        idx = index[start:start + batch_size]
        keys = torch.as_tensor(idx, dtype=torch.int64)
        labels = torch.as_tensor(split.labels[idx], device=dev) if ckpt["num_classes"] else None
        for k in range(probes):
            x = dequantize(split.images[idx], keys, k).to(dev)
            probe = _probes(keys, k, tuple(x.shape), estimator)
            try:
                logp, nfe = ode_logp(denoiser, x, schedule.sigma_min, schedule.sigma_max, labels=labels,
                                     estimator=estimator, probe=None if probe is None else probe.to(dev), rtol=rtol,
                                     atol=atol, max_nfe=max_nfe)
            except NLLError as err:
                raise NLLError(f"{checkpoint}: {err} (images {idx[0]}–{idx[-1]}, probe {k}); nothing was written") \
                    from None
            bpd = bits_per_dim(logp, x[0].numel())
            if not np.isfinite(bpd).all():
                raise NLLError(f"{checkpoint}: non-finite likelihood for images {idx[0]}–{idx[-1]}; nothing was written")
            rows += [{"image": int(i), "probe": k, "bpd": float(b), "nfe": nfe} for i, b in zip(idx, bpd)]
    seconds = time.perf_counter() - tick
    frame = pd.DataFrame(rows).assign(checkpoint_step=ckpt["step"], estimator=estimator, rtol=rtol, atol=atol,
                                      sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    return {**summarize(frame), "nfe_per_image": float(frame["nfe"].mean()), "images": len(index),
            "probes": probes, "seconds": seconds, "images_per_s": len(frame) / seconds}
