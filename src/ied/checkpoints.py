"""Checkpoint I/O: atomic, checksummed, loaded with weights_only, carrying their own training spec.

As in k-diffusion, a checkpoint carries its config: the resolved training spec (`ied.specs.training_spec`)
and its identity hash. Training, generation, NLL and the benchmarks read checkpoints only through here.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ied.io import CorruptFileError, atomic_path


class CheckpointError(RuntimeError):
    """A missing, corrupt or mismatched checkpoint; the message names the file."""


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


def make_state(*, step: int, ema: dict, spec: Any, config_hash: str, channels: int, resolution: int,
               num_classes: int, **extra: Any) -> dict:
    """A checkpoint's state in its one format: the step, the EMA weights, the spec it carries (as canonical JSON)
    and its identity hash, the image shape and classes, then what its writer adds (training: the network, the
    optimizer and the data position; an imported network: its source)."""
    return {"step": step, "ema": ema, "config_hash": config_hash, "config_json": json.dumps(dict(spec), sort_keys=True),
            "num_classes": num_classes, "resolution": resolution, "channels": channels, **extra}


def save(path: str | Path, state: dict) -> None:
    """Write a checkpoint atomically (temp file + rename) with its checksum."""
    with atomic_path(path) as tmp:
        torch.save({**state, "sha256": state_digest(state)}, tmp)


def load(path: str | Path, *, step: int | None = None, config_hash: str | None = None,
         allow_config_change: bool = False) -> dict:
    """Load with weights_only=True and verify the checksum; refuse a checkpoint of another step or training
    config (unless allow_config_change). Its `sha256` stays in the returned state: the content's identity."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CorruptCheckpointError(path, f"unreadable or truncated checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "sha256" not in state:
        raise CorruptCheckpointError(path, "not an ied checkpoint (no checksum)")
    stored = state.pop("sha256")
    if stored != state_digest(state):
        raise CorruptCheckpointError(path, "checksum mismatch; the checkpoint is corrupt")
    state["sha256"] = stored
    if step is not None and int(state.get("step", -1)) != int(step):
        raise CheckpointError(f"{path}: holds step {state.get('step')}, expected {step} (a copied or renamed "
                              f"checkpoint?)")
    if config_hash is not None and state.get("config_hash") != config_hash and not allow_config_change:
        raise CheckpointError(f"{path}: written by a different training config (hash {state.get('config_hash')}, "
                              f"expected {config_hash}); delete it and rerun the pipeline to retrain it")
    return state


def first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return name
    return None


def training_spec(state: dict) -> dict:
    """The resolved training spec a checkpoint was trained with."""
    return json.loads(state["config_json"])


def load_ema_denoiser(path: str | Path, device: torch.device | str = "cpu", **expect) -> tuple[torch.nn.Module, dict]:
    """The EMA denoiser of a checkpoint, ready for sampling, and its step, shape, spec and content digest.

    `expect` (step=, config_hash=) is checked as in `load`."""
    from ied.networks import build_network

    state = load(path, **expect)
    bad = first_non_finite(state["ema"])
    if bad is not None:
        raise CheckpointError(f"{path}: the EMA weights hold non-finite values (first in {bad!r}); nothing can be "
                              f"sampled or scored from it. Retrain it (check train.lr, train.ema, train.weighting)")
    spec = training_spec(state)
    denoiser = build_network(spec["network"], state["resolution"], state["channels"], state["num_classes"])
    denoiser.load_state_dict(state["ema"])
    info = {k: int(state[k]) for k in ("step", "resolution", "channels", "num_classes")}
    info.update(spec=spec, config_hash=state["config_hash"], sha256=state["sha256"])
    return denoiser.to(device).eval().requires_grad_(False), info
