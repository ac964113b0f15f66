"""The `fit_rationale` job: a rationale fitted to a checkpoint's EMA denoiser (ied.fitting), written as a schedule
table with its knots."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import torch

from ied import device as devices
from ied import fitting
from ied.checkpoints import load_ema_denoiser
from ied.noise import PerImageNoise, balanced_labels
from ied.samplers import noise_levels


def fit_checkpoint(checkpoint: str | Path, spec: Mapping[str, Any], name: str, out: str | Path, *,
                   expect_step: int | None = None, expect_config_hash: str | None = None, device: str = "auto",
                   log_path: str | Path | None = None) -> dict:
    """The `fit_rationale` job: fit `spec` to the checkpoint's EMA denoiser on its pilot latents (counter-based
    noise, keys fitting.PILOT_KEY + i) and write the table; returns what the log line holds."""
    fitting.check_spec(spec)  # before the checkpoint is read or any teacher step taken
    dev = devices.choose(device)
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev, step=expect_step, config_hash=expect_config_hash)
    shape = (spec["pilot"], ckpt["channels"], ckpt["resolution"], ckpt["resolution"])
    latents = PerImageNoise([fitting.PILOT_KEY + i for i in range(spec["pilot"])], dev).randn(shape)
    labels = torch.as_tensor(balanced_labels(spec["pilot"], ckpt["num_classes"], 0), device=dev) \
        if ckpt["num_classes"] else None
    tick = time.perf_counter()
    try:
        with torch.no_grad():
            rationale, path = fitting.fit_rationale(denoiser, spec, latents, labels)
    except fitting.FittingError as err:
        raise fitting.FittingError(f"{checkpoint} (step {ckpt['step']}): {err}") from None
    levels = noise_levels(rationale, fitting.steps_for_nfe(spec["sampler"], spec["nfe"]))[:-1].tolist() \
        if spec["method"] == "trajectory_dp" else None
    info = {"event": "fitted", "checkpoint_step": ckpt["step"], "checkpoint_sha256": ckpt["sha256"],
            "config_hash": ckpt["config_hash"], "pilot": spec["pilot"], "teacher_calls": path.calls,
            "denoiser_evaluations": fitting.fit_calls(spec) * spec["pilot"], "seconds": time.perf_counter() - tick,
            "levels": levels, "device": str(dev)}
    fitting.save_fitted(out, name, spec, rationale, info)
    if log_path:
        with open(log_path, "a") as f:
            f.write(json.dumps(info) + "\n")
    return info
