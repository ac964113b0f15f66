"""Resumable training in segments: train(spec, start, end) continues exactly where a checkpoint left off."""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ied import checkpoints, device as devices
from ied.data import load_imageset, to_model_range
from ied.expressions import compile_formula
from ied.loss import EpsilonLoss
from ied.networks import build_denoiser, parameter_count
from ied.rationales import build
from ied.specs import identity_hash

# ε-loss is logged per log-σ bin: 6 bins per decade over [1e-3, 1e3], plus one below and one above.
SIGMA_EDGES = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 37), [math.inf]])


class TrainingError(RuntimeError):
    """Training produced something that must not become a checkpoint (a non-finite loss or gradient)."""


class DataOrder:
    """Seeded per-epoch permutations: sample p of the stream is perm(p // N)[p % N]; resumable by p alone."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self._epoch, self._perm = n, seed, -1, None

    def indices(self, position: int, count: int) -> np.ndarray:
        epochs, offsets = np.divmod(np.arange(position, position + count), self.n)
        out = np.empty(count, dtype=np.int64)
        for epoch in np.unique(epochs):
            if epoch != self._epoch:
                self._epoch = int(epoch)
                self._perm = np.random.default_rng([self.seed, self._epoch]).permutation(self.n)
            out[epochs == epoch] = self._perm[offsets[epochs == epoch]]
        return out


def _log(line: dict, log_file) -> None:
    if log_file is not None:
        log_file.write(json.dumps(line) + "\n")
        log_file.flush()


class _Stats:
    """Loss sums kept on the device between log lines, so a step never waits for the GPU."""

    def __init__(self, device: torch.device):
        self.edges = torch.tensor(SIGMA_EDGES[1:-1], dtype=torch.float64, device=device)
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.by_sigma = torch.zeros(2, len(SIGMA_EDGES) - 1, dtype=torch.float64, device=device)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=device)
        self.steps = 0
        self.rows: list[dict] = []  # the segment's loss per σ bin and log interval (ied.layout.LOSS)

    def add(self, step: int, per_example: torch.Tensor, sigma: torch.Tensor, grad_norm: torch.Tensor) -> None:
        loss = per_example.detach().double()
        bad = ~(torch.isfinite(loss.mean()) & torch.isfinite(grad_norm))
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        self.loss += loss.mean()
        which = torch.bucketize(sigma.to(self.edges), self.edges, right=True)
        self.by_sigma[0].index_add_(0, which, loss)
        self.by_sigma[1].index_add_(0, which, torch.ones_like(loss))
        self.steps += 1

    def check(self) -> None:
        """Raise at the first non-finite loss or gradient so far (one host sync)."""
        step = int(self.first_bad)
        if step >= 0:
            raise TrainingError(f"non-finite loss or gradient at step {step + 1}; no checkpoint written "
                                f"(check train.weighting, train.lr and the training rationale's domain)")

    def line(self, step: int) -> dict:
        """The log line of the interval ending at `step`; its per-σ losses also go to `rows`."""
        sums, counts = self.by_sigma.cpu().numpy()
        bins = [(lo, hi, s / n, int(n)) for lo, hi, s, n in zip(SIGMA_EDGES[:-1], SIGMA_EDGES[1:], sums, counts) if n]
        self.rows += [{"step": step, "sigma_lo": lo, "sigma_hi": hi, "loss": mean, "count": n}
                      for lo, hi, mean, n in bins]
        out = {"loss": float(self.loss) / max(self.steps, 1),
               "loss_by_sigma": {f"[{lo:.3g},{hi:.3g})": mean for lo, hi, mean, _ in bins}}
        self.loss.zero_()
        self.by_sigma.zero_()
        self.steps = 0
        return out

    def write(self, path: str | Path) -> None:
        import pandas as pd

        from ied.io import atomic_path
        with atomic_path(path) as tmp:
            pd.DataFrame(self.rows, columns=["step", "sigma_lo", "sigma_hi", "loss", "count"]).to_parquet(tmp)


def _restore(state: dict, denoiser, ema, optimizer, noise_gen, device: torch.device) -> int:
    denoiser.load_state_dict(state["net"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_torch"])
    noise_gen.set_state(state["rng_noise"])
    if device.type == "cuda" and "rng_cuda" in state:
        torch.cuda.set_rng_state(state["rng_cuda"], device)
    return int(state["data_position"])


def train(spec: Mapping[str, Any], start_step: int, end_step: int, *, data_path: str | Path,
          checkpoint_in: str | Path | None, checkpoint_out: str | Path, log_path: str | Path | None = None,
          loss_table: str | Path | None = None, log_every: int = 100, device: str = "auto", precision: str = "auto",
          allow_config_change: bool = False) -> dict:
    """Train the resolved training spec from the checkpoint at `start_step` (fresh if 0) to `end_step`.

    Only `spec` (ied.specs.training_spec) determines the weights; logging and device are run-time choices.
    `loss_table`: a Parquet file of the segment's ε-loss per log-σ bin and log interval."""
    if not 0 <= start_step < end_step:
        raise ValueError(f"need 0 <= start_step < end_step, got {start_step}, {end_step}")
    dev = devices.choose(device)
    data = load_imageset(data_path)
    images = to_model_range(torch.from_numpy(data.images))
    labels = torch.from_numpy(data.labels)
    _, channels, resolution, _ = images.shape
    chash, seed = identity_hash(dict(spec)), int(spec["seed"])

    torch.manual_seed(seed)  # initial weights and dropout
    denoiser = build_denoiser(spec["network"], resolution, channels, data.num_classes).to(dev)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    optimizer = torch.optim.RAdam(denoiser.parameters(), lr=float(spec["lr"]))
    noise_gen = torch.Generator().manual_seed(seed + 1)  # σ and ε
    position = 0
    if start_step > 0:
        if checkpoint_in is None:
            raise checkpoints.CheckpointError(f"resuming at step {start_step} needs the checkpoint written then")
        state = checkpoints.load(checkpoint_in, step=start_step, config_hash=chash,
                                 allow_config_change=allow_config_change)
        position = _restore(state, denoiser, ema, optimizer, noise_gen, dev)

    rationale = build("training rationale", spec["rationale"])
    weighting = compile_formula(spec["weighting"]) if spec["weighting"] else None
    loss_fn = EpsilonLoss(rationale, weighting)
    order = DataOrder(len(images), seed)
    batch, ema_decay, grad_clip = int(spec["batch_size"]), float(spec["ema"]), spec["grad_clip"]
    autocast = devices.autocast(dev, precision)
    log_file = open(log_path, "a") if log_path else None
    _log({"event": "start", "step": start_step, "end_step": end_step, "parameters": parameter_count(denoiser),
          "config_hash": chash, "device": str(dev)}, log_file)
    progress = _progress(start_step, end_step)
    stats, tick = _Stats(dev), time.perf_counter()
    params = list(denoiser.parameters())
    denoiser.train()
    for step in range(start_step, end_step):
        idx = torch.from_numpy(order.indices(position, batch))
        position += batch
        x, y = images[idx].to(dev), labels[idx].to(dev)
        with autocast:
            per_example, sigma = loss_fn(denoiser, x, y, noise_gen)
        optimizer.zero_grad(set_to_none=True)
        per_example.mean().backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, float(grad_clip) if grad_clip else math.inf)
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - ema_decay)
        stats.add(step, per_example, sigma, grad_norm)
        if (step + 1) % log_every == 0 or step + 1 == end_step:
            stats.check()
            steps, elapsed = stats.steps, time.perf_counter() - tick
            _log({"step": step + 1, **stats.line(step + 1), "lr": optimizer.param_groups[0]["lr"],
                  "images_per_s": steps * batch / elapsed}, log_file)
            tick = time.perf_counter()
        if progress is not None:
            progress.update(1)
    stats.check()
    state = {"step": end_step, "net": denoiser.state_dict(), "ema": ema.state_dict(),
             "optimizer": optimizer.state_dict(), "rng_torch": torch.get_rng_state(),
             "rng_noise": noise_gen.get_state(), "data_position": position, "config_hash": chash,
             "config_json": json.dumps(dict(spec), sort_keys=True),
             "num_classes": data.num_classes, "resolution": resolution, "channels": channels}
    if dev.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state(dev)
    if loss_table:
        stats.write(loss_table)
    checkpoints.save(checkpoint_out, state)
    _log({"event": "checkpoint", "step": end_step, "path": str(checkpoint_out)}, log_file)
    if progress is not None:
        progress.close()
    if log_file is not None:
        log_file.close()
    return state


def _progress(start: int, end: int):
    if not sys.stderr.isatty():
        return None  # quiet in batch jobs: the JSON log carries progress
    from tqdm import tqdm
    return tqdm(total=end - start, initial=0, desc=f"train {start}->{end}")
