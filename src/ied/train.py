"""Resumable training in segments: train(spec, start, end) continues exactly where a checkpoint left off.

Every random draw is a function of the step or of the example's global position in the data stream — data
order (seeded epochs), σ and ε (ied.noise, Philox), dropout (torch seeded per step and rank) — so a checkpoint
needs no RNG state, a resumed segment continues bit for bit, and N data-parallel ranks (ied.distributed) see
the same examples, σ and ε as one process.
"""
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

from ied import checkpoints, device as devices, distributed, noise
from ied.adaptive import AdaptiveError, AdaptiveSchedule, write_density
from ied.data import load_imageset, to_model_range
from ied.distributed import Context
from ied.expressions import compile_formula
from ied.loss import epsilon_loss
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

    def add(self, step: int, per_example: torch.Tensor, sigma: torch.Tensor, grad_norm: torch.Tensor,
            objective: torch.Tensor | None = None) -> None:
        """`per_example`: the loss at each σ (binned); `objective`: the loss the step descends, whose mean is logged
        (the same unless an adaptive rationale weights it)."""
        objective = per_example if objective is None else objective
        loss = per_example.detach().double()
        bad = ~(torch.isfinite(loss.mean()) & torch.isfinite(grad_norm))
        self.first_bad = torch.where(bad & (self.first_bad < 0), step, self.first_bad)
        self.loss += objective.detach().double().mean()
        which = torch.bucketize(sigma.to(self.edges), self.edges, right=True)
        self.by_sigma[0].index_add_(0, which, loss)
        self.by_sigma[1].index_add_(0, which, torch.ones_like(loss))
        self.steps += 1

    def reduce(self, ctx: Context) -> None:
        """Sum the interval's statistics over the data-parallel ranks (at a log line, not every step)."""
        ctx.all_reduce(self.loss)
        self.loss /= ctx.world
        ctx.all_reduce(self.by_sigma)
        ctx.all_reduce(self.first_bad, "max")

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


