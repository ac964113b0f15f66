"""Data-parallel training on the GPUs of one node: `python -m ied train --gpus N …` starts N ranks with torchrun.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them the job is one process. The config's batch size
stays the global batch, split evenly across ranks; DDP averages the gradients, so N ranks take the same step
as one process would, up to the order of floating-point reductions. Multi-node training is not supported
(one node, `--standalone`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place among the ranks of a data-parallel job."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """Sum (or max) over ranks, in place; a no-op for one process."""
        if self.world > 1:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def context(device: torch.device) -> Context:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU), or run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context()
    ctx = Context(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx



RANK_ERRORS = "IED_RANK_ERRORS"  # a folder where each failing rank leaves its one-line error (ied.cli)


def inside_ranks() -> bool:
    """True in a process torchrun started (one rank of several)."""
    return "WORLD_SIZE" in os.environ


def report_rank_error(message: str) -> None:
    """Leave this rank's one-line error for the launcher (a no-op outside `launch`)."""
    folder, rank = os.environ.get(RANK_ERRORS), os.environ.get("RANK")
    if folder and rank is not None:
        Path(folder, f"rank-{rank}.txt").write_text(message)


def launch(argv: list[str], gpus: int) -> int:
    """Run `python -m ied <argv>` as `gpus` ranks on this node (torchrun --standalone); the exit status.

    torchrun ends a failed run with 40–60 lines of ChildFailedError; the first failing rank's own one-line error is
    printed after them, last, so the job's log ends with the reason."""
    with tempfile.TemporaryDirectory(prefix="ied-ranks-") as folder:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}", "-m",
                   "ied", *argv]
        status = subprocess.run(command, env={**os.environ, RANK_ERRORS: folder}).returncode
        if status == 0:
            return 0
        reports = sorted(Path(folder).glob("rank-*.txt"), key=lambda p: int(p.stem.removeprefix("rank-")))
        reason = (f"rank {reports[0].stem.removeprefix('rank-')}: {reports[0].read_text().strip()}" if reports else
                  f"torchrun exited with status {status} and no rank reported an error (see the lines above)")
        print(f"error: {reason}", file=sys.stderr)
        return 1
