"""Global error of fitted and hand-made schedules on a finished run: each sampler at its fitted NFE, from the same
latents (keys no pilot or evaluation seed uses), against Heun at 500 steps on EDM ρ = 7, relative RMS per image.

    python scripts/fitted_errors.py results/digits-default l2 900
"""
import sys

import numpy as np
import torch

from ied import fitting, specs
from ied.checkpoints import load_ema_denoiser
from ied.checks import load
from ied.noise import PerImageNoise, balanced_labels
from ied.rationales import build
from ied.samplers import SAMPLERS, steps_for_nfe

root, model, step = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = load(["config/config.yaml"])
denoiser, ckpt = load_ema_denoiser(f"{root}/checkpoints/{model}/ckpt-{step}.pt")
latents = PerImageNoise([3 << 60 | i for i in range(256)]).randn((256, ckpt["channels"], ckpt["resolution"],
                                                                   ckpt["resolution"])).double()
labels = torch.as_tensor(balanced_labels(256, ckpt["num_classes"], 0)) if ckpt["num_classes"] else None
rationales = specs.configured_rationales(config)
with torch.no_grad():
    reference = SAMPLERS["heun"](denoiser, latents, build("edm7", rationales["edm7"]), 500, class_labels=labels)
    for name, spec in specs.fitted_rationales(config).items():
        if spec["method"] != "trajectory_dp":
            continue
        steps = steps_for_nfe(spec["sampler"], spec["nfe"])
        row = {}
        for other in ("edm7", "ve", "l2", "fit-density", name):
            r = fitting.load_fitted(f"{root}/schedules/{other}.parquet", rationales[other]) \
                if rationales[other]["family"] == "fitted" else build(other, rationales[other])
            x = SAMPLERS[spec["sampler"]](denoiser, latents, r, steps, class_labels=labels)
            row[other] = float(((x - reference) ** 2).mean().sqrt() / reference.pow(2).mean().sqrt())
        print(f"{spec['sampler']} NFE {spec['nfe']}: " + ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
