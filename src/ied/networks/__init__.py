"""Denoisers by architecture: the one home that builds a network from the spec a checkpoint names.

A checkpoint's `network` spec either names no architecture (the U-Net this pipeline trains, `unet.py`, its keys the
config's `train.network`) or names a registered one with its constructor arguments,
`{"architecture": "EDMPrecond", "kwargs": {...}}` (the published EDM networks: `precond.py` wrapping
`song_unet.py` or `dhariwal_unet.py`, built from `layers.py`).
"""
from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ied.networks.dhariwal_unet import DhariwalUNet
from ied.networks.precond import EDMPrecond, VEPrecond, VPPrecond
from ied.networks.song_unet import SongUNet
from ied.networks.unet import UNet, UNetDenoiser, build_denoiser

PIPELINE_UNET = "ied-unet"  # the pipeline's own U-Net: specs without an `architecture` key
ARCHITECTURES: dict[str, type[nn.Module]] = {"EDMPrecond": EDMPrecond, "VPPrecond": VPPrecond, "VEPrecond": VEPrecond}

__all__ = ["ARCHITECTURES", "DhariwalUNet", "EDMPrecond", "PIPELINE_UNET", "SongUNet", "UNet", "UNetDenoiser",
           "VEPrecond", "VPPrecond", "build_denoiser", "build_network", "parameter_count"]


def build_network(spec: Mapping[str, Any], img_resolution: int, img_channels: int, label_dim: int) -> nn.Module:
    """The denoiser of a checkpoint's `network` spec; resolution, channels and classes are the checkpoint's."""
    architecture = spec.get("architecture", PIPELINE_UNET)
    if architecture == PIPELINE_UNET:
        return build_denoiser(dict(spec), img_resolution, img_channels, label_dim)
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown network architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    kwargs = dict(spec["kwargs"])
    shape = (kwargs.get("img_resolution"), kwargs.get("img_channels"), kwargs.get("label_dim", 0))
    if shape != (img_resolution, img_channels, label_dim):
        raise ValueError(f"{architecture} arguments {shape} (resolution, channels, classes) disagree with the "
                         f"checkpoint's {(img_resolution, img_channels, label_dim)}")
    return ARCHITECTURES[architecture](**kwargs)


def parameter_count(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
