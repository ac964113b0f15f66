"""The one place that chooses the device, the autocast precision and torch.compile for a job.

These are run-time choices, not part of any job's identity: a checkpoint or a samples file does not
change name or get regenerated when they change. torch is imported lazily so config checks can read
the allowed values without it.
"""
from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"
PRECISIONS = ("auto", "bf16", "fp32")


class DeviceError(RuntimeError):
    """A device that is malformed or not present on this machine."""


def choose(name: str = "auto") -> "torch.device":
    """`auto` (CUDA if present, else CPU), `cpu`, `cuda` or `cuda:N`; DeviceError if it is not there."""
    import torch

    if not re.match(DEVICE_PATTERN, name or ""):
        raise DeviceError(f"device {name!r}: use auto, cpu, cuda or cuda:N")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} was asked for, but this machine has no CUDA device "
                              f"(set train.device / sample.device to auto or cpu, or run on a GPU node)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return device


def autocast(device: "torch.device", precision: str = "auto") -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (`auto` or `bf16`), none on CPU or with `fp32`."""
    import torch

    if precision not in PRECISIONS:
        raise DeviceError(f"precision {precision!r}: use one of {PRECISIONS}")
    if device.type == "cuda" and precision != "fp32":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_module(module: Any, device: "torch.device", *, channels_last: bool | None = None,
                   compile: bool = False) -> Any:
    """Move to the device; channels_last on CUDA unless told otherwise (None = auto); torch.compile if asked."""
    import torch

    module = module.to(device)
    cuda = device.type == "cuda"
    if channels_last if channels_last is not None else cuda:
        module = module.to(memory_format=torch.channels_last)
    if compile:
        module = torch.compile(module)
    return module
