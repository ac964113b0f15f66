"""Resumable training in segments: train(config, start, end) continues exactly where a checkpoint left off."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ied.data import load_imageset, to_model_range
from ied.expressions import compile_formula
from ied.io import CorruptFileError, atomic_path
from ied.loss import EpsilonLoss
from ied.networks import build_denoiser, parameter_count
from ied.rationales import build

SIGMA_BUCKETS = (0.0, 0.02, 0.2, 2.0, 20.0, math.inf)
TRAINING_KEYS = ("dataset", "rationale", "network", "batch_size", "lr", "ema", "grad_clip", "seed", "weighting")


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint; the message names the file."""


class CorruptCheckpointError(CorruptFileError, CheckpointError):
    """A checkpoint that is truncated or fails its checksum."""


def state_digest(state: Any) -> str:
    """SHA-256 over every tensor's bytes and every other value of a (nested) checkpoint state."""
    digest = hashlib.sha256()

    def visit(key: str, x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            for k in sorted(x, key=str):
                visit(f"{key}/{k}", x[k])
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                visit(f"{key}[{i}]", v)
        else:
            digest.update(f"{key}={x!r}".encode())

    visit("", state)
    return digest.hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """Hash of everything that determines the trained weights (not paths, not segment bounds)."""
    relevant = {k: config.get(k) for k in TRAINING_KEYS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def save_checkpoint(path: str | Path, state: dict) -> None:
    """Write a checkpoint atomically (temp file + rename)."""
    with atomic_path(path) as tmp:
        torch.save({**state, "sha256": state_digest(state)}, tmp)


def load_checkpoint(path: str | Path, expected_hash: str | None = None, allow_config_change: bool = False) -> dict:
    """Load with weights_only=True; refuse a checkpoint from a different config unless allowed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptCheckpointError(path, f"unreadable or truncated checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.pop("sha256", None) != state_digest(state):
        raise CorruptCheckpointError(path, "checksum mismatch; the checkpoint is corrupt")
    if expected_hash is not None and state.get("config_hash") != expected_hash and not allow_config_change:
        raise CheckpointError(f"{path}: written by a different training config (hash {state.get('config_hash')} "
                              f"!= {expected_hash}); pass allow_config_change to use it anyway")
    return state


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


def _device(config: Mapping[str, Any]) -> torch.device:
    wanted = config.get("device", "auto")
    return torch.device("cuda" if wanted == "auto" and torch.cuda.is_available() else
                        ("cpu" if wanted == "auto" else wanted))


def _log(line: dict, log_file) -> None:
    if log_file is not None:
        log_file.write(json.dumps(line) + "\n")
        log_file.flush()


def train(config: Mapping[str, Any], start_step: int, end_step: int, *, data_path: str | Path,
          checkpoint_in: str | Path | None, checkpoint_out: str | Path, log_path: str | Path | None = None,
          allow_config_change: bool = False) -> dict:
    """Train from the checkpoint at `start_step` (fresh init if 0) to `end_step`; write that checkpoint."""
    if not 0 <= start_step < end_step:
        raise ValueError(f"need 0 <= start_step < end_step, got {start_step}, {end_step}")
    device = _device(config)
    data = load_imageset(data_path)
    images = to_model_range(torch.from_numpy(data.images))
    labels = torch.from_numpy(data.labels)
    _, channels, resolution, _ = images.shape
    chash = config_hash(config)
    seed = int(config.get("seed", 0))

    torch.manual_seed(seed)  # initial weights and dropout
    denoiser = build_denoiser(config["network"], resolution, channels, data.num_classes).to(device)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    optimizer = torch.optim.RAdam(denoiser.parameters(), lr=float(config.get("lr", 2e-4)))
    noise_gen = torch.Generator().manual_seed(seed + 1)  # σ and ε
    position = 0
    if start_step > 0:
        if checkpoint_in is None:
            raise CheckpointError(f"resuming at step {start_step} needs the checkpoint written at that step")
        state = load_checkpoint(checkpoint_in, chash, allow_config_change)
        if state["step"] != start_step:
            raise CheckpointError(f"{checkpoint_in}: holds step {state['step']}, expected {start_step}")
        denoiser.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
        noise_gen.set_state(state["rng_noise"])
        if device.type == "cuda" and "rng_cuda" in state:
            torch.cuda.set_rng_state(state["rng_cuda"])
        position = int(state["data_position"])

    rationale = build("train", config["rationale"])
    weighting = compile_formula(config["weighting"]) if config.get("weighting") else None
    loss_fn = EpsilonLoss(rationale, weighting)
    order = DataOrder(len(images), seed)
    batch, ema_decay = int(config["batch_size"]), float(config.get("ema", 0.999))
    grad_clip, log_every = config.get("grad_clip"), int(config.get("log_every", 100))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    log_file = open(log_path, "a") if log_path else None
    _log({"event": "start", "step": start_step, "end_step": end_step, "parameters": parameter_count(denoiser),
          "config_hash": chash, "device": str(device)}, log_file)
    progress = _progress(start_step, end_step)
    window: list[float] = []
    bucket_sum, bucket_n = np.zeros(len(SIGMA_BUCKETS) - 1), np.zeros(len(SIGMA_BUCKETS) - 1)
    tick = time.perf_counter()
    denoiser.train()
    for step in range(start_step, end_step):
        idx = torch.from_numpy(order.indices(position, batch))
        position += batch
        x, y = images[idx].to(device), labels[idx].to(device)
        with autocast:
            per_example, sigma = loss_fn(denoiser, x, y, noise_gen)
        loss = per_example.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(denoiser.parameters(), float(grad_clip))
        optimizer.step()
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), denoiser.parameters()):
                p_ema.lerp_(p, 1.0 - ema_decay)
        window.append(loss.item())
        which = np.digitize(sigma.cpu().numpy(), SIGMA_BUCKETS[1:-1])
        np.add.at(bucket_sum, which, per_example.detach().cpu().numpy())
        np.add.at(bucket_n, which, 1)
        if (step + 1) % log_every == 0 or step + 1 == end_step:
            elapsed = time.perf_counter() - tick
            _log({"step": step + 1, "loss": float(np.mean(window)), "lr": optimizer.param_groups[0]["lr"],
                  "images_per_s": len(window) * batch / elapsed,
                  "loss_by_sigma": {f"[{lo:g},{hi:g})": (s / n if n else None) for lo, hi, s, n in
                                    zip(SIGMA_BUCKETS[:-1], SIGMA_BUCKETS[1:], bucket_sum, bucket_n)}}, log_file)
            window.clear()
            bucket_sum[:], bucket_n[:] = 0, 0
            tick = time.perf_counter()
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4f}")
    state = {"step": end_step, "net": denoiser.state_dict(), "ema": ema.state_dict(),
             "optimizer": optimizer.state_dict(), "rng_torch": torch.get_rng_state(),
             "rng_noise": noise_gen.get_state(), "data_position": position, "config_hash": chash,
             "config_json": json.dumps(dict(config), sort_keys=True, default=str),
             "num_classes": data.num_classes, "resolution": resolution, "channels": channels}
    if device.type == "cuda":
        state["rng_cuda"] = torch.cuda.get_rng_state()
    save_checkpoint(checkpoint_out, state)
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


def load_ema_denoiser(path: str | Path, expected_hash: str | None = None, device: str | torch.device = "cpu",
                      allow_config_change: bool = False) -> tuple[torch.nn.Module, dict]:
    """The EMA denoiser of a checkpoint, ready for sampling, and its step, shape and training config."""
    state = load_checkpoint(path, expected_hash, allow_config_change)
    config = json.loads(state["config_json"])
    denoiser = build_denoiser(config["network"], state["resolution"], state["channels"], state["num_classes"])
    denoiser.load_state_dict(state["ema"])
    info = {k: int(state[k]) for k in ("step", "resolution", "channels", "num_classes")}
    return denoiser.to(device).eval().requires_grad_(False), {**info, "config": config}
