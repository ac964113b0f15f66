"""The fit jobs: the `teacher` job (the probability-flow trajectory of a fit's pilot images through its base's fine
levels, shared by every fit of one model, checkpoint, base and pilot) and the `fit_rationale` job (a rationale fitted
to a checkpoint's EMA denoiser from that teacher, ied.fitting, written as a schedule table with its knots)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ied import device as devices
from ied import fitting
from ied.checkpoints import load_ema_denoiser
from ied.noise import PerImageNoise, balanced_labels
from ied.rationales import build


def _log(log_path: str | Path | None, info: Mapping[str, Any]) -> None:
    if log_path:
        with open(log_path, "a") as f:
            f.write(json.dumps(info) + "\n")


def teacher_checkpoint(checkpoint: str | Path, spec: Mapping[str, Any], out: str | Path, *,
                       expect_step: int | None = None, expect_config_hash: str | None = None, device: str = "auto",
                       log_path: str | Path | None = None) -> dict:
    """The `teacher` job: the trajectory of `spec`'s pilot latents (counter-based noise, keys fitting.PILOT_KEY + i;
    balanced labels of a conditional network) through its base's fine levels under the checkpoint's EMA denoiser,
    written with what it was computed from; returns what the log line holds."""
    base = build("base", spec["base"])
    levels = fitting.fine_levels(base)  # strictly decreasing, or one line before the checkpoint is read
    dev = devices.choose(device)
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev, step=expect_step, config_hash=expect_config_hash)
    pilot = int(spec["pilot"])
    shape = (pilot, ckpt["channels"], ckpt["resolution"], ckpt["resolution"])
    latents = PerImageNoise([fitting.PILOT_KEY + i for i in range(pilot)], dev).randn(shape)
    labels = balanced_labels(pilot, ckpt["num_classes"], 0) if ckpt["num_classes"] else None
    tick = time.perf_counter()
    try:
        with torch.no_grad():
            path = fitting.teacher(denoiser, latents, levels,
                                   class_labels=None if labels is None else torch.as_tensor(labels, device=dev))
    except fitting.FittingError as err:
        raise fitting.FittingError(f"{checkpoint} (step {ckpt['step']}): {err}") from None
    meta = teacher_meta(spec, ckpt)
    cpu = fitting.Teacher(path.sigmas, [x.cpu().numpy() for x in path.states],
                          [d.cpu().numpy() for d in path.denoised], path.calls)
    fitting.save_teacher(out, cpu, latents.cpu().numpy(), labels, meta)
    info = {"event": "teacher", **meta, "denoiser_evaluations": path.calls * pilot,
            "seconds": time.perf_counter() - tick, "device": str(dev)}
    _log(log_path, info)
    return info


def teacher_meta(spec: Mapping[str, Any], ckpt: Mapping[str, Any]) -> dict:
    """What a teacher is computed from: its base, pilot, fine grid and the checkpoint's content."""
    return {"base": dict(spec["base"]), "pilot": int(spec["pilot"]), "levels": fitting.FINE_LEVELS,
            "substeps": fitting.TEACHER_SUBSTEPS, "checkpoint_sha256": ckpt["sha256"], "checkpoint_step": ckpt["step"],
            "config_hash": ckpt["config_hash"]}


def fit_checkpoint(checkpoint: str | Path, spec: Mapping[str, Any], name: str, out: str | Path,
                   teacher: str | Path, *, expect_step: int | None = None, expect_config_hash: str | None = None,
                   device: str = "auto", log_path: str | Path | None = None) -> dict:
    """The `fit_rationale` job: fit `spec` to the checkpoint's EMA denoiser from its teacher file (which must have
    been computed from this checkpoint, base and pilot) and write the table; returns what the log line holds."""
    fitting.check_spec(spec)  # before the checkpoint is read or any work done
    dev = devices.choose(device)
    denoiser, ckpt = load_ema_denoiser(checkpoint, device=dev, step=expect_step, config_hash=expect_config_hash)
    path, latents, labels, _ = fitting.load_teacher(teacher, teacher_meta(spec, ckpt))
    path = fitting.Teacher(path.sigmas, [torch.from_numpy(x).to(dev) for x in path.states],
                           [torch.from_numpy(d).to(dev) for d in path.denoised], path.calls)
    latents = torch.from_numpy(np.asarray(latents)).to(dev)
    labels = None if labels is None else torch.as_tensor(labels, device=dev)
    evaluated = [0]

    def counted(x: torch.Tensor, sigma: torch.Tensor, class_labels: Any = None) -> torch.Tensor:
        evaluated[0] += len(x)
        return denoiser(x, sigma, class_labels)
    tick = time.perf_counter()
    try:
        with torch.no_grad():
            rationale, report = fitting.fit_rationale(counted, spec, path, latents, labels)
    except fitting.FittingError as err:
        raise fitting.FittingError(f"{checkpoint} (step {ckpt['step']}): {err}") from None
    info = {"event": "fitted", "checkpoint_step": ckpt["step"], "checkpoint_sha256": ckpt["sha256"],
            "config_hash": ckpt["config_hash"], "pilot": spec["pilot"], "teacher_calls": path.calls,
            "denoiser_evaluations": evaluated[0], "billed": fitting.fit_work(spec),
            "seconds": time.perf_counter() - tick,
            "device": str(dev), **report}
    fitting.save_fitted(out, name, spec, rationale, info)
    _log(log_path, info)
    return info