class Plan:
    """What step k draws, as a function of the global example positions k·B … k·B + B − 1 only (any world size):
    data indices (seeded epochs), t ~ U[0, 1] → σ = σ_r(t) and λ(σ) on the host, ε on the device (ied.noise).

    An adaptive rationale (ied.adaptive) moves with every step's loss, so its σ = σ_p(t) and importance weights are
    drawn step by step from its state after the previous step; a fixed rationale's for a block of steps at once."""

    def __init__(self, rationale, weighting, n_images: int, seed: int, batch: int, ctx: Context,
                 device: torch.device, adaptive: AdaptiveSchedule | None = None):
        self.rationale, self.weighting, self.seed, self.batch, self.ctx = rationale, weighting, seed, batch, ctx
        self.order, self.device, self.adaptive = DataOrder(n_images, seed), device, adaptive
        self.local = batch // ctx.world
        self._t = np.empty((0, self.local))

    def host(self, steps: range) -> dict[str, torch.Tensor]:
        """This rank's indices, σ and λ(σ) for a block of steps, in one (pinned) host→device copy each."""
        rows = np.concatenate([np.arange(k * self.batch + self.ctx.rank * self.local,
                                         k * self.batch + (self.ctx.rank + 1) * self.local) for k in steps])
        t = noise.uniform(torch.full((len(rows),), self.seed, dtype=torch.int64), torch.from_numpy(rows),
                          noise.STREAM_TIME).numpy()
        out = {"index": torch.from_numpy(self._indices(rows)), "position": torch.from_numpy(rows)}
        if self.adaptive is None:
            out.update(self._levels(self.rationale.sigma(t)))
        else:
            self._t = t.reshape(len(steps), self.local)
        return self._to_device(out)

    def step(self, draws: Mapping[str, torch.Tensor], j: int) -> dict[str, torch.Tensor]:
        """This rank's rows of the block's j-th step (an adaptive rationale's σ drawn now, from its current state)."""
        draw = {key: value[j * self.local:(j + 1) * self.local] for key, value in draws.items()}
        if self.adaptive is not None:
            sigma, importance, bins = self.adaptive.draw(self._t[j])
            draw.update(self._to_device({**self._levels(sigma), "importance": torch.from_numpy(importance),
                                         "bin": torch.from_numpy(bins)}))
        return draw

    def _levels(self, sigma: np.ndarray) -> dict[str, torch.Tensor]:
        out = {"sigma": torch.from_numpy(sigma)}
        if self.weighting is not None:
            out["weight"] = torch.from_numpy(np.asarray(self.weighting(sigma), dtype=np.float64))
        return out

    def _to_device(self, tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pin = self.device.type == "cuda"
        return {k: (v.pin_memory() if pin else v).to(self.device, non_blocking=True) for k, v in tensors.items()}

    def learn(self, step: int, per_example: torch.Tensor, bins: torch.Tensor) -> None:
        """Move the adaptive density by the step's loss per bin, summed over every rank's examples."""
        n = len(self.adaptive.mass)
        totals = torch.zeros(2, n, dtype=torch.float64, device=per_example.device)
        totals[0].index_add_(0, bins, per_example.detach().double())
        totals[1].index_add_(0, bins, torch.ones_like(per_example, dtype=torch.float64))
        sums, counts = self.ctx.all_reduce(totals).cpu().numpy()
        try:
            self.adaptive.update(sums, counts, step)
        except AdaptiveError as err:
            raise TrainingError(f"{err}; no checkpoint written (check train.weighting, train.lr and the training "
                                f"rationale's domain)") from None

    def _indices(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        for start in range(0, len(rows), self.local):  # one step's rows are consecutive positions
            out[start:start + self.local] = self.order.indices(int(rows[start]), self.local)
        return out

    def epsilon(self, positions: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        keys = torch.full_like(positions, self.seed)
        return noise.normal(keys, positions, noise.STREAM_EPSILON, math.prod(shape[1:])).reshape(shape)


def _dropout_seed(seed: int, step: int, rank: int) -> int:
    """The torch RNG seed of one step (dropout): a function of (seed, step, rank), so no RNG state is resumed."""
    return (seed * 1_000_003 + step) * 4099 + rank


def _block(start: int, end: int, size: int):
    """Steps start … end − 1 in blocks of `size` (the host prepares one block's draws at a time)."""
    for first in range(start, end, size):
        yield range(first, min(first + size, end))


def train(spec: Mapping[str, Any], start_step: int, end_step: int, *, data_path: str | Path,
          checkpoint_in: str | Path | None, checkpoint_out: str | Path, log_path: str | Path | None = None,
          loss_table: str | Path | None = None, density_table: str | Path | None = None, log_every: int = 100,
          device: str = "auto", precision: str = "auto", compile: bool = False,
          allow_config_change: bool = False) -> dict | None:
    """Train the resolved training spec from the checkpoint at `start_step` (fresh if 0) to `end_step`.

    Only `spec` (ied.specs.training_spec) determines the weights; logging, device, precision, compile and the
    number of data-parallel ranks (torchrun) are run-time choices. `loss_table`: a Parquet file of the
    segment's ε-loss per log-σ bin and log interval; `density_table`: an adaptive rationale's learned density at
    `end_step` (ied.adaptive.write_density). Returns the checkpoint's state on rank 0."""
    if not 0 <= start_step < end_step:
        raise ValueError(f"need 0 <= start_step < end_step, got {start_step}, {end_step}")
    dev = devices.choose(device)
    ctx = distributed.context(dev)
    if dev.type == "cuda" and ctx.world > 1:
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    try:
        return _train(spec, start_step, end_step, dev, ctx, data_path=data_path, checkpoint_in=checkpoint_in,
                      checkpoint_out=checkpoint_out, log_path=log_path, loss_table=loss_table,
                      density_table=density_table, log_every=log_every,
                      precision=precision, compile=compile, allow_config_change=allow_config_change)
    finally:
        ctx.close()


def _model(spec: Mapping[str, Any], shape: tuple[int, int, int], dev: torch.device, state: dict | None):
    """The denoiser, its EMA and RAdam: freshly initialised from the seed, or as a checkpoint left them."""
    channels, resolution, classes = shape
    torch.manual_seed(int(spec["seed"]))  # initial weights
    denoiser = build_denoiser(spec["network"], resolution, channels, classes)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    if state is not None:
        denoiser.load_state_dict(state["net"])
        ema.load_state_dict(state["ema"])
    denoiser, ema = denoiser.to(dev), ema.to(dev)
    optimizer = torch.optim.RAdam(denoiser.parameters(), lr=float(spec["lr"]), foreach=dev.type == "cuda")
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    return denoiser, ema, optimizer


def _train(spec, start_step, end_step, dev, ctx, *, data_path, checkpoint_in, checkpoint_out, log_path, loss_table,
           density_table, log_every, precision, compile, allow_config_change) -> dict | None:
    data = load_imageset(data_path)
    images = torch.from_numpy(data.images).to(dev)  # uint8, resident on the device (CIFAR-10: 150 MB)
    labels = torch.from_numpy(data.labels).to(dev)
    _, channels, resolution, _ = images.shape
    chash, seed, batch = identity_hash(dict(spec)), int(spec["seed"]), int(spec["batch_size"])
    if batch % ctx.world:
        raise TrainingError(f"train.batch_size {batch} does not split evenly across {ctx.world} GPUs")

    state = _resume_from(checkpoint_in, start_step, chash, allow_config_change)
    denoiser, ema, optimizer = _model(spec, (channels, resolution, data.num_classes), dev, state)
    params = list(denoiser.parameters())
    net = devices.prepare_module(
        torch.nn.parallel.DistributedDataParallel(denoiser, device_ids=[dev.index] if dev.type == "cuda" else None)
        if ctx.world > 1 else denoiser, dev, compile=compile)

    weighting = compile_formula(spec["weighting"]) if spec["weighting"] else None
    adaptive = _adaptive(spec["rationale"], state, density_table, checkpoint_in)
    rationale = adaptive.target if adaptive else build("training rationale", spec["rationale"])
    plan = Plan(rationale, weighting, len(images), seed, batch, ctx, dev, adaptive)
    ema_decay, grad_clip = float(spec["ema"]), spec["grad_clip"]
    autocast = devices.autocast(dev, precision)
    log_file = open(log_path, "a") if (log_path and ctx.main) else None
    _log({"event": "start", "step": start_step, "end_step": end_step, "parameters": parameter_count(denoiser),
          "config_hash": chash, "device": str(dev), "ranks": ctx.world}, log_file)
    progress = _progress(start_step, end_step) if ctx.main else None
    stats, tick = _Stats(dev), time.perf_counter()
    denoiser.train()
    for block in _block(start_step, end_step, log_every):
        draws = plan.host(block)
        for j, step in enumerate(block):
            torch.manual_seed(_dropout_seed(seed, step, ctx.rank))
            draw = plan.step(draws, j)
            per_example, objective, grad_norm = _step(net, optimizer, params, ema, draw, images, labels, plan,
                                                      autocast, grad_clip, ema_decay)
            stats.add(step, per_example, draw["sigma"], grad_norm, objective)
            if adaptive is not None:
                plan.learn(step, per_example, draw["bin"])
            if progress is not None:
                progress.update(1)
        stats.reduce(ctx)
        stats.check()
        steps, elapsed = stats.steps, time.perf_counter() - tick
        _log({"step": block[-1] + 1, **stats.line(block[-1] + 1), "lr": optimizer.param_groups[0]["lr"],
              "images_per_s": steps * batch / elapsed}, log_file)
        tick = time.perf_counter()
    _check_finite(denoiser, ema, end_step)
    state = checkpoints.make_state(step=end_step, ema=ema.state_dict(), spec=spec, config_hash=chash,
                                   channels=channels, resolution=resolution, num_classes=data.num_classes,
                                   net=denoiser.state_dict(), optimizer=optimizer.state_dict(),
                                   data_position=end_step * batch,
                                   **({"adaptive": _adaptive_state(adaptive)} if adaptive else {}))
    if ctx.main:
        if loss_table:
            stats.write(loss_table)
        if density_table:
            write_density(density_table, adaptive, end_step)
        checkpoints.save(checkpoint_out, state)
        _log({"event": "checkpoint", "step": end_step, "path": str(checkpoint_out)}, log_file)
    ctx.barrier()  # no rank leaves before rank 0 has written the checkpoint
    if progress is not None:
        progress.close()
    if log_file is not None:
        log_file.close()
    return state if ctx.main else None


def _step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, params: list[torch.Tensor], ema: torch.nn.Module,
          draw: Mapping[str, torch.Tensor], images: torch.Tensor, labels: torch.Tensor, plan: Plan, autocast: Any,
          grad_clip: float | None, ema_decay: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on the examples `draw` names (this rank's rows of the step), then the EMA update; the
    per-example loss, the loss the step descends (× an adaptive rationale's importance weights) and the gradient norm
    before clipping."""
    idx, sigma = draw["index"], draw["sigma"]
    x = to_model_range(images[idx])
    eps = plan.epsilon(draw["position"], tuple(x.shape))
    with autocast:
        per_example = epsilon_loss(net, x, labels[idx], sigma, eps, draw.get("weight"))
    objective = per_example * draw["importance"].to(per_example) if "importance" in draw else per_example
    optimizer.zero_grad(set_to_none=True)
    objective.mean().backward()  # DDP averages over ranks: the global batch's mean
    grad_norm = torch.nn.utils.clip_grad_norm_(params, float(grad_clip) if grad_clip else math.inf)
    optimizer.step()
    with torch.no_grad():  # ema = d·ema + (1 − d)·net, one fused call for all tensors
        torch._foreach_lerp_(list(ema.parameters()), params, 1.0 - ema_decay)
    return per_example, objective, grad_norm


def _adaptive(rationale: Mapping[str, Any], state: dict | None, density_table: str | Path | None,
              checkpoint: str | Path | None = None) -> AdaptiveSchedule | None:
    """An adaptive training rationale's schedule, as the checkpoint left it (None for a fixed rationale)."""
    if rationale["family"] != "adaptive":
        if density_table:
            raise TrainingError("--density-table is written by an adaptive training rationale only")
        return None
    adaptive = AdaptiveSchedule(rationale, "training rationale")
    if state is not None:
        saved = state.get("adaptive")
        if not isinstance(saved, Mapping):
            raise checkpoints.CheckpointError(f"{checkpoint}: holds no adaptive state to resume the training rationale")
        try:
            adaptive.load_state_dict({k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in saved.items()})
        except AdaptiveError as err:
            raise checkpoints.CheckpointError(f"{checkpoint}: {err}; delete it and rerun its training "
                                              f"segment") from None
    return adaptive


def _adaptive_state(adaptive: AdaptiveSchedule) -> dict:
    return {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in adaptive.state_dict().items()}


def _resume_from(checkpoint_in: str | Path | None, start_step: int, chash: str, allow_config_change: bool
                 ) -> dict | None:
    """The checkpoint a segment starting at `start_step` resumes from (None for a new model), its step and
    training spec checked."""
    if start_step == 0:
        return None
    if checkpoint_in is None:
        raise checkpoints.CheckpointError(f"resuming at step {start_step} needs the checkpoint written then")
    return checkpoints.load(checkpoint_in, step=start_step, config_hash=chash, allow_config_change=allow_config_change)


def _check_finite(denoiser: torch.nn.Module, ema: torch.nn.Module, end_step: int) -> None:
    """TrainingError, before any checkpoint is written, if the weights or the EMA weights are not finite."""
    for part, module in (("weights", denoiser), ("EMA weights", ema)):
        bad = checkpoints.first_non_finite(module.state_dict())
        if bad is not None:
            raise TrainingError(f"non-finite {part} ({bad!r}) at step {end_step}; no checkpoint written (check "
                                f"train.ema, train.lr and train.weighting)")


def _progress(start: int, end: int):
    if not sys.stderr.isatty():
        return None  # quiet in batch jobs: the JSON log carries progress
    from tqdm import tqdm
    return tqdm(total=end - start, initial=0, desc=f"train {start}->{end}")
