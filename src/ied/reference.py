"""The distance from the probability-flow solution: the `reference` job solves the probability-flow ODE from the first
R latents of a seed set (the same counter-based noise the cells draw), the `distance` job measures a deterministic
cell's images against it.

The reference is Heun (EDM Alg. 1) on EDM ρ = 7's levels over the cells' σ domain at 2S steps, its own error a third
of the relative RMS distance from the solution at S steps (Heun is second order: e_S ≈ 4 e_2S, so
x_S − x_2S ≈ 3 e_2S). A cell's `ref_rmse` is the relative RMS distance of its sampler's raw output (before
quantisation to uint8) from the reference, pooled over the R images, with its per-image spread; it is refused unless
the reference's own error is below REFERENCE_SHARE of it.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ied import device as devices
from ied.checkpoints import load_ema_denoiser
from ied.io import CorruptFileError, atomic_path
from ied.noise import SEED_SET_STRIDE, PerImageNoise, balanced_labels
from ied.rationales import build
from ied.samplers import SAMPLERS, resolve_options
from ied.specs import sampling_rationale

REFERENCE_RHO = 7  # the reference's schedule: EDM ρ = 7 over the cells' domain
REFERENCE_SHARE = 0.01  # the reference's own error must stay below this share of every cell error it serves


class ReferenceError(ValueError):
    """A reference that cannot serve a cell (of another domain or images, or not accurate enough for it)."""


class CorruptReferenceError(CorruptFileError, ReferenceError):
    """A reference file that is truncated or fails its checksum."""


def latents_and_labels(images: int, n_samples: int, seed_set: int, shape: tuple[int, ...], num_classes: int,
                       dev: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first `images` latents and labels of a cell's seed set: what `generate` draws for them."""
    noise = PerImageNoise([seed_set * SEED_SET_STRIDE + i for i in range(images)], dev)
    labels = balanced_labels(n_samples, num_classes, seed_set)[:images] if num_classes else None
    return noise.randn((images, *shape)), None if labels is None else torch.as_tensor(labels, device=dev)


def per_image_error(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Each image's RMS distance from its reference, relative to the reference images' RMS (pooled)."""
    dims = tuple(range(1, x.ndim))
    scale = reference.double().pow(2).mean().sqrt()
    return (x.double() - reference.double()).pow(2).mean(dim=dims).sqrt() / scale


def pooled_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    """The relative RMS distance over all images: √(mean of the per-image mean squares) / the reference's RMS."""
    return float(per_image_error(x, reference).pow(2).mean().sqrt())


def solve(denoiser: Any, latents: torch.Tensor, labels: torch.Tensor | None, sigma_min: float, sigma_max: float,
          steps: int) -> torch.Tensor:
    """Heun at `steps` steps on EDM ρ = 7's levels over [sigma_min, sigma_max], then to σ = 0."""
    schedule = build("reference", {"family": "edm", "rho": REFERENCE_RHO, "sigma_min": sigma_min,
                                   "sigma_max": sigma_max})
    return SAMPLERS["heun"](denoiser, latents, schedule, steps, class_labels=labels)


def reference_checkpoint(checkpoint: str | Path, spec: Mapping[str, Any], out: str | Path, *,
                         expect_step: int | None = None, expect_config_hash: str | None = None, device: str = "auto",
                         batch_size: int = 256) -> dict:
    """The `reference` job: the probability-flow solution of `spec`'s images (R of a set of n, its seed set, its
    domain, at 2S steps) under the checkpoint's EMA denoiser, and its own error; returns what the log line holds."""
    dev = devices.choose(device)
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev, step=expect_step, config_hash=expect_config_hash)
    shape = (ckpt["channels"], ckpt["resolution"], ckpt["resolution"])
    latents, labels = latents_and_labels(spec["images"], spec["n_samples"], spec["seed_set"], shape,
                                         ckpt["num_classes"], dev)
    tick = time.perf_counter()
    coarse, fine = [], []
    with torch.no_grad():
        for start in range(0, spec["images"], batch_size):
            rows = slice(start, start + batch_size)
            part = None if labels is None else labels[rows]
            for steps, results in ((spec["steps"], coarse), (2 * spec["steps"], fine)):
                results.append(solve(denoiser, latents[rows], part, spec["sigma_min"], spec["sigma_max"], steps))
    coarse, fine = torch.cat(coarse), torch.cat(fine)
    if not (bool(torch.isfinite(fine).all()) and bool(torch.isfinite(coarse).all())):
        raise ReferenceError(f"{checkpoint} (step {ckpt['step']}): the probability-flow solution is not finite")
    own = pooled_error(coarse, fine) / 3  # Heun's error falls 4× per doubling: x_S − x_2S ≈ 3 e_2S
    meta = {**dict(spec), "checkpoint_sha256": ckpt["sha256"], "own_error": own}
    save_reference(out, fine.cpu().numpy(), meta)
    return {"event": "reference", **meta, "seconds": time.perf_counter() - tick,
            "denoiser_evaluations": spec["images"] * (6 * spec["steps"] - 2)}


def _digest(images: np.ndarray, meta: str) -> str:
    import hashlib

    digest = hashlib.sha256(meta.encode())
    digest.update(f"{images.dtype.str}:{images.shape}".encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


def save_reference(path: str | Path, images: np.ndarray, meta: Mapping[str, Any]) -> None:
    """The reference images (float64) and what they were solved from, with a checksum (atomically; no pickle)."""
    text = json.dumps(dict(meta), sort_keys=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=images, meta=np.array(text), sha256=np.array(_digest(images, text)))


def load_reference(path: str | Path) -> tuple[np.ndarray, dict]:
    """A `save_reference` file, checked against its checksum."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, text, stored = npz["images"], str(npz["meta"]), str(npz["sha256"])
    except FileNotFoundError:
        raise ReferenceError(f"{path}: no reference file; rerun its reference job") from None
    except Exception as err:  # noqa: BLE001 — zip, key or dtype damage all mean the same thing
        raise CorruptReferenceError(path, f"unreadable or truncated reference ({type(err).__name__})") from None
    if _digest(images, text) != stored:
        raise CorruptReferenceError(path, "checksum mismatch; the reference is corrupt")
    return images, json.loads(text)


def distance(checkpoint: str | Path, reference: str | Path, cells: list[Mapping[str, Any]], out: str | Path, *,
             n_samples: int, seed_set: int, expect_step: int | None = None, expect_config_hash: str | None = None,
             tables: Mapping[str, str | Path] | None = None, device: str = "auto", precision: str = "auto",
             batch_size: int = 256) -> list[dict]:
    """The `distance` job of one reference: for each deterministic cell it serves (`cells`: each its names `cell` and
    sampling spec `spec`), the first R images sampled as `generate` samples them (raw, before quantisation) against
    the reference; one Parquet row per cell (its keys, `ref_rmse`, the per-image spread, the reference's own error).
    `tables`: the fitted or learned rationales' tables by name."""
    import pandas as pd

    images, meta = load_reference(reference)
    dev = devices.choose(device)
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev, step=expect_step, config_hash=expect_config_hash)
    if meta["checkpoint_sha256"] != ckpt["sha256"] or (meta["n_samples"], meta["seed_set"]) != (n_samples, seed_set):
        raise ReferenceError(f"{reference}: solved under another checkpoint or for another set than the cells'; "
                             f"delete it and rerun its reference job")
    net, autocast = devices.prepare_module(denoiser, dev), devices.autocast(dev, precision)
    shape = (ckpt["channels"], ckpt["resolution"], ckpt["resolution"])
    latents, labels = latents_and_labels(len(images), n_samples, seed_set, shape, ckpt["num_classes"], dev)

    def call(x, sigma, class_labels):
        with autocast:
            return net(x, sigma, class_labels)
    rows = []
    for entry in cells:
        table = (tables or {}).get(entry["cell"]["sample_rationale"])
        x = _sampled(call, entry["spec"], meta, reference, latents, labels, table, batch_size)
        row = distance_row(x, torch.from_numpy(images), meta["own_error"])
        if not meta["own_error"] < REFERENCE_SHARE * row["ref_rmse"]:
            raise ReferenceError(f"{reference}: its own error {meta['own_error']:.3g} is not below "
                                 f"{REFERENCE_SHARE:.0%} of the distance {row['ref_rmse']:.3g} of "
                                 f"{entry['cell']['sample_rationale']} with {entry['cell']['sampler_name']}; raise "
                                 f"nfe_sweep.reference_steps ({meta['steps']}) and rerun")
        rows.append({**dict(entry["cell"]), "checkpoint_step": ckpt["step"], "seed_set": seed_set,
                     "n_samples": n_samples, **row})
    with atomic_path(out) as tmp:
        pd.DataFrame(rows).to_parquet(tmp, index=False)
    return rows


def _sampled(call: Any, spec: Mapping[str, Any], meta: Mapping[str, Any], reference: str | Path,
             latents: torch.Tensor, labels: torch.Tensor | None, table: str | Path | None,
             batch_size: int) -> torch.Tensor:
    """One cell's first images, its raw sampler output, on the CPU."""
    rationale = spec["rationale"]
    for key in ("sigma_min", "sigma_max"):
        if not math.isclose(float(meta[key]), float(rationale[key]), rel_tol=1e-12):
            raise ReferenceError(f"{reference}: a reference of another {key} ({meta[key]}) than the cell's "
                                 f"({rationale[key]}); delete it and rerun its reference job")
    schedule, _ = sampling_rationale(rationale, table)
    options = resolve_options(spec["sampler"], spec["options"])
    parts = []
    with torch.no_grad():
        for start in range(0, len(latents), batch_size):
            rows = slice(start, start + batch_size)
            parts.append(SAMPLERS[spec["sampler"]](call, latents[rows], schedule, spec["steps"],
                                                   class_labels=None if labels is None else labels[rows],
                                                   **options).cpu())
    x = torch.cat(parts)
    if not bool(torch.isfinite(x).all()):
        raise ReferenceError(f"{reference}: the sampler {spec['sampler']} produced non-finite values on its images")
    return x


def distance_row(x: torch.Tensor, reference: torch.Tensor, own_error: float, resamples: int = 200) -> dict:
    """ref_rmse (pooled), its 95 % bootstrap interval over the images, its per-image spread (std, 10th, 50th and 90th
    percentile) and the reference's own error."""
    from ied.fidelity import centred_interval, resample_counts

    each = per_image_error(x, reference).numpy()
    counts = resample_counts(len(each), resamples)
    lo, hi = centred_interval(np.sqrt(counts @ each**2 / len(each)))
    return {"ref_rmse": float(np.sqrt(np.mean(each**2))), "ref_rmse_lo": lo, "ref_rmse_hi": hi,
            "ref_rmse_std": float(np.std(each)),
            "ref_rmse_p10": float(np.percentile(each, 10)), "ref_rmse_median": float(np.median(each)),
            "ref_rmse_p90": float(np.percentile(each, 90)), "ref_images": int(len(each)),
            "ref_own_error": float(own_error)}
